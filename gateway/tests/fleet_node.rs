//! End to end: what a fleet node takes from the fleet, and when it is ready. A node is not
//! ready before it serves a fleet document. A fleet document is not a way to write (or read)
//! files on every node. Without
//! `[fleet].files_dir` a node refuses a fleet document that names a file, whether it comes
//! through a push or is written straight into etcd's committed key, keeps serving, and says why
//! in `/fleet`; with it, only files inside that folder (after links) are accepted.

mod common;

use std::time::{Duration, Instant};

use common::etcd::EtcdCluster;
use common::fleet::*;
use common::*;

/// `document` with `[telemetry].access_log` set to `path`.
fn logging_to(upstream: std::net::SocketAddr, path: &std::path::Path) -> String {
    document(upstream, false).replacen(
        "access_log = \"off\"",
        &format!("access_log = \"{}\"", path.display()),
        1,
    )
}

async fn fleet_status(node: &Node) -> String {
    client()
        .get(format!("http://{}/fleet", node.admin))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_document_names_no_file_outside_files_dir() {
    let mut etcd = EtcdCluster::single(None);
    let endpoints = etcd.endpoints();
    let prefix = format!("/meshgate/files-{}", free_port());
    let strict = Node::start("gw-strict", &endpoints, &prefix, false);
    let allowed_dir = tempfile::tempdir().unwrap();
    let files_dir = allowed_dir.path().join("fleet-files");
    std::fs::create_dir(&files_dir).unwrap();
    let open = Node::start_in(
        tempfile::tempdir().unwrap(),
        "gw-open",
        &endpoints,
        &prefix,
        false,
        &format!("files_dir = \"{}\"", files_dir.display()),
    );
    let v1 = start_echo("v1").await;
    let v2 = start_echo("v2").await;
    let work = tempfile::tempdir().unwrap();
    let good = work.path().join("good.toml");
    std::fs::write(&good, document(v1, false)).unwrap();
    let pushed = push(&good, &endpoints, &prefix);
    assert!(pushed.status.success(), "{}", text(&pushed));
    strict.wait_served_by("v1", Duration::from_secs(5)).await;
    open.wait_served_by("v1", Duration::from_secs(5)).await;

    // A victim's file, which the document tries to append access log lines to.
    let victim = work.path().join("victim.txt");
    std::fs::write(&victim, "precious\n").unwrap();
    let hostile = work.path().join("hostile.toml");
    std::fs::write(&hostile, logging_to(v2, &victim)).unwrap();
    let refused = push(&hostile, &endpoints, &prefix);
    let said = text(&refused);
    println!("{said}");
    assert!(!refused.status.success(), "{said}");
    assert!(said.contains("gw-strict"), "{said}");
    assert!(said.contains("telemetry.access_log"), "{said}");
    assert!(said.contains("fleet:2:"), "the document's line: {said}");
    assert!(said.contains("files_dir"), "{said}");

    // Written straight into etcd's committed key: the node refuses it, keeps serving v1, and
    // says why in /fleet.
    let committed = serde_json::json!({
        "version": 99,
        "hash": "0000",
        "text": logging_to(v2, &victim),
    });
    let put = etcd.etcdctl(&[
        "put",
        &format!("{prefix}/committed"),
        &committed.to_string(),
    ]);
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let status = fleet_status(&strict).await;
        if status.contains("telemetry.access_log") || Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("/fleet: {status}");
    assert!(status.contains("telemetry.access_log"), "{status}");
    assert!(status.contains("may not name files"), "{status}");
    for _ in 0..20 {
        assert_eq!(strict.served_by().await.as_deref(), Ok("v1"));
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert!(strict.stderr().contains("fleet: document refused"));

    // The node with `files_dir` refused it too (the victim is outside), and takes a log inside.
    let open_status = fleet_status(&open).await;
    assert!(
        open_status.contains("is outside [fleet].files_dir"),
        "{open_status}"
    );
    let inside = files_dir.join("access.log");
    let escapes = [files_dir.join("../escaped.log"), {
        let link = files_dir.join("link.log");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        link
    }];
    for (i, path) in escapes.iter().enumerate() {
        let committed = serde_json::json!({
            "version": 100 + i,
            "hash": "0000",
            "text": logging_to(v2, path),
        });
        etcd.etcdctl(&[
            "put",
            &format!("{prefix}/committed"),
            &committed.to_string(),
        ]);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(open.served_by().await.as_deref(), Ok("v1"), "{path:?}");
    }
    assert!(!allowed_dir.path().join("escaped.log").exists());
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    let committed = serde_json::json!({
        "version": 200,
        "hash": "0000",
        "text": logging_to(v2, &inside),
    });
    etcd.etcdctl(&[
        "put",
        &format!("{prefix}/committed"),
        &committed.to_string(),
    ]);
    open.wait_served_by("v2", Duration::from_secs(10)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(&inside)
        .unwrap_or_default()
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "no access log line inside files_dir"
        );
        let _ = open.served_by().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The strict node still refuses it: it has no files_dir.
    assert_eq!(strict.served_by().await.as_deref(), Ok("v1"));
    etcd.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_is_not_ready_before_it_serves_a_fleet_document() {
    let mut etcd = EtcdCluster::single(None);
    let endpoints = etcd.endpoints();
    let prefix = format!("/meshgate/ready-{}", free_port());
    let node = Node::start("gw-1", &endpoints, &prefix, false);
    let readyz = || async {
        let response = client()
            .get(format!("http://{}/readyz", node.admin))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    };
    let (status, body) = readyz().await;
    println!("before any push: {status} {body:?}");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no fleet document served yet"), "{body}");
    assert_eq!(node.served_by().await, Err(404));
    let upstream = start_echo("v1").await;
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("fleet.toml");
    std::fs::write(&file, document(upstream, false)).unwrap();
    let pushed = push(&file, &endpoints, &prefix);
    assert!(pushed.status.success(), "{}", text(&pushed));
    node.wait_served_by("v1", Duration::from_secs(5)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = readyz().await;
        if status == 200 {
            assert_eq!(body, "ready");
            break;
        }
        assert!(Instant::now() < deadline, "still {status} {body:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // `[fleet]` is static: a change in the node's file waits for a restart, and says so.
    let local = std::fs::read_to_string(node.policy_path()).unwrap();
    std::fs::write(
        node.policy_path(),
        local.replacen("[fleet]\n", "[fleet]\nhistory = 7\n", 1),
    )
    .unwrap();
    let reloaded: serde_json::Value = client()
        .post(format!("http://{}/reload", node.admin))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    println!("reload with [fleet] changed: {reloaded}");
    assert_eq!(reloaded["restart_required"], serde_json::json!(["fleet"]));
    node.wait_served_by("v1", Duration::from_secs(1)).await;
    etcd.stop();
}
