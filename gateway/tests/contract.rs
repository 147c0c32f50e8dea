//! The public contract: DESIGN.md's example policy parses, validates and serves. The example
//! is kept in the repository (`conf/examples/design.toml`), so a fresh clone tests it; where
//! the design document sits beside the checkout (`../shared/DESIGN.md`), the copy must match
//! it. Its files are made with a test PKI; its private addresses are moved to loopback, since
//! nothing here may send traffic anywhere else.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::nginx::{start_nginx_mtls, Nginx};
use common::*;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn design_example() -> String {
    let copy = repo_root().join("conf/examples/design.toml");
    std::fs::read_to_string(&copy).unwrap_or_else(|e| panic!("{}: {e}", copy.display()))
}

/// The TOML block of DESIGN.md's "The policy file" section.
fn example_of_design(text: &str) -> String {
    let section = &text[text.find("## The policy file").expect("policy section")..];
    let start = section.find("```toml\n").expect("a toml block") + "```toml\n".len();
    let end = start + section[start..].find("```").expect("the block's end");
    section[start..end].to_owned()
}

#[test]
fn the_example_copy_matches_the_design_document_beside_the_checkout() {
    let design = repo_root().parent().unwrap().join("shared/DESIGN.md");
    match std::fs::read_to_string(&design) {
        Ok(text) => {
            assert_eq!(
                design_example(),
                example_of_design(&text),
                "conf/examples/design.toml differs from {}: copy the new example in",
                design.display()
            );
            println!("conf/examples/design.toml matches {}", design.display());
        }
        // A clone on its own: the copy in the repository is the contract.
        Err(e) => println!("{}: {e}; checking the copy only", design.display()),
    }
    assert!(design_example().starts_with("version = 1"));
}

/// The example with its files in `dir` and every address on loopback: listeners on free
/// ports, each upstream endpoint on an echo server (named after its upstream).
async fn localize(example: &str, dir: &Path) -> (String, BTreeMap<String, SocketAddr>, Vec<Nginx>) {
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    let ca = common::pki::Authority::new(&tls, "mesh-ca");
    ca.server(&tls, "public", "shop.example.com", &["shop.example.com"]);
    ca.server(&tls, "gateway", "orders.mesh", &["orders.mesh"]);
    ca.client(
        &tls,
        "gateway-client",
        "spiffe://prod.example/ns/mesh/sa/gateway",
        false,
    );
    // Callers of the east-west route: the one it allows, and another service.
    ca.client(
        &tls,
        "checkout",
        "spiffe://prod.example/ns/shop/sa/checkout",
        false,
    );
    ca.client(&tls, "cart", "spiffe://prod.example/ns/shop/sa/cart", false);
    write_token(&dir.join("admin.token"));
    let mut policy = example.replace("/etc/meshgate/", &format!("{}/", dir.display()));

    let mut listeners = BTreeMap::new();
    for (name, addr) in [("public", "0.0.0.0:8443"), ("mesh", "10.0.0.5:15443")] {
        let local: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        assert!(policy.contains(addr), "the example listens on {addr}");
        policy = policy.replace(&format!("\"{addr}\""), &format!("\"{local}\""));
        listeners.insert(name.to_owned(), local);
    }
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    policy = policy.replace("127.0.0.1:9901", &admin.to_string());
    listeners.insert("admin".to_owned(), admin);
    for (endpoint, name) in [
        ("10.0.1.10:8080", "checkout-v1-a"),
        ("10.0.1.11:8080", "checkout-v1-b"),
        ("10.0.2.10:9000", "orders"),
    ] {
        assert!(policy.contains(endpoint), "the example has {endpoint}");
        let local = start_echo(name).await;
        policy = policy.replace(endpoint, &local.to_string());
    }
    // checkout-v2 is reached over mutual TLS (`[upstreams.tls]`): NGINX plays its endpoints,
    // with a certificate for checkout.internal, and requires the gateway's client certificate.
    let v2_cert = ca.server(
        &tls,
        "checkout-v2",
        "checkout.internal",
        &["checkout.internal"],
    );
    let mut servers = Vec::new();
    for (endpoint, name) in [
        ("10.0.1.20:8080", "checkout-v2-a"),
        ("10.0.1.21:8080", "checkout-v2-b"),
    ] {
        assert!(policy.contains(endpoint), "the example has {endpoint}");
        let nginx = start_nginx_mtls(&dir.join(name), &v2_cert, &ca.file, name);
        policy = policy.replace(endpoint, &format!("127.0.0.1:{}", nginx.port));
        servers.push(nginx);
    }
    (policy, listeners, servers)
}

fn curl(args: &[&str]) -> (u16, String) {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-o", "/dev/null", "-D", "-"])
        .args(args)
        .output()
        .expect("curl is installed by `make deps`");
    let mut headers = String::from_utf8_lossy(&output.stdout).to_ascii_lowercase();
    headers.push_str(&String::from_utf8_lossy(&output.stderr));
    let status = headers
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, headers)
}

/// Acceptance of the contract: the example passes `meshgate check` and serves. The canary
/// route splits 90/10 over TLS, and the east-west route admits its one caller over mTLS
/// and refuses another.
#[tokio::test(flavor = "multi_thread")]
async fn the_design_example_parses_validates_and_serves() {
    let example = design_example();
    let dir = tempfile::tempdir().unwrap();
    let (policy, addrs, _nginx) = localize(&example, dir.path()).await;
    let file = dir.path().join("meshgate.toml");
    std::fs::write(&file, &policy).unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .arg("check")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "meshgate check on the DESIGN example:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    let gateway = Gateway::start_with(
        tempfile::tempdir().unwrap(),
        &policy,
        addrs["public"],
        addrs["admin"],
    );
    let tls = dir.path().join("tls");
    let ca = tls.join("mesh-ca.crt");
    let ca = ca.to_str().unwrap();

    // North-south: the canary route, 90/10 between checkout-v1 and checkout-v2.
    let public = addrs["public"].port();
    let resolve = format!("shop.example.com:{public}:127.0.0.1");
    let url = format!("https://shop.example.com:{public}/checkout/cart");
    let mut servers = BTreeMap::<String, u32>::new();
    for _ in 0..20 {
        let (status, headers) = curl(&[
            "--cacert",
            ca,
            "--resolve",
            &resolve,
            "-H",
            "x-canary: on",
            &url,
        ]);
        let server = headers
            .lines()
            .find_map(|l| l.strip_prefix("x-echo-server: "))
            .unwrap_or("none")
            .trim()
            .to_owned();
        if status == 0 {
            eprintln!("no answer: {headers}");
        }
        *servers.entry(format!("{status} {server}")).or_default() += 1;
    }
    eprintln!("canary route: {servers:?}");
    let served = |side: &str| -> u32 {
        servers
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("200 {side}")))
            .map(|(_, n)| n)
            .sum()
    };
    // 18 of 20 go to checkout-v1 and 2 to checkout-v2 (over mutual TLS), less any the route's
    // fault injection (abort_percent = 1) answered first with 503.
    let (v1, v2) = (served("checkout-v1"), served("checkout-v2"));
    assert!(
        (16..=18).contains(&v1),
        "18 of 20 go to checkout-v1: {servers:?}"
    );
    assert!(
        (1..=2).contains(&v2),
        "2 of 20 go to checkout-v2: {servers:?}"
    );
    assert!(
        v1 + v2 >= 18,
        "at most the fault injection's share fails: {servers:?}"
    );
    for outcome in servers.keys() {
        assert!(
            outcome.starts_with("200 checkout-v") || outcome.starts_with("503"),
            "unexpected {outcome}: {servers:?}"
        );
    }
    let (status, headers) = curl(&["--cacert", ca, "--resolve", &resolve, &url]);
    assert_eq!(status, 404, "without x-canary no route matches");
    assert!(headers.contains("x-meshgate-reason: no-route"));

    // East-west: only the checkout service may call orders.
    let mesh = addrs["mesh"].port();
    let resolve = format!("orders.mesh:{mesh}:127.0.0.1");
    let url = format!("https://orders.mesh:{mesh}/v1/orders");
    let as_caller = |stem: &str| {
        let cert = tls.join(format!("{stem}.crt"));
        let key = tls.join(format!("{stem}.key"));
        curl(&[
            "--cacert",
            ca,
            "--resolve",
            &resolve,
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            &url,
        ])
    };
    let (status, headers) = as_caller("checkout");
    assert_eq!(status, 200, "{headers}");
    assert!(headers.contains("x-echo-server: orders"), "{headers}");
    let (status, headers) = as_caller("cart");
    assert_eq!(status, 403, "an unlisted caller: {headers}");
    assert!(headers.contains("x-meshgate-reason: forbidden"));
    let (status, _) = curl(&["--cacert", ca, "--resolve", &resolve, &url]);
    assert_eq!(status, 0, "no client certificate: the handshake fails");
    drop(gateway);
}
