//! End to end: what `meshgate check` tells an operator about a policy that is valid but will
//! not do what was meant (warnings: exit 0, or 1 with `--strict`), and the errors that say
//! what to write instead.

mod common;

use std::path::Path;
use std::process::Command;

use common::pki::Authority;
use common::*;

fn check(policy: &Path, strict: bool) -> (Option<i32>, String) {
    let mut args = vec![policy.as_os_str()];
    if strict {
        args.push("--strict".as_ref());
    }
    meshgate_check(&args)
}

#[test]
fn certificates_identities_and_shadowed_tcp_routes_get_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Authority::new(d, "ca");
    let soon = ca.server_until(d, "soon", "soon.test", 3 * 86_400);
    let expired = ca.server_until(d, "expired", "expired.test", -86_400);
    let fine = ca.server_until(d, "fine", "fine.test", 90 * 86_400);
    let policy = d.join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            r#"version = 1

[[listeners]]
name = "web"
listen = "127.0.0.1:18443"
[listeners.tls]
cert = "{soon_cert}"
key = "{soon_key}"
client_ca = "{leaf_as_ca}"
client_auth = "require"
sni = [{{ server_names = ["expired.test"], cert = "{expired_cert}", key = "{expired_key}" }}]

[[listeners]]
name = "edge"
listen = "127.0.0.1:18444"
protocol = "tls_passthrough"

[[upstreams]]
name = "app"
endpoints = ["127.0.0.1:9000"]

[[routes]]
name = "api"
listeners = ["web"]
split = [{{ upstream = "app" }}]
allow = ["checkout", "spiffe://prod.test/ns/shop/sa/cart"]

[[tcp_routes]]
name = "any-example"
listeners = ["edge"]
match = {{ sni = ["*.example.test"] }}
split = [{{ upstream = "app" }}]

[[tcp_routes]]
name = "db"
listeners = ["edge"]
match = {{ sni = ["db.example.test"] }}
split = [{{ upstream = "app" }}]
"#,
            soon_cert = soon.cert.display(),
            soon_key = soon.key.display(),
            leaf_as_ca = fine.cert.display(),
            expired_cert = expired.cert.display(),
            expired_key = expired.key.display(),
        ),
    )
    .unwrap();
    let (code, said) = check(&policy, false);
    println!("{said}");
    assert_eq!(code, Some(0), "warnings alone pass: {said}");
    for (place, text) in [
        ("listeners[0].tls.cert", "expires on"),
        ("listeners[0].tls.cert", "in 2 day(s)"),
        ("listeners[0].tls.sni[0].cert", "expired on"),
        ("listeners[0].tls.client_ca", "holds no CA certificate"),
        ("routes[0].allow[0]", "\"checkout\" can never match"),
        ("tcp_routes[1].name", "never reached"),
    ] {
        assert!(
            said.lines()
                .any(|l| l.contains("warning:") && l.contains(place) && l.contains(text)),
            "no warning {place}: {text}:\n{said}"
        );
    }
    assert!(
        !said.contains("routes[0].allow[1]"),
        "a SPIFFE ID is fine: {said}"
    );
    let (code, _) = check(&policy, true);
    assert_eq!(code, Some(1), "--strict fails on warnings");
}

#[test]
fn errors_say_what_to_write_instead() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Authority::new(d, "ca");
    let leaf = ca.server(d, "gw", "gw.test", &["gw.test"]);
    let encrypted = d.join("encrypted.key");
    let made = Command::new("openssl")
        .args(["pkey", "-aes256", "-passout", "pass:secret", "-in"])
        .arg(&leaf.key)
        .arg("-out")
        .arg(&encrypted)
        .output()
        .expect("openssl is installed by `make deps`");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let policy = d.join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            r#"version = 1

[server]
threads = 2
threads = 3

[[listeners]]
name = "web"
listen = "127.0.0.1:18443"
[listeners.tls]
cert = "{cert}"
key = "{key}"
"#,
            cert = leaf.cert.display(),
            key = encrypted.display(),
        ),
    )
    .unwrap();
    let (code, said) = check(&policy, false);
    println!("{said}");
    assert_eq!(code, Some(1));
    assert!(
        said.contains(":5:1: (syntax): duplicate key: \"threads\""),
        "{said}"
    );
    std::fs::write(
        &policy,
        std::fs::read_to_string(&policy)
            .unwrap()
            .replace("threads = 3\n", ""),
    )
    .unwrap();
    let (code, said) = check(&policy, false);
    println!("{said}");
    assert_eq!(code, Some(1));
    assert!(said.contains("listeners[0].tls.key"), "{said}");
    assert!(said.contains("is an encrypted private key"), "{said}");
    assert!(!said.contains("no PEM item"), "{said}");

    // A leading-dot name is refused with the wildcard to write; sizes take plain integers.
    std::fs::write(
        &policy,
        r#"version = 1

[[listeners]]
name = "edge"
listen = "127.0.0.1:18444"
protocol = "tls_passthrough"

[[listeners]]
name = "web"
listen = "127.0.0.1:18445"
compress = { min_size = 1024 }

[[upstreams]]
name = "app"
endpoints = ["127.0.0.1:9000"]

[[routes]]
name = "api"
listeners = ["web"]
split = [{ upstream = "app" }]
max_request_body = 1048576

[[tcp_routes]]
name = "db"
listeners = ["edge"]
match = { sni = [".x.test"] }
split = [{ upstream = "app" }]
"#,
    )
    .unwrap();
    let (code, said) = check(&policy, false);
    println!("{said}");
    assert_eq!(code, Some(1));
    assert!(said.contains("tcp_routes[0].match.sni[0]"), "{said}");
    assert!(said.contains("\"*.x.test\""), "{said}");
    assert!(said.contains(": 1 error(s)"), "only the name: {said}");
    let fixed = std::fs::read_to_string(&policy)
        .unwrap()
        .replace(".x.test", "*.x.test");
    std::fs::write(&policy, fixed).unwrap();
    let (code, said) = check(&policy, false);
    assert_eq!(code, Some(0), "{said}");
}
