//! Drain, graceful shutdown and zero-drop upgrades, on the real binary.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;

/// A gateway with a 3 s grace period in front of `upstream` (every path).
fn start_with_grace(upstream: SocketAddr) -> Gateway {
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let access_log = dir.path().join("access.log");
    let policy = policy_head(listen, admin, access_log.to_str().unwrap())
        .replace("grace_period = \"1s\"", "grace_period = \"3s\"")
        + &split_policy(upstream, upstream, 1, 0);
    Gateway::start_with(dir, &policy, listen, admin)
}

/// Sends a request to a 1.5 s upstream, then ends the gateway with `end`; checks that the
/// in-flight request finishes, readiness fails, new connections are refused, and the process
/// exits on its own.
async fn ends_gracefully(end: impl FnOnce(&Gateway)) {
    let (upstream, _, _task) = start_upstream("slow", 200, Duration::from_millis(1500)).await;
    let mut gateway = start_with_grace(upstream);
    let url = gateway.url("/");
    let in_flight = tokio::spawn(async move { client().get(url).send().await.map(|r| r.status()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    end(&gateway);

    let deadline = Instant::now() + Duration::from_secs(2);
    while http_status(gateway.admin, "/readyz") != Some(503) {
        assert!(Instant::now() < deadline, "readiness still passes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while std::net::TcpStream::connect(gateway.listen).is_ok() {
        assert!(Instant::now() < deadline, "the listener still accepts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = in_flight
        .await
        .unwrap()
        .expect("the in-flight request finished");
    assert_eq!(status, 200);
    assert!(
        gateway.wait_exit(Duration::from_secs(10)),
        "the process did not exit; stderr:\n{}",
        gateway.stderr()
    );
    eprintln!("exited {:?} after the signal", started.elapsed());
}

/// Acceptance: after `/drain`, `/readyz` answers 503; listeners stop accepting and in-flight
/// requests finish.
#[tokio::test(flavor = "multi_thread")]
async fn drain_fails_readiness_and_lets_in_flight_requests_finish() {
    ends_gracefully(|gateway| {
        let response = std::process::Command::new("curl")
            .args(["-sS", "-X", "POST", "-H"])
            .arg(format!("Authorization: Bearer {TOKEN}"))
            .arg(gateway.admin_url("/drain"))
            .output()
            .unwrap();
        let body = String::from_utf8_lossy(&response.stdout);
        assert!(body.contains("\"draining\":true"), "{body}");
    })
    .await;
}

/// SIGTERM shuts down the same way.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_shuts_down_gracefully() {
    ends_gracefully(|gateway| gateway.signal("TERM")).await;
}

/// Acceptance: an upgrade (`--upgrade` plus SIGQUIT) during an 8 s `wrk -c8` run causes 0
/// errors, and the new process serves afterwards, admin API included.
#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_under_load_drops_nothing() {
    let _machine = load_test_lock();
    let upstream = start_echo("u").await;
    let mut old = start_with_grace(upstream);
    let url = old.url("/");
    let load = tokio::task::spawn_blocking(move || run_wrk(&["-t2", "-c8", "-d8s"], &url));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut new = old.spawn_upgrade();
    // The new process binds the admin port beside the old one and waits for the sockets.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        new.try_wait().unwrap().is_none(),
        "the new process is waiting"
    );
    old.signal("QUIT");
    let output = load.await.unwrap();
    eprintln!("{output}");
    let (requests, non_2xx, socket_errors) = wrk_summary(&output);
    assert!(requests > 1000, "wrk made only {requests} requests");
    assert_eq!(non_2xx, 0, "{output}");
    assert_eq!(socket_errors, 0, "{output}");
    assert!(
        old.wait_exit(Duration::from_secs(15)),
        "the old process did not exit"
    );
    // Only the new process is left to answer.
    assert!(new.try_wait().unwrap().is_none(), "the new process runs");
    assert_eq!(http_status(old.listen, "/"), Some(200));
    assert_eq!(http_status(old.admin, "/readyz"), Some(200));
    let policy = client()
        .get(old.admin_url("/policy"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(policy.status(), 200);
    let _ = new.kill();
    let _ = new.wait();
}
