//! End to end: failover between upstreams and canaries that fail safe. Real echo upstreams,
//! killed while the gateway runs; active health checks notice, and requests go to the
//! failover upstream, or to the other side of the split.

mod common;

use std::time::{Duration, Instant};

use common::*;

const FAST_CHECK: &str = r#"health_check = { interval = "100ms", timeout = "100ms", unhealthy_threshold = 1, healthy_threshold = 1 }"#;

fn policy(primary: &str, dc2: &str, canary: &str, stable: &str) -> String {
    format!(
        r#"
[[upstreams]]
name = "primary"
endpoints = ["{primary}"]
failover = ["dc2"]
{FAST_CHECK}

[[upstreams]]
name = "dc2"
endpoints = ["{dc2}"]

[[upstreams]]
name = "canary"
endpoints = ["{canary}"]
{FAST_CHECK}

[[upstreams]]
name = "stable"
endpoints = ["{stable}"]

[[routes]]
name = "shop"
match = {{ path_prefix = "/shop" }}
split = [{{ upstream = "stable", weight = 90 }}, {{ upstream = "canary", weight = 10 }}]

[[routes]]
name = "strict"
match = {{ path_prefix = "/strict" }}
split = [{{ upstream = "stable", weight = 90 }}, {{ upstream = "canary", weight = 10 }}]
split_fallback = false

[[routes]]
name = "orders"
match = {{ path_prefix = "/" }}
split = [{{ upstream = "primary" }}]
"#
    )
}

/// Statuses and serving upstreams of `count` GETs of `path`.
async fn tally(
    gateway: &Gateway,
    path: &str,
    count: usize,
) -> std::collections::BTreeMap<String, usize> {
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..count {
        let response = client().get(gateway.url(path)).send().await.unwrap();
        let key = match response.headers().get("x-echo-server") {
            Some(server) if response.status() == 200 => server.to_str().unwrap().to_owned(),
            _ => response.status().as_str().to_owned(),
        };
        *seen.entry(key).or_default() += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_pool_fails_over_and_a_dead_canary_gives_its_share_to_the_stable_side() {
    let (primary, _, primary_task) = start_upstream("primary", 200, Duration::ZERO).await;
    let dc2 = start_echo("dc2").await;
    let (canary, _, canary_task) = start_upstream("canary", 200, Duration::ZERO).await;
    let stable = start_echo("stable").await;
    let gateway = Gateway::start(&policy(
        &primary.to_string(),
        &dc2.to_string(),
        &canary.to_string(),
        &stable.to_string(),
    ));
    assert_eq!(tally(&gateway, "/", 10).await.get("primary"), Some(&10));
    let shop = tally(&gateway, "/shop", 100).await;
    assert_eq!(
        (shop.get("stable"), shop.get("canary")),
        (Some(&90), Some(&10)),
        "{shop:?}"
    );
    let explained = gateway.admin_json("/explain?path=/").await;
    assert_eq!(explained["candidates"][0]["target"], "primary");
    assert_eq!(explained["candidates"][0]["tier"], 0);

    // The primary pool dies: its requests go to dc2, with dc2's own endpoint.
    primary_task.abort();
    wait_unhealthy_endpoint(&gateway, "primary", &primary.to_string()).await;
    let orders = tally(&gateway, "/", 50).await;
    println!("primary dead: {orders:?}");
    assert_eq!(orders.get("dc2"), Some(&50), "{orders:?}");
    let explained = gateway.admin_json("/explain?path=/").await;
    assert_eq!(explained["candidates"][0]["target"], "dc2", "{explained}");
    let upstreams = gateway.admin_json("/upstreams").await;
    assert_eq!(upstreams["upstreams"][0]["failover"][0], "dc2");
    // 10 + 100 + 50 requests so far; the last 50 orders ones name dc2.
    let records = gateway.access_records_at_least(160).await;
    let orders: Vec<_> = records.iter().filter(|r| r["route"] == "orders").collect();
    assert_eq!(orders.len(), 60);
    assert!(
        orders[10..].iter().all(|r| r["upstream"] == "dc2"),
        "{orders:?}"
    );

    // The canary dies: the shop route sends everything to stable; the strict one keeps the
    // canary's 10% and answers 503 for it.
    canary_task.abort();
    wait_unhealthy_endpoint(&gateway, "canary", &canary.to_string()).await;
    let shop = tally(&gateway, "/shop", 100).await;
    println!("canary dead, split_fallback on: {shop:?}");
    assert_eq!(shop.get("stable"), Some(&100), "{shop:?}");
    let strict = tally(&gateway, "/strict", 100).await;
    println!("canary dead, split_fallback off: {strict:?}");
    assert_eq!(
        (strict.get("stable"), strict.get("503")),
        (Some(&90), Some(&10)),
        "{strict:?}"
    );

    let metrics = gateway.metrics().await;
    let failovers = metric_sum(
        &metrics,
        "meshgate_failovers_total{to=\"dc2\",upstream=\"primary\"}",
    );
    let fallbacks = metric_sum(
        &metrics,
        "meshgate_split_fallbacks_total{route=\"shop\",upstream=\"canary\"}",
    );
    let served = metric_sum(
        &metrics,
        "meshgate_requests_total{code=\"200\",listener=\"public\",reason=\"\",route=\"orders\",upstream=\"dc2\"}",
    );
    println!("failovers {failovers}, split fallbacks {fallbacks}, orders served by dc2 {served}");
    assert_eq!(failovers, 50.0);
    assert_eq!(fallbacks, 10.0);
    assert_eq!(served, 50.0);
}

/// Acceptance: with `[server].zone` and `locality = "prefer_local"`, traffic stays in the
/// gateway's zone while at least half of its local endpoints are eligible, then spreads over
/// every zone by eligible endpoint; local endpoints are failed one by one.
#[tokio::test(flavor = "multi_thread")]
async fn local_traffic_spills_over_to_other_zones_as_local_endpoints_fail() {
    let mut local = Vec::new();
    for name in ["local-1", "local-2", "local-3"] {
        local.push(start_upstream(name, 200, Duration::ZERO).await);
    }
    let remote_1 = start_echo("remote-1").await;
    let remote_2 = start_echo("remote-2").await;
    let endpoint = |addr: std::net::SocketAddr, zone: &str| {
        format!("{{ address = \"{addr}\", zone = \"{zone}\" }}")
    };
    let endpoints = [
        endpoint(local[0].0, "eu-1a"),
        endpoint(local[1].0, "eu-1a"),
        endpoint(local[2].0, "eu-1a"),
        endpoint(remote_1, "eu-1b"),
        endpoint(remote_2, "eu-1b"),
    ]
    .join(", ");
    let gateway = Gateway::start_with_server(
        "zone = \"eu-1a\"",
        &format!(
            r#"
[[upstreams]]
name = "orders"
endpoints = [{endpoints}]
locality = "prefer_local"
min_local_percent = 60
{FAST_CHECK}

[[routes]]
name = "orders"
split = [{{ upstream = "orders" }}]
"#
        ),
    );
    let all_local = tally(&gateway, "/", 60).await;
    println!("3 of 3 local eligible: {all_local:?}");
    assert_eq!(
        ["local-1", "local-2", "local-3"].map(|n| all_local.get(n).copied()),
        [Some(20), Some(20), Some(20)],
        "{all_local:?}"
    );
    let explained = gateway.admin_json("/explain?path=/").await;
    assert_eq!(explained["candidates"][0]["zone"], "eu-1a", "{explained}");

    // 2 of 3 local (67% >= 60%): still local.
    local[0].2.abort();
    wait_unhealthy_endpoint(&gateway, "orders", &local[0].0.to_string()).await;
    let two_local = tally(&gateway, "/", 60).await;
    println!("2 of 3 local eligible: {two_local:?}");
    assert_eq!(
        (two_local.get("local-2"), two_local.get("local-3")),
        (Some(&30), Some(&30)),
        "{two_local:?}"
    );

    // 1 of 3 local (33% < 60%): every zone, by eligible endpoint.
    local[1].2.abort();
    wait_unhealthy_endpoint(&gateway, "orders", &local[1].0.to_string()).await;
    let spread = tally(&gateway, "/", 60).await;
    println!("1 of 3 local eligible: {spread:?}");
    assert_eq!(
        ["local-3", "remote-1", "remote-2"].map(|n| spread.get(n).copied()),
        [Some(20), Some(20), Some(20)],
        "{spread:?}"
    );
    let explained = gateway.admin_json("/explain?path=/").await;
    assert!(explained["candidates"][0]["zone"].is_null(), "{explained}");
    let upstreams = gateway.admin_json("/upstreams").await;
    assert_eq!(upstreams["upstreams"][0]["endpoints"][3]["zone"], "eu-1b");
}

/// Waits until `/upstreams` says `address` of `upstream` is unhealthy.
async fn wait_unhealthy_endpoint(gateway: &Gateway, upstream: &str, address: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let body = gateway.admin_json("/upstreams").await;
        let healthy = body["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == upstream)
            .and_then(|u| {
                u["endpoints"]
                    .as_array()?
                    .iter()
                    .find(|e| e["address"] == address)
                    .map(|e| e["healthy"].clone())
            });
        if healthy == Some(serde_json::Value::Bool(false)) {
            return;
        }
        assert!(Instant::now() < deadline, "{address} still healthy: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
