//! End to end: behaviour README and `docs/policy.md` promise that no other test covered.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;

/// Every endpoint down (TCP health checks fail) answers `503 no-healthy-upstream`, with
/// `Connection: close` on HTTP/1.1 after an upstream failure answer.
#[tokio::test(flavor = "multi_thread")]
async fn no_healthy_endpoint_is_503_with_its_reason() {
    let dead = format!("127.0.0.1:{}", free_port());
    let gateway = Gateway::start(&format!(
        r#"
[[upstreams]]
name = "pool"
endpoints = ["{dead}"]
health_check = {{ interval = "100ms", timeout = "100ms", unhealthy_threshold = 1 }}

[[routes]]
name = "main"
split = [{{ upstream = "pool" }}]
"#
    ));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let upstreams = gateway.admin_json("/upstreams").await;
        if upstreams["upstreams"][0]["endpoints"][0]["healthy"] == false {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the TCP check never failed: {upstreams}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let response = client().get(gateway.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(
        response.headers()["x-meshgate-reason"],
        "no-healthy-upstream"
    );
    assert_eq!(response.headers()["connection"], "close");
}

/// `path_regex` matches the whole path, and a route's `listeners` keeps it off the others.
#[tokio::test(flavor = "multi_thread")]
async fn path_regex_and_listener_restrictions_route_as_documented() {
    let a = start_echo("a").await;
    let b = start_echo("b").await;
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let internal: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policy = policy_head(listen, admin, "off")
        + &format!(
            r#"
[[listeners]]
name = "internal"
listen = "{internal}"

[[upstreams]]
name = "a"
endpoints = ["{a}"]

[[upstreams]]
name = "b"
endpoints = ["{b}"]

[[routes]]
name = "numbered"
listeners = ["internal"]
match = {{ path_regex = "^/items/[0-9]+$" }}
split = [{{ upstream = "a" }}]

[[routes]]
name = "rest"
split = [{{ upstream = "b" }}]
"#
        );
    let gateway = Gateway::start_with(dir, &policy, listen, admin);
    let server = |addr: SocketAddr, path: &'static str| async move {
        let response = client()
            .get(format!("http://{addr}{path}"))
            .send()
            .await
            .unwrap();
        response.headers()["x-echo-server"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(server(internal, "/items/42").await, "a");
    assert_eq!(
        server(internal, "/items/42/x").await,
        "b",
        "the whole path must match"
    );
    assert_eq!(server(internal, "/items/x").await, "b");
    assert_eq!(
        server(listen, "/items/42").await,
        "b",
        "the route is for `internal` only"
    );
    drop(gateway);
}

/// An unchanged PUT is a no-op: `changed: false`, the same version, no new history entry.
#[tokio::test(flavor = "multi_thread")]
async fn an_unchanged_policy_is_a_no_op() {
    let v1 = start_echo("v1").await;
    let gateway = Gateway::start(&split_policy(v1, v1, 1, 0));
    let policy = std::fs::read_to_string(&gateway.policy_path).unwrap();
    let applied = gateway.apply_policy(policy).await;
    assert_eq!(applied["changed"], false);
    assert_eq!(applied["version"], 1);
    let history = gateway.admin_json("/policy/history").await;
    assert_eq!(history["history"].as_array().unwrap().len(), 1);
}

/// `request_add` and `response_add` append to a header the message already has, where `set`
/// replaces it.
#[tokio::test(flavor = "multi_thread")]
async fn add_rules_append_to_existing_headers() {
    let upstream = start_echo("echo").await;
    let gateway = Gateway::start(&route_to(
        upstream,
        "[routes.headers]\nrequest_add = { \"x-tag\" = \"added\" }\nresponse_add = { \"x-echo-server\" = \"added\" }",
    ));
    let response = client()
        .get(gateway.url("/headers"))
        .header("x-tag", "original")
        .send()
        .await
        .unwrap();
    let servers: Vec<&str> = response
        .headers()
        .get_all("x-echo-server")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(servers, ["echo", "added"], "response_add appends");
    let seen = response.text().await.unwrap();
    assert!(seen.contains("x-tag: original"), "{seen}");
    assert!(seen.contains("x-tag: added"), "request_add appends: {seen}");
}

/// Without `token_file`, the first start creates `admin.token` beside the policy with a
/// random token readable by its owner only (mode 0600), and the admin API takes it.
#[test]
fn the_admin_token_file_is_created_with_mode_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let admin = free_port();
    let policy = dir.path().join("meshgate.toml");
    std::fs::write(
        &policy,
        format!("version = 1\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n"),
    )
    .unwrap();
    let mut child = spawn_meshgate(&policy, &[], std::process::Stdio::null());
    let token_file = dir.path().join("admin.token");
    wait_ready_at(format!("127.0.0.1:{admin}").parse().unwrap());
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    let token = std::fs::read_to_string(&token_file).unwrap();
    let authorized = bounded(10, "curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
        .arg(format!("Authorization: Bearer {}", token.trim()))
        .arg(format!("http://127.0.0.1:{admin}/routes"))
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "created admin.token with mode {mode:o}, {} characters",
        token.trim().len()
    );
    assert_eq!(mode, 0o600);
    assert!(token.trim().len() >= 16);
    assert_eq!(String::from_utf8_lossy(&authorized.stdout), "200");
}

/// `[telemetry].metrics_listen` serves `/metrics` and `/healthz` only: the admin API stays
/// on its own address.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_listen_serves_only_metrics_and_health() {
    let v1 = start_echo("v1").await;
    let metrics_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let policy = policy_head(listen, admin, "off").replacen(
        "access_log = \"off\"\n",
        &format!("access_log = \"off\"\nmetrics_listen = \"{metrics_addr}\"\n"),
        1,
    ) + &split_policy(v1, v1, 1, 0);
    let gateway = Gateway::start_with(tempfile::tempdir().unwrap(), &policy, listen, admin);
    let get = |path: &'static str| async move {
        let response = client()
            .get(format!("http://{metrics_addr}{path}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    };
    let (status, text) = get("/metrics").await;
    assert_eq!(status, 200);
    assert!(text.contains("meshgate_policy_version 1"), "{text}");
    assert_eq!(get("/healthz").await.0, 200);
    for admin_only in ["/routes", "/policy", "/upstreams"] {
        assert_eq!(
            get(admin_only).await.0,
            404,
            "{admin_only} on the metrics listener"
        );
    }
    drop(gateway);
}

/// `MESHGATE_LOG`, when set, wins over `[telemetry].log_level`.
#[tokio::test(flavor = "multi_thread")]
async fn meshgate_log_wins_over_the_policy_log_level() {
    let dir = tempfile::tempdir().unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let v1 = start_echo("v1").await;
    let policy = policy_head(listen, admin, "off").replacen(
        "access_log = \"off\"\n",
        "access_log = \"off\"\nlog_level = \"error\"\n",
        1,
    ) + &split_policy(v1, v1, 1, 0);
    write_token(&dir.path().join("admin.token"));
    let policy_path = dir.path().join("meshgate.toml");
    std::fs::write(&policy_path, policy).unwrap();
    let stderr_path = dir.path().join("stderr.log");
    let mut child = spawn_meshgate(
        &policy_path,
        &[("MESHGATE_LOG", "info")],
        std::fs::File::create(&stderr_path).unwrap(),
    );
    wait_ready_at(admin);
    let _ = child.kill();
    let _ = child.wait();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    // At the policy's `error`, no INFO line would be written; MESHGATE_LOG=info lets them in.
    assert!(
        stderr.contains("INFO") && stderr.contains("ready"),
        "MESHGATE_LOG did not win: {stderr}"
    );
}
