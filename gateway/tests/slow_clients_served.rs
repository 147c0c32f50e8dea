//! End to end: `client_body_timeout` bounds a pause, not a body. A client that sends its body
//! slowly, slower in total than the timeout but never pausing that long, is served; one that
//! pauses longer gets `408`.

mod common;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_body_that_never_pauses_past_the_timeout_is_served() {
    let (upstream, config, _task) = start_upstream("u", 200, Duration::ZERO).await;
    let gateway =
        Gateway::start_with_server("client_body_timeout = \"1s\"", &route_to(upstream, ""));
    let mut stream = tokio::net::TcpStream::connect(gateway.listen)
        .await
        .unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nhost: test\r\ncontent-length: 10\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    for byte in b"0123456789" {
        tokio::time::sleep(Duration::from_millis(400)).await;
        stream.write_all(&[*byte]).await.unwrap();
    }
    let sending = started.elapsed();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    let text = String::from_utf8_lossy(&answer);
    println!(
        "a 10-byte body over {sending:?}, a byte every 400 ms: {}",
        text.lines().next().unwrap_or_default()
    );
    assert!(
        sending > Duration::from_secs(3),
        "slower in total than the 1 s timeout"
    );
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(
        config.requests.load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    // A pause longer than the timeout is a 408.
    let mut stream = tokio::net::TcpStream::connect(gateway.listen)
        .await
        .unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nhost: test\r\ncontent-length: 10\r\n\r\n01")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("closed")
        .unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
}
