//! End to end: what an operator reads of the running policy and changes at runtime (issue
//! 18): the effective policy (`GET /config`, `meshgate check --print`), every setting in
//! `/routes` and `/upstreams`, each endpoint's last health check, and endpoint control
//! through the admin API (drain, disable, enable, weight) that survives reloads.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;

/// Which echo server answered each of `count` requests to `url`.
async fn served_by(url: &str, count: usize) -> BTreeMap<String, usize> {
    let client = client();
    let mut names = BTreeMap::new();
    for _ in 0..count {
        let response = client.get(url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let name = response.headers()["x-echo-server"]
            .to_str()
            .unwrap()
            .to_owned();
        *names.entry(name).or_insert(0) += 1;
    }
    names
}

/// POSTs `body` (JSON) to an endpoint action as operator `bob`.
async fn act(gateway: &Gateway, path: &str, body: &str) -> reqwest::Response {
    client()
        .post(gateway.admin_url(path))
        .bearer_auth(TOKEN)
        .header("x-meshgate-operator", "bob")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn endpoints_are_drained_disabled_and_enabled_at_runtime_across_reloads() {
    let a = start_echo("a").await;
    let b = start_echo("b").await;
    let body = |extra: &str| pool_of_two(a, b, extra);
    let gateway = Gateway::start(&body(""));
    let client = client();
    let act = |path: String| {
        let client = client.clone();
        async move {
            client
                .post(path)
                .bearer_auth(TOKEN)
                .header("x-meshgate-operator", "alice")
                .send()
                .await
                .unwrap()
        }
    };
    let response = act(gateway.admin_url(&format!("/upstreams/pool/endpoints/{a}/drain"))).await;
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["state"], "draining");
    assert_eq!(
        served_by(&gateway.url("/"), 20).await.get("a"),
        None,
        "a drained endpoint takes no request"
    );
    let upstreams = gateway.admin_json("/upstreams").await;
    let endpoint = &upstreams["upstreams"][0]["endpoints"][0];
    assert_eq!(
        (endpoint["address"].as_str(), endpoint["state"].as_str()),
        (Some(a.to_string().as_str()), Some("draining"))
    );
    assert!(
        gateway.stderr().contains("by=\"alice\""),
        "{}",
        gateway.stderr()
    );

    // A reload that keeps the endpoint keeps its state.
    gateway
        .apply_policy(gateway.policy_with_body(&body("timeouts = { request = \"5s\" }")))
        .await;
    assert_eq!(served_by(&gateway.url("/"), 20).await.get("a"), None);
    let response = act(gateway.admin_url(&format!("/upstreams/pool/endpoints/{b}/disable"))).await;
    assert_eq!(response.status(), 200);
    let response = act(gateway.admin_url(&format!("/upstreams/pool/endpoints/{a}/enable"))).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        served_by(&gateway.url("/"), 20).await.get("b"),
        None,
        "b is disabled"
    );
    act(gateway.admin_url(&format!("/upstreams/pool/endpoints/{b}/enable"))).await;
    let both = served_by(&gateway.url("/"), 20).await;
    assert_eq!((both.get("a"), both.get("b")), (Some(&10), Some(&10)));

    // Unknown upstream, endpoint or action: 404 with the one error shape.
    for path in [
        format!("/upstreams/nope/endpoints/{a}/drain"),
        "/upstreams/pool/endpoints/127.0.0.1:1/drain".to_owned(),
        format!("/upstreams/pool/endpoints/{a}/explode"),
    ] {
        let response = act(gateway.admin_url(&path)).await;
        assert_eq!(response.status(), 404, "{path}");
        let answer: serde_json::Value = response.json().await.unwrap();
        assert!(answer["error"].is_string() && answer["errors"].is_array());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_weight_override_changes_the_split_and_survives_reloads() {
    let a = start_echo("a").await;
    let b = start_echo("b").await;
    let gateway = Gateway::start(&pool_of_two(a, b, ""));
    let url = gateway.url("/");
    let weight_path = |addr: SocketAddr| format!("/upstreams/pool/endpoints/{addr}/weight");
    // Round robin over a cycle of the weights is exact: 40 requests are 10 cycles of 3 + 1.
    let response = act(&gateway, &weight_path(a), r#"{"weight": 3}"#).await;
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["weight_override"], 3);
    let split = served_by(&url, 40).await;
    assert_eq!((split["a"], split["b"]), (30, 10), "{split:?}");
    let upstreams = gateway.admin_json("/upstreams").await;
    let endpoint = &upstreams["upstreams"][0]["endpoints"][0];
    assert_eq!(endpoint["address"], a.to_string());
    assert_eq!(
        (
            endpoint["weight"].as_u64(),
            endpoint["weight_override"].as_u64()
        ),
        (Some(3), Some(3))
    );
    // Runtime state: the policy still says 1.
    assert_eq!(
        upstreams["upstreams"][0]["settings"]["endpoints"][0]["weight"],
        1
    );
    assert_eq!(
        upstreams["upstreams"][0]["endpoints"][1].get("weight_override"),
        None
    );
    assert!(
        gateway.stderr().contains("endpoint weight set")
            && gateway.stderr().contains("weight=3")
            && gateway.stderr().contains("by=\"bob\""),
        "{}",
        gateway.stderr()
    );

    // A reload that changes the upstream's spec builds a fresh pool: the override is set on
    // it again.
    let changed =
        pool_of_two(a, b, "").replace("endpoints = [", "connect_timeout = \"2s\"\nendpoints = [");
    gateway
        .apply_policy(gateway.policy_with_body(&changed))
        .await;
    let upstreams = gateway.admin_json("/upstreams").await;
    assert_eq!(
        upstreams["upstreams"][0]["settings"]["connect_timeout"],
        "2s"
    );
    let split = served_by(&url, 40).await;
    assert_eq!((split["a"], split["b"]), (30, 10), "{split:?}");

    // Cleared: back to the policy's weights.
    let response = act(&gateway, &weight_path(a), r#"{"weight": null}"#).await;
    assert_eq!(response.status(), 200);
    let split = served_by(&url, 40).await;
    assert_eq!((split["a"], split["b"]), (20, 20), "{split:?}");
    assert!(gateway
        .stderr()
        .contains("endpoint weight override cleared"));

    // Bad bodies: 400 with the reason; an unknown endpoint: 404.
    for body in [
        r#"{"weight": 0}"#,
        r#"{"weight": 257}"#,
        r#"{"weight": "3"}"#,
        "3",
        r#"{"w": 3}"#,
        "",
    ] {
        let response = act(&gateway, &weight_path(a), body).await;
        assert_eq!(response.status(), 400, "{body}");
        let answer: serde_json::Value = response.json().await.unwrap();
        assert!(
            answer["error"].as_str().unwrap().contains("weight"),
            "{answer}"
        );
    }
    let response = act(
        &gateway,
        "/upstreams/pool/endpoints/127.0.0.1:1/weight",
        r#"{"weight": 2}"#,
    )
    .await;
    assert_eq!(response.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_effective_policy_shows_every_default_and_loads_back() {
    let a = start_echo("a").await;
    let b = start_echo("b").await;
    let extra = r#"retry = { attempts = 2 }
timeouts = { request = "3s" }
rate_limit = { requests_per_second = 100 }
headers = { request_set = { x-env = "test" } }
fault = { delay = "1ms", delay_percent = 0.5 }"#;
    let body = pool_of_two(a, b, extra).replace(
        "endpoints = [",
        "health_check = { path = \"/\" }\nendpoints = [",
    );
    let gateway = Gateway::start(&body);
    let client = client();
    let get = |path: &str| {
        client
            .get(gateway.admin_url(path))
            .bearer_auth(TOKEN)
            .send()
    };

    // TOML by default, with the active policy's hash and version.
    let response = get("/config").await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/toml"));
    let etag = response.headers()["etag"].clone();
    let text = response.text().await.unwrap();
    let policy = get("/policy").await.unwrap();
    assert_eq!(policy.headers()["etag"], etag);
    for line in [
        "client_idle_timeout = \"1m\"",
        "path_normalization = \"strict\"",
        "connect_timeout = \"1s\"",
        "interval = \"5s\"",
        "max_requests = 1024",
        "budget_percent = 20",
        "request = \"3s\"",
        "burst = 100",
        "x-env = \"test\"",
        "delay_percent = 0.5",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }

    // `meshgate check --print` on the same file prints the same text.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args(["check", "--print"])
        .arg(&gateway.policy_path)
        .output()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(String::from_utf8_lossy(&output.stdout), text);
    assert!(String::from_utf8_lossy(&output.stderr).contains(": ok"));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args(["check", "--print", "--format", "json"])
        .arg(&gateway.policy_path)
        .output()
        .unwrap();
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();

    // JSON on asking, the same content.
    let json = gateway.admin_json("/config?format=json").await;
    assert_eq!(json, printed);
    assert_eq!(json["upstreams"][0]["circuit_breaker"]["max_pending"], 1024);
    assert_eq!(json["routes"][0]["retry"]["attempts"], 2);
    let response = get("/config?format=yaml").await.unwrap();
    assert_eq!(response.status(), 400);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert!(answer["error"].as_str().unwrap().contains("toml or json"));
    let response = client
        .get(gateway.admin_url("/config"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    // `/routes` and `/upstreams` carry the same settings.
    let routes = gateway.admin_json("/routes").await;
    assert_eq!(routes["routes"][0]["settings"], json["routes"][0]);
    assert_eq!(routes["routes"][0]["settings"]["timeouts"]["request"], "3s");
    let upstreams = gateway.admin_json("/upstreams").await;
    assert_eq!(upstreams["upstreams"][0]["settings"], json["upstreams"][0]);
    assert_eq!(
        upstreams["upstreams"][0]["settings"]["health_check"]["unhealthy_threshold"],
        3
    );

    // The effective policy, uploaded as the policy, changes nothing that would run.
    let response = client
        .put(gateway.admin_url("/policy?dry_run=true"))
        .bearer_auth(TOKEN)
        .body(text.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let dry: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        dry["changes"]["routes"]["changed"],
        serde_json::json!([]),
        "{dry}"
    );
    assert_eq!(
        dry["changes"]["upstreams"]["changed"],
        serde_json::json!([]),
        "{dry}"
    );
    assert_eq!(
        dry["changes"]["fresh_upstreams"],
        serde_json::json!([]),
        "{dry}"
    );
    gateway.apply_policy(text.clone()).await;
    let again = get("/config").await.unwrap().text().await.unwrap();
    assert_eq!(again, text);
    assert_eq!(served_by(&gateway.url("/"), 4).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unhealthy_endpoint_says_why_in_upstreams() {
    let (failing, _, _task) = start_upstream("failing", 503, Duration::ZERO).await;
    let good = start_echo("good").await;
    let dead = format!("127.0.0.1:{}", free_port());
    let gateway = Gateway::start(&format!(
        r#"
[[upstreams]]
name = "pool"
endpoints = ["{failing}", "{good}", "{dead}"]
health_check = {{ path = "/health", interval = "100ms", timeout = "100ms", unhealthy_threshold = 1 }}

[[routes]]
name = "main"
split = [{{ upstream = "pool" }}]
"#
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let endpoints = loop {
        let upstreams = gateway.admin_json("/upstreams").await;
        let endpoints = upstreams["upstreams"][0]["endpoints"]
            .as_array()
            .unwrap()
            .clone();
        if endpoints.iter().all(|e| e.get("last_check").is_some()) {
            break endpoints;
        }
        assert!(std::time::Instant::now() < deadline, "{upstreams}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let by_address = |address: &str| {
        endpoints
            .iter()
            .find(|e| e["address"] == address)
            .unwrap()
            .clone()
    };
    let failing = by_address(&failing.to_string());
    assert_eq!(failing["healthy"], false);
    assert_eq!(failing["last_check"], "/health answered 503", "{failing}");
    assert!(
        failing["last_check_at"].as_str().unwrap().ends_with('Z'),
        "{failing}"
    );
    let dead = by_address(&dead);
    assert!(
        dead["last_check"]
            .as_str()
            .unwrap()
            .starts_with("connect failed:"),
        "{dead}"
    );
    assert_eq!(by_address(&good.to_string())["last_check"], "passed");
}
