//! TLS end to end, the documented rules no other test covered: `client_auth = "optional"`,
//! SNI precedence (exact over wildcard, longer wildcard over shorter), and `client_ca`
//! rotating live.

mod common;

use std::time::{Duration, Instant};

use common::https::*;
use common::pki::{Authority, Leaf};
use common::*;

/// Client-certificate arguments for curl.
fn with_cert(leaf: &Leaf) -> Vec<String> {
    vec![
        "--cert".into(),
        leaf.cert.display().to_string(),
        "--key".into(),
        leaf.key.display().to_string(),
    ]
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
    let tls = format!(
        "cert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\nclient_auth = \"optional\"\n",
        server.cert.display(),
        server.key.display(),
        ca.file.display()
    );
    let body = echo_route(
        upstream,
        "private",
        "/headers/private",
        "allow = [\"spiffe://test/ns/shop/*\"]",
    ) + "\n[[routes]]\nname = \"open\"\nmatch = { path_prefix = \"/\" }\nsplit = [{ upstream = \"private\" }]\n";
    let gateway = start_tls_gateway(dir, &tls, &body);
    let work = gateway.dir.path();
    let base = format!("https://mesh.test:{}", gateway.listen.port());
    let fetch = |extra: Vec<String>, path: &str| {
        let mut args = vec![
            "--cacert".to_owned(),
            ca.file.display().to_string(),
            "--resolve".to_owned(),
            resolve("mesh.test", &gateway),
        ];
        args.extend(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(work, &args, &format!("{base}{path}"))
    };

    let anonymous = fetch(vec![], "/headers");
    assert_eq!(
        (anonymous.exit, anonymous.status),
        (0, 200),
        "{anonymous:?}"
    );
    assert!(
        !anonymous.body.contains("x-forwarded-client-cert"),
        "an anonymous client got an identity: {anonymous:?}"
    );
    let refused = fetch(vec![], "/headers/private");
    assert_eq!(refused.status, 403, "{refused:?}");
    assert!(refused.headers.contains("x-meshgate-reason: forbidden"));

    let identified = fetch(with_cert(&checkout), "/headers/private");
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

    let forged = fetch(with_cert(&forged), "/headers");
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
    let tls = format!(
        "cert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\nclient_auth = \"require\"\n",
        server.cert.display(),
        server.key.display(),
        client_ca.display()
    );
    let upstream = start_echo("u").await;
    let gateway = start_tls_gateway(dir, &tls, &echo_route(upstream, "u", "/", ""));
    let pid = gateway.pid();
    let work = gateway.dir.path();
    let url = format!("https://mesh.test:{}/", gateway.listen.port());
    let fetch = |leaf: &Leaf| {
        let mut args = vec![
            "--cacert".to_owned(),
            old_ca.file.display().to_string(),
            "--resolve".to_owned(),
            resolve("mesh.test", &gateway),
        ];
        args.extend(with_cert(leaf));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(work, &args, &url)
    };
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
        metrics.contains("meshgate_tls_reloads_total{result=\"applied\"}"),
        "{metrics}"
    );
}
