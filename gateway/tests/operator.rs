//! End to end: what an operator reads and types (issue 18): the gateway's own log (text or
//! JSON, no colour codes in files, one line per failing route and reason a second, no Rust
//! debug text), a quiet upgrade, and the command line.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// The policy head with `[telemetry]` keys added.
fn with_telemetry(keys: &str, body: &str) -> Gateway {
    let listen = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let access_log = dir.path().join("access.log");
    let head = policy_head(listen, admin, access_log.to_str().unwrap()).replacen(
        "[telemetry]\n",
        &format!("[telemetry]\n{keys}\n"),
        1,
    );
    Gateway::start_with(dir, &(head + body), listen, admin)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_json_log_has_one_object_a_line_and_failures_are_logged_once_a_second() {
    // Nothing listens on the upstream's port: every request fails to connect.
    let dead = format!("127.0.0.1:{}", free_port());
    let gateway = with_telemetry(
        r#"log_format = "json""#,
        &route_to(dead.parse().unwrap(), ""),
    );
    let client = client();
    let mut ids = Vec::new();
    for _ in 0..20 {
        let response = client.get(gateway.url("/x")).send().await.unwrap();
        assert_eq!(response.status(), 502);
        ids.push(
            response.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let response = client.get(gateway.url("/x")).send().await.unwrap();
    assert_eq!(response.status(), 502);

    let log = gateway.stderr();
    assert!(!log.contains('\u{1b}'), "colour codes in a file: {log}");
    assert!(!log.contains("Fail to proxy"), "{log}");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    for line in &lines {
        for key in ["ts", "level", "msg", "target"] {
            assert!(line.get(key).is_some(), "no {key}: {line}");
        }
        assert!(
            line.get("file").is_none(),
            "Pingora's source places: {line}"
        );
    }
    let start = lines
        .iter()
        .find(|l| l["msg"].as_str().unwrap().starts_with("meshgate "))
        .expect("a start-up line");
    assert_eq!(start["tls_backend"], "rustls");
    assert_eq!(start["policy_version"], 1);
    assert_eq!(
        (
            start["listeners"].as_u64(),
            start["routes"].as_u64(),
            start["upstreams"].as_u64()
        ),
        (Some(1), Some(1), Some(1))
    );
    assert!(
        start["policy_hash"].as_str().unwrap().len() == 12,
        "{start}"
    );

    let failures: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["msg"].as_str().unwrap().starts_with("request failed"))
        .collect();
    assert_eq!(
        failures.len(),
        2,
        "one line in the first second, one after: {failures:?}"
    );
    let first = failures[0];
    assert_eq!(first["level"], "warn");
    assert_eq!(first["route"], "main");
    assert_eq!(first["upstream"], "pool");
    assert_eq!(first["endpoint"], dead.as_str());
    assert_eq!(first["reason"], "connect-failure");
    assert_eq!(first["status"], 502);
    assert_eq!(first["request_id"], ids[0].as_str());
    assert_eq!(first["suppressed"], 0);
    assert_eq!(failures[1]["suppressed"], 19, "{:?}", failures[1]);
    assert!(
        first["msg"]
            .as_str()
            .unwrap()
            .contains("Connection refused"),
        "{first}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_puts_are_logged_as_the_uploaded_body_without_debug_text() {
    let upstream = start_echo("app").await;
    let gateway = Gateway::start(&route_to(upstream, ""));
    let bad = gateway.policy_with_body(&route_to(upstream, "timeouts = { request = \"soon\" }"));
    let response = gateway.put_policy(bad).await;
    assert_eq!(response.status(), 400);
    // A stale If-Match is a conflict, counted as one.
    let response = client()
        .put(gateway.admin_url("/policy"))
        .bearer_auth(TOKEN)
        .header("if-match", "\"0000\"")
        .body(gateway.policy_with_body(&route_to(upstream, "")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 412);
    let log = gateway.stderr();
    let refused = log
        .lines()
        .find(|l| l.contains("policy refused"))
        .expect("a refusal line");
    assert!(
        refused.contains("policy refused: PUT /policy:"),
        "{refused}"
    );
    assert!(refused.contains("timeouts.request"), "{refused}");
    for debug_text in ["(Api)", "Stale {", "Io(\"", "current_hash:"] {
        assert!(!log.contains(debug_text), "{debug_text:?} in: {log}");
    }
    let metrics = gateway.metrics().await;
    assert_eq!(
        metric_sum(
            &metrics,
            r#"meshgate_policy_reloads_total{result="conflict"}"#
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(&metrics, r#"meshgate_policy_reloads_total{result="error"}"#),
        0.0
    );
}

#[test]
fn an_upgrade_hand_over_logs_no_error() {
    let _machine = load_test_lock();
    let dead = format!("127.0.0.1:{}", free_port());
    let mut gateway = Gateway::start(&route_to(dead.parse().unwrap(), ""));
    // As systemd's ExecReload does: the old process is told first, the new one started after.
    gateway.signal("QUIT");
    let mut new = gateway.spawn_upgrade();
    assert!(
        gateway.wait_exit(Duration::from_secs(20)),
        "the old process did not exit"
    );
    wait_ready_at(gateway.admin);
    let _ = Command::new("kill").arg(new.id().to_string()).status();
    let _ = new.wait();
    for file in ["stderr.log", "stderr-upgrade.log"] {
        let log = std::fs::read_to_string(gateway.dir.path().join(file)).unwrap();
        assert!(!log.contains(" ERROR "), "{file}: {log}");
    }
}

fn meshgate(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_command_line_reads_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.toml");
    std::fs::write(&policy, "version = 1\n").unwrap();
    let path = policy.to_str().unwrap();
    assert_eq!(meshgate(&["check", "-c", path]).0, 0);
    assert_eq!(meshgate(&["check", "--config", path]).0, 0);
    assert_eq!(meshgate(&["check", path]).0, 0);
    // Without a file, check reads run's default.
    let (code, _, stderr) = meshgate(&["check"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("/etc/meshgate/meshgate.toml"), "{stderr}");

    let (_, long, _) = meshgate(&["--version"]);
    let (_, word, _) = meshgate(&["version"]);
    assert_eq!(long, word);
    assert!(
        word.starts_with("meshgate ") && word.contains("(TLS: "),
        "{word}"
    );

    let (code, help, _) = meshgate(&["--help"]);
    assert_eq!(code, 0);
    for example in [
        "meshgate run -c",
        "meshgate check -c",
        "meshgate fleet push",
        "meshgate version",
    ] {
        assert!(help.contains(example), "{example:?} not in:\n{help}");
    }
    let (_, run_help, _) = meshgate(&["run", "--help"]);
    assert!(
        run_help.contains("/run/meshgate/upgrade.sock"),
        "{run_help}"
    );
    assert!(
        run_help.contains("/run/meshgate/meshgate.pid"),
        "{run_help}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_answers_errors_in_one_shape() {
    let upstream = start_echo("app").await;
    let gateway = Gateway::start(&route_to(upstream, r#"retry = { attempts = 2 }"#));
    let client = client();
    // The bearer scheme in any case (RFC 7235).
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let response = client
            .get(gateway.admin_url("/routes"))
            .header("authorization", format!("{scheme} {TOKEN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{scheme}");
    }
    let shape = |value: &serde_json::Value| {
        assert!(value["error"].is_string(), "{value}");
        assert!(value["errors"].is_array(), "{value}");
    };
    // Unauthorized, not found in history, invalid policy, validate, malformed explain input.
    let response = client
        .get(gateway.admin_url("/routes"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    shape(&response.json().await.unwrap());
    let bad = gateway.policy_with_body("[[routes]]\nname = 1\n");
    let response = gateway.put_policy(bad.clone()).await;
    assert_eq!(response.status(), 400);
    let answer: serde_json::Value = response.json().await.unwrap();
    shape(&answer);
    assert!(!answer["errors"].as_array().unwrap().is_empty());
    let response = client
        .post(gateway.admin_url("/policy/validate"))
        .bearer_auth(TOKEN)
        .body(bad)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let answer: serde_json::Value = response.json().await.unwrap();
    shape(&answer);
    assert_eq!(answer["valid"], false);
    for query in ["method=G%20ET", "header=:x", "header=x", "method="] {
        let response = client
            .get(gateway.admin_url(&format!("/explain?{query}")))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{query}");
        shape(&response.json().await.unwrap());
    }
    // Counters are exported at 0 before their first event.
    let metrics = gateway.metrics().await;
    for series in [
        r#"meshgate_policy_reloads_total{result="conflict"} 0"#,
        r#"meshgate_policy_reloads_total{result="error"} 0"#,
        r#"meshgate_tls_reloads_total{result="refused"} 0"#,
        r#"meshgate_authz_denied_total{route="main"} 0"#,
        r#"meshgate_retries_total{route="main"} 0"#,
    ] {
        assert!(metrics.contains(series), "{series} missing");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn check_and_the_api_list_warnings_after_errors() {
    let upstream = start_echo("app").await;
    let body = format!(
        r#"
[[upstreams]]
name = "app"
endpoints = ["{upstream}"]

[[upstreams]]
name = "old"
endpoints = ["{upstream}"]

[[routes]]
name = "everything"
split = [{{ upstream = "app" }}]

[[routes]]
name = "api"
match = {{ path_prefix = "/api" }}
split = [{{ upstream = "app" }}]
allow = ["spiffe://prod.example/ns/shop/sa/checkout"]
"#
    );
    let gateway = Gateway::start(&body);
    let path = gateway.policy_path.to_str().unwrap().to_owned();
    let (code, _, stderr) = meshgate(&["check", &path]);
    assert_eq!(code, 0, "{stderr}");
    for expected in [
        "warning: upstreams[1].name: upstream \"old\" is not used",
        "warning: routes[1].name: route \"api\" is never reached: route \"everything\" (routes[0])",
        "warning: routes[1].allow: route \"api\" allows certificate identities",
    ] {
        assert!(stderr.contains(expected), "{expected:?} not in:\n{stderr}");
    }
    assert_eq!(meshgate(&["check", "--strict", &path]).0, 1);

    // The same warnings come back from validate and PUT; the policy is applied all the same.
    let policy = std::fs::read_to_string(&gateway.policy_path).unwrap() + "\n# changed\n";
    let response = client()
        .post(gateway.admin_url("/policy/validate"))
        .bearer_auth(TOKEN)
        .body(policy.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let validated: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        validated["warnings"].as_array().unwrap().len(),
        3,
        "{validated}"
    );
    let applied = gateway.apply_policy(policy).await;
    assert_eq!(applied["changed"], true);
    let warnings = applied["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 3, "{applied}");
    assert!(
        warnings.iter().all(|w| w["line"].as_u64().unwrap() > 0),
        "{applied}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_lists_what_would_change_and_changes_nothing() {
    let app = start_echo("app").await;
    let other = start_echo("other").await;
    let before = format!(
        r#"
[[upstreams]]
name = "app"
endpoints = ["{app}"]

[[upstreams]]
name = "legacy"
endpoints = ["{app}"]

[[routes]]
name = "main"
match = {{ path_prefix = "/" }}
split = [{{ upstream = "app" }}]

[[routes]]
name = "old"
match = {{ path_prefix = "/old" }}
split = [{{ upstream = "legacy" }}]
"#
    );
    let after = format!(
        r#"
[[upstreams]]
name = "app"
endpoints = ["{other}"]

[[upstreams]]
name = "new"
endpoints = ["{app}"]

[[routes]]
name = "api"
match = {{ path_prefix = "/api" }}
split = [{{ upstream = "new" }}]

[[routes]]
name = "main"
match = {{ path_prefix = "/" }}
split = [{{ upstream = "app" }}]
timeouts = {{ request = "5s" }}
"#
    );
    let gateway = Gateway::start(&before);
    let version = gateway.admin_json("/policy/history").await.to_string();
    let response = client()
        .put(gateway.admin_url("/policy?dry_run=true"))
        .bearer_auth(TOKEN)
        .body(gateway.policy_with_body(&after))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = response.json().await.unwrap();
    let changes = &answer["changes"];
    assert_eq!(
        changes["routes"]["added"],
        serde_json::json!(["api"]),
        "{answer}"
    );
    assert_eq!(changes["routes"]["removed"], serde_json::json!(["old"]));
    assert_eq!(
        changes["routes"]["changed"],
        serde_json::json!([{"name": "main", "keys": ["timeouts"]}])
    );
    assert_eq!(changes["upstreams"]["added"], serde_json::json!(["new"]));
    assert_eq!(
        changes["upstreams"]["removed"],
        serde_json::json!(["legacy"])
    );
    assert_eq!(
        changes["upstreams"]["changed"],
        serde_json::json!([{"name": "app", "keys": ["endpoints"]}])
    );
    assert_eq!(changes["fresh_upstreams"], serde_json::json!(["app"]));
    let lines = answer["lines"].to_string();
    assert!(lines.contains("! upstream app starts fresh"), "{lines}");
    // Nothing was applied: the old route still serves, the history is the same.
    let response = client().get(gateway.url("/old")).send().await.unwrap();
    assert_eq!(response.headers()["x-echo-server"], "app");
    assert_eq!(
        gateway.admin_json("/policy/history").await.to_string(),
        version
    );
    let response = client()
        .put(gateway.admin_url("/policy?dry_run=maybe"))
        .bearer_auth(TOKEN)
        .body(gateway.policy_with_body(&after))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    // meshgate diff OLD NEW says the same.
    let new_file = gateway.dir.path().join("new.toml");
    std::fs::write(&new_file, gateway.policy_with_body(&after)).unwrap();
    let (code, stdout, stderr) = meshgate(&[
        "diff",
        gateway.policy_path.to_str().unwrap(),
        new_file.to_str().unwrap(),
    ]);
    // As diff(1): 1 when the policies differ.
    assert_eq!(code, 1, "{stderr}");
    for line in [
        "+ route api",
        "- route old",
        "~ route main: timeouts",
        "+ upstream new",
        "- upstream legacy",
        "~ upstream app: endpoints",
        "! upstream app starts fresh (runtime state reset)",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "{line:?} not in:\n{stdout}"
        );
    }
    let (code, same, _) = meshgate(&[
        "diff",
        gateway.policy_path.to_str().unwrap(),
        gateway.policy_path.to_str().unwrap(),
    ]);
    assert_eq!(same.trim(), "no change");
    assert_eq!(code, 0);
    let (code, _, said) = meshgate(&["diff", "/nonexistent.toml", new_file.to_str().unwrap()]);
    assert_eq!(code, 2, "{said}");
}

/// An upstream `pool` of two endpoints and a route `main` to it, with `route_extra`.
/// The DOM of `url` after its scripts ran, as headless Chromium (from `make deps`) renders it.
fn rendered_dom(url: &str) -> String {
    let output = bounded(60, "chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=5000",
            "--dump-dom",
            url,
        ])
        .stderr(Stdio::null())
        .output()
        .expect("chromium is installed by `make deps`");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_shows_in_a_browser_what_the_api_says() {
    let _machine = load_test_lock();
    let a = start_echo("a").await;
    let b = start_echo("b").await;
    let edge = format!("127.0.0.1:{}", free_port());
    let gateway = Gateway::start(&format!(
        "{}\n[[listeners]]\nname = \"edge\"\nlisten = \"{edge}\"\nprotocol = \"tls_passthrough\"\n\n[[tcp_routes]]\nname = \"shop-tls\"\nmatch = {{ sni = [\"*.shop.example\"] }}\nsplit = [{{ upstream = \"pool\" }}]\n",
        pool_of_two(a, b, "")
    ));
    for _ in 0..6 {
        assert_eq!(
            client()
                .get(gateway.url("/"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let response = client()
        .post(gateway.admin_url(&format!("/upstreams/pool/endpoints/{b}/drain")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // The page needs no token to load and holds none.
    let response = client()
        .get(gateway.admin_url("/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(!response.text().await.unwrap().contains(TOKEN));

    // In the browser, with the token entered (through the URL fragment, never sent to the
    // server): each endpoint's row says what /upstreams says.
    let url = gateway.admin_url(&format!("/status#token={TOKEN}"));
    let dom = tokio::task::spawn_blocking(move || rendered_dom(&url))
        .await
        .unwrap();
    assert!(dom.contains("data-loaded=\"true\""), "{dom}");
    let upstreams = gateway.admin_json("/upstreams").await;
    for endpoint in upstreams["upstreams"][0]["endpoints"].as_array().unwrap() {
        let address = endpoint["address"].as_str().unwrap();
        let start = dom
            .find(&format!("data-endpoint=\"pool/{address}\""))
            .unwrap_or_else(|| panic!("no row for {address}: {dom}"));
        let row = &dom[start..start + dom[start..].find("</tr>").unwrap()];
        let cells: Vec<&str> = row
            .split("<td")
            .skip(1)
            .map(|c| c[c.find('>').unwrap() + 1..c.find("</td>").unwrap()].trim())
            .collect();
        let health = if endpoint["healthy"] == true {
            "healthy"
        } else {
            "unhealthy"
        };
        assert_eq!(cells[2], endpoint["state"].as_str().unwrap(), "{row}");
        assert_eq!(cells[3], health, "{row}");
        assert_eq!(cells[6], endpoint["requests_total"].to_string(), "{row}");
    }
    assert!(dom.contains(">draining<"), "{dom}");
    // TCP routes and each listener's protocol, as /routes says.
    assert!(dom.contains("data-tcp-route=\"shop-tls\""), "{dom}");
    assert!(dom.contains(">*.shop.example<"), "{dom}");
    assert!(dom.contains(">tls_passthrough<"), "{dom}");
    assert!(dom.contains("policy version 1"), "{dom}");

    // A wrong token shows the API's refusal, and no data.
    let url = gateway.admin_url("/status#token=wrong");
    let dom = tokio::task::spawn_blocking(move || rendered_dom(&url))
        .await
        .unwrap();
    assert!(dom.contains("missing or wrong bearer token"), "{dom}");
    assert!(!dom.contains("data-loaded"), "{dom}");
}
