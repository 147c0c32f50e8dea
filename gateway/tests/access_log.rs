//! End to end: the access log's targets (`stdout`, `off`, a file) and their change on reload,
//! a log file moved away by logrotate being reopened, and a stuck writer dropping lines
//! (counted) while requests go on at full speed.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

fn lines_of(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

async fn wait_lines(path: &Path, at_least: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines = lines_of(path);
        if lines.len() >= at_least {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} has {} lines, not {at_least}",
            path.display(),
            lines.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn get_ok(gateway: &Gateway, path: &str) {
    let response = client().get(gateway.url(path)).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

/// `stdout` writes one JSON object per request to stdout; a reload to `off` stops it, and a
/// reload to a file sends the next requests there.
#[tokio::test(flavor = "multi_thread")]
async fn stdout_off_and_a_file_take_effect_on_reload() {
    let upstream = start_echo("u").await;
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let stdout_path = dir.path().join("stdout.log");
    let file_path = dir.path().join("requests.log");
    let stdout = std::fs::File::create(&stdout_path).unwrap();
    let body = route_to(upstream, "");
    let policy = |target: &str| policy_head(listen, admin, target) + &body;
    let gateway = Gateway::start_with_stdout(dir, &policy("stdout"), listen, admin, stdout);
    for i in 0..3 {
        get_ok(&gateway, &format!("/stdout/{i}")).await;
    }
    let lines = wait_lines(&stdout_path, 3).await;
    assert_eq!(lines[2]["path"], "/stdout/2");
    assert_eq!(lines[2]["route"], "main");

    gateway.apply_policy(policy("off")).await;
    for i in 0..3 {
        get_ok(&gateway, &format!("/off/{i}")).await;
    }
    gateway
        .apply_policy(policy(file_path.to_str().unwrap()))
        .await;
    get_ok(&gateway, "/file").await;
    let in_file = wait_lines(&file_path, 1).await;
    assert_eq!(in_file.len(), 1, "{in_file:?}");
    assert_eq!(in_file[0]["path"], "/file");
    let on_stdout = lines_of(&stdout_path);
    assert_eq!(on_stdout.len(), 3, "lines written while off: {on_stdout:?}");
}

/// Moving the log file away (logrotate without `copytruncate`) makes the gateway open a new
/// file at the path within about a second; no line is lost between the two.
#[tokio::test(flavor = "multi_thread")]
async fn a_log_file_moved_away_is_reopened() {
    let upstream = start_echo("u").await;
    let gateway = Gateway::start(&route_to(upstream, ""));
    let log = gateway.dir.path().join("access.log");
    let rotated = gateway.dir.path().join("access.log.1");
    get_ok(&gateway, "/before").await;
    wait_lines(&log, 1).await;
    std::fs::rename(&log, &rotated).unwrap();
    let mut sent = 1;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !log.exists() {
        assert!(Instant::now() < deadline, "the log was not reopened");
        get_ok(&gateway, &format!("/after/{sent}")).await;
        sent += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    get_ok(&gateway, "/last").await;
    sent += 1;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let old = lines_of(&rotated);
        let new = lines_of(&log);
        if old.len() + new.len() == sent {
            assert_eq!(new.last().unwrap()["path"], "/last");
            assert_eq!(old[0]["path"], "/before");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{sent} requests, {} + {} lines",
            old.len(),
            new.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        gateway.stderr().contains("access log reopened"),
        "{}",
        gateway.stderr()
    );
}

/// A stdout nobody reads blocks the writer thread: lines beyond the queue are dropped and
/// counted in `meshgate_access_log_dropped_total`, and requests never wait for it.
#[tokio::test(flavor = "multi_thread")]
async fn a_stuck_writer_drops_lines_and_counts_them_while_requests_go_on() {
    let _lock = load_test_lock();
    let upstream = start_echo("u").await;
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policy = policy_head(listen, admin, "stdout") + &route_to(upstream, "");
    // The pipe's read end stays open in this process, and is never read.
    let gateway = Gateway::start_with_stdout(dir, &policy, listen, admin, Stdio::piped());
    let output = tokio::task::spawn_blocking({
        let url = gateway.url("/");
        move || run_wrk(&["-t1", "-c16", "-d6s"], &url)
    })
    .await
    .unwrap();
    let (requests, bad, errors) = wrk_summary(&output);
    println!("{output}");
    assert_eq!((bad, errors), (0, 0), "{output}");
    // Over the pipe's buffer and the 32,768-line queue, by a margin.
    assert!(requests > 40_000, "only {requests} requests: {output}");
    let dropped = gateway
        .wait_for_metric(
            "meshgate_access_log_dropped_total",
            1.0,
            Duration::from_secs(2),
        )
        .await;
    println!("{requests} requests, {dropped} lines dropped");
    assert!(
        dropped >= (requests - 33_000) as f64 * 0.9,
        "{dropped} dropped of {requests}"
    );
    assert!(dropped < requests as f64, "{dropped} dropped of {requests}");
}
