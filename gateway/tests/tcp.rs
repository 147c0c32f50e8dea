//! End to end: TCP proxying (issue 19) with real clients and servers: `redis-cli` against
//! `redis-server`, a bulk transfer checked byte for byte, half-close, connect retries, the
//! idle timeout, the connection rate limit, SNI passthrough to two `openssl s_server`s, TLS
//! termination with mTLS identities and upstream mTLS, reloads and drains.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::https::{self, served_subject};
use common::pki;
use common::*;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A TCP server that greets each connection with `greeting` (when not empty), then echoes
/// every byte until the client's end of stream, then closes its side.
async fn start_tcp_echo(greeting: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                if !greeting.is_empty() {
                    let _ = socket.write_all(greeting.as_bytes()).await;
                }
                let (mut read, mut write) = socket.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            });
        }
    });
    addr
}

/// The sum of `name`'s samples whose labels include every `key="value"` of `labels`.
fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .filter(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A `tcp` listener named `name` on a free port, and its address.
fn tcp_listener(name: &str, extra: &str) -> (String, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    (
        format!("\n[[listeners]]\nname = \"{name}\"\nlisten = \"{addr}\"\nprotocol = \"tcp\"\n{extra}\n"),
        addr,
    )
}

/// Reads a server's greeting into `greeting`, failing the test after 5 s without it.
async fn read_greeting(stream: &mut TcpStream, greeting: &mut [u8]) {
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(greeting))
        .await
        .expect("the greeting within 5 s")
        .unwrap();
}

/// Reads until the peer closes (or `limit` passes); what was read.
async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut read = Vec::new();
    let _ = tokio::time::timeout(limit, stream.read_to_end(&mut read)).await;
    read
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_and_a_bulk_transfer_pass_through_byte_for_byte() {
    let redis = Redis::start(None);
    let echo = start_tcp_echo("").await;
    let (redis_listener, redis_addr) = tcp_listener("redis", "");
    let (bulk_listener, bulk_addr) = tcp_listener("bulk", "");
    let gateway = Gateway::start(&format!(
        r#"{redis_listener}{bulk_listener}
[[upstreams]]
name = "redis"
endpoints = ["127.0.0.1:{}"]
health_check = {{ type = "tcp", interval = "1s" }}

[[upstreams]]
name = "echo"
endpoints = ["{echo}"]

[[tcp_routes]]
name = "redis"
listeners = ["redis"]
split = [{{ upstream = "redis" }}]

[[tcp_routes]]
name = "bulk"
listeners = ["bulk"]
split = [{{ upstream = "echo" }}]
"#,
        redis.port
    ));

    let cli = |args: &[&str]| {
        let output = bounded(30, "redis-cli")
            .args(["-h", "127.0.0.1", "-p", &redis_addr.port().to_string()])
            .args(args)
            .output()
            .expect("redis-cli comes with redis-server (`make deps`)");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    assert_eq!(cli(&["SET", "greeting", "hello through meshgate"]), "OK");
    assert_eq!(cli(&["GET", "greeting"]), "hello through meshgate");
    assert_eq!(cli(&["DBSIZE"]), "1");

    // 32 MiB each way, written while it is read back, then a half-close: the echo server
    // sees the end of stream only after every byte, and closes its side after echoing them.
    let size = 32 << 20;
    let payload: Vec<u8> = (0..size as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let expected = Sha256::digest(&payload);
    let stream = TcpStream::connect(bulk_addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        write.write_all(&payload).await.unwrap();
        write.shutdown().await.unwrap();
    });
    let mut echoed = Vec::with_capacity(size);
    tokio::time::timeout(Duration::from_secs(60), read.read_to_end(&mut echoed))
        .await
        .expect("the echo closes after the client's half-close")
        .unwrap();
    writer.await.unwrap();
    assert_eq!(echoed.len(), size);
    assert_eq!(Sha256::digest(&echoed), expected);

    tokio::time::sleep(Duration::from_millis(200)).await;
    let metrics = gateway.metrics().await;
    let bulk = [("listener", "bulk"), ("route", "bulk")];
    assert_eq!(
        sample(
            &metrics,
            "meshgate_tcp_connections_total",
            &[bulk[0], bulk[1], ("upstream", "echo"), ("result", "closed")]
        ),
        1.0,
        "{metrics}"
    );
    for direction in ["received", "sent"] {
        assert_eq!(
            sample(
                &metrics,
                "meshgate_tcp_bytes_total",
                &[bulk[0], bulk[1], ("direction", direction)]
            ),
            size as f64
        );
    }
    assert!(
        sample(
            &metrics,
            "meshgate_tcp_connections_total",
            &[("route", "redis"), ("result", "closed")]
        ) >= 3.0
    );
    assert_eq!(
        sample(
            &metrics,
            "meshgate_tcp_active_connections",
            &[("listener", "bulk")]
        ),
        0.0
    );
    assert_eq!(
        sample(
            &metrics,
            "meshgate_tcp_connection_duration_seconds_count",
            &[bulk[0], bulk[1]]
        ),
        1.0
    );
    let log = std::fs::read_to_string(gateway.dir.path().join("access.log")).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("\"kind\":\"tcp\"") && l.contains("\"route\":\"bulk\""))
        .unwrap_or_else(|| panic!("no TCP record in {log}"));
    let record: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(record["received_bytes"], size as u64);
    assert_eq!(record["sent_bytes"], size as u64);
    assert_eq!(record["upstream"], "echo");
    assert_eq!(record["endpoint"], echo.to_string());
    assert_eq!(record["close"], "closed");
    assert!(record["client"].as_str().unwrap().starts_with("127.0.0.1:"));
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_failures_are_retried_and_idle_and_rate_limits_close() {
    let echo = start_tcp_echo("hi\n").await;
    let dead = format!("127.0.0.1:{}", free_port());
    let (retry_listener, retry_addr) = tcp_listener("retry", "");
    let (idle_listener, idle_addr) = tcp_listener("idle", "");
    let (limited_listener, limited_addr) = tcp_listener("limited", "");
    let (capped_listener, capped_addr) = tcp_listener("capped", "");
    let gateway = Gateway::start(&format!(
        r#"{retry_listener}{idle_listener}{limited_listener}{capped_listener}
[[upstreams]]
name = "capped"
endpoints = ["{echo}"]
circuit_breaker = {{ max_connections = 1 }}

[[tcp_routes]]
name = "capped"
listeners = ["capped"]
split = [{{ upstream = "capped" }}]

[[upstreams]]
name = "flaky"
endpoints = ["{dead}", "{echo}"]

[[upstreams]]
name = "echo"
endpoints = ["{echo}"]

[[tcp_routes]]
name = "retry"
listeners = ["retry"]
split = [{{ upstream = "flaky" }}]

[[tcp_routes]]
name = "idle"
listeners = ["idle"]
split = [{{ upstream = "echo" }}]
idle_timeout = "300ms"

[[tcp_routes]]
name = "limited"
listeners = ["limited"]
split = [{{ upstream = "echo" }}]
rate_limit = {{ connections_per_second = 0.1, burst = 2 }}
"#
    ));
    // Half the first tries meet the dead endpoint; each is retried on the live one.
    for _ in 0..6 {
        let mut stream = TcpStream::connect(retry_addr).await.unwrap();
        let mut greeting = [0u8; 3];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut greeting))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&greeting, b"hi\n");
    }

    // Idle: the greeting, then nothing either way, then the gateway closes.
    let mut stream = TcpStream::connect(idle_addr).await.unwrap();
    let started = std::time::Instant::now();
    let read = read_to_close(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(read, b"hi\n");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "{waited:?}"
    );

    // Two connections in the bucket, the third is closed at once with nothing sent.
    let mut kept = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(limited_addr).await.unwrap();
        let mut greeting = [0u8; 3];
        read_greeting(&mut stream, &mut greeting).await;
        kept.push(stream);
    }
    let mut refused = TcpStream::connect(limited_addr).await.unwrap();
    assert!(read_to_close(&mut refused, Duration::from_secs(5))
        .await
        .is_empty());

    // `circuit_breaker.max_connections = 1`: a second connection while one is open is closed.
    let mut open = TcpStream::connect(capped_addr).await.unwrap();
    let mut greeting = [0u8; 3];
    read_greeting(&mut open, &mut greeting).await;
    let mut over = TcpStream::connect(capped_addr).await.unwrap();
    assert!(read_to_close(&mut over, Duration::from_secs(5))
        .await
        .is_empty());
    drop(open);

    tokio::time::sleep(Duration::from_millis(200)).await;
    let metrics = gateway.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "meshgate_tcp_connections_total",
            &[("route", "capped"), ("result", "overflow")]
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "meshgate_tcp_connections_total",
            &[("route", "retry"), ("result", "closed")]
        ),
        6.0,
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "meshgate_tcp_connections_total",
            &[("route", "idle"), ("result", "idle_timeout")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &metrics,
            "meshgate_tcp_connections_total",
            &[("route", "limited"), ("result", "rate_limited")]
        ),
        1.0
    );
    // The dead endpoint's connect failures counted for outlier detection and in /upstreams.
    let upstreams = gateway.admin_json("/upstreams").await;
    let flaky = upstreams["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "flaky")
        .unwrap();
    let dead_endpoint = flaky["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == dead)
        .unwrap()
        .clone();
    assert!(
        dead_endpoint["consecutive_failures"].as_u64().unwrap() >= 1,
        "{dead_endpoint}"
    );
    drop(kept);
}

/// An `openssl s_server` answering `-www` status pages with `leaf`'s certificate (asking for
/// a client certificate from `client_ca` when given); killed on drop.
struct TlsServer {
    child: std::process::Child,
    port: u16,
}

impl TlsServer {
    fn start(leaf: &pki::Leaf, client_ca: Option<&std::path::Path>) -> TlsServer {
        let port = free_port();
        let mut command = bounded(300, "openssl");
        command
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(&leaf.cert)
            .arg("-key")
            .arg(&leaf.key);
        if let Some(ca) = client_ca {
            command.args(["-Verify", "1", "-CAfile"]).arg(ca);
        }
        let child = command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("openssl is installed by `make deps`");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "s_server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        TlsServer { child, port }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        // The child is `timeout`: its whole group goes, `openssl s_server` included.
        kill_bounded(&mut self.child);
    }
}

/// What `openssl s_client` prints after sending an HTTP/1.0 GET over TLS to `port` as
/// `server_name`, trusting `ca`, with `leaf` as its client certificate when given.
fn s_client_get(
    port: u16,
    server_name: &str,
    ca: &std::path::Path,
    leaf: Option<&pki::Leaf>,
) -> String {
    use std::io::Write;
    let mut command = bounded(30, "openssl");
    command
        .args(["s_client", "-ign_eof", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-servername", server_name, "-CAfile"])
        .arg(ca);
    if let Some(leaf) = leaf {
        command
            .arg("-cert")
            .arg(&leaf.cert)
            .arg("-key")
            .arg(&leaf.key);
    }
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET / HTTP/1.0\r\n\r\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn passthrough_routes_by_server_name_without_decrypting() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki::Authority::new(dir.path(), "ca");
    let a = TlsServer::start(
        &ca.server(dir.path(), "a", "server-a", &["a.example"]),
        None,
    );
    let b = TlsServer::start(
        &ca.server(dir.path(), "b", "server-b", &["*.b.example"]),
        None,
    );
    let edge: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gateway = Gateway::start(&format!(
        r#"
[[listeners]]
name = "edge"
listen = "{edge}"
protocol = "tls_passthrough"

[[upstreams]]
name = "a"
endpoints = ["127.0.0.1:{}"]

[[upstreams]]
name = "b"
endpoints = ["127.0.0.1:{}"]

[[tcp_routes]]
name = "to-a"
match = {{ sni = ["a.example"] }}
split = [{{ upstream = "a" }}]

[[tcp_routes]]
name = "to-b"
match = {{ sni = ["*.b.example"] }}
split = [{{ upstream = "b" }}]
"#,
        a.port, b.port
    ));
    // The certificate seen through the gateway is the server's own: nothing was decrypted.
    assert!(served_subject(edge.port(), "a.example").contains("server-a"));
    assert!(served_subject(edge.port(), "shop.b.example").contains("server-b"));
    assert!(served_subject(edge.port(), "A.EXAMPLE").contains("server-a"));
    let page = s_client_get(edge.port(), "a.example", &ca.file, None);
    assert!(page.contains("HTTP/1.0 200 ok"), "{page}");
    // `/routes` and `/explain?sni=` say the same.
    let routes = gateway.admin_json("/routes").await;
    assert_eq!(
        routes["tcp_routes"][1]["sni"],
        serde_json::json!(["*.b.example"])
    );
    assert_eq!(routes["tcp_routes"][1]["settings"]["idle_timeout"], "1h");
    let edge_info = routes["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "edge")
        .unwrap()
        .clone();
    assert_eq!(edge_info["protocol"], "tls_passthrough");
    let explained = gateway.admin_json("/explain?sni=Shop.B.Example").await;
    assert_eq!(explained["protocol"], "tcp");
    assert_eq!(explained["matched"], "to-b", "{explained}");
    assert_eq!(explained["routes"][0]["result"], "skipped");
    assert_eq!(
        explained["candidates"][0]["endpoints"][0],
        format!("127.0.0.1:{}", b.port)
    );
    let explained = gateway.admin_json("/explain?listener=edge&sni=").await;
    assert_eq!(explained["matched"], serde_json::Value::Null, "{explained}");

    // Unknown names and no name: closed.
    assert_eq!(served_subject(edge.port(), "c.example"), "");
    let output = bounded(30, "openssl")
        .args(["s_client", "-noservername", "-connect"])
        .arg(edge.to_string())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&output.stdout).contains("subject="));
    // Bytes that are not TLS: closed too.
    let mut plain = TcpStream::connect(edge).await.unwrap();
    plain.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    assert!(read_to_close(&mut plain, Duration::from_secs(5))
        .await
        .is_empty());

    tokio::time::sleep(Duration::from_millis(200)).await;
    let metrics = gateway.metrics().await;
    let count =
        |labels: &[(&str, &str)]| sample(&metrics, "meshgate_tcp_connections_total", labels);
    assert!(
        count(&[("route", "to-a"), ("result", "closed")]) >= 3.0,
        "{metrics}"
    );
    assert!(count(&[("route", "to-b"), ("result", "closed")]) >= 1.0);
    assert_eq!(count(&[("listener", "edge"), ("result", "no_route")]), 2.0);
    assert_eq!(
        count(&[("listener", "edge"), ("result", "bad_handshake")]),
        1.0
    );
    let log = std::fs::read_to_string(gateway.dir.path().join("access.log")).unwrap();
    assert!(log.contains("\"sni\":\"shop.b.example\""), "{log}");
    // The refused connection's record counts the bytes the client sent.
    let refused: serde_json::Value = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .find(|r: &serde_json::Value| r["close"] == "bad_handshake")
        .expect("a record for the plain-HTTP connection");
    assert_eq!(refused["received_bytes"], 18, "{refused}");
}

#[tokio::test(flavor = "multi_thread")]
async fn terminated_tls_checks_identities_and_originates_mtls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki::Authority::new(dir.path(), "ca");
    let upstream_leaf = ca.server(dir.path(), "upstream", "secure-upstream", &["up.internal"]);
    let secure = TlsServer::start(&upstream_leaf, Some(&ca.file));
    let gateway_server = ca.server(dir.path(), "gateway", "gateway", &["pg.internal"]);
    let gateway_client = ca.client(dir.path(), "gateway-client", "spiffe://test/gateway", false);
    let orders = ca.client(
        dir.path(),
        "orders",
        "spiffe://test/ns/shop/sa/orders",
        false,
    );
    let intruder = ca.client(dir.path(), "intruder", "spiffe://test/ns/other/sa/x", false);
    let pg: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gateway = Gateway::start(&format!(
        r#"
[[listeners]]
name = "pg"
listen = "{pg}"
protocol = "tcp"
[listeners.tls]
{}
[[upstreams]]
name = "secure"
endpoints = ["127.0.0.1:{}"]
tls = {{ sni = "up.internal", ca = "{}", cert = "{}", key = "{}" }}

[[tcp_routes]]
name = "secure"
match = {{ sni = ["pg.internal"] }}
allow = ["spiffe://test/ns/shop/*"]
split = [{{ upstream = "secure" }}]
"#,
        https::mtls_table(&gateway_server, &ca.file, "require"),
        secure.port,
        ca.file.display(),
        gateway_client.cert.display(),
        gateway_client.key.display(),
    ));
    // An allowed identity gets through the gateway's TLS and the gateway's own mTLS to the
    // upstream (which refuses anyone without a certificate from the CA).
    let page = s_client_get(pg.port(), "pg.internal", &ca.file, Some(&orders));
    assert!(page.contains("HTTP/1.0 200 ok"), "{page}");
    assert!(
        page.contains("CN=gateway"),
        "the gateway's certificate: {page}"
    );
    // Another identity, or another name: closed after the handshake.
    let page = s_client_get(pg.port(), "pg.internal", &ca.file, Some(&intruder));
    assert!(!page.contains("200 ok"), "{page}");
    let page = s_client_get(pg.port(), "other.internal", &ca.file, Some(&orders));
    assert!(!page.contains("200 ok"), "{page}");

    tokio::time::sleep(Duration::from_millis(200)).await;
    let metrics = gateway.metrics().await;
    let count =
        |labels: &[(&str, &str)]| sample(&metrics, "meshgate_tcp_connections_total", labels);
    assert_eq!(
        count(&[("route", "secure"), ("result", "closed")]),
        1.0,
        "{metrics}"
    );
    assert_eq!(count(&[("route", "secure"), ("result", "denied")]), 1.0);
    assert_eq!(count(&[("listener", "pg"), ("result", "no_route")]), 1.0);
    let log = std::fs::read_to_string(gateway.dir.path().join("access.log")).unwrap();
    assert!(
        log.contains("\"identity\":\"spiffe://test/ns/shop/sa/orders\""),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reloads_leave_open_connections_alone_and_drains_let_them_finish() {
    let a = start_tcp_echo("A\n").await;
    let b = start_tcp_echo("B\n").await;
    let (listener, addr) = tcp_listener("app", "");
    let body = |upstream: SocketAddr| {
        format!(
            "{listener}\n[[upstreams]]\nname = \"app\"\nendpoints = [\"{upstream}\"]\n\n[[tcp_routes]]\nname = \"app\"\nsplit = [{{ upstream = \"app\" }}]\n"
        )
    };
    let mut gateway = Gateway::start_with_server("drain_delay = \"300ms\"", &body(a));
    async fn open(addr: SocketAddr) -> (TcpStream, String) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut greeting = [0u8; 2];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut greeting))
            .await
            .unwrap()
            .unwrap();
        (stream, String::from_utf8_lossy(&greeting).into_owned())
    }
    async fn echo(stream: &mut TcpStream, text: &[u8]) -> bool {
        if stream.write_all(text).await.is_err() {
            return false;
        }
        let mut back = vec![0u8; text.len()];
        matches!(
            tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut back)).await,
            Ok(Ok(_))
        ) && back == text
    }
    let (mut first, greeting) = open(addr).await;
    assert_eq!(greeting, "A\n");
    assert!(echo(&mut first, b"one").await);

    // The upstream changes: the open connection stays on A, a new one goes to B.
    gateway
        .apply_policy(gateway.policy_with_body(&body(b)))
        .await;
    assert!(echo(&mut first, b"two").await);
    let (mut second, greeting) = open(addr).await;
    assert_eq!(greeting, "B\n");

    // A drain: accepting goes on for drain_delay, then stops; open connections keep
    // working until the grace period (1s) ends, then the process exits.
    let response = client()
        .post(gateway.admin_url("/drain"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let (_third, greeting) = open(addr).await;
    assert_eq!(greeting, "B\n", "still accepting during drain_delay");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer accepting after drain_delay"
    );
    assert!(echo(&mut first, b"three").await, "open connections run on");
    assert!(echo(&mut second, b"four").await);
    assert!(
        gateway.wait_exit(Duration::from_secs(10)),
        "exits after the grace period"
    );
    assert!(read_to_close(&mut first, Duration::from_secs(2))
        .await
        .is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_hands_new_connections_over_and_lets_open_ones_run() {
    let _machine = load_test_lock();
    let echo = start_tcp_echo("A\n").await;
    let (listener, addr) = tcp_listener("app", "");
    let mut gateway = Gateway::start(&format!(
        "{listener}\n[[upstreams]]\nname = \"app\"\nendpoints = [\"{echo}\"]\n\n[[tcp_routes]]\nname = \"app\"\nsplit = [{{ upstream = \"app\" }}]\n"
    ));
    let mut first = TcpStream::connect(addr).await.unwrap();
    let mut greeting = [0u8; 2];
    read_greeting(&mut first, &mut greeting).await;
    // As systemd's ExecReload does: the old process is told first, the new one started after.
    gateway.signal("QUIT");
    let mut new = gateway.spawn_upgrade();
    wait_ready_at(gateway.admin);
    // The old process still moves the first connection's bytes: it runs until the old
    // process's grace period ends.
    first.write_all(b"old").await.unwrap();
    let mut back = [0u8; 3];
    tokio::time::timeout(Duration::from_secs(2), first.read_exact(&mut back))
        .await
        .expect("the open connection runs on")
        .unwrap();
    assert_eq!(&back, b"old");
    assert!(
        gateway.wait_exit(Duration::from_secs(20)),
        "the old process exits"
    );
    assert!(read_to_close(&mut first, Duration::from_secs(2))
        .await
        .is_empty());
    // The new process serves the listener on.
    let mut second = TcpStream::connect(addr).await.unwrap();
    read_greeting(&mut second, &mut greeting).await;
    assert_eq!(&greeting, b"A\n");
    second.write_all(b"new").await.unwrap();
    tokio::time::timeout(Duration::from_secs(2), second.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"new");
    let _ = std::process::Command::new("kill")
        .arg(new.id().to_string())
        .status();
    let _ = new.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_that_resets_mid_stream_ends_the_connection_as_reset() {
    // An upstream that sends 1,000 bytes, then resets (SO_LINGER 0) while the client waits
    // for more.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            socket.write_all(&[7u8; 1000]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            let socket = socket.into_std().unwrap();
            socket2::SockRef::from(&socket)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            drop(socket);
        }
    });
    let (listener, addr) = tcp_listener("app", "");
    let gateway = Gateway::start(&format!(
        "{listener}\n[[upstreams]]\nname = \"app\"\nendpoints = [\"{upstream}\"]\n\n[[tcp_routes]]\nname = \"app\"\nsplit = [{{ upstream = \"app\" }}]\n"
    ));
    // A client that trickles a byte every 20 ms meanwhile.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut read = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let _ = stream.write_all(b"x").await;
        match tokio::time::timeout(Duration::from_millis(20), stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => read.extend_from_slice(&buffer[..n]),
            Err(_) => {}
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the connection never ended"
        );
    }
    assert_eq!(
        read,
        vec![7u8; 1000],
        "every byte sent before the reset arrives"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let metrics = gateway.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "meshgate_tcp_connections_total",
            &[("route", "app"), ("result", "reset")]
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "meshgate_tcp_active_connections",
            &[("listener", "app")]
        ),
        0.0
    );
}
