//! End to end: safe defaults for upstreams that hang or misbehave. An upstream that accepts
//! and never answers is given up on after its `read_timeout` (60 s by default, NGINX's
//! `proxy_read_timeout`) on a route without `timeouts`; a response head over
//! `[server].max_upstream_response_header_size` (64 KiB by default) is a `502`.

mod common;

use std::time::{Duration, Instant};

use common::raw::{ok_response, raw_exchange, scripted_upstream, Reply};
use common::*;

/// A GET of `path` on the gateway: status, reason header and how long it took.
async fn timed_get(gateway: &Gateway, path: &str) -> (u16, Option<String>, Duration) {
    let started = Instant::now();
    let response = reqwest::Client::builder()
        .timeout(Duration::from_secs(90))
        .build()
        .unwrap()
        .get(gateway.url(path))
        .send()
        .await
        .expect("the gateway answers before the client gives up");
    let reason = response
        .headers()
        .get("x-meshgate-reason")
        .map(|v| v.to_str().unwrap().to_owned());
    (response.status().as_u16(), reason, started.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_upstream_gets_504_after_its_read_timeout_on_a_route_without_timeouts() {
    let silent = start_silent_upstream().await;
    let gateway = Gateway::start(&format!(
        r#"
[[upstreams]]
name = "quick"
endpoints = ["{silent}"]
read_timeout = "1s"

[[routes]]
name = "main"
match = {{ path_prefix = "/" }}
split = [{{ upstream = "quick" }}]
"#
    ));
    let (status, reason, took) = timed_get(&gateway, "/x").await;
    println!("read_timeout 1s: {status} {reason:?} after {took:?}");
    assert_eq!(status, 504);
    assert_eq!(reason.as_deref(), Some("upstream-timeout"));
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let records = gateway.access_records_at_least(1).await;
    assert_eq!(records[0]["reason"], "upstream-timeout", "{records:?}");
    // The effective policy shows the key.
    let config = gateway.admin_json("/config?format=json").await;
    assert_eq!(config["upstreams"][0]["read_timeout"], "1s", "{config}");
}

#[tokio::test(flavor = "multi_thread")]
async fn by_default_a_silent_upstream_gets_504_after_60_seconds() {
    let silent = start_silent_upstream().await;
    let gateway = Gateway::start(&route_to(silent, ""));
    let config = gateway.admin_json("/config?format=json").await;
    assert_eq!(config["upstreams"][0]["read_timeout"], "1m", "{config}");
    let (status, reason, took) = timed_get(&gateway, "/x").await;
    println!("default: {status} {reason:?} after {took:?}");
    assert_eq!(status, 504);
    assert_eq!(reason.as_deref(), Some("upstream-timeout"));
    assert!(
        // 60 s, ended on a whole second of the gateway's clock (so up to a second early).
        took >= Duration::from_secs(58) && took < Duration::from_secs(75),
        "{took:?}"
    );
}

/// An answer whose head holds one header of `size` bytes.
fn answer_with_header_of(size: usize) -> Vec<u8> {
    let mut answer = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
    answer.extend(std::iter::repeat_n(b'a', size));
    answer.extend_from_slice(b"\r\ncontent-length: 2\r\n\r\nok");
    answer
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_response_head_over_the_limit_is_a_502() {
    let (upstream, _) = scripted_upstream(|_, head| {
        let size = if head.starts_with("GET /small") {
            60 * 1024
        } else if head.starts_with("GET /ok") {
            return Reply::keep(ok_response("fine"));
        } else {
            100 * 1024
        };
        Reply::keep(answer_with_header_of(size))
    })
    .await;
    let get = |path: &str| {
        format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n").into_bytes()
    };

    let gateway = Gateway::start(&route_to(upstream, ""));
    let large = raw_exchange(gateway.listen, &get("/large"), Duration::from_secs(10)).await;
    println!(
        "100 KiB head: {:?}",
        &large.text()[..large.text().len().min(300)]
    );
    assert_eq!(large.statuses(), vec![502]);
    assert_eq!(
        large.header("x-meshgate-reason").as_deref(),
        Some("upstream-bad-response")
    );
    assert!(
        !large.text().contains("aaaaaaaa"),
        "no byte of the head passes"
    );
    let small = raw_exchange(gateway.listen, &get("/small"), Duration::from_secs(10)).await;
    assert_eq!(small.statuses(), vec![200]);
    assert_eq!(small.body(), b"ok");
    let records = gateway.access_records_at_least(2).await;
    assert!(
        records
            .iter()
            .any(|r| r["reason"] == "upstream-bad-response"),
        "{records:?}"
    );
    // The gateway still serves the next request.
    let ok = raw_exchange(gateway.listen, &get("/ok"), Duration::from_secs(10)).await;
    assert_eq!(ok.statuses(), vec![200]);

    // A larger limit lets it through.
    let raised = Gateway::start_with_server(
        r#"max_upstream_response_header_size = "256KiB""#,
        &route_to(upstream, ""),
    );
    let large = raw_exchange(raised.listen, &get("/large"), Duration::from_secs(10)).await;
    assert_eq!(large.statuses(), vec![200]);
    assert_eq!(large.body(), b"ok");
}
