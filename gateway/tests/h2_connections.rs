//! End to end: HTTP/2 client connections end. A connection that sends the preface and
//! SETTINGS and then nothing is closed with a `GOAWAY` (after `client_idle_timeout`, or
//! `client_header_timeout` for its first stream, whichever comes first), so a crowd of them
//! cannot hold a listener at its `max_connections`; a connection idle after its requests is
//! closed the same way. h2c with prior knowledge and TLS with ALPN `h2` alike.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::pki::Authority;
use common::*;

/// The client connection preface and an empty SETTINGS frame.
fn preface_and_settings() -> Vec<u8> {
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    bytes
}

/// The frame types in `bytes` (a server's side of an HTTP/2 connection), and the error code of
/// the GOAWAY among them, if any.
fn frames(bytes: &[u8]) -> (Vec<u8>, Option<u32>) {
    let mut types = Vec::new();
    let mut goaway = None;
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let length = u32::from_be_bytes([0, bytes[at], bytes[at + 1], bytes[at + 2]]) as usize;
        let kind = bytes[at + 3];
        let payload = &bytes[at + 9..(at + 9 + length).min(bytes.len())];
        if kind == 7 && payload.len() >= 8 {
            goaway = Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
        }
        types.push(kind);
        at += 9 + length;
    }
    (types, goaway)
}

/// Opens an h2c connection, sends the preface and SETTINGS, then nothing.
async fn silent_h2c(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(&preface_and_settings()).await.unwrap();
    stream
}

/// Reads until the server closes (at most `limit` after `opened`): what it sent and when it
/// closed, or `None` when it was still open at the limit.
async fn until_closed(
    mut stream: tokio::net::TcpStream,
    opened: Instant,
    limit: Duration,
) -> (Vec<u8>, Option<Duration>) {
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(opened.elapsed());
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (received, Some(opened.elapsed())),
            Ok(Ok(n)) => received.extend_from_slice(&chunk[..n]),
            Err(_) => return (received, None),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_h2c_connections_are_closed_with_goaway_and_free_the_listener() {
    let echo = start_echo("app").await;
    let gateway = Gateway::start_with_server(
        "client_idle_timeout = \"2s\"",
        &format!("max_connections = 20\n{}", route_to(echo, "")),
    );
    let opened = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(silent_h2c(gateway.listen).await);
    }
    // The listener is full: a new client waits until the silent ones are closed, then is
    // served.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let served = tokio::spawn({
        let url = gateway.url("/x");
        async move {
            let started = Instant::now();
            let response = http.get(url).send().await;
            (response.map(|r| r.status().as_u16()), started.elapsed())
        }
    });
    let waits: Vec<_> = silent
        .into_iter()
        .map(|stream| tokio::spawn(until_closed(stream, opened, Duration::from_secs(12))))
        .collect();
    for wait in waits {
        let (bytes, closed) = wait.await.unwrap();
        let (types, goaway) = frames(&bytes);
        let closed = closed.expect("a silent HTTP/2 connection is still open after 12 s");
        assert!(
            closed >= Duration::from_millis(1500) && closed < Duration::from_secs(6),
            "closed after {closed:?}"
        );
        assert_eq!(
            goaway,
            Some(0),
            "a GOAWAY with NO_ERROR before the close: {types:?}"
        );
    }
    let (status, waited) = served.await.unwrap();
    println!("new client served after {waited:?}: {status:?}");
    assert_eq!(status.unwrap(), 200);
    assert!(waited < Duration::from_secs(6), "{waited:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_h2c_connection_without_a_first_stream_is_closed_after_the_header_timeout() {
    let echo = start_echo("app").await;
    let gateway = Gateway::start_with_server(
        "client_idle_timeout = \"30s\"\nclient_header_timeout = \"1s\"",
        &route_to(echo, ""),
    );
    let opened = Instant::now();
    let stream = silent_h2c(gateway.listen).await;
    let (bytes, closed) = until_closed(stream, opened, Duration::from_secs(10)).await;
    let closed = closed.expect("still open after 10 s");
    println!("closed after {closed:?}");
    assert!(closed >= Duration::from_millis(800) && closed < Duration::from_secs(4));
    assert_eq!(frames(&bytes).1, Some(0));
    // A preface that never completes is held to the same deadline.
    let opened = Instant::now();
    let mut partial = tokio::net::TcpStream::connect(gateway.listen)
        .await
        .unwrap();
    partial
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let (_, closed) = until_closed(partial, opened, Duration::from_secs(10)).await;
    let closed = closed.expect("a connection without SETTINGS is still open after 10 s");
    assert!(closed < Duration::from_secs(4), "{closed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_h2c_connection_idle_after_its_requests_is_closed_with_goaway() {
    let echo = start_echo("app").await;
    let gateway = Gateway::start_with_server("client_idle_timeout = \"2s\"", &route_to(echo, ""));
    let tcp = tokio::net::TcpStream::connect(gateway.listen)
        .await
        .unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
    let ended = tokio::spawn(async move {
        let result = connection.await;
        (result.map_err(|e| e.to_string()), Instant::now())
    });
    for round in 0..3 {
        if round > 0 {
            // Less than client_idle_timeout between requests: the connection stays.
            tokio::time::sleep(Duration::from_millis(1200)).await;
        }
        let request = http::Request::get(format!("http://{}/x", gateway.listen))
            .body(())
            .unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
        }
    }
    // Busy every 1.2 s: still open. Now idle.
    let idle_from = Instant::now();
    let (result, at) = tokio::time::timeout(Duration::from_secs(10), ended)
        .await
        .expect("the idle connection is still open after 10 s")
        .unwrap();
    let idle = at - idle_from;
    println!("closed {idle:?} after the last request: {result:?}");
    assert!(
        result.is_ok(),
        "closed with GOAWAY NO_ERROR, not torn down: {result:?}"
    );
    assert!(
        idle >= Duration::from_millis(1500) && idle < Duration::from_secs(5),
        "{idle:?}"
    );
}

#[test]
fn a_tls_http2_connection_without_a_stream_is_closed_and_handshakes_count_against_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new(dir.path(), "ca");
    let leaf = ca.server(dir.path(), "gw", "gw.test", &["gw.test"]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let echo = runtime.block_on(start_echo("app"));
    let listen: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gateway_dir = tempfile::tempdir().unwrap();
    let policy = policy_head(listen, admin, "off").replacen(
        "[server]\n",
        "[server]\nclient_idle_timeout = \"30s\"\nclient_header_timeout = \"2s\"\n",
        1,
    ) + &format!(
        "max_connections = 5\n[listeners.tls]\ncert = \"{}\"\nkey = \"{}\"\n{}",
        leaf.cert.display(),
        leaf.key.display(),
        route_to(echo, "")
    );
    let gateway = Gateway::start_with(gateway_dir, &policy, listen, admin);

    // TLS with ALPN h2, the preface and SETTINGS, then nothing: closed with a GOAWAY when the
    // first stream has not opened within client_header_timeout (2 s) of the start.
    let opened = Instant::now();
    let mut client = OwnedChild(
        Command::new("openssl")
            .args([
                "s_client",
                "-quiet",
                "-alpn",
                "h2",
                "-servername",
                "gw.test",
                "-connect",
            ])
            .arg(listen.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl is installed by `make deps`"),
    );
    let mut stdin = client.stdin.take().unwrap();
    stdin.write_all(&preface_and_settings()).unwrap();
    stdin.flush().unwrap();
    let mut stdout = client.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut received = Vec::new();
        let _ = stdout.read_to_end(&mut received);
        (received, opened.elapsed())
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !reader.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let finished = reader.is_finished();
    let _ = client.kill();
    let _ = client.wait();
    drop(stdin);
    assert!(
        finished,
        "a TLS HTTP/2 connection without a stream is open after 10 s"
    );
    let (received, closed) = reader.join().unwrap();
    println!("TLS h2 without a stream: closed after {closed:?}");
    assert!(closed >= Duration::from_millis(1500) && closed < Duration::from_secs(5));
    assert_eq!(frames(&received).1, Some(0), "a GOAWAY with NO_ERROR");

    // Five connections that never start their handshake fill max_connections = 5: a real
    // client waits until their handshakes time out (2 s), then is served.
    let silent: Vec<std::net::TcpStream> = (0..5)
        .map(|_| std::net::TcpStream::connect(listen).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let fetched = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
        ])
        .arg(&ca.file)
        .arg("--resolve")
        .arg(format!("gw.test:{}:127.0.0.1", listen.port()))
        .arg(format!("https://gw.test:{}/x", listen.port()))
        .output()
        .unwrap();
    let waited = started.elapsed();
    let status = String::from_utf8_lossy(&fetched.stdout).into_owned();
    println!("curl after 5 silent handshakes: {status} in {waited:?}");
    assert_eq!(
        status,
        "200",
        "{}",
        String::from_utf8_lossy(&fetched.stderr)
    );
    assert!(
        waited >= Duration::from_millis(1200) && waited < Duration::from_secs(6),
        "served after {waited:?}: handshakes in progress must count against max_connections"
    );
    drop(silent);
    drop(gateway);
    drop(runtime);
}
