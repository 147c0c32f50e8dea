//! End to end: what no proxy may do. A response is never spliced from two attempts, no work is
//! done for a client that left, an unsolicited 101 is refused, paths are normalized before
//! routing, slow clients and oversized requests are refused with the right status, and
//! pipelined requests are all answered. Upstreams and clients are raw sockets where curl or
//! hyper could not misbehave enough.

mod common;

use std::time::{Duration, Instant};

use common::raw::*;
use common::*;
use tokio::io::AsyncWriteExt;

const RETRY_ON_RESET: &str = r#"[routes.retry]
attempts = 3
on = ["connect-failure", "reset", "5xx"]
backoff = "10ms"
"#;

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n").into_bytes()
}

/// The first attempt sends half of its declared body and closes; any later one answers in full.
fn half_then_full(n: usize, _head: &str) -> Reply {
    if n == 0 {
        Reply::close("HTTP/1.1 200 OK\r\ncontent-length: 20\r\n\r\nAAAAAAAAAA")
    } else {
        Reply::keep(ok_response("BBBBBBBBBBBBBBBBBBBB"))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_response_cut_after_its_first_byte_is_aborted_not_retried() {
    let (upstream, counts) = scripted_upstream(half_then_full).await;
    let gateway = Gateway::start(&route_to(upstream, RETRY_ON_RESET));
    let answer = raw_exchange(gateway.listen, &get("/"), Duration::from_secs(5)).await;
    println!("client received: {:?}", answer.text());
    assert_eq!(answer.statuses(), vec![200]);
    assert_eq!(answer.header("content-length").as_deref(), Some("20"));
    assert_eq!(
        answer.body(),
        b"AAAAAAAAAA",
        "only the first attempt's bytes"
    );
    assert!(
        answer.closed,
        "the connection closes short of the declared length"
    );
    assert_eq!(
        counts.requests(),
        1,
        "no second attempt after the first byte"
    );
    let records = gateway.access_records_at_least(1).await;
    assert_eq!(records[0]["reason"], "upstream-reset", "{records:?}");
    let metrics = gateway.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("meshgate_requests_total")
                && l.contains("reason=\"upstream-reset\"")
                && l.contains("code=\"200\"")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reused_connection_cut_mid_body_is_not_retried_without_a_policy() {
    // Pingora's own retry (an idempotent request on a reused upstream connection) must not
    // splice either: the first request is served whole, the second is cut after 10 bytes.
    let (upstream, counts) = scripted_upstream(|n, _| match n {
        0 => Reply::keep(ok_response("first")),
        1 => Reply::close("HTTP/1.1 200 OK\r\ncontent-length: 20\r\n\r\nAAAAAAAAAA"),
        _ => Reply::keep(ok_response("BBBBBBBBBBBBBBBBBBBB")),
    })
    .await;
    let gateway = Gateway::start(&route_to(upstream, ""));
    let first = raw_exchange(gateway.listen, &get("/"), Duration::from_secs(5)).await;
    assert_eq!(first.body(), b"first");
    let second = raw_exchange(gateway.listen, &get("/"), Duration::from_secs(5)).await;
    println!("second answer: {:?}", second.text());
    assert_eq!(second.body(), b"AAAAAAAAAA");
    assert!(second.closed);
    assert_eq!(counts.requests(), 2);
    assert_eq!(
        counts.connections.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunked_response_cut_short_never_gets_its_last_chunk() {
    let (upstream, counts) = scripted_upstream(|n, _| {
        if n == 0 {
            Reply::close("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nAAAAA\r\n")
        } else {
            Reply::keep(ok_response("BBBBB"))
        }
    })
    .await;
    let gateway = Gateway::start(&route_to(upstream, RETRY_ON_RESET));
    let answer = raw_exchange(gateway.listen, &get("/"), Duration::from_secs(5)).await;
    let text = answer.text();
    println!("client received: {text:?}");
    assert!(text.contains("AAAAA"), "{text}");
    assert!(
        !text.contains("BBBBB"),
        "a second attempt was spliced: {text}"
    );
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "the last chunk was sent: {text}"
    );
    assert!(answer.closed);
    assert_eq!(counts.requests(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failure_before_the_first_byte_is_retried() {
    let (upstream, counts) = scripted_upstream(|n, _| {
        if n == 0 {
            Reply::close(Vec::new())
        } else {
            Reply::keep(ok_response("BBBBB"))
        }
    })
    .await;
    let gateway = Gateway::start(&route_to(upstream, RETRY_ON_RESET));
    let answer = raw_exchange(gateway.listen, &get("/"), Duration::from_secs(5)).await;
    assert_eq!(answer.statuses(), vec![200]);
    assert_eq!(answer.body(), b"BBBBB");
    assert_eq!(counts.requests(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_leaves_gets_no_retry_and_frees_its_counts() {
    // The upstream waits 1.5 s and would then fail with a 503, which the route retries.
    let (upstream, counts) = scripted_upstream(|_, _| Reply {
        bytes: b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n".to_vec(),
        close: false,
        delay: Duration::from_millis(1500),
    })
    .await;
    let gateway = Gateway::start(&route_to(upstream, RETRY_ON_RESET));
    let mut stream = tokio::net::TcpStream::connect(gateway.listen)
        .await
        .unwrap();
    stream.write_all(&get("/")).await.unwrap();
    // Wait until the request reached the upstream, then leave.
    let deadline = Instant::now() + Duration::from_secs(5);
    while counts.requests() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(stream);
    // The gateway closes its upstream connection (the upstream sees the close before it
    // answers) and starts no other attempt.
    let deadline = Instant::now() + Duration::from_secs(5);
    while counts
        .closed_early
        .load(std::sync::atomic::Ordering::SeqCst)
        == 0
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        counts
            .closed_early
            .load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the upstream connection was not closed when the client left"
    );
    assert_eq!(
        counts.requests(),
        1,
        "a retry was started for a client that left"
    );
    let upstreams = gateway.admin_json("/upstreams").await;
    assert_eq!(upstreams["upstreams"][0]["endpoints"][0]["in_flight"], 0);
    let metrics = gateway.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("meshgate_requests_in_flight{") && l.ends_with(" 0")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unsolicited_101_is_a_502() {
    let (upstream, _) = scripted_upstream(|_, head| {
        if head.to_ascii_lowercase().contains("upgrade: websocket") {
            Reply::keep("HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\nraw tunnel bytes")
        } else {
            Reply::keep("HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\nconnection: upgrade\r\n\r\nraw tunnel bytes")
        }
    })
    .await;
    let gateway = Gateway::start(&route_to(upstream, ""));
    let answer = raw_exchange(gateway.listen, &get("/"), Duration::from_secs(5)).await;
    println!("client received: {:?}", answer.text());
    assert_eq!(answer.statuses(), vec![502]);
    assert_eq!(
        answer.header("x-meshgate-reason").as_deref(),
        Some("upstream-reset")
    );
    assert!(!answer.text().contains("raw tunnel bytes"));
    // A request that asked to upgrade gets its 101 (and the tunnel).
    let upgrade = b"GET /ws HTTP/1.1\r\nhost: test\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let answer = raw_exchange(gateway.listen, upgrade, Duration::from_secs(2)).await;
    assert_eq!(answer.statuses(), vec![101], "{}", answer.text());
}

fn two_routes(upstream: std::net::SocketAddr) -> String {
    format!(
        r#"
[[upstreams]]
name = "pool"
endpoints = ["{upstream}"]

[[routes]]
name = "ws"
match = {{ path_prefix = "/ws/" }}
split = [{{ upstream = "pool" }}]
headers = {{ request_set = {{ "x-route" = "ws" }} }}

[[routes]]
name = "other"
match = {{ path_prefix = "/" }}
split = [{{ upstream = "pool" }}]
headers = {{ request_set = {{ "x-route" = "other" }} }}
"#
    )
}

/// An upstream that answers with the request head it received.
async fn mirror_upstream() -> std::net::SocketAddr {
    let (addr, _) = scripted_upstream(|_, head| Reply::keep(ok_response(head))).await;
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn paths_are_normalized_before_routing_and_forwarded_normalized() {
    let upstream = mirror_upstream().await;
    let gateway = Gateway::start(&two_routes(upstream));
    for (sent, forwarded, route) in [
        ("/ws/../dead", "/dead", "other"),
        ("/ws/./a", "/ws/a", "ws"),
        ("//ws//a", "/ws/a", "ws"),
        ("/%77s/a?q=%2F..", "/ws/a?q=%2F..", "ws"),
        ("/ws/%2e%2e/x", "/x", "other"),
    ] {
        let answer = raw_exchange(gateway.listen, &get(sent), Duration::from_secs(5)).await;
        let seen = String::from_utf8_lossy(&answer.body()).into_owned();
        println!("{sent} -> {:?}", seen.lines().next());
        assert!(
            seen.starts_with(&format!("GET {forwarded} HTTP/1.1")),
            "{sent}: {seen}"
        );
        assert!(
            seen.contains(&format!("x-route: {route}")),
            "{sent}: {seen}"
        );
    }
    for refused in [
        "/../x",
        "/ws/../../x",
        "/a%2Fb",
        "/a%5cb",
        "/a%00",
        "/a\\b",
        "/%zz",
    ] {
        let answer = raw_exchange(gateway.listen, &get(refused), Duration::from_secs(5)).await;
        assert_eq!(answer.statuses(), vec![400], "{refused}: {}", answer.text());
        assert_eq!(
            answer.header("x-meshgate-reason").as_deref(),
            Some("bad-path"),
            "{refused}"
        );
    }
    let explained = gateway.admin_json("/explain?path=/ws/../dead").await;
    assert_eq!(explained["path"], "/dead");
    assert_eq!(explained["normalized"], true);
    assert_eq!(explained["matched"], "other");
    let explained = gateway.admin_json("/explain?path=/../x").await;
    assert!(explained["refused"].is_string(), "{explained}");
    assert!(explained["matched"].is_null());
}

#[tokio::test(flavor = "multi_thread")]
async fn path_normalization_off_forwards_paths_as_received() {
    let upstream = mirror_upstream().await;
    let gateway = Gateway::start_with_server("path_normalization = \"off\"", &two_routes(upstream));
    let answer = raw_exchange(gateway.listen, &get("/ws/../dead"), Duration::from_secs(5)).await;
    let seen = String::from_utf8_lossy(&answer.body()).into_owned();
    assert!(seen.starts_with("GET /ws/../dead HTTP/1.1"), "{seen}");
    assert!(seen.contains("x-route: ws"), "{seen}");
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_request_heads_get_408_and_are_closed() {
    let upstream = start_echo("echo").await;
    let gateway =
        Gateway::start_with_server("client_header_timeout = \"1s\"", &route_to(upstream, ""));
    // 50 clients trickle a header byte every 200 ms.
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..50 {
        let addr = gateway.listen;
        clients.push(tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let head =
                b"GET / HTTP/1.1\r\nhost: test\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
            for byte in head {
                if stream.write_all(&[*byte]).await.is_err() {
                    break;
                }
                // Stop writing as soon as the gateway answers: writing on after its close
                // would draw a reset that discards the answer before it is read.
                let answer = read_until_closed(&mut stream, Duration::from_millis(200)).await;
                if !answer.bytes.is_empty() || answer.closed {
                    let rest = read_until_closed(&mut stream, Duration::from_secs(2)).await;
                    let mut bytes = answer.bytes;
                    bytes.extend(rest.bytes);
                    return RawAnswer {
                        bytes,
                        closed: true,
                    };
                }
                if started.elapsed() > Duration::from_secs(4) {
                    break;
                }
            }
            read_until_closed(&mut stream, Duration::from_secs(5)).await
        }));
    }
    let mut timed_out = 0;
    for client in clients {
        let answer = client.await.unwrap();
        if answer.closed && answer.statuses() == vec![408] {
            timed_out += 1;
        }
    }
    let took = started.elapsed();
    println!("{timed_out} of 50 slow clients got 408 and a close in {took:?}");
    assert_eq!(timed_out, 50);
    assert!(took < Duration::from_secs(4), "took {took:?}");
    // A keepalive connection's next head is timed from its first byte, not from the idle time.
    let mut stream = tokio::net::TcpStream::connect(gateway.listen)
        .await
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(answer.statuses(), vec![200, 200], "{}", answer.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_request_body_gets_408() {
    let upstream = start_echo("echo").await;
    let gateway =
        Gateway::start_with_server("client_body_timeout = \"1s\"", &route_to(upstream, ""));
    let started = Instant::now();
    let answer = raw_exchange(
        gateway.listen,
        b"POST / HTTP/1.1\r\nhost: test\r\ncontent-length: 100\r\n\r\nonly a few bytes",
        Duration::from_secs(5),
    )
    .await;
    println!("after {:?}: {:?}", started.elapsed(), answer.text());
    assert_eq!(answer.statuses(), vec![408]);
    assert!(answer.closed);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread")]
async fn max_connections_leaves_new_connections_in_the_kernel_backlog() {
    let upstream = start_echo("echo").await;
    let body = route_to(upstream, "");
    let listen: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let policy = policy_head(listen, admin, log.to_str().unwrap()).replacen(
        &format!("listen = \"{listen}\"\n"),
        &format!("listen = \"{listen}\"\nmax_connections = 2\n"),
        1,
    ) + &body;
    let gateway = Gateway::start_with(dir, &policy, listen, admin);
    let keepalive = b"GET / HTTP/1.1\r\nhost: test\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(listen).await.unwrap();
        stream.write_all(keepalive).await.unwrap();
        let answer = read_until_closed(&mut stream, Duration::from_millis(500)).await;
        assert_eq!(answer.statuses(), vec![200]);
        held.push(stream);
    }
    // Four more: the first is accepted and waits in the gateway, the accept loop pauses on
    // it, and the other three stay in the kernel's accept queue.
    let mut over = Vec::new();
    for _ in 0..4 {
        let mut stream = tokio::net::TcpStream::connect(listen).await.unwrap();
        stream.write_all(&get("/")).await.unwrap();
        over.push(stream);
    }
    let waiting = read_until_closed(&mut over[0], Duration::from_millis(700)).await;
    assert!(waiting.bytes.is_empty(), "served over the limit");
    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains("meshgate_listener_connections{listener=\"public\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("meshgate_listener_connections_waiting{listener=\"public\"} 1"),
        "{metrics}"
    );
    assert_eq!(
        accept_queue(listen),
        Some(3),
        "connections left in the backlog"
    );
    drop(held.pop());
    let served = read_until_closed(&mut over[0], Duration::from_secs(5)).await;
    assert_eq!(served.statuses(), vec![200]);
    // The place it took is given back as it closes; the rest are served in turn.
    for stream in over.iter_mut().skip(1) {
        let served = read_until_closed(stream, Duration::from_secs(5)).await;
        assert_eq!(served.statuses(), vec![200]);
    }
    assert_eq!(accept_queue(listen), Some(0));
}

/// How many connections wait in the kernel's accept queue of the socket listening on `addr`
/// (the `rx_queue` of its LISTEN row in `/proc/net/tcp`).
fn accept_queue(addr: std::net::SocketAddr) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let std::net::IpAddr::V4(ip) = addr.ip() else {
        panic!("an IPv4 listener is expected");
    };
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(ip.octets()),
        addr.port()
    );
    table.lines().skip(1).find_map(|row| {
        let fields: Vec<&str> = row.split_whitespace().collect();
        if fields.get(1) != Some(&local.as_str()) || fields.get(3) != Some(&"0A") {
            return None;
        }
        let (_, rx) = fields.get(4)?.split_once(':')?;
        u64::from_str_radix(rx, 16).ok()
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_requests_get_431_414_and_413() {
    let (upstream, counts) = scripted_upstream(|_, _| Reply::keep(ok_response("ok"))).await;
    let gateway = Gateway::start(&route_to(upstream, "max_request_body = \"1KiB\""));
    let big_header = format!(
        "GET / HTTP/1.1\r\nhost: test\r\nx-big: {}\r\nconnection: close\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let many_headers = format!(
        "GET / HTTP/1.1\r\nhost: test\r\n{}connection: close\r\n\r\n",
        (0..101)
            .map(|i| format!("x-h{i}: v\r\n"))
            .collect::<String>()
    );
    let long_uri = format!(
        "GET /{} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n",
        "a".repeat(9 * 1024)
    );
    let long_method = format!(
        "{} / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n",
        "A".repeat(64 * 1024)
    );
    let declared_body = format!(
        "POST / HTTP/1.1\r\nhost: test\r\ncontent-length: 2000\r\n\r\n{}",
        "b".repeat(2000)
    );
    let chunk = "c".repeat(600);
    let chunked_body = format!(
        "POST / HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    for (what, request, status, reason) in [
        ("a 64 KiB header", big_header, 431, "header-too-large"),
        ("101 headers", many_headers, 431, "header-too-large"),
        ("a 9 KiB URI", long_uri, 414, "uri-too-long"),
        ("a 64 KiB method", long_method, 414, "uri-too-long"),
        (
            "a declared 2000-byte body",
            declared_body,
            413,
            "body-too-large",
        ),
        (
            "a 1200-byte chunked body",
            chunked_body,
            413,
            "body-too-large",
        ),
    ] {
        let answer = raw_exchange(gateway.listen, request.as_bytes(), Duration::from_secs(5)).await;
        println!("{what}: {:?}", answer.text().lines().next());
        assert_eq!(answer.statuses(), vec![status], "{what}: {}", answer.text());
        assert_eq!(
            answer.header("x-meshgate-reason").as_deref(),
            Some(reason),
            "{what}"
        );
    }
    // Only the chunked body reached the upstream (its size was not known in advance), and
    // it was cut before its end.
    assert!(
        counts.requests() <= 1,
        "{} requests upstream",
        counts.requests()
    );
    let small = raw_exchange(
        gateway.listen,
        b"POST / HTTP/1.1\r\nhost: test\r\ncontent-length: 5\r\nconnection: close\r\n\r\nsmall",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(small.statuses(), vec![200]);
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_requests_are_all_answered_in_order() {
    // Each answer names the request it answers (its request line), so an answer given to
    // the wrong request cannot pass for the right one.
    let (upstream, counts) = scripted_upstream(|_, head| {
        let line = head.lines().next().unwrap_or_default().to_owned();
        Reply::keep(ok_response(&format!("answer to {line};")))
    })
    .await;
    let gateway = Gateway::start(&route_to(upstream, ""));
    // Requests with bodies between them: each body must be read as its request's alone.
    let pipelined = b"GET /1 HTTP/1.1\r\nhost: test\r\n\r\nPOST /2 HTTP/1.1\r\nhost: test\r\ncontent-length: 5\r\n\r\nhelloPOST /3 HTTP/1.1\r\nhost: test\r\ncontent-length: 3\r\n\r\nabcGET /4 HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n";
    let answer = raw_exchange(gateway.listen, pipelined, Duration::from_secs(5)).await;
    let text = answer.text();
    println!("{text:?}");
    assert_eq!(answer.statuses(), vec![200, 200, 200, 200], "{text}");
    let places: Vec<usize> = [
        "answer to GET /1 HTTP/1.1;",
        "answer to POST /2 HTTP/1.1;",
        "answer to POST /3 HTTP/1.1;",
        "answer to GET /4 HTTP/1.1;",
    ]
    .iter()
    .map(|expected| {
        text.find(expected)
            .unwrap_or_else(|| panic!("{expected}: {text}"))
    })
    .collect();
    assert!(
        places.windows(2).all(|w| w[0] < w[1]),
        "out of order: {text}"
    );
    assert_eq!(
        counts.bodies(),
        vec![5, 3],
        "each body reached the upstream whole"
    );
    assert!(answer.closed);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http2_response_cut_after_its_first_byte_resets_the_stream() {
    let (upstream, counts) = scripted_upstream(half_then_full).await;
    let gateway = Gateway::start(&route_to(upstream, RETRY_ON_RESET));
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let response = client.get(gateway.url("/")).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let body = response.bytes().await;
    println!("HTTP/2 body read: {body:?}");
    assert!(body.is_err(), "the stream ended as if complete: {body:?}");
    assert_eq!(
        counts.requests(),
        1,
        "no second attempt after the first byte"
    );
}
