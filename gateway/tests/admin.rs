//! End to end: the admin API against its OpenAPI description, auth, limits and introspection.

mod common;

use common::*;
use serde_json::Value;

/// Follows a `$ref` such as `#/components/responses/Applied` within the document.
fn resolve<'a>(spec: &'a Value, node: &'a Value) -> &'a Value {
    match node.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let target = reference
                .trim_start_matches("#/")
                .split('/')
                .fold(spec, |node, key| &node[key]);
            resolve(spec, target)
        }
        None => node,
    }
}

/// Checks a JSON value against the subset of OpenAPI schema the description uses.
fn check_schema(spec: &Value, schema: &Value, value: &Value, at: &str) -> Vec<String> {
    let schema = resolve(spec, schema);
    let mut problems = Vec::new();
    if value.is_null() {
        if schema["nullable"] != Value::Bool(true) {
            problems.push(format!("{at}: null but not nullable"));
        }
        return problems;
    }
    let type_ok = match schema["type"].as_str() {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_u64() || value.is_i64(),
        Some("boolean") => value.is_boolean(),
        _ => true,
    };
    if !type_ok {
        problems.push(format!("{at}: expected {}, got {value}", schema["type"]));
        return problems;
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(value) {
            problems.push(format!("{at}: {value} not in {allowed:?}"));
        }
    }
    if let Some(required) = schema["required"].as_array() {
        for key in required {
            if value.get(key.as_str().unwrap()).is_none() {
                problems.push(format!("{at}: missing required {key}"));
            }
        }
    }
    if let (Some(properties), Some(object)) = (schema["properties"].as_object(), value.as_object())
    {
        for (key, field) in object {
            match properties.get(key) {
                Some(field_schema) => problems.extend(check_schema(
                    spec,
                    field_schema,
                    field,
                    &format!("{at}.{key}"),
                )),
                None => problems.push(format!("{at}: undocumented field {key}")),
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (i, item) in array.iter().enumerate() {
            problems.extend(check_schema(spec, items, item, &format!("{at}[{i}]")));
        }
    }
    problems
}

#[tokio::test(flavor = "multi_thread")]
async fn every_documented_operation_answers_as_described() {
    let spec_text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../admin-api/openapi.yaml"
    ))
    .unwrap();
    let spec: Value = serde_yaml::from_str(&spec_text).unwrap();
    let v1 = start_echo("v1").await;
    let v2 = start_echo("v2").await;
    let gateway = Gateway::start(&split_policy(v1, v2, 90, 10));
    let client = client();
    let policy = std::fs::read_to_string(&gateway.policy_path).unwrap();
    let changed = gateway.policy_with_body(&split_policy(v1, v2, 80, 20));
    count_servers(&client, &gateway.url("/"), 3).await;

    let mut checked = 0;
    let mut problems = Vec::new();
    // `/drain` ends the gateway, so it goes last.
    // The fleet's operations need a fleet in etcd: `tests/fleet.rs` calls them on one.
    let mut paths: Vec<_> = spec["paths"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(path, _)| !path.starts_with("/fleet"))
        .collect();
    paths.sort_by_key(|(path, _)| path.as_str() == "/drain");
    for (path, operations) in paths {
        for (method, operation) in operations.as_object().unwrap() {
            let public = operation.get("security") == Some(&serde_json::json!([]));
            let url = match path.as_str() {
                "/explain" => gateway.admin_url("/explain?path=/x&header=x-a:b&method=GET"),
                "/upstreams/{upstream}/endpoints/{address}/{action}" => {
                    gateway.admin_url(&format!("/upstreams/v1/endpoints/{v1}/enable"))
                }
                "/upstreams/{upstream}/endpoints/{address}/weight" => {
                    gateway.admin_url(&format!("/upstreams/v1/endpoints/{v1}/weight"))
                }
                _ => gateway.admin_url(path),
            };
            let build = |authorized: bool| {
                let mut request = match method.as_str() {
                    "get" => client.get(&url),
                    // A changed policy, so that the rollback after it has somewhere to go.
                    "put" => client.put(&url).body(changed.clone()),
                    "post" if path == "/policy/validate" => client.post(&url).body(policy.clone()),
                    "post" if path.ends_with("/weight") => {
                        client.post(&url).body(r#"{"weight": null}"#)
                    }
                    "post" => client.post(&url),
                    other => panic!("undocumented method {other}"),
                };
                if authorized {
                    request = request.header("authorization", format!("Bearer {TOKEN}"));
                }
                request
            };
            if !public {
                let response = build(false).send().await.unwrap();
                if response.status() != 401 {
                    problems.push(format!(
                        "{method} {path}: {} without a token",
                        response.status()
                    ));
                }
                let wrong = build(false)
                    .header("authorization", "Bearer wrong-token-0123456789")
                    .send()
                    .await
                    .unwrap();
                if wrong.status() != 401 {
                    problems.push(format!(
                        "{method} {path}: {} with a wrong token",
                        wrong.status()
                    ));
                }
            }
            let response = build(true).send().await.unwrap();
            let status = response.status().as_u16().to_string();
            // Every call here is valid and authorized, so it must get its success status, not
            // merely a documented one (an error answer to PUT, reload or rollback is a failure).
            if !response.status().is_success() {
                problems.push(format!(
                    "{method} {path}: {status} for a valid, authorized call"
                ));
            }
            let Some(documented) = operation["responses"].get(&status) else {
                problems.push(format!("{method} {path}: undocumented status {status}"));
                continue;
            };
            let documented = resolve(&spec, documented);
            let content_type = response
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let body = response.text().await.unwrap();
            // The answer's media type must be one the operation documents; a JSON answer is
            // checked against its schema.
            let media_type = content_type.split(';').next().unwrap_or_default().trim();
            if documented["content"].get(media_type).is_none() {
                problems.push(format!(
                    "{method} {path}: undocumented content type {content_type}"
                ));
            }
            if let Some(json_schema) = documented["content"][media_type]
                .get("schema")
                .filter(|_| media_type == "application/json")
            {
                let value: Value = serde_json::from_str(&body).unwrap();
                problems.extend(check_schema(
                    &spec,
                    json_schema,
                    &value,
                    &format!("{method} {path}"),
                ));
            }
            checked += 1;
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(checked, 17, "every operation was exercised");
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_routes_metrics_and_limits() {
    let v1 = start_echo("v1").await;
    let body = format!(
        r#"
[[upstreams]]
name = "v1"
endpoints = ["{v1}"]

[[routes]]
name = "api"
match = {{ path_prefix = "/api", headers = {{ "x-team" = "a" }} }}
split = [{{ upstream = "v1" }}]

[[routes]]
name = "rest"
match = {{ path_prefix = "/" }}
split = [{{ upstream = "v1" }}]
"#
    );
    let gateway = Gateway::start(&body);
    let client = client();
    let auth = format!("Bearer {TOKEN}");

    let explanation = gateway
        .admin_json("/explain?path=/api/orders&header=x-team:b")
        .await;
    assert_eq!(explanation["matched"], "rest", "{explanation}");
    assert_eq!(explanation["routes"][0]["result"], "skipped");
    assert!(explanation["routes"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("x-team"));
    assert_eq!(explanation["candidates"][0]["endpoints"][0], v1.to_string());

    let routes = gateway.admin_json("/routes").await;
    assert_eq!(routes["routes"][0]["name"], "api");
    assert_eq!(routes["routes"][0]["path"], "prefix /api");
    assert_eq!(routes["routes"][1]["name"], "rest");

    for _ in 0..7 {
        client
            .get(gateway.url("/api"))
            .header("x-team", "a")
            .send()
            .await
            .unwrap();
    }
    client.get(gateway.url("/x")).send().await.unwrap();
    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains(r#"meshgate_requests_total{code="200",listener="public",reason="",route="api",upstream="v1"} 7"#),
        "{metrics}"
    );
    assert!(metrics.contains("meshgate_policy_version 1"), "{metrics}");

    let too_big = "#".repeat(meshgate_admin::MAX_BODY_BYTES + 10);
    let response = client
        .post(gateway.admin_url("/policy/validate"))
        .header("authorization", &auth)
        .body(too_big)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let unknown = client
        .get(gateway.admin_url("/nope"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let error: Value = unknown.json().await.unwrap();
    assert!(error["error"].is_string());
}

#[test]
fn a_bad_policy_fails_at_start_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("bad.toml");
    std::fs::write(
        &policy,
        "version = 1\n[[listeners]]\nname = \"x\"\nlisten = \"oops\"\n",
    )
    .unwrap();
    // Bounded: a gateway that started anyway would otherwise hold the test for ever.
    let output = bounded(20, env!("CARGO_BIN_EXE_meshgate"))
        .args(["run", "-c"])
        .arg(&policy)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad.toml:4:10: listeners[0].listen: invalid address"),
        "{stderr}"
    );
}

/// A second gateway on addresses a running one holds refuses to start, naming the address,
/// instead of sharing the admin port or half-starting.
#[tokio::test(flavor = "multi_thread")]
async fn addresses_in_use_fail_the_start_clearly() {
    let v1 = start_echo("v1").await;
    let running = Gateway::start(&split_policy(v1, v1, 1, 0));
    let dir = tempfile::tempdir().unwrap();
    write_token(&dir.path().join("admin.token"));
    let free_admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let free_listen: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    for (listen, admin, taken) in [
        (running.listen, free_admin, "for listener public"),
        (free_listen, running.admin, "for the admin API"),
    ] {
        let policy = dir.path().join("second.toml");
        std::fs::write(
            &policy,
            policy_head(listen, admin, "off") + &split_policy(v1, v1, 1, 0),
        )
        .unwrap();
        let stderr_path = dir.path().join("second.err");
        let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_meshgate"))
            .args(["run", "-c"])
            .arg(&policy)
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap();
        // It must exit by itself, at once; one that started anyway is killed, not waited on.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let status = loop {
            if let Some(status) = second.try_wait().unwrap() {
                break Some(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = second.kill();
                let _ = second.wait();
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let stderr = std::fs::read_to_string(&stderr_path).unwrap();
        assert_eq!(status.and_then(|s| s.code()), Some(1), "{stderr}");
        assert!(
            stderr.contains(taken) && stderr.contains("in use"),
            "{stderr}"
        );
    }
    // The running gateway still answers every admin call itself.
    for _ in 0..10 {
        assert_eq!(http_status(running.admin, "/readyz"), Some(200));
    }
}
