//! End to end: each circuit-breaker limit (`max_connections`, `max_pending`, `max_retries`),
//! outlier ejection's expiry, probation and `max_ejection`, and TCP health checks that stop
//! when a reload removes their upstream.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::raw::*;
use common::*;

const ANSWER_500: &[u8] = b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n";
const ANSWER_503: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n";

fn pool_route(endpoints: &[SocketAddr], upstream_extra: &str, route_extra: &str) -> String {
    let endpoints: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        r#"
[[upstreams]]
name = "pool"
endpoints = [{}]
{upstream_extra}

[[routes]]
name = "main"
split = [{{ upstream = "pool" }}]
{route_extra}
"#,
        endpoints.join(", ")
    )
}

/// The status of a GET and the overflow limit it names, if any.
async fn get(url: String) -> (u16, Option<String>, Duration) {
    let started = Instant::now();
    let response = client().get(url).send().await.unwrap();
    let overflow = response
        .headers()
        .get("x-meshgate-overflow")
        .map(|v| v.to_str().unwrap().to_owned());
    (response.status().as_u16(), overflow, started.elapsed())
}

async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Over `max_connections` connections in use, a request is refused at once with
/// `x-meshgate-overflow: max_connections`; the admitted ones are served.
#[tokio::test(flavor = "multi_thread")]
async fn max_connections_refuses_a_request_over_the_connections_in_use() {
    let (slow, counts) = scripted_upstream(|_, _| Reply {
        bytes: ok_response("slow"),
        close: false,
        delay: Duration::from_millis(1500),
    })
    .await;
    let gateway = Gateway::start(&pool_route(
        &[slow],
        "circuit_breaker = { max_connections = 2 }",
        "",
    ));
    let admitted: Vec<_> = (0..2)
        .map(|_| tokio::spawn(get(gateway.url("/"))))
        .collect();
    wait_until("two connections in use", Duration::from_secs(5), || {
        counts.requests() == 2
    })
    .await;
    for _ in 0..4 {
        let (status, overflow, took) = get(gateway.url("/")).await;
        assert_eq!(status, 503);
        assert_eq!(overflow.as_deref(), Some("max_connections"));
        assert!(took < Duration::from_millis(500), "took {took:?}");
    }
    for call in admitted {
        assert_eq!(call.await.unwrap().0, 200);
    }
    assert_eq!(counts.requests(), 2);
}

/// An endpoint whose listen queue is full: the kernel drops new SYNs, so connecting hangs.
/// Returns the listener (keep it) and the connections that fill its queue.
fn endpoint_that_never_connects() -> (socket2::Socket, Vec<std::net::TcpStream>, SocketAddr) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(stream) => fillers.push(stream),
            Err(_) => return (socket, fillers, addr),
        }
    }
    panic!("the listen queue of {addr} never filled");
}

/// Over `max_pending` tries waiting for a connection, a request is refused at once with
/// `x-meshgate-overflow: max_pending`.
#[tokio::test(flavor = "multi_thread")]
async fn max_pending_refuses_a_request_over_the_tries_waiting_to_connect() {
    let (_listener, _fillers, hanging) = endpoint_that_never_connects();
    let gateway = Gateway::start(&pool_route(
        &[hanging],
        "connect_timeout = \"3s\"\ncircuit_breaker = { max_pending = 1 }",
        "",
    ));
    let waiting = tokio::spawn(get(gateway.url("/")));
    let deadline = Instant::now() + Duration::from_secs(5);
    while gateway.admin_json("/upstreams").await["upstreams"][0]["circuit_breaker"]["pending"] != 1
    {
        assert!(
            Instant::now() < deadline,
            "the first try never waited to connect"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..3 {
        let (status, overflow, took) = get(gateway.url("/")).await;
        assert_eq!(status, 503);
        assert_eq!(overflow.as_deref(), Some("max_pending"));
        assert!(took < Duration::from_millis(500), "took {took:?}");
    }
    let (status, _, took) = waiting.await.unwrap();
    assert_eq!(status, 502, "the waiting try failed to connect");
    assert!(took >= Duration::from_millis(2500), "took {took:?}");
}

/// Over `max_retries` retries in flight, a retry is not made: the client gets the failure of
/// its try, and the upstream never sees the retry.
#[tokio::test(flavor = "multi_thread")]
async fn max_retries_returns_the_failure_of_a_retry_over_the_limit() {
    let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let script_seen = seen.clone();
    // Each path fails its first try and is answered slowly on its retry.
    let (upstream, _counts) = scripted_upstream(move |_, head| {
        let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
        let mut seen = script_seen.lock().unwrap();
        let times = seen.entry(path).or_default();
        *times += 1;
        if *times == 1 {
            Reply::keep(ANSWER_503)
        } else {
            Reply {
                bytes: ok_response("retried"),
                close: false,
                delay: Duration::from_millis(1500),
            }
        }
    })
    .await;
    let gateway = Gateway::start(&pool_route(
        &[upstream],
        "circuit_breaker = { max_retries = 1 }",
        "retry = { attempts = 1, on = [\"5xx\"], backoff = \"1ms\", budget_percent = 100 }",
    ));
    let first = tokio::spawn(get(gateway.url("/first")));
    wait_until("the first retry in flight", Duration::from_secs(5), || {
        seen.lock().unwrap().get("/first") == Some(&2)
    })
    .await;
    let (status, _, took) = get(gateway.url("/second")).await;
    assert_eq!(status, 503, "the try's own failure");
    assert!(took < Duration::from_millis(800), "took {took:?}");
    assert_eq!(
        seen.lock().unwrap().get("/second"),
        Some(&1),
        "the retry over max_retries was made"
    );
    assert_eq!(first.await.unwrap().0, 200);
    let state = gateway.admin_json("/upstreams").await;
    assert_eq!(
        state["upstreams"][0]["circuit_breaker"]["overflows_total"], 1,
        "{state}"
    );
}

/// An ejection ends after `base_ejection` × its number, at most `max_ejection`, and the
/// endpoint comes back on probation: its first failure ejects it again.
#[tokio::test(flavor = "multi_thread")]
async fn ejections_expire_grow_to_max_ejection_and_come_back_on_probation() {
    let (good, _, _good_task) = start_upstream("good", 200, Duration::ZERO).await;
    let bad_times: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let script_times = bad_times.clone();
    let (bad, _) = scripted_upstream(move |_, _| {
        script_times.lock().unwrap().push(Instant::now());
        Reply::keep(ANSWER_500)
    })
    .await;
    let gateway = Gateway::start(&pool_route(
        &[good, bad],
        "[upstreams.outlier_detection]\nconsecutive_failures = 3\nbase_ejection = \"300ms\"\nmax_ejection = \"600ms\"\nmax_ejection_percent = 50",
        "",
    ));
    let client = client();
    let until = Instant::now() + Duration::from_millis(3200);
    while Instant::now() < until {
        client.get(gateway.url("/")).send().await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let times = bad_times.lock().unwrap().clone();
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    let long: Vec<Duration> = gaps
        .iter()
        .copied()
        .filter(|gap| *gap > Duration::from_millis(150))
        .collect();
    println!("gaps between the bad endpoint's requests: {gaps:?}");
    // Three failures eject it; after that each return is one request (probation).
    assert!(
        gaps[..2]
            .iter()
            .all(|gap| *gap < Duration::from_millis(150)),
        "{gaps:?}"
    );
    assert_eq!(
        gaps.len(),
        2 + long.len(),
        "more than one request per probation: {gaps:?}"
    );
    assert!(long.len() >= 3, "{gaps:?}");
    let ms = |d: &Duration| d.as_millis();
    assert!(
        (300..550).contains(&ms(&long[0])),
        "first ejection {long:?}"
    );
    assert!(
        (600..850).contains(&ms(&long[1])),
        "second ejection {long:?}"
    );
    // Uncapped, the third would last 900 ms.
    assert!(
        (600..850).contains(&ms(&long[2])),
        "third ejection {long:?}"
    );
    // The first three failures ejected it once; each return after that ejected it again.
    let state = gateway.admin_json("/upstreams").await;
    let bad_state = state["upstreams"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == bad.to_string().as_str())
        .unwrap();
    assert_eq!(bad_state["ejections"], long.len() + 1, "{state}");
}

/// TCP health checks (no `path`) connect to every endpoint each `interval`, and stop when a
/// reload removes the upstream.
#[tokio::test(flavor = "multi_thread")]
async fn tcp_health_checks_run_and_stop_when_the_upstream_is_removed() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let checked = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    let (serving, _) = scripted_upstream(|_, _| Reply::keep(ok_response("ok"))).await;
    let checked_upstream = format!(
        "\n[[upstreams]]\nname = \"checked\"\nendpoints = [\"{checked}\"]\nhealth_check = {{ interval = \"100ms\", timeout = \"100ms\" }}\n\n[[routes]]\nname = \"checked\"\nmatch = {{ path_prefix = \"/checked\" }}\nsplit = [{{ upstream = \"checked\" }}]\n"
    );
    let base = pool_route(&[serving], "", "");
    let gateway = Gateway::start(&(checked_upstream + &base));
    let started = Instant::now();
    wait_until("five checks", Duration::from_secs(5), || {
        connections.load(Ordering::SeqCst) >= 5
    })
    .await;
    let per_check = started.elapsed() / 5;
    assert!(
        per_check >= Duration::from_millis(60),
        "checks every {per_check:?}"
    );
    gateway.apply_policy(gateway.policy_with_body(&base)).await;
    // A check already under way may still land; then none.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after_reload = connections.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        connections.load(Ordering::SeqCst),
        after_reload,
        "checks went on after the upstream was removed"
    );
}
