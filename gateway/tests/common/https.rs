//! HTTPS clients for tests: curl and `openssl s_client` against a TLS gateway, and the
//! gateway itself with a `[listeners.tls]` table.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use super::*;

/// What curl saw.
#[derive(Debug)]
pub struct Fetched {
    /// curl's exit code: 0, or why the transfer failed (35 and 56 for TLS handshakes).
    pub exit: i32,
    pub status: u16,
    pub http_version: String,
    pub headers: String,
    pub body: String,
}

pub fn curl(dir: &Path, args: &[&str], url: &str) -> Fetched {
    let headers = dir.join("curl.headers");
    let body = dir.join("curl.body");
    let _ = std::fs::remove_file(&headers);
    let _ = std::fs::remove_file(&body);
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-D"])
        .arg(&headers)
        .arg("-o")
        .arg(&body)
        .args(["-w", "%{http_code} %{http_version}"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl is installed by `make deps`");
    let written = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut parts = written.split_whitespace();
    Fetched {
        exit: output.status.code().unwrap_or(-1),
        status: parts.next().and_then(|s| s.parse().ok()).unwrap_or(0),
        http_version: parts.next().unwrap_or("").to_owned(),
        headers: std::fs::read_to_string(&headers)
            .unwrap_or_default()
            .to_ascii_lowercase(),
        body: std::fs::read_to_string(&body).unwrap_or_default(),
    }
}

/// Starts a gateway whose `public` listener has `tls` as its `[listeners.tls]` table.
pub fn start_tls_gateway(dir: tempfile::TempDir, tls: &str, body: &str) -> Gateway {
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let access_log = dir.path().join("access.log");
    let policy =
        policy_head(listen, admin, access_log.to_str().unwrap()) + "[listeners.tls]\n" + tls + body;
    Gateway::start_with(dir, &policy, listen, admin)
}

pub fn echo_route(upstream: SocketAddr, name: &str, prefix: &str, extra: &str) -> String {
    format!(
        "\n[[upstreams]]\nname = \"{name}\"\nendpoints = [\"{upstream}\"]\n\n[[routes]]\nname = \"{name}\"\nmatch = {{ path_prefix = \"{prefix}\" }}\nsplit = [{{ upstream = \"{name}\" }}]\n{extra}\n"
    )
}

pub fn resolve(name: &str, gateway: &Gateway) -> String {
    format!("{name}:{}:127.0.0.1", gateway.listen.port())
}

/// The subject CN that `openssl s_client` sees on a new connection for `main.test`.
pub fn served_cn(port: u16) -> String {
    served_subject(port, "main.test")
}

/// The subject line that `openssl s_client` sees on a new connection for `server_name`.
pub fn served_subject(port: u16, server_name: &str) -> String {
    let output = bounded(30, "openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", server_name])
        .stdin(Stdio::null())
        .output()
        .expect("openssl is installed by `make deps`");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find(|l| l.trim_start().starts_with("subject="))
        .unwrap_or_default()
        .to_owned()
}

pub fn replace_by_rename(from: &Path, to: &Path) {
    let staging = to.with_extension("new");
    std::fs::copy(from, &staging).unwrap();
    std::fs::rename(&staging, to).unwrap();
}

/// A `[listeners.tls]` body serving `server`, asking clients for certificates that chain to
/// `client_ca` as `client_auth` says (`"optional"` or `"require"`).
pub fn mtls_table(server: &super::pki::Leaf, client_ca: &Path, client_auth: &str) -> String {
    format!(
        "cert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\nclient_auth = \"{client_auth}\"\n",
        server.cert.display(),
        server.key.display(),
        client_ca.display()
    )
}

/// curl to `path` on `gateway`'s TLS listener as `host` (resolved to the listener), trusting
/// `ca`, presenting `leaf`'s certificate when given, with `extra` arguments.
pub fn curl_as(
    gateway: &Gateway,
    ca: &Path,
    host: &str,
    leaf: Option<&super::pki::Leaf>,
    path: &str,
    extra: &[&str],
) -> Fetched {
    let mut args: Vec<String> = vec![
        "--cacert".into(),
        ca.display().to_string(),
        "--resolve".into(),
        resolve(host, gateway),
    ];
    if let Some(leaf) = leaf {
        args.extend([
            "--cert".into(),
            leaf.cert.display().to_string(),
            "--key".into(),
            leaf.key.display().to_string(),
        ]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let url = format!("https://{host}:{}{path}", gateway.listen.port());
    curl(gateway.dir.path(), &args, &url)
}
