//! End to end: an upgrade under connection-per-request load, with a slow request in flight in
//! the old process: no client is refused a connection, no answer is lost, and the slow request
//! completes on the old process while the new one serves the rest.

mod common;

use std::time::{Duration, Instant};

use common::raw::{ok_response, scripted_upstream, Reply};
use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_under_connection_per_request_load_keeps_a_slow_request() {
    let _machine = load_test_lock();
    let (upstream, _) = scripted_upstream(|_, head| {
        let reply = Reply::keep(ok_response("ok"));
        if head.starts_with("GET /slow ") {
            Reply {
                delay: Duration::from_secs(3),
                ..reply
            }
        } else {
            reply
        }
    })
    .await;
    // A grace period longer than the slow request: the old process waits for it.
    let listen: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policy = policy_head(listen, admin, "off").replacen(
        "grace_period = \"1s\"",
        "grace_period = \"10s\"",
        1,
    ) + &route_to(upstream, "");
    let mut gateway = Gateway::start_with(dir, &policy, listen, admin);
    let url = gateway.url("/");
    let load = tokio::task::spawn_blocking(move || {
        run_wrk(&["-t2", "-c8", "-d6s", "-H", "Connection: close"], &url)
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    let slow_url = gateway.url("/slow");
    let slow = tokio::spawn(async move {
        let started = Instant::now();
        let response = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap()
            .get(slow_url)
            .send()
            .await;
        (response.map(|r| r.status().as_u16()), started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The new process waits for the sockets, then the old one hands them over.
    let mut new = tokio::task::block_in_place(|| gateway.spawn_upgrade());
    gateway.signal("QUIT");
    let (slow_status, slow_took) = slow.await.unwrap();
    let output = load.await.unwrap();
    let (requests, non_2xx, socket_errors) = wrk_summary(&output);
    println!(
        "wrk -c8, a connection per request, across an upgrade: {requests} requests, {non_2xx} non-2xx, {socket_errors} socket errors; the slow request: {slow_status:?} after {slow_took:?}"
    );
    assert!(
        tokio::task::block_in_place(|| gateway.wait_exit(Duration::from_secs(20))),
        "the old process exits after its slow request"
    );
    assert_eq!(slow_status.unwrap(), 200, "the slow request completed");
    assert!(slow_took >= Duration::from_secs(3));
    assert!(requests > 500, "{output}");
    assert_eq!((non_2xx, socket_errors), (0, 0), "{output}");
    assert!(matches!(new.try_wait(), Ok(None)), "the new process serves");
    assert_eq!(http_status(gateway.listen, "/"), Some(200));
}
