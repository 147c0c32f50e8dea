//! End to end: what the admin API and the files the gateway writes expose. The API answers only
//! requests for its own names (DNS rebinding), refuses a token file others can read, and a
//! policy written through the API keeps its permissions and cannot be redirected by a link.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use common::raw::raw_exchange;
use common::*;

fn mode_of(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// The status of `GET path` sent to `addr` with `Host: host` (and the admin token).
async fn status_for_host(addr: std::net::SocketAddr, path: &str, host: &str) -> u16 {
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {TOKEN}\r\nconnection: close\r\n\r\n"
    );
    let answer = raw_exchange(addr, request.as_bytes(), Duration::from_secs(5)).await;
    *answer
        .statuses()
        .first()
        .unwrap_or_else(|| panic!("no answer for {host}: {}", answer.text()))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_answers_only_its_own_names() {
    let listen: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policy = policy_head(listen, admin, "off").replacen(
        "[admin]\n",
        "[admin]\nallowed_hosts = [\"Gateway-1.internal\"]\n",
        1,
    );
    let echo = start_echo("app").await;
    let gateway = Gateway::start_with(dir, &(policy + &route_to(echo, "")), listen, admin);
    let port = admin.port();
    for path in [
        "/metrics",
        "/readyz",
        "/status",
        "/healthz",
        "/policy",
        "/upstreams",
    ] {
        for host in [
            "evil.example".to_owned(),
            format!("evil.example:{port}"),
            format!("127.0.0.1.evil.example:{port}"),
            format!("localhost.evil.example:{port}"),
        ] {
            let status = status_for_host(gateway.admin, path, &host).await;
            assert_eq!(status, 421, "{path} for Host {host}");
        }
        for host in [
            format!("127.0.0.1:{port}"),
            "127.0.0.1".to_owned(),
            format!("localhost:{port}"),
            format!("[::1]:{port}"),
            format!("gateway-1.internal:{port}"),
        ] {
            let status = status_for_host(gateway.admin, path, &host).await;
            assert_eq!(status, 200, "{path} for Host {host}");
        }
    }
    let request = b"GET /metrics HTTP/1.1\r\nhost: rebound.example\r\nconnection: close\r\n\r\n";
    let answer = raw_exchange(gateway.admin, request, Duration::from_secs(5)).await;
    assert!(answer.text().contains("allowed_hosts"), "{}", answer.text());
    assert!(!answer.text().contains("meshgate_requests_total"));
    // A name that is not a host name is refused by the policy check.
    let bad_policy = policy_head(listen, admin, "off").replacen(
        "[admin]\n",
        "[admin]\nallowed_hosts = [\"http://gw:9901/\"]\n",
        1,
    ) + &route_to(echo, "");
    let bad = gateway.put_policy(bad_policy).await;
    assert_eq!(bad.status(), 400);
    let errors: serde_json::Value = bad.json().await.unwrap();
    assert_eq!(
        errors["errors"][0]["path"], "admin.allowed_hosts[0]",
        "{errors}"
    );
}

#[test]
fn an_explicit_token_file_others_can_read_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin.token");
    write_token(&token);
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let policy = dir.path().join("meshgate.toml");
    std::fs::write(
        &policy,
        format!(
            "version = 1\n[admin]\nlisten = \"{admin}\"\ntoken_file = \"admin.token\"\n[[listeners]]\nname = \"public\"\nlisten = \"{listen}\"\n"
        ),
    )
    .unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .arg("check")
        .arg(&policy)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&check.stdout).into_owned()
        + &String::from_utf8_lossy(&check.stderr);
    println!("{text}");
    assert_eq!(check.status.code(), Some(1), "{text}");
    assert!(text.contains(":4:"), "the line of token_file: {text}");
    assert!(text.contains("admin.token_file"), "{text}");
    assert!(text.contains("mode 0644"), "{text}");
    assert!(text.contains("chmod 600"), "{text}");
    // `run` refuses it the same way, and does not start.
    let mut run = bounded(20, env!("CARGO_BIN_EXE_meshgate"));
    let output = run
        .arg("run")
        .arg("-c")
        .arg(&policy)
        .arg("--pid-file")
        .arg(dir.path().join("meshgate.pid"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "{text}");
    assert!(text.contains("mode 0644"), "{text}");
    // Private, it is accepted.
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .arg("check")
        .arg(&policy)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_written_through_the_api_keeps_its_mode_and_follows_no_planted_link() {
    let echo = start_echo("app").await;
    let gateway = Gateway::start(&route_to(echo, ""));
    std::fs::set_permissions(&gateway.policy_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    // A link where the old code wrote its temporary file, pointing at a file of the victim's.
    let victim = gateway.dir.path().join("victim.txt");
    std::fs::write(&victim, "precious").unwrap();
    let planted = gateway.dir.path().join(".meshgate.toml.meshgate-tmp");
    std::os::unix::fs::symlink(&victim, &planted).unwrap();

    let applied = gateway
        .put_policy(gateway.policy_with_body(&route_to(echo, "# changed")))
        .await;
    assert_eq!(applied.status(), 200, "{}", applied.text().await.unwrap());
    assert_eq!(
        mode_of(&gateway.policy_path),
        0o600,
        "the policy file keeps 0600"
    );
    assert!(std::fs::read_to_string(&gateway.policy_path)
        .unwrap()
        .contains("# changed"));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    let history = gateway.dir.path().join("meshgate.toml.history.json");
    assert_eq!(mode_of(&history), 0o600, "a new history file is private");
    // A 0640 file stays 0640; nothing is left beside it.
    std::fs::set_permissions(&gateway.policy_path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let rolled = client()
        .post(gateway.admin_url("/policy/rollback"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(rolled.status(), 200);
    assert_eq!(mode_of(&gateway.policy_path), 0o640);
    let leftovers: Vec<String> = std::fs::read_dir(gateway.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
