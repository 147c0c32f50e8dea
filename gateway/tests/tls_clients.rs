//! TLS end to end, the documented rules no other test covered: `client_auth = "optional"`,
//! SNI precedence (exact over wildcard, longer wildcard over shorter), `client_ca` rotating
//! live, and the handshake held to `client_header_timeout`.

mod common;

use std::time::{Duration, Instant};

use common::https::*;
use common::pki::{Authority, Leaf};
use common::*;

/// A client that connects to a TLS listener and sends nothing is closed once
/// `client_header_timeout` has passed (the handshake counts toward it, as in NGINX; Pingora
/// alone allowed 60 s), counted as a `timeout` and logged; a client that completes its
/// handshake in time is served.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_tls_client_is_closed_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    let ca = Authority::new(path, "ca");
    let server = ca.server(path, "main", "main", &["main.test"]);
    let upstream = start_echo("u").await;
    let listen: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let access_log = path.join("access.log");
    let policy = policy_head(listen, admin, access_log.to_str().unwrap()).replacen(
        "[server]\n",
        "[server]\nclient_header_timeout = \"700ms\"\n",
        1,
    ) + &format!(
        "[listeners.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        server.cert.display(),
        server.key.display()
    ) + &echo_route(upstream, "u", "/", "");
    let gateway = Gateway::start_with(dir, &policy, listen, admin);

    let mut silent = std::net::TcpStream::connect(gateway.listen).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let read = std::io::Read::read(&mut silent, &mut [0u8; 64]);
    let waited = started.elapsed();
    assert!(
        matches!(read, Ok(0))
            || read
                .as_ref()
                .is_err_and(|e| e.kind() != std::io::ErrorKind::WouldBlock),
        "closed by the gateway: {read:?}"
    );
    assert!(
        waited >= Duration::from_millis(600) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );
    let timeouts = gateway
        .wait_for_metric(
            "meshgate_tls_handshake_failures_total{listener=\"public\",reason=\"timeout\"}",
            1.0,
            Duration::from_secs(5),
        )
        .await;
    assert!(timeouts >= 1.0, "the timed-out handshake was not counted");
    let stderr = gateway.stderr();
    assert!(
        stderr.contains("TLS handshake failed: no TLS handshake within 700ms"),
        "{stderr}"
    );
    let served = curl_as(&gateway, &ca.file, "main.test", None, "/", &[]);
    assert_eq!((served.exit, served.status), (0, 200), "{served:?}");
}

/// `optional`: a client without a certificate gets in with no identity (and an `allow` route
/// refuses it), one with a valid certificate is identified, and one whose certificate does
/// not verify is refused in the handshake.
#[tokio::test(flavor = "multi_thread")]
async fn optional_client_auth_admits_anonymous_clients_and_verifies_sent_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    let ca = Authority::new(path, "mesh-ca");
    let foreign = Authority::new(path, "foreign-ca");
    let server = ca.server(path, "gateway", "gateway", &["mesh.test"]);
    let checkout = ca.client(path, "checkout", "spiffe://test/ns/shop/sa/checkout", false);
    let forged = foreign.client(path, "forged", "spiffe://test/ns/shop/sa/checkout", false);
    let upstream = start_echo("orders").await;
    let tls = mtls_table(&server, &ca.file, "optional");
    let body = echo_route(
        upstream,
        "private",
        "/headers/private",
        "allow = [\"spiffe://test/ns/shop/*\"]",
    ) + "\n[[routes]]\nname = \"open\"\nmatch = { path_prefix = \"/\" }\nsplit = [{ upstream = \"private\" }]\n";
    let gateway = start_tls_gateway(dir, &tls, &body);
    let fetch =
        |leaf: Option<&Leaf>, path: &str| curl_as(&gateway, &ca.file, "mesh.test", leaf, path, &[]);

    let anonymous = fetch(None, "/headers");
    assert_eq!(
        (anonymous.exit, anonymous.status),
        (0, 200),
        "{anonymous:?}"
    );
    assert!(
        !anonymous.body.contains("x-forwarded-client-cert"),
        "an anonymous client got an identity: {anonymous:?}"
    );
    let refused = fetch(None, "/headers/private");
    assert_eq!(refused.status, 403, "{refused:?}");
    assert!(refused.headers.contains("x-meshgate-reason: forbidden"));

    let identified = fetch(Some(&checkout), "/headers/private");
    assert_eq!(
        (identified.exit, identified.status),
        (0, 200),
        "{identified:?}"
    );
    assert!(
        identified
            .body
            .contains("URI=spiffe://test/ns/shop/sa/checkout"),
        "{identified:?}"
    );

    let forged = fetch(Some(&forged), "/headers");
    assert_ne!(
        forged.exit, 0,
        "a certificate from a foreign CA got in: {forged:?}"
    );
    assert_eq!(forged.status, 0, "{forged:?}");
    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains(
            "meshgate_tls_handshake_failures_total{listener=\"public\",reason=\"unknown-ca\"} 1"
        ),
        "{metrics}"
    );
}

/// An exact name wins over a wildcard that also matches it, a longer wildcard over a shorter
/// one, and a name no entry has gets the listener's default certificate.
#[tokio::test(flavor = "multi_thread")]
async fn sni_prefers_the_exact_name_then_the_longer_wildcard() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    let ca = Authority::new(path, "ca");
    let default = ca.server(path, "default", "default-cert", &["main.test"]);
    let short = ca.server(path, "short", "short-wildcard", &["*.example.test"]);
    let long = ca.server(path, "long", "long-wildcard", &["*.api.example.test"]);
    let exact = ca.server(path, "exact", "exact-name", &["v1.api.example.test"]);
    let entry = |names: &str, leaf: &Leaf| {
        format!(
            "[[listeners.tls.sni]]\nserver_names = [{names}]\ncert = \"{}\"\nkey = \"{}\"\n",
            leaf.cert.display(),
            leaf.key.display()
        )
    };
    // Listed with the shortest match first, so the order of entries is not what decides.
    let tls = format!(
        "cert = \"{}\"\nkey = \"{}\"\n{}{}{}",
        default.cert.display(),
        default.key.display(),
        entry("\"*.example.test\"", &short),
        entry("\"*.api.example.test\"", &long),
        entry("\"v1.api.example.test\"", &exact),
    );
    let upstream = start_echo("u").await;
    let gateway = start_tls_gateway(dir, &tls, &echo_route(upstream, "u", "/", ""));
    let port = gateway.listen.port();
    for (server_name, served) in [
        ("v1.api.example.test", "exact-name"),
        ("v2.api.example.test", "long-wildcard"),
        ("api.example.test", "short-wildcard"),
        ("www.example.test", "short-wildcard"),
        ("deep.v1.api.example.test", "default-cert"),
        ("other.test", "default-cert"),
    ] {
        let subject = served_subject(port, server_name);
        assert!(
            subject.contains(served),
            "{server_name}: expected {served}, got {subject:?}"
        );
    }
}

/// Replacing the `client_ca` file by rename is picked up live: certificates of the new CA
/// get in and those of the old one no longer do, without a restart.
#[tokio::test(flavor = "multi_thread")]
async fn client_ca_rotates_live() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    let old_ca = Authority::new(path, "old-ca");
    let new_ca = Authority::new(path, "new-ca");
    let server = old_ca.server(path, "gateway", "gateway", &["mesh.test"]);
    let old_client = old_ca.client(path, "old-client", "spiffe://test/ns/a/sa/old", false);
    let new_client = new_ca.client(path, "new-client", "spiffe://test/ns/a/sa/new", false);
    let live = path.join("live");
    std::fs::create_dir(&live).unwrap();
    let client_ca = live.join("client-ca.crt");
    std::fs::copy(&old_ca.file, &client_ca).unwrap();
    let tls = mtls_table(&server, &client_ca, "require");
    let upstream = start_echo("u").await;
    let gateway = start_tls_gateway(dir, &tls, &echo_route(upstream, "u", "/", ""));
    let pid = gateway.pid();
    let fetch = |leaf: &Leaf| curl_as(&gateway, &old_ca.file, "mesh.test", Some(leaf), "/", &[]);
    assert_eq!(fetch(&old_client).status, 200);
    assert_eq!(
        fetch(&new_client).status,
        0,
        "the new CA was trusted too early"
    );

    replace_by_rename(&new_ca.file, &client_ca);
    let deadline = Instant::now() + Duration::from_secs(10);
    while fetch(&new_client).status != 200 {
        assert!(
            Instant::now() < deadline,
            "the new client CA was never loaded: {}",
            gateway.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let old = fetch(&old_client);
    assert_ne!(old.exit, 0, "the old CA is still trusted: {old:?}");
    assert_eq!(gateway.pid(), pid, "the gateway restarted");
    let metrics = gateway.metrics().await;
    assert!(
        metric_sum(&metrics, "meshgate_tls_reloads_total{result=\"applied\"}") >= 1.0,
        "{metrics}"
    );
}

/// A rotation by a swapped folder link, as Kubernetes mounts a secret (`tls.crt` →
/// `..data/tls.crt`, `..data` → a dated folder, replaced by renaming a new link over it), is
/// seen live though neither certificate path changes, while a file written all the time in
/// the same folder doesn't hold it back.
#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_swapped_by_a_folder_link_rotates_live() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    let ca = Authority::new(path, "ca");
    let first = ca.server(path, "first", "first-cert", &["main.test"]);
    let second = ca.server(path, "second", "second-cert", &["main.test"]);
    let mount = path.join("secret");
    let dated = |name: &str, leaf: &Leaf| {
        let folder = mount.join(name);
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::copy(&leaf.cert, folder.join("tls.crt")).unwrap();
        std::fs::copy(&leaf.key, folder.join("tls.key")).unwrap();
    };
    dated("..2026_01", &first);
    symlink("..2026_01", mount.join("..data")).unwrap();
    symlink("..data/tls.crt", mount.join("tls.crt")).unwrap();
    symlink("..data/tls.key", mount.join("tls.key")).unwrap();
    let tls = format!(
        "cert = \"{}\"\nkey = \"{}\"\n",
        mount.join("tls.crt").display(),
        mount.join("tls.key").display()
    );
    let upstream = start_echo("u").await;
    let gateway = start_tls_gateway(dir, &tls, &echo_route(upstream, "u", "/", ""));
    let port = gateway.listen.port();
    assert!(served_subject(port, "main.test").contains("first-cert"));

    // Noise beside the secret, written every 20 ms for the whole test.
    let noise = mount.join("noise.log");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            for i in 0..500 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                std::fs::write(&noise, format!("{i}\n")).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    dated("..2026_02", &second);
    symlink("..2026_02", mount.join("..data_tmp")).unwrap();
    std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !served_subject(port, "main.test").contains("second-cert") {
        assert!(
            Instant::now() < deadline,
            "the swapped certificate was never served: {}",
            gateway.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
}
