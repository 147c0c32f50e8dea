//! NGINX as a TLS upstream that requires a client certificate, or as a TLS file server (a
//! JWKS), started by the test and killed on drop.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::free_port;
use super::pki::Leaf;

/// A running NGINX.
pub struct Nginx {
    child: std::process::Child,
    /// Its TLS port on 127.0.0.1.
    pub port: u16,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        super::kill_bounded(&mut self.child);
    }
}

/// Starts NGINX in `dir` with certificate `server`, verifying clients against `client_ca`.
/// Every answer is `200` with `x-echo-server: <name>` and the client's subject in the body.
pub fn start_nginx_mtls(dir: &Path, server: &Leaf, client_ca: &Path, name: &str) -> Nginx {
    let server_block = format!(
        r#"    ssl_client_certificate {client_ca};
    ssl_verify_client on;
    location / {{
      add_header x-echo-server {name};
      return 200 "client $ssl_client_s_dn\n";
    }}"#,
        client_ca = client_ca.display(),
    );
    start_nginx(dir, server, free_port(), &server_block)
}

/// Starts NGINX in `dir` on `port` with certificate `server`, serving the files of `root`
/// with `Cache-Control: <cache_control>`.
pub fn start_nginx_files(
    dir: &Path,
    server: &Leaf,
    port: u16,
    root: &Path,
    cache_control: &str,
) -> Nginx {
    let server_block = format!(
        r#"    root {root};
    location / {{
      add_header Cache-Control "{cache_control}";
    }}"#,
        root = root.display(),
    );
    start_nginx(dir, server, port, &server_block)
}

/// Starts NGINX in `dir`: one TLS server on 127.0.0.1:`port` with certificate `server` and
/// `server_block` inside its `server { }`.
fn start_nginx(dir: &Path, server: &Leaf, port: u16, server_block: &str) -> Nginx {
    std::fs::create_dir_all(dir).unwrap();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            r#"daemon off;
master_process off;
pid {dir}/nginx.pid;
error_log {dir}/nginx.error.log warn;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {cert};
    ssl_certificate_key {key};
{server_block}
  }}
}}
"#,
            dir = dir.display(),
            cert = server.cert.display(),
            key = server.key.display(),
        ),
    )
    .unwrap();
    let child = super::bounded(600, "nginx")
        .args(["-c", conf.to_str().unwrap(), "-p", dir.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx is installed by `make deps`");
    let mut nginx = Nginx { child, port };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline || matches!(nginx.child.try_wait(), Ok(Some(_))) {
            let log = std::fs::read_to_string(dir.join("nginx.error.log")).unwrap_or_default();
            panic!("nginx did not start: {log}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    nginx.port = port;
    nginx
}
