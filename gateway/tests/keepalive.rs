//! The connection loop meshgate drives itself (`gateway/src/proxy/guarded.rs`): between
//! requests it waits for the next request's first bytes with no buffer held, hands them to
//! the new request, and sends a connection that starts with the HTTP/2 preface to the
//! HTTP/2 path, however the client's writes are split.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An HTTP/2 frame: its 9-byte head, then `payload`.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    frame.extend([kind, flags]);
    frame.extend(stream.to_be_bytes());
    frame.extend(payload);
    frame
}

/// Reads one HTTP/1.1 response head and its `content-length` body; returns the head. Bytes
/// read past it (the next response, when two arrive in one read) stay in `pending` for the
/// next call.
async fn read_response(stream: &mut TcpStream, pending: &mut Vec<u8>) -> String {
    let mut buffer = [0u8; 8192];
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if pending.len() >= end + 4 + length {
                pending.drain(..end + 4 + length);
                return head;
            }
        }
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        assert!(
            read > 0,
            "closed after {:?}",
            String::from_utf8_lossy(pending)
        );
        pending.extend_from_slice(&buffer[..read]);
    }
}

/// A gateway in front of an echo upstream named `v1`, with `server_keys` in `[server]`, and a
/// client connection to it (its writes sent at once).
async fn gateway_and_client(server_keys: &str) -> (Gateway, TcpStream) {
    let echo = start_echo("v1").await;
    let gateway = Gateway::start_with_server(server_keys, &split_policy(echo, echo, 1, 0));
    let stream = TcpStream::connect(gateway.listen).await.unwrap();
    stream.set_nodelay(true).unwrap();
    (gateway, stream)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_h2c_preface_split_across_writes_is_served_as_http2() {
    let (_gateway, mut stream) = gateway_and_client("").await;
    // The first read sees only part of the preface: too little to tell HTTP/2 from HTTP/1.1.
    stream.write_all(&PREFACE[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // HPACK, static table only: :method GET, :scheme http, :path /, :authority "test".
    let mut rest = PREFACE[10..].to_vec();
    rest.extend(frame(4, 0, 0, &[]));
    rest.extend(frame(
        1,
        0x1 | 0x4,
        1,
        &[0x82, 0x86, 0x84, 0x41, 4, b't', b'e', b's', b't'],
    ));
    stream.write_all(&rest).await.unwrap();
    // Frames until the response's HEADERS on stream 1, whose first field is `:status 200`
    // from the static table (0x88).
    let mut data = Vec::new();
    let mut buffer = [0u8; 8192];
    let status = loop {
        let mut offset = 0;
        let mut found = None;
        while data.len() >= offset + 9 {
            let length =
                u32::from_be_bytes([0, data[offset], data[offset + 1], data[offset + 2]]) as usize;
            if data.len() < offset + 9 + length {
                break;
            }
            let (kind, stream_id) = (
                data[offset + 3],
                u32::from_be_bytes(data[offset + 5..offset + 9].try_into().unwrap()),
            );
            if kind == 1 && stream_id == 1 {
                found = Some(data[offset + 9]);
            }
            offset += 9 + length;
        }
        if let Some(first) = found {
            break first;
        }
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
            .await
            .expect("HTTP/2 frames within 5 s")
            .unwrap();
        assert!(read > 0, "closed; got {:?}", String::from_utf8_lossy(&data));
        data.extend_from_slice(&buffer[..read]);
    };
    assert_eq!(
        status, 0x88,
        "the response HEADERS do not start with :status 200"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kept_alive_connection_serves_heads_that_arrive_late_and_in_pieces() {
    let (_gateway, mut stream) = gateway_and_client("").await;
    let mut pending = Vec::new();
    for round in 0..3 {
        // Idle between requests, then a head in three pieces with pauses between them.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let head = format!("GET /round-{round} HTTP/1.1\r\nhost: test\r\nx-round: {round}\r\n\r\n");
        let (first, rest) = head.as_bytes().split_at(5);
        let (second, third) = rest.split_at(12);
        for piece in [first, second, third] {
            stream.write_all(piece).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let answer = read_response(&mut stream, &mut pending).await;
        assert!(
            answer.starts_with("http/1.1 200"),
            "round {round}: {answer}"
        );
        assert!(
            answer.contains("x-echo-server: v1"),
            "round {round}: {answer}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_sent_with_the_end_of_the_previous_body_is_answered() {
    let (_gateway, mut stream) = gateway_and_client("").await;
    let mut pending = Vec::new();
    // A POST whose body and the next request arrive in one write: the next request is read
    // with the body, before the loop would wait for it.
    stream
        .write_all(
            b"POST /a HTTP/1.1\r\nhost: test\r\ncontent-length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nhost: test\r\n\r\n",
        )
        .await
        .unwrap();
    let first = read_response(&mut stream, &mut pending).await;
    assert!(first.starts_with("http/1.1 200"), "{first}");
    let second = read_response(&mut stream, &mut pending).await;
    assert!(second.starts_with("http/1.1 200"), "{second}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_later_head_that_stops_halfway_gets_408_at_the_head_deadline() {
    let (_gateway, mut stream) = gateway_and_client("client_header_timeout = \"1s\"").await;
    let mut pending = Vec::new();
    stream
        .write_all(b"GET /first HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    let first = read_response(&mut stream, &mut pending).await;
    assert!(first.starts_with("http/1.1 200"), "{first}");
    // Idle longer than the head deadline (the idle time is not the head's), then half a head.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    stream.write_all(b"GET /second HT").await.unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
            .await
            .expect("an answer or a close within 5 s");
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
        }
    }
    let took = started.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(3),
        "408 after {took:?}"
    );
}
