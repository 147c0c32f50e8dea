//! End to end: reconfiguring never blackholes a running listener, and `restart_required` says
//! what the process runs against what the policy asks, under keepalive load.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;

/// The route to `upstream`, its answers marked `x-policy: <version>`.
fn body(upstream: SocketAddr, version: &str) -> String {
    route_to(
        upstream,
        &format!("headers = {{ response_set = {{ \"x-policy\" = \"{version}\" }} }}"),
    )
}

/// The policy head with the listener moved to `listen` (and renamed to `name`).
fn moved(gateway: &Gateway, body: &str, name: &str, listen: SocketAddr) -> String {
    gateway.policy_with_body(body).replacen(
        &format!("name = \"public\"\nlisten = \"{}\"", gateway.listen),
        &format!("name = \"{name}\"\nlisten = \"{listen}\""),
        1,
    )
}

fn restart_gauge(metrics: &str, section: &str) -> Option<String> {
    let prefix = format!("meshgate_restart_required{{section=\"{section}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_listener_keeps_serving_under_load_until_the_restart() {
    let _machine = load_test_lock();
    let upstream = start_echo("echo").await;
    let gateway = Gateway::start(&body(upstream, "1"));
    let elsewhere: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();

    // Keepalive load on the running address while the listener is moved away by a PUT.
    let url = gateway.url("/");
    let load =
        tokio::task::spawn_blocking(move || run_wrk(&["-t1", "-c8", "-d3s", "--latency"], &url));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let applied = gateway
        .apply_policy(moved(&gateway, &body(upstream, "2"), "public", elsewhere))
        .await;
    assert_eq!(
        applied["restart_required"],
        serde_json::json!(["listeners"])
    );
    let output = load.await.unwrap();
    let (requests, non_2xx, socket_errors) = wrk_summary(&output);
    println!(
        "wrk across the PUT: {requests} requests, {non_2xx} non-2xx, {socket_errors} socket errors"
    );
    assert!(requests > 1000, "{output}");
    assert_eq!((non_2xx, socket_errors), (0, 0), "{output}");

    // The running address serves the new policy's routes under the running name.
    let response = client().get(gateway.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-policy"], "2");
    let records = gateway.access_records_at_least(requests as usize + 1).await;
    assert!(
        records.iter().all(|r| r["listener"] == "public"),
        "a request was served without its listener"
    );
    let routes = gateway.admin_json("/routes").await;
    let listeners = routes["listeners"].as_array().unwrap();
    println!("/routes listeners: {listeners:?}");
    assert_eq!(listeners.len(), 1);
    assert_eq!(listeners[0]["state"], "running");
    assert_eq!(listeners[0]["listen"], gateway.listen.to_string());
    assert_eq!(
        listeners[0]["on_restart"],
        format!("listens on {elsewhere}")
    );
    let explained = gateway.admin_json("/explain?path=/").await;
    assert_eq!(explained["listeners"], routes["listeners"]);
    assert_eq!(
        restart_gauge(&gateway.metrics().await, "listeners").as_deref(),
        Some("1")
    );

    // A later PUT that does not touch the listener still lists the pending change.
    let applied = gateway
        .apply_policy(moved(&gateway, &body(upstream, "3"), "public", elsewhere))
        .await;
    assert_eq!(
        applied["restart_required"],
        serde_json::json!(["listeners"])
    );
    let policy = client()
        .get(gateway.admin_url("/policy"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(policy.headers()["x-meshgate-restart-required"], "listeners");

    // A renamed listener: the running one keeps its name and the routes for every listener.
    let applied = gateway
        .apply_policy(moved(
            &gateway,
            &body(upstream, "4"),
            "edge",
            gateway.listen,
        ))
        .await;
    assert_eq!(
        applied["restart_required"],
        serde_json::json!(["listeners"])
    );
    let response = client().get(gateway.url("/")).send().await.unwrap();
    assert_eq!(response.headers()["x-policy"], "4");
    let routes = gateway.admin_json("/routes").await;
    let states: Vec<(String, String)> = routes["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["name"].as_str().unwrap().to_owned(),
                l["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("public".to_owned(), "running".to_owned()),
            ("edge".to_owned(), "pending".to_owned())
        ]
    );

    // Back to what runs: nothing is pending any more.
    let applied = gateway
        .apply_policy(gateway.policy_with_body(&body(upstream, "5")))
        .await;
    assert_eq!(applied["restart_required"], serde_json::json!([]));
    assert_eq!(
        restart_gauge(&gateway.metrics().await, "listeners").as_deref(),
        Some("0")
    );
    let routes = gateway.admin_json("/routes").await;
    assert!(
        routes["listeners"][0].get("on_restart").is_none(),
        "{routes}"
    );
}

async fn rollback(gateway: &Gateway, query: &str) -> (u16, serde_json::Value) {
    let response = client()
        .post(gateway.admin_url(&format!("/policy/rollback{query}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

fn history_versions(history: &serde_json::Value) -> Vec<(u64, String, bool)> {
    history["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["version"].as_u64().unwrap(),
                e["origin"].as_str().unwrap().to_owned(),
                e["active"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// Acceptance: the last `[admin].history` applied policies are listed with version, hash,
/// time and origin; a rollback goes back to any of them as a new version; the history
/// survives a restart.
#[tokio::test(flavor = "multi_thread")]
async fn policy_history_keeps_the_last_policies_across_a_restart() {
    let upstream = start_echo("echo").await;
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let head = policy_head(listen, admin, "off").replacen(
        "token_file = \"admin.token\"\n",
        "token_file = \"admin.token\"\nhistory = 4\n",
        1,
    );
    let gateway = Gateway::start_with(dir, &(head.clone() + &body(upstream, "1")), listen, admin);
    for version in ["2", "3", "4", "5"] {
        gateway
            .apply_policy(head.clone() + &body(upstream, version))
            .await;
    }
    let history = gateway.admin_json("/policy/history").await;
    println!("history: {:?}", history_versions(&history));
    assert_eq!(
        history_versions(&history),
        [
            (5, "api".to_owned(), true),
            (4, "api".to_owned(), false),
            (3, "api".to_owned(), false),
            (2, "api".to_owned(), false)
        ],
        "the last 4 of 5, newest first"
    );
    assert!(history["history"][0]["time"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    // Back to version 3, as version 6: its routes serve again.
    let (status, applied) = rollback(&gateway, "?version=3").await;
    assert_eq!(status, 200, "{applied}");
    assert_eq!(applied["version"], 6);
    assert_eq!(applied["hash"], history["history"][2]["hash"]);
    let response = client().get(gateway.url("/")).send().await.unwrap();
    assert_eq!(response.headers()["x-policy"], "3");
    let (status, refused) = rollback(&gateway, "?version=1").await;
    assert_eq!(status, 404, "version 1 is no longer kept: {refused}");
    let (status, _) = rollback(&gateway, "?version=three").await;
    assert_eq!(status, 400);

    // A restart on the same files: the history and the version numbers go on.
    let kept = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(gateway.dir.path()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), kept.path().join(entry.file_name())).unwrap();
        }
    }
    drop(gateway);
    let policy = std::fs::read_to_string(kept.path().join("meshgate.toml")).unwrap();
    let gateway = Gateway::start_with(kept, &policy, listen, admin);
    let history = gateway.admin_json("/policy/history").await;
    println!("after the restart: {:?}", history_versions(&history));
    assert_eq!(
        history_versions(&history)[0],
        (6, "rollback".to_owned(), true)
    );
    assert_eq!(history_versions(&history).len(), 4);
    let (status, applied) = rollback(&gateway, "?version=4").await;
    assert_eq!(status, 200, "{applied}");
    assert_eq!(applied["version"], 7);
    let response = client().get(gateway.url("/")).send().await.unwrap();
    assert_eq!(response.headers()["x-policy"], "4");
    // Without a version, rollback goes to the policy applied before the active one.
    let (status, applied) = rollback(&gateway, "").await;
    assert_eq!(status, 200, "{applied}");
    let response = client().get(gateway.url("/")).send().await.unwrap();
    assert_eq!(response.headers()["x-policy"], "3");
}

/// A request in flight when a reload lands finishes under the policy it started with: its
/// response gets the old version's header rules, and the next request the new ones.
#[tokio::test(flavor = "multi_thread")]
async fn an_in_flight_request_keeps_its_snapshot_across_a_reload() {
    let (slow, counts) = common::raw::scripted_upstream(|_, _| common::raw::Reply {
        bytes: common::raw::ok_response("slow"),
        close: false,
        delay: Duration::from_millis(1500),
    })
    .await;
    let gateway = Gateway::start(&body(slow, "v1"));
    let in_flight = tokio::spawn(client().get(gateway.url("/")).send());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while counts.requests() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the request never left"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let answer = gateway
        .apply_policy(gateway.policy_with_body(&body(slow, "v2")))
        .await;
    assert_eq!(answer["version"], 2, "{answer}");
    let pinned = in_flight.await.unwrap().unwrap();
    assert_eq!(pinned.status(), 200);
    assert_eq!(pinned.headers()["x-policy"], "v1");
    let next = client().get(gateway.url("/")).send().await.unwrap();
    assert_eq!(next.headers()["x-policy"], "v2");
}

/// `trusted_proxies` applies on reload: `x-forwarded-for` from the loopback peer is not
/// believed until the peer is listed, and then names the client in the access log.
#[tokio::test(flavor = "multi_thread")]
async fn trusted_proxies_apply_on_reload() {
    let upstream = start_echo("u").await;
    let gateway = Gateway::start(&body(upstream, "v1"));
    let forwarded = |path: &'static str| {
        client()
            .get(gateway.url(path))
            .header("x-forwarded-for", "203.0.113.9")
            .send()
    };
    assert_eq!(forwarded("/untrusted").await.unwrap().status(), 200);
    let trusting = gateway.policy_with_body(&body(upstream, "v1")).replacen(
        "[server]\n",
        "[server]\ntrusted_proxies = [\"127.0.0.1\"]\n",
        1,
    );
    let answer = gateway.apply_policy(trusting).await;
    assert_eq!(
        answer["restart_required"],
        serde_json::json!([]),
        "{answer}"
    );
    assert_eq!(forwarded("/trusted").await.unwrap().status(), 200);
    let records = gateway
        .access_records_until(|r| r.iter().any(|r| r["path"] == "/trusted"))
        .await;
    let client_of = |path: &str| {
        records
            .iter()
            .find(|r| r["path"] == path)
            .map(|r| r["client"].clone())
            .unwrap()
    };
    assert_eq!(client_of("/untrusted"), "127.0.0.1");
    assert_eq!(client_of("/trusted"), "203.0.113.9");
}
