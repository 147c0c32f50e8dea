//! TLS end to end: the real gateway with a test PKI from rcgen, driven by curl, openssl
//! s_client and testssl.sh, in front of echo upstreams and NGINX.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::https::*;
use common::nginx::start_nginx_mtls;
use common::pki::Authority;
use common::*;

/// Acceptance: HTTPS over HTTP/1.1 and HTTP/2 (ALPN), the certificate chosen by SNI, and
/// testssl.sh finding SSLv2, SSLv3, TLS 1 and TLS 1.1 not offered and TLS 1.3 offered.
#[tokio::test(flavor = "multi_thread")]
async fn https_serves_http1_and_http2_with_certificates_chosen_by_sni() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new(dir.path(), "ca");
    let main = ca.server(dir.path(), "main", "main", &["main.test"]);
    let api = ca.server(dir.path(), "api", "api", &["api.test", "*.api.test"]);
    let upstream = start_echo("u").await;
    let tls = format!(
        "cert = \"{}\"\nkey = \"{}\"\n[[listeners.tls.sni]]\nserver_names = [\"api.test\", \"*.api.test\"]\ncert = \"{}\"\nkey = \"{}\"\n",
        main.cert.display(),
        main.key.display(),
        api.cert.display(),
        api.key.display()
    );
    let gateway = start_tls_gateway(dir, &tls, &echo_route(upstream, "u", "/", ""));
    let work = gateway.dir.path();
    let cacert = ca.file.to_str().unwrap().to_owned();

    let url = |host: &str| format!("https://{host}:{}/", gateway.listen.port());
    for (host, version_flag, version) in [
        ("main.test", "--http1.1", "1.1"),
        ("main.test", "--http2", "2"),
        ("api.test", "--http2", "2"),
        ("v1.api.test", "--http1.1", "1.1"),
    ] {
        let fetched = curl(
            work,
            &[
                "--cacert",
                &cacert,
                "--resolve",
                &resolve(host, &gateway),
                version_flag,
            ],
            &url(host),
        );
        assert_eq!(
            (fetched.exit, fetched.status, fetched.http_version.as_str()),
            (0, 200, version),
            "{host} {version_flag}: {fetched:?}"
        );
        assert!(fetched.headers.contains("x-echo-server: u"), "{fetched:?}");
    }
    // The default certificate does not name other hosts, so verification fails: the SNI
    // entry was not used for them.
    let other = curl(
        work,
        &[
            "--cacert",
            &cacert,
            "--resolve",
            &resolve("other.test", &gateway),
        ],
        &url("other.test"),
    );
    assert_eq!(other.exit, 60, "certificate does not match: {other:?}");
    // And the upstream is told the request came over TLS.
    let forwarded = curl(
        work,
        &[
            "--cacert",
            &cacert,
            "--resolve",
            &resolve("main.test", &gateway),
        ],
        &format!("https://main.test:{}/headers", gateway.listen.port()),
    );
    assert!(
        forwarded.body.contains("x-forwarded-proto: https"),
        "{forwarded:?}"
    );

    // The build under test is the one these tests ran on.
    let backend = if cfg!(feature = "boringssl") {
        "boringssl"
    } else {
        "rustls"
    };
    let metrics = gateway.metrics().await;
    assert!(metrics.contains(&format!("tls=\"{backend}\"")), "{metrics}");
    // The readiness probe, which connects and leaves, is no failed handshake.
    assert_eq!(
        metric_sum(
            &metrics,
            "meshgate_tls_handshake_failures_total{listener=\"public\",reason=\"closed\"}"
        ),
        0.0,
        "{metrics}"
    );

    let output = bounded(300, "testssl")
        .args([
            "--protocols",
            "--color",
            "0",
            "--warnings",
            "off",
            "--quiet",
        ])
        .arg(format!("127.0.0.1:{}", gateway.listen.port()))
        .output()
        .expect("testssl (Debian package testssl.sh) is installed by `make deps`");
    let report = String::from_utf8_lossy(&output.stdout);
    eprintln!("{report}");
    let line = |protocol: &str| {
        report
            .lines()
            .find(|l| l.trim_start().starts_with(protocol))
            .unwrap_or_default()
            .to_owned()
    };
    for protocol in ["SSLv2 ", "SSLv3 ", "TLS 1 ", "TLS 1.1 "] {
        assert!(
            line(protocol).contains("not offered"),
            "{protocol}: {report}"
        );
    }
    let tls12 = line("TLS 1.2 ");
    assert!(
        tls12.contains("offered") && !tls12.contains("not offered"),
        "{report}"
    );
    let tls13 = line("TLS 1.3 ");
    assert!(
        tls13.contains("offered") && !tls13.contains("not offered"),
        "{report}"
    );

    // Failed handshakes are counted by reason and logged at most once a second per reason,
    // not as an ERROR line per connection: testssl's old protocols, plain HTTP sent to the TLS
    // port (50 times in a burst), and a port check that connects and leaves.
    let logged_before = gateway.stderr().len();
    let started = Instant::now();
    for _ in 0..50 {
        let mut plain = std::net::TcpStream::connect(gateway.listen).unwrap();
        plain
            .write_all(b"GET / HTTP/1.1\r\nHost: main.test\r\n\r\n")
            .unwrap();
        plain
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = std::io::Read::read(&mut plain, &mut [0u8; 512]);
    }
    let burst = started.elapsed();
    // A server name that is no DNS name: rustls warns of it once per connection, which the
    // gateway's log leaves out.
    served_subject(gateway.listen.port(), "bad..name");
    drop(std::net::TcpStream::connect(gateway.listen).unwrap());
    let failures = |reason: &str| {
        format!("meshgate_tls_handshake_failures_total{{listener=\"public\",reason=\"{reason}\"}}")
    };
    let closed = gateway
        .wait_for_metric(&failures("closed"), 1.0, Duration::from_secs(5))
        .await;
    assert!(
        closed >= 1.0,
        "the connection closed before a handshake was not counted"
    );
    let metrics = gateway.metrics().await;
    assert!(
        metric_sum(&metrics, &failures("protocol")) >= 50.0,
        "{metrics}"
    );
    assert!(
        metric_sum(&metrics, &failures("incompatible")) >= 1.0,
        "{metrics}"
    );
    let stderr = gateway.stderr();
    assert!(!stderr.contains("Downstream handshake"), "{stderr}");
    assert!(!stderr.contains("ERROR"), "{stderr}");
    assert!(!stderr.contains("Illegal SNI"), "{stderr}");
    assert!(lines_with(&stderr, "closed") >= 1, "{stderr}");
    // One line a second at most for the burst's 50 failures.
    let since_burst = &stderr[logged_before..];
    let allowed = burst.as_secs() as usize + 2;
    assert!(
        lines_with(since_burst, "protocol") <= allowed,
        "{} lines in {burst:?}: {since_burst}",
        lines_with(since_burst, "protocol")
    );
}

/// The gateway's lines for failed handshakes with reason `reason` in `log`.
fn lines_with(log: &str, reason: &str) -> usize {
    log.lines()
        .filter(|l| {
            l.contains("TLS handshake failed") && l.contains(&format!("reason=\"{reason}\""))
        })
        .count()
}

/// Acceptance: on a `require` listener, no certificate, a foreign CA's certificate and an
/// expired one are refused; an allowed identity passes, an unlisted one gets 403, a route
/// without `allow` under `default_authz = "deny"` gets 403; the upstream sees the caller's
/// SPIFFE ID and never a forged header.
#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_identities_and_authorization() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    let ca = Authority::new(path, "mesh-ca");
    let foreign = Authority::new(path, "foreign-ca");
    let server = ca.server(path, "gateway", "gateway", &["mesh.test"]);
    let checkout = ca.client(path, "checkout", "spiffe://test/ns/shop/sa/checkout", false);
    let cart = ca.client(path, "cart", "spiffe://test/ns/shop/sa/cart", false);
    let stranger = ca.client(path, "stranger", "spiffe://test/ns/other/sa/x", false);
    let expired = ca.client(path, "expired", "spiffe://test/ns/shop/sa/checkout", true);
    let forged = foreign.client(path, "forged", "spiffe://test/ns/shop/sa/checkout", false);
    let upstream = start_echo("orders").await;
    let tls = format!(
        "cert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\nclient_auth = \"require\"\ndefault_authz = \"deny\"\n",
        server.cert.display(),
        server.key.display(),
        ca.file.display()
    );
    let body = echo_route(
        upstream,
        "orders",
        "/headers",
        "allow = [\"spiffe://test/ns/shop/sa/checkout\"]",
    ) + "\n[[routes]]\nname = \"shop\"\nmatch = { path_prefix = \"/shop\" }\nsplit = [{ upstream = \"orders\" }]\nallow = [\"spiffe://test/ns/shop/*\"]\nrate_limit = { requests_per_second = 0.1, burst = 2, key = \"identity\" }\n\n[[routes]]\nname = \"closed\"\nmatch = { path_prefix = \"/\" }\nsplit = [{ upstream = \"orders\" }]\n";
    let gateway = start_tls_gateway(dir, &tls, &body);
    let fetch = |leaf: Option<&common::pki::Leaf>, path: &str, extra: &[&str]| {
        curl_as(&gateway, &ca.file, "mesh.test", leaf, path, extra)
    };

    for (who, leaf) in [
        ("no certificate", None),
        ("a foreign CA's certificate", Some(&forged)),
        ("an expired certificate", Some(&expired)),
    ] {
        let refused = fetch(leaf, "/headers", &[]);
        assert!(
            refused.exit != 0 && refused.status == 0,
            "{who} must fail the handshake: {refused:?}"
        );
    }

    let allowed = fetch(
        Some(&checkout),
        "/headers",
        &[
            "-H",
            "x-forwarded-client-cert: URI=spiffe://test/ns/admin/sa/root",
        ],
    );
    assert_eq!(allowed.status, 200, "{allowed:?}");
    let forwarded: Vec<&str> = allowed
        .body
        .lines()
        .filter(|l| l.starts_with("x-forwarded-client-cert:"))
        .collect();
    assert_eq!(forwarded.len(), 1, "{}", allowed.body);
    assert!(
        forwarded[0].ends_with(";URI=spiffe://test/ns/shop/sa/checkout")
            && forwarded[0].contains("Hash="),
        "{}",
        forwarded[0]
    );
    assert!(!allowed.body.contains("spiffe://test/ns/admin"));

    let unlisted = fetch(Some(&cart), "/headers", &[]);
    assert_eq!(unlisted.status, 403, "{unlisted:?}");
    assert!(unlisted.headers.contains("x-meshgate-reason: forbidden"));
    // A prefix entry admits the whole namespace, and nobody else.
    assert_eq!(fetch(Some(&cart), "/shop", &[]).status, 200);
    assert_eq!(fetch(Some(&stranger), "/shop", &[]).status, 403);
    // No `allow` under default_authz = "deny".
    let closed = fetch(Some(&checkout), "/other", &[]);
    assert_eq!(closed.status, 403, "{closed:?}");

    // The identity is a rate-limit key: the cart's bucket is apart from the checkout's.
    assert_eq!(fetch(Some(&cart), "/shop", &[]).status, 200);
    assert_eq!(fetch(Some(&cart), "/shop", &[]).status, 429);
    assert_eq!(fetch(Some(&checkout), "/shop", &[]).status, 200);

    let metrics = gateway.metrics().await;
    assert!(
        metric_sum(&metrics, "meshgate_authz_denied_total{route=\"closed\"}") >= 1.0,
        "{metrics}"
    );
    assert!(
        metric_sum(&metrics, "meshgate_authz_denied_total{route=\"orders\"}") >= 1.0,
        "{metrics}"
    );
    for reason in ["expired", "unknown-ca", "no-certificate"] {
        assert!(
            metric_sum(
                &metrics,
                &format!(
                    "meshgate_tls_handshake_failures_total{{listener=\"public\",reason=\"{reason}\"}}"
                )
            ) >= 1.0,
            "{reason}: {metrics}"
        );
    }
    assert!(
        metric_sum(
            &metrics,
            "meshgate_tls_handshakes_total{listener=\"public\"}"
        ) >= 5.0
    );
    assert!(
        metrics.contains("meshgate_tls_certificate_expiry_timestamp_seconds{file="),
        "{metrics}"
    );
    let records = gateway
        .access_records_until(|records| {
            records
                .iter()
                .any(|r| r["identity"] == "spiffe://test/ns/shop/sa/checkout")
        })
        .await;
    assert!(
        records
            .iter()
            .any(|r| r["identity"] == "spiffe://test/ns/shop/sa/checkout" && r["status"] == 200),
        "{records:#?}"
    );
}

/// Acceptance: replacing the listener's certificate by rename is seen by a new
/// `openssl s_client` within seconds, by the same process, while an established connection
/// keeps working. A bad file is refused and counted, and the old certificate keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn certificates_rotate_live_and_bad_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    let ca = Authority::new(path, "ca");
    let first = ca.server(path, "first", "first", &["main.test"]);
    let second = ca.server(path, "second", "second", &["main.test"]);
    let live = path.join("live");
    std::fs::create_dir(&live).unwrap();
    let (cert, key) = (live.join("tls.crt"), live.join("tls.key"));
    std::fs::copy(&first.cert, &cert).unwrap();
    std::fs::copy(&first.key, &key).unwrap();
    let upstream = start_echo("u").await;
    let tls = format!(
        "cert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let mut gateway = start_tls_gateway(dir, &tls, &echo_route(upstream, "u", "/", ""));
    let port = gateway.listen.port();
    let pid = gateway.pid();
    assert!(served_cn(port).contains("first"), "{}", served_cn(port));

    // A connection made before the rotation.
    let mut established = bounded(120, "openssl")
        .args([
            "s_client",
            "-quiet",
            "-connect",
            &format!("127.0.0.1:{port}"),
        ])
        .args(["-servername", "main.test"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut to_server = established.stdin.take().unwrap();
    let mut from_server = BufReader::new(established.stdout.take().unwrap());
    let mut ask = |to_server: &mut std::process::ChildStdin| {
        to_server
            .write_all(b"GET / HTTP/1.1\r\nHost: main.test\r\n\r\n")
            .unwrap();
        let mut status = String::new();
        let read = from_server.read_line(&mut status).unwrap();
        assert!(read > 0, "the gateway closed the established connection");
        // Drain the rest of the response: headers, then a 1 KiB body.
        let mut length = 0;
        loop {
            let mut line = String::new();
            let read = from_server.read_line(&mut line).unwrap();
            assert!(read > 0, "the connection closed inside a response head");
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; length];
        std::io::Read::read_exact(&mut from_server, &mut body).unwrap();
        status
    };
    assert!(ask(&mut to_server).contains("200"));

    replace_by_rename(&second.key, &key);
    replace_by_rename(&second.cert, &cert);
    let started = Instant::now();
    while !served_cn(port).contains("second") {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "new handshakes still get {}",
            served_cn(port)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("rotation seen after {:?}", started.elapsed());
    assert!(gateway.is_running());
    assert_eq!(gateway.pid(), pid);
    assert!(
        ask(&mut to_server).contains("200"),
        "the established connection still works"
    );
    kill_bounded(&mut established);

    // A broken certificate file is refused; the second certificate keeps serving.
    std::fs::write(path_of(&cert).with_extension("bad"), "not a certificate").unwrap();
    std::fs::rename(path_of(&cert).with_extension("bad"), &cert).unwrap();
    // Wait for the watcher to have seen the broken file and refused it.
    gateway
        .wait_for_metric(
            "meshgate_tls_reloads_total{result=\"refused\"}",
            1.0,
            Duration::from_secs(5),
        )
        .await;
    assert!(served_cn(port).contains("second"), "{}", served_cn(port));
    let metrics = gateway.metrics().await;
    assert!(
        metric_sum(&metrics, "meshgate_tls_reloads_total{result=\"refused\"}") >= 1.0,
        "{metrics}"
    );
    assert!(
        metric_sum(&metrics, "meshgate_tls_reloads_total{result=\"applied\"}") >= 1.0,
        "{metrics}"
    );
    assert!(gateway.stderr().contains("TLS files refused"));
}

fn path_of(path: &Path) -> std::path::PathBuf {
    path.to_path_buf()
}

/// Acceptance: an upstream that requires a client certificate (NGINX with
/// `ssl_verify_client on`) is reached with the gateway's certificate; an upstream whose
/// certificate comes from a foreign CA is refused with a 5xx.
#[tokio::test(flavor = "multi_thread")]
async fn upstream_mutual_tls_to_nginx() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    let ca = Authority::new(path, "mesh-ca");
    let foreign = Authority::new(path, "foreign-ca");
    let nginx_cert = ca.server(path, "nginx", "orders.internal", &["orders.internal"]);
    let spiffe_id = "spiffe://test/ns/mesh/sa/gateway";
    let issued = ca.client(path, "gateway-client", spiffe_id, false);
    let renewed = ca.client(path, "gateway-renewed", spiffe_id, false);
    // The files the gateway reads, replaced by rename later.
    let live = path.join("live");
    std::fs::create_dir(&live).unwrap();
    let gateway_cert = common::pki::Leaf {
        cert: live.join("client.crt"),
        key: live.join("client.key"),
    };
    std::fs::copy(&issued.cert, &gateway_cert.cert).unwrap();
    std::fs::copy(&issued.key, &gateway_cert.key).unwrap();
    let nginx = start_nginx_mtls(&path.join("nginx"), &nginx_cert, &ca.file, "orders");
    let body = format!(
        r#"
[[upstreams]]
name = "orders"
endpoints = ["127.0.0.1:{port}"]
[upstreams.tls]
sni = "orders.internal"
ca = "{ca}"
cert = "{cert}"
key = "{key}"

[[upstreams]]
name = "untrusted"
endpoints = ["127.0.0.1:{port}"]
[upstreams.tls]
sni = "orders.internal"
ca = "{foreign}"
cert = "{cert}"
key = "{key}"

[[routes]]
name = "untrusted"
match = {{ path_prefix = "/untrusted" }}
split = [{{ upstream = "untrusted" }}]

[[routes]]
name = "orders"
match = {{ path_prefix = "/" }}
split = [{{ upstream = "orders" }}]
"#,
        port = nginx.port,
        ca = ca.file.display(),
        foreign = foreign.file.display(),
        cert = gateway_cert.cert.display(),
        key = gateway_cert.key.display(),
    );
    let gateway = Gateway::start(&body);
    let work = gateway.dir.path();
    let reached = curl(work, &[], &gateway.url("/"));
    assert_eq!(reached.status, 200, "{reached:?}\n{}", gateway.stderr());
    assert!(reached.body.contains("CN=gateway-client"), "{reached:?}");

    // The client certificate rotates live: new connections present the renewed one.
    replace_by_rename(&renewed.key, &gateway_cert.key);
    replace_by_rename(&renewed.cert, &gateway_cert.cert);
    let started = Instant::now();
    loop {
        let fetched = curl(work, &[], &gateway.url("/"));
        if fetched.body.contains("CN=gateway-renewed") {
            break;
        }
        assert_eq!(fetched.status, 200, "{fetched:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still the old certificate: {fetched:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let refused = curl(work, &[], &gateway.url("/untrusted"));
    assert!(
        (500..600).contains(&refused.status),
        "a foreign CA's certificate is refused: {refused:?}"
    );
    assert!(
        refused
            .headers
            .contains("x-meshgate-reason: connect-failure"),
        "{refused:?}"
    );
}
