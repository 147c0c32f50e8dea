//! End to end: a fleet of three real gateways sharing one policy in a real three-member etcd
//! cluster on loopback. Pushes go through the real `meshgate fleet` command: a good one
//! reaches every node, one that a node refuses changes nothing anywhere, two at once give one
//! conflict; etcd stopped under load drops nothing, a node restarted without etcd serves its
//! cache, and a rollback goes back.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::etcd::EtcdCluster;
use common::fleet::*;
use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_applies_pushes_all_or_none_and_outlives_etcd() {
    let _machine = load_test_lock();
    let mut cluster = EtcdCluster::start();
    let etcd = cluster.endpoints();
    let prefix = format!("/meshgate/test-{}", free_port());
    let mut nodes = vec![
        Node::start("gw-1", &etcd, &prefix, true),
        Node::start("gw-2", &etcd, &prefix, true),
        Node::start("gw-3", &etcd, &prefix, false),
    ];
    let v1 = start_echo("v1").await;
    let v2 = start_echo("v2").await;
    let work = tempfile::tempdir().unwrap();
    // Before any push: no route.
    assert_eq!(nodes[0].served_by().await, Err(404));

    // 1. A good push reaches all three.
    let first = work.path().join("v1.toml");
    std::fs::write(&first, document(v1, false)).unwrap();
    let pushed = Instant::now();
    let output = push(&first, &etcd, &prefix);
    assert!(output.status.success(), "{}", text(&output));
    let mut last = Duration::ZERO;
    for node in &nodes {
        node.wait_served_by("v1", Duration::from_secs(5)).await;
        last = last.max(pushed.elapsed());
    }
    println!(
        "push to applied on the last of 3 nodes: {last:?} ({})",
        text(&output).trim()
    );

    // 2. A push one node refuses (a route on a listener gw-3 does not have): nothing changes.
    let before = committed_in_etcd(&cluster, &prefix);
    let refused = work.path().join("refused.toml");
    std::fs::write(&refused, document(v2, true)).unwrap();
    let output = push(&refused, &etcd, &prefix);
    let said = text(&output);
    println!("refused push: {said}");
    assert_eq!(output.status.code(), Some(1), "{said}");
    assert!(said.contains("node gw-3 refused"), "{said}");
    assert!(said.contains("fleet:14:"), "{said}");
    assert!(!said.contains("node gw-1 refused"), "{said}");
    for node in &nodes {
        assert_eq!(node.served_by().await.as_deref(), Ok("v1"));
    }
    // Nothing was committed: etcd's committed key and history are as they were.
    assert_eq!(committed_in_etcd(&cluster, &prefix), before);

    // 3. Two pushes at once: one commits, the other is told of the conflict.
    let second = work.path().join("v2.toml");
    std::fs::write(&second, document(v2, false)).unwrap();
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| push(&second, &etcd, &prefix));
        let b = scope.spawn(|| push(&first, &etcd, &prefix));
        (a.join().unwrap(), b.join().unwrap())
    });
    println!("concurrent pushes:\n{}\n{}", text(&a), text(&b));
    let outcomes = [a.status.success(), b.status.success()];
    assert_eq!(
        outcomes.iter().filter(|ok| **ok).count(),
        1,
        "{}\n{}",
        text(&a),
        text(&b)
    );
    let loser = if a.status.success() { &b } else { &a };
    assert!(text(loser).contains("conflict"), "{}", text(loser));
    let winner = if a.status.success() { "v2" } else { "v1" };
    for node in &nodes {
        node.wait_served_by(winner, Duration::from_secs(5)).await;
    }
    // Make v2 the committed document whatever won.
    let output = push(&second, &etcd, &prefix);
    assert!(output.status.success(), "{}", text(&output));
    for node in &nodes {
        node.wait_served_by("v2", Duration::from_secs(5)).await;
    }

    // 4. Status and history. A node publishes what it serves right after applying it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (status, listed) = loop {
        let status = fleet_command(&["status"], &etcd, &prefix);
        let listed = String::from_utf8_lossy(&status.stdout).into_owned();
        if !listed.contains(" yes ") || Instant::now() > deadline {
            break (status, listed);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("fleet status:\n{}", text(&status));
    assert!(status.status.success());
    for name in ["gw-1", "gw-2", "gw-3"] {
        assert!(listed.contains(name), "{listed}");
    }
    assert!(!listed.contains(" yes "), "a node lags: {listed}");
    let body = Gateway::fleet_json(nodes[1].admin).await;
    assert_eq!(body["nodes"].as_array().unwrap().len(), 3, "{body}");

    // The same through any node's admin API, with its token.
    let put = |body: String| {
        client()
            .put(format!("http://{}/fleet/policy", nodes[1].admin))
            .bearer_auth(TOKEN)
            .body(body)
            .send()
    };
    let answer = put("[[listeners]]\nname = \"x\"\n".into()).await.unwrap();
    assert_eq!(answer.status(), 400);
    let answer = put(document(v2, true)).await.unwrap();
    assert_eq!(answer.status(), 422);
    let refusal: serde_json::Value = answer.json().await.unwrap();
    println!("PUT /fleet/policy refused by a node: {refusal}");
    assert_eq!(refusal["nodes"][0]["node"], "gw-3", "{refusal}");
    let unauthorized = client()
        .put(format!("http://{}/fleet/policy", nodes[1].admin))
        .body(document(v2, false))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    let answer = put(document(v2, false)).await.unwrap();
    assert_eq!(answer.status(), 200);
    let committed: serde_json::Value = answer.json().await.unwrap();
    println!("PUT /fleet/policy: {committed}");

    // A node killed during a push: it does not answer, nothing is committed; restarted, it
    // catches up and the push goes through.
    let third = work.path().join("v1-again.toml");
    std::fs::write(&third, document(v1, false)).unwrap();
    nodes[2].kill();
    let before = committed_in_etcd(&cluster, &prefix);
    let output = fleet_command(
        &["push", third.to_str().unwrap(), "--timeout", "2s"],
        &etcd,
        &prefix,
    );
    println!(
        "push with gw-3 killed (its lease still held): {}",
        text(&output).trim()
    );
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        text(&output).contains("no answer in time from node(s) gw-3"),
        "{}",
        text(&output)
    );
    for node in &nodes[..2] {
        assert_eq!(node.served_by().await.as_deref(), Ok("v2"));
    }
    assert_eq!(committed_in_etcd(&cluster, &prefix), before);
    nodes[2].spawn();
    nodes[2].wait_served_by("v2", Duration::from_secs(5)).await;

    // 5. etcd stops under load: nothing fails, the policy stays.
    let load = {
        let url = nodes[0].url("/");
        std::thread::spawn(move || run_wrk(&["-t1", "-c8", "-d3s"], &url))
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.stop();
    let output = load.join().unwrap();
    let (requests, non_2xx, socket_errors) = wrk_summary(&output);
    println!("etcd stopped under wrk: {requests} requests, {non_2xx} non-2xx, {socket_errors} socket errors");
    assert!(requests > 1000, "{output}");
    assert_eq!((non_2xx, socket_errors), (0, 0), "{output}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut connected = 1.0;
    while connected != 0.0 && Instant::now() < deadline {
        connected = metric_sum(
            &metrics_at(nodes[0].admin).await,
            "meshgate_fleet_connected",
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(connected, 0.0);

    // 6. A node restarted while etcd is down serves its cache, and says so.
    nodes[2].kill();
    nodes[2].spawn();
    assert_eq!(nodes[2].served_by().await.as_deref(), Ok("v2"));
    let ready = nodes[2].readyz().await;
    println!("/readyz of a node restarted without etcd: {ready:?}");
    assert!(ready.contains("cached fleet document version"), "{ready}");

    // 7. etcd back: a rollback to the first document reaches every node.
    cluster.restart();
    let output = fleet_command(&["rollback", "--to", "1"], &etcd, &prefix);
    println!("rollback: {}", text(&output).trim());
    assert!(output.status.success(), "{}", text(&output));
    for node in &nodes {
        let took = node.wait_served_by("v1", Duration::from_secs(15)).await;
        println!("{} back on v1 after {took:?}", node.name);
    }
    let history = fleet_command(&["history"], &etcd, &prefix);
    println!("fleet history:\n{}", text(&history));

    // 8. Status with a node down.
    nodes[1].kill();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let status = fleet_command(&["status"], &etcd, &prefix);
    let listed = String::from_utf8_lossy(&status.stdout).into_owned();
    println!("fleet status with gw-2 down:\n{listed}");
    let gw2 = listed.lines().find(|l| l.starts_with("gw-2")).unwrap();
    assert!(gw2.contains("down"), "{listed}");
}

impl Gateway {
    /// `GET /fleet` on the admin API at `admin`.
    async fn fleet_json(admin: SocketAddr) -> serde_json::Value {
        client()
            .get(format!("http://{admin}/fleet"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// Pushes `file` with `meshgate fleet push -c POLICY` (etcd, prefix, TLS and credentials from
/// a node's `[fleet]`).
fn push_as(file: &std::path::Path, policy: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args(["fleet", "push", file.to_str().unwrap(), "-c"])
        .arg(policy)
        .output()
        .unwrap()
}

/// etcd over TLS that asks for client certificates: a node with `[fleet].tls` joins and
/// applies a push; without its client certificate, nothing reaches etcd.
#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_over_etcd_with_tls_and_client_certificates() {
    let pki = tempfile::tempdir().unwrap();
    let ca = common::pki::Authority::new(pki.path(), "etcd-ca");
    let tls = common::etcd::EtcdTls {
        ca: ca.file.clone(),
        server: ca.server(pki.path(), "etcd", "etcd", &["localhost"]),
        client: ca.client(pki.path(), "etcdctl", "spiffe://test/etcdctl", false),
    };
    let cluster = EtcdCluster::single(Some(tls));
    let etcd = cluster.endpoints();
    let prefix = format!("/meshgate/tls-{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let node_cert = ca.client(dir.path(), "gw-1", "spiffe://test/gw-1", false);
    let keys = format!(
        "tls = {{ ca = \"{}\", cert = \"{}\", key = \"{}\" }}",
        ca.file.display(),
        node_cert.cert.display(),
        node_cert.key.display()
    );
    let node = Node::start_in(dir, "gw-1", &etcd, &prefix, false, &keys);
    let v1 = start_echo("v1").await;
    let file = node.dir.path().join("fleet-doc.toml");
    std::fs::write(&file, document(v1, false)).unwrap();
    let output = push_as(&file, &node.policy_path());
    assert!(output.status.success(), "{}", text(&output));
    let took = node.wait_served_by("v1", Duration::from_secs(10)).await;
    println!("etcd over TLS with client certificates: applied {took:?} after the push");

    // Trusting etcd's CA but without a client certificate, etcd refuses the connection.
    let anonymous = pki.path().join("anonymous.toml");
    std::fs::write(
        &anonymous,
        format!(
            "version = 1\n[fleet]\netcd = [\"{}\"]\nprefix = \"{prefix}\"\nnode = \"cli\"\ntls = {{ ca = \"{}\" }}\n",
            etcd[0],
            ca.file.display()
        ),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args(["fleet", "status", "-c"])
        .arg(&anonymous)
        .output()
        .unwrap();
    println!(
        "status without a client certificate: {}",
        text(&output).trim()
    );
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
}

/// etcd's user/password auth: a node with `username` and `password_file` joins and applies a
/// push; a push without the credentials is refused by etcd.
#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_over_etcd_with_user_and_password() {
    let mut cluster = EtcdCluster::single(None);
    cluster.enable_auth("s3cret-fleet-password");
    let etcd = cluster.endpoints();
    let prefix = format!("/meshgate/auth-{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("etcd.password"), "s3cret-fleet-password\n").unwrap();
    let keys = "username = \"root\"\npassword_file = \"etcd.password\"\nhistory = 2";
    let node = Node::start_in(dir, "gw-1", &etcd, &prefix, false, keys);
    let v1 = start_echo("v1").await;
    let file = node.dir.path().join("fleet-doc.toml");
    std::fs::write(&file, document(v1, false)).unwrap();
    let output = push_as(&file, &node.policy_path());
    assert!(output.status.success(), "{}", text(&output));
    let took = node.wait_served_by("v1", Duration::from_secs(10)).await;
    println!("etcd with user/password auth: applied {took:?} after the push");
    // history = 2: after three pushes, the last two are kept.
    for _ in 0..2 {
        let output = push_as(&file, &node.policy_path());
        assert!(output.status.success(), "{}", text(&output));
    }
    let history = Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args(["fleet", "history", "-c"])
        .arg(node.policy_path())
        .output()
        .unwrap();
    let kept: Vec<String> = String::from_utf8_lossy(&history.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    println!("history = 2 after three pushes: {kept:?}");
    assert_eq!(kept, ["2", "3"], "{}", text(&history));
    let output = push(&file, &etcd, &prefix);
    println!("push without credentials: {}", text(&output).trim());
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
}

/// Acceptance (item 6): a global rate limit in the fleet document, with its Redis store, is
/// shared by the nodes as it is by gateways configured by hand: two nodes under wrk admit
/// 100 × seconds + burst between them, within ±10%.
#[tokio::test(flavor = "multi_thread")]
async fn a_global_limit_in_the_fleet_document_is_shared_by_the_nodes() {
    let _machine = load_test_lock();
    let cluster = EtcdCluster::single(None);
    let etcd = cluster.endpoints();
    let prefix = format!("/meshgate/limits-{}", free_port());
    let redis = Redis::start(None);
    let (upstream, config, _task) = start_upstream("u", 200, Duration::ZERO).await;
    let nodes = [
        Node::start("gw-1", &etcd, &prefix, false),
        Node::start("gw-2", &etcd, &prefix, false),
    ];
    let doc = format!(
        r#"[telemetry]
access_log = "off"

[rate_limit_store]
redis = "{}"

[[upstreams]]
name = "orders"
endpoints = ["{upstream}"]

[[routes]]
name = "orders"
split = [{{ upstream = "orders" }}]
rate_limit = {{ requests_per_second = 100, burst = 20, key = "route", scope = "global" }}
"#,
        redis.url()
    );
    let file = nodes[0].dir.path().join("limits.toml");
    std::fs::write(&file, doc).unwrap();
    let output = push(&file, &etcd, &prefix);
    assert!(output.status.success(), "{}", text(&output));
    for node in &nodes {
        node.wait_served_by("u", Duration::from_secs(10)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = config.requests.load(std::sync::atomic::Ordering::Relaxed) as f64;
    let started = Instant::now();
    let runs: Vec<_> = nodes
        .iter()
        .map(|node| {
            let url = node.url("/");
            std::thread::spawn(move || run_wrk(&["-t1", "-c4", "-d5s"], &url))
        })
        .collect();
    let mut total = 0;
    for run in runs {
        let output = run.join().unwrap();
        let (requests, _, socket_errors) = wrk_summary(&output);
        assert_eq!(socket_errors, 0, "{output}");
        total += requests;
    }
    let seconds = started.elapsed().as_secs_f64();
    let admitted = config.requests.load(std::sync::atomic::Ordering::Relaxed) as f64 - before;
    let expected = 100.0 * seconds + 20.0;
    println!("two fleet nodes, one global limit: admitted {admitted} of {total} in {seconds:.2}s, expected {expected:.0}");
    assert!(
        (admitted - expected).abs() <= expected * 0.10,
        "admitted {admitted}, expected {expected:.0} ± 10%"
    );
}

/// What etcd holds as committed under `prefix`: the committed key's value and the history's
/// keys, read from etcd itself rather than from what one node serves.
fn committed_in_etcd(cluster: &EtcdCluster, prefix: &str) -> (String, String) {
    let read = |args: &[&str]| {
        let output = cluster.etcdctl(args);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let committed = read(&["get", &format!("{prefix}/committed"), "--print-value-only"]);
    let history = read(&[
        "get",
        &format!("{prefix}/history/"),
        "--prefix",
        "--keys-only",
    ]);
    assert!(!committed.is_empty(), "nothing committed under {prefix}");
    (committed, history)
}
