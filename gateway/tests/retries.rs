//! End to end: each documented retry trigger, the default list, `per_try_timeout`,
//! `retry_non_idempotent`, backoff bounded by the request timeout, and the retry buffer,
//! against scripted upstreams that fail the first try and answer the second.

mod common;

use std::time::{Duration, Instant};

use common::raw::*;
use common::*;

const ANSWER_409: &[u8] = b"HTTP/1.1 409 Conflict\r\ncontent-length: 0\r\n\r\n";
const ANSWER_500: &[u8] = b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n";
const ANSWER_502: &[u8] = b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n";
const ANSWER_503: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n";

/// An upstream whose first request gets `first` (then the connection closes) and every later
/// one `200 ok`.
async fn fails_once(first: &'static [u8]) -> (std::net::SocketAddr, Counts) {
    scripted_upstream(move |n, _| match n {
        0 => Reply::close(first),
        _ => Reply::keep(ok_response("ok")),
    })
    .await
}

/// One upstream `name` at `addr`, and a route `name` on `/name` to it with `retry`.
fn retried_route(name: &str, addr: std::net::SocketAddr, retry: &str, extra: &str) -> String {
    format!(
        r#"
[[upstreams]]
name = "{name}"
endpoints = ["{addr}"]

[[routes]]
name = "{name}"
match = {{ path_prefix = "/{name}" }}
split = [{{ upstream = "{name}" }}]
retry = {{ {retry} }}
{extra}
"#
    )
}

async fn status_of(gateway: &Gateway, path: &str) -> u16 {
    client()
        .get(gateway.url(path))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// `reset`, `gateway-error` and a status code retry what they name and nothing else; a route
/// without `on` retries resets, refusals and 502/503/504, but not a 500 or a 409.
#[tokio::test(flavor = "multi_thread")]
async fn each_retry_trigger_retries_what_it_names() {
    let (reset, reset_counts) = fails_once(b"").await;
    let (gw_error, gw_error_counts) = fails_once(ANSWER_502).await;
    let (server_error, server_error_counts) = fails_once(ANSWER_500).await;
    let (conflict, conflict_counts) = fails_once(ANSWER_409).await;
    let (not_conflict, not_conflict_counts) = fails_once(ANSWER_503).await;
    let (default_reset, default_reset_counts) = fails_once(b"").await;
    let (default_503, default_503_counts) = fails_once(ANSWER_503).await;
    let (default_500, default_500_counts) = fails_once(ANSWER_500).await;
    let (default_409, default_409_counts) = fails_once(ANSWER_409).await;
    let fast = "attempts = 1, backoff = \"1ms\", budget_percent = 100";
    let body = [
        retried_route("reset", reset, &format!("{fast}, on = [\"reset\"]"), ""),
        retried_route(
            "gwerror",
            gw_error,
            &format!("{fast}, on = [\"gateway-error\"]"),
            "",
        ),
        retried_route(
            "gw500",
            server_error,
            &format!("{fast}, on = [\"gateway-error\"]"),
            "",
        ),
        retried_route("status", conflict, &format!("{fast}, on = [409]"), ""),
        retried_route("other503", not_conflict, &format!("{fast}, on = [409]"), ""),
        retried_route("dreset", default_reset, fast, ""),
        retried_route("d503", default_503, fast, ""),
        retried_route("d500", default_500, fast, ""),
        retried_route("d409", default_409, fast, ""),
    ]
    .concat();
    let gateway = Gateway::start(&body);
    let cases: [(&str, u16, &Counts, usize); 9] = [
        ("/reset", 200, &reset_counts, 2),
        ("/gwerror", 200, &gw_error_counts, 2),
        ("/gw500", 500, &server_error_counts, 1),
        ("/status", 200, &conflict_counts, 2),
        ("/other503", 503, &not_conflict_counts, 1),
        ("/dreset", 200, &default_reset_counts, 2),
        ("/d503", 200, &default_503_counts, 2),
        ("/d500", 500, &default_500_counts, 1),
        ("/d409", 409, &default_409_counts, 1),
    ];
    for (path, status, counts, tries) in cases {
        assert_eq!(status_of(&gateway, path).await, status, "GET {path}");
        assert_eq!(counts.requests(), tries, "tries of GET {path}");
    }
    // The series exists at 0 from the start: the count must have moved.
    let metrics = gateway.metrics().await;
    assert!(
        metric_sum(&metrics, "meshgate_retries_total{route=\"reset\"") >= 1.0,
        "{metrics}"
    );
}

/// `refused` retries a connection refused by a dead endpoint on another endpoint.
#[tokio::test(flavor = "multi_thread")]
async fn refused_connections_are_retried_on_another_endpoint() {
    let dead = format!("127.0.0.1:{}", free_port());
    let (live, counts) = scripted_upstream(|_, _| Reply::keep(ok_response("ok"))).await;
    let gateway = Gateway::start(&format!(
        r#"
[[upstreams]]
name = "pool"
endpoints = ["{dead}", "{live}"]

[[routes]]
name = "main"
split = [{{ upstream = "pool" }}]
retry = {{ attempts = 1, on = ["refused"], backoff = "1ms" }}
"#
    ));
    for i in 0..10 {
        assert_eq!(status_of(&gateway, "/").await, 200, "GET {i}");
    }
    assert_eq!(counts.requests(), 10);
    let retried = gateway
        .wait_for_metric(
            "meshgate_retries_total{route=\"main\"",
            4.0,
            Duration::from_secs(2),
        )
        .await;
    assert!(
        retried >= 4.0,
        "round robin sent {retried} of 10 to the dead one"
    );
}

/// A try slower than `per_try_timeout` is abandoned and retried; without a matching trigger
/// the client gets `504` when the try runs out, long before the upstream would answer.
#[tokio::test(flavor = "multi_thread")]
async fn per_try_timeout_abandons_a_slow_try() {
    let slow_first = |n: usize, _: &str| match n {
        0 => Reply {
            bytes: ok_response("late"),
            close: true,
            delay: Duration::from_secs(3),
        },
        _ => Reply::keep(ok_response("ok")),
    };
    let (retried, retried_counts) = scripted_upstream(slow_first).await;
    let (unretried, unretried_counts) = scripted_upstream(slow_first).await;
    let body = retried_route(
        "retried",
        retried,
        "attempts = 1, on = [\"reset\"], per_try_timeout = \"300ms\", backoff = \"1ms\"",
        "",
    ) + &retried_route(
        "unretried",
        unretried,
        "attempts = 1, on = [409], per_try_timeout = \"300ms\"",
        "",
    );
    let gateway = Gateway::start(&body);
    let started = Instant::now();
    let response = client().get(gateway.url("/retried")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "ok");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(retried_counts.requests(), 2);
    let started = Instant::now();
    let response = client()
        .get(gateway.url("/unretried"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(unretried_counts.requests(), 1);
}

/// `retry_non_idempotent = true` retries a POST that was sent and failed, with its body.
#[tokio::test(flavor = "multi_thread")]
async fn retry_non_idempotent_retries_a_sent_post_with_its_body() {
    let (upstream, counts) = fails_once(ANSWER_503).await;
    let gateway = Gateway::start(&retried_route(
        "orders",
        upstream,
        "attempts = 1, on = [\"5xx\"], backoff = \"1ms\", retry_non_idempotent = true",
        "",
    ));
    let response = client()
        .post(gateway.url("/orders"))
        .body("x".repeat(1000))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        counts.bodies(),
        vec![1000, 1000],
        "each try carried the body"
    );
}

/// A body larger than the 64 KiB retry buffer is sent once: its failure goes back to the
/// client, while a small body on the same route is retried.
#[tokio::test(flavor = "multi_thread")]
async fn a_body_over_the_retry_buffer_is_not_retried() {
    let failing = |n: usize, _: &str| match n {
        0 => Reply::close(ANSWER_503),
        _ => Reply::keep(ok_response("ok")),
    };
    let (large, large_counts) = scripted_upstream(failing).await;
    let (small, small_counts) = scripted_upstream(failing).await;
    let retry = "attempts = 1, on = [\"5xx\"], backoff = \"1ms\", retry_non_idempotent = true";
    let gateway = Gateway::start(
        &(retried_route("large", large, retry, "") + &retried_route("small", small, retry, "")),
    );
    let large_body = 100 * 1024;
    let response = client()
        .put(gateway.url("/large"))
        .body(vec![b'l'; large_body])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(large_counts.bodies(), vec![large_body]);
    let response = client()
        .put(gateway.url("/small"))
        .body(vec![b's'; 60 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(small_counts.bodies(), vec![60 * 1024, 60 * 1024]);
}

/// Backoff never runs past the request timeout: a long backoff is cut short and the client
/// gets `504 upstream-timeout` when the request's time is up.
#[tokio::test(flavor = "multi_thread")]
async fn backoff_is_bounded_by_the_request_timeout() {
    let (upstream, counts) = scripted_upstream(|_, _| Reply::keep(ANSWER_503)).await;
    let gateway = Gateway::start(&retried_route(
        "main",
        upstream,
        "attempts = 3, on = [\"5xx\"], backoff = \"20s\", budget_percent = 100",
        "timeouts = { request = \"600ms\" }",
    ));
    let started = Instant::now();
    let response = client().get(gateway.url("/main")).send().await.unwrap();
    let took = started.elapsed();
    assert_eq!(response.status(), 504);
    assert_eq!(response.headers()["x-meshgate-reason"], "upstream-timeout");
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(1500),
        "took {took:?}"
    );
    assert!(counts.requests() <= 3, "{} tries", counts.requests());
}
