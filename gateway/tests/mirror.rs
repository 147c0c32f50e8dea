//! End to end: `mirror` sends copies of requests to another upstream, fire and forget. A real
//! mirror server records what it got; a mirror that accepts and never answers shows the main
//! request is not slowed, and that copies over `max_in_flight` are dropped and counted.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One request as the mirror server read it: its head (lower-cased) and body.
type Recorded = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A mirror server that records every request and answers `200` (keepalive).
async fn start_recorder() -> (std::net::SocketAddr, Recorded) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let recorded: Recorded = Arc::default();
    let store = recorded.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let store = store.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    // A whole head, then the body its content-length declares.
                    let head_end = loop {
                        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                            break end + 4;
                        }
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while buffer.len() < head_end + length {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = buffer[head_end..head_end + length].to_vec();
                    buffer.drain(..head_end + length);
                    store.lock().unwrap().push((head, body));
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, recorded)
}

fn policy(main: std::net::SocketAddr, mirror: std::net::SocketAddr, mirror_keys: &str) -> String {
    format!(
        r#"
[[upstreams]]
name = "main"
endpoints = ["{main}"]

[[upstreams]]
name = "shadow"
endpoints = ["{mirror}"]

[[routes]]
name = "orders"
split = [{{ upstream = "main" }}]
timeouts = {{ request = "10s" }}
{mirror_keys}
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn copies_reach_the_mirror_with_their_bodies_and_mark() {
    let main = start_echo("main").await;
    let (mirror, recorded) = start_recorder().await;
    let gateway = Gateway::start(&policy(
        main,
        mirror,
        r#"mirror = [{ upstream = "shadow", percent = 100 }]"#,
    ));
    let routes = gateway.admin_json("/routes").await;
    assert_eq!(
        routes["routes"][0]["mirror"],
        serde_json::json!(["shadow 100% max_in_flight 100"])
    );
    let client = client();
    for i in 0..20 {
        let response = client
            .get(gateway.url(&format!("/orders/{i}?q=1")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-echo-server"], "main");
    }
    for i in 0..5 {
        let response = client
            .post(gateway.url("/orders"))
            .body(format!("order-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while recorded.lock().unwrap().len() < 25 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let copies = recorded.lock().unwrap().clone();
    assert_eq!(copies.len(), 25);
    // Each copy goes in a task of its own: they may arrive in any order.
    let (gets, posts): (Vec<_>, Vec<_>) = copies
        .iter()
        .partition(|(head, _)| head.starts_with("get "));
    assert_eq!((gets.len(), posts.len()), (20, 5));
    let mut paths: Vec<String> = Vec::new();
    for (head, body) in &gets {
        let line = head.lines().next().unwrap();
        assert!(line.ends_with("?q=1 http/1.1"), "{head}");
        paths.push(line.to_owned());
        assert!(head.contains("\r\nx-meshgate-mirror: 1\r\n"), "{head}");
        assert!(head.contains("\r\nx-request-id: "), "{head}");
        assert!(body.is_empty());
    }
    paths.sort();
    let mut expected: Vec<String> = (0..20)
        .map(|i| format!("get /orders/{i}?q=1 http/1.1"))
        .collect();
    expected.sort();
    assert_eq!(paths, expected);
    let bodies: Vec<&[u8]> = posts.iter().map(|(_, b)| b.as_slice()).collect();
    for i in 0..5 {
        assert!(
            bodies.contains(&format!("order-{i}").as_bytes()),
            "{bodies:?}"
        );
    }

    // A body larger than the retry buffer is not copied: counted as a drop, the request
    // itself is served.
    let response = client
        .post(gateway.url("/orders"))
        .body(vec![b'x'; 100 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let dropped = gateway
        .wait_for_metric(
            "meshgate_mirror_dropped_total{route=\"orders\",upstream=\"shadow\"}",
            1.0,
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(dropped, 1.0);
    assert_eq!(recorded.lock().unwrap().len(), 25);
}

/// The p99 of `count` sequential requests, in milliseconds, and whether all were `200`.
async fn p99_ms(gateway: &Gateway, count: usize) -> (f64, bool) {
    let client = client();
    let mut times = Vec::with_capacity(count);
    let mut all_ok = true;
    for i in 0..count {
        let started = Instant::now();
        let response = client
            .get(gateway.url(&format!("/p/{i}")))
            .send()
            .await
            .unwrap();
        all_ok &= response.status() == 200;
        let _ = response.bytes().await;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    (times[count * 99 / 100 - 1], all_ok)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_mirror_neither_slows_nor_fails_the_main_request() {
    let main = start_echo("main").await;
    let hanging = start_silent_upstream().await;
    let gateway = Gateway::start(&policy(main, hanging, ""));
    let (baseline, all_ok) = p99_ms(&gateway, 300).await;
    assert!(all_ok);

    gateway
        .apply_policy(gateway.policy_with_body(&policy(
            main,
            hanging,
            r#"mirror = [{ upstream = "shadow", percent = 100, max_in_flight = 5 }]"#,
        )))
        .await;
    let (mirrored, all_ok) = p99_ms(&gateway, 300).await;
    assert!(all_ok);
    println!(
        "main route p99: {baseline:.2} ms without a mirror, {mirrored:.2} ms with a hanging mirror"
    );
    assert!(
        mirrored < baseline * 3.0 + 20.0,
        "p99 {mirrored:.2} ms with the hanging mirror, {baseline:.2} ms without"
    );
    // Five copies hang; every other one was dropped and counted.
    let metrics = gateway.metrics().await;
    assert_eq!(
        metric_sum(
            &metrics,
            "meshgate_mirror_dropped_total{route=\"orders\",upstream=\"shadow\"}"
        ),
        295.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mirror_that_resets_or_answers_garbage_changes_nothing() {
    // The mirror's first connections are closed at once, the next ones get bytes that are
    // not HTTP: neither reaches the main request, which must stay 200 with its own body.
    let (mirror, counts) = common::raw::scripted_upstream(|n, _| {
        if n % 2 == 0 {
            common::raw::Reply::close(Vec::new())
        } else {
            common::raw::Reply::close(b"\x00\x01garbage\r\n\r\n".to_vec())
        }
    })
    .await;
    let main = start_echo("main").await;
    let gateway = Gateway::start(&policy(
        main,
        mirror,
        r#"mirror = [{ upstream = "shadow", percent = 100 }]"#,
    ));
    let client = client();
    for i in 0..40 {
        let response = client
            .post(gateway.url("/orders"))
            .body(format!("order {i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "request {i}");
        assert_eq!(response.headers()["x-echo-server"], "main");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while counts.requests() < 40 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} copies",
            counts.requests()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_copy_is_the_request_the_upstream_gets_not_the_client_head() {
    let (main, main_seen) = start_recorder().await;
    let (mirror, copies) = start_recorder().await;
    let gateway = Gateway::start(&format!(
        r#"
[[upstreams]]
name = "main"
endpoints = ["{main}"]

[[upstreams]]
name = "shadow"
endpoints = ["{mirror}"]

[[routes]]
name = "orders"
match = {{ path_prefix = "/api/" }}
rewrite = {{ path_prefix = "/v2/" }}
split = [{{ upstream = "main" }}]
headers = {{ request_remove = ["authorization", "cookie"], request_set = {{ "x-env" = "prod" }} }}
mirror = [{{ upstream = "shadow" }}]
"#
    ));
    let http = client();
    for method in [reqwest::Method::GET, reqwest::Method::POST] {
        let response = http
            .request(method.clone(), gateway.url("/api/orders?q=1"))
            .header("authorization", "Bearer secret-token")
            .header("cookie", "session=secret-cookie")
            .header("connection", "keep-alive, x-hop")
            .header("x-hop", "hop-by-hop")
            .body(if method == reqwest::Method::POST {
                "order-1"
            } else {
                ""
            })
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{method}");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while copies.lock().unwrap().len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let copies = copies.lock().unwrap().clone();
    let primaries = main_seen.lock().unwrap().clone();
    assert_eq!((copies.len(), primaries.len()), (2, 2));
    for (copy, body) in &copies {
        println!("copy:\n{copy}");
        let line = copy.lines().next().unwrap();
        assert!(
            line.contains(" /v2/orders?q=1 http/1.1"),
            "rewritten: {line}"
        );
        for secret in [
            "authorization",
            "cookie",
            "secret-token",
            "secret-cookie",
            "x-hop",
        ] {
            assert!(
                !copy.contains(secret),
                "{secret} reached the mirror:\n{copy}"
            );
        }
        for header in [
            "x-env: prod",
            "x-forwarded-for: 127.0.0.1",
            "x-forwarded-proto: http",
            "x-meshgate-mirror: 1",
        ] {
            assert!(
                copy.contains(&format!("\r\n{header}")),
                "{header} missing:\n{copy}"
            );
        }
        if line.starts_with("post ") {
            assert_eq!(body, b"order-1");
        }
    }
    // The primary request and its copy carry the same headers but the mark.
    let names = |head: &str| -> Vec<String> {
        let mut names: Vec<String> = head
            .lines()
            .skip(1)
            .filter_map(|l| Some(l.split_once(':')?.0.to_owned()))
            .filter(|n| n != "x-meshgate-mirror")
            .collect();
        names.sort();
        names
    };
    let get_copy = copies.iter().find(|(h, _)| h.starts_with("get ")).unwrap();
    let get_primary = primaries
        .iter()
        .find(|(h, _)| h.starts_with("get "))
        .unwrap();
    assert_eq!(names(&get_copy.0), names(&get_primary.0));
}
