//! A fleet node for the fleet tests: a real gateway process with `[fleet]`, its folder, and the
//! `meshgate fleet` command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use super::*;

/// One fleet node: a gateway process and its folder.
pub struct Node {
    pub name: String,
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
}

impl Node {
    /// Starts node `name` in the fleet under `prefix`; with `internal`, it also has a
    /// listener named `internal`.
    pub fn start(name: &str, etcd: &[String], prefix: &str, internal: bool) -> Node {
        Node::start_in(
            tempfile::tempdir().unwrap(),
            name,
            etcd,
            prefix,
            internal,
            "",
        )
    }

    /// [`Node::start`] in `dir`, with `fleet_keys` added to its `[fleet]`.
    pub fn start_in(
        dir: tempfile::TempDir,
        name: &str,
        etcd: &[String],
        prefix: &str,
        internal: bool,
        fleet_keys: &str,
    ) -> Node {
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let internal = if internal {
            format!(
                "[[listeners]]\nname = \"internal\"\nlisten = \"127.0.0.1:{}\"\n",
                free_port()
            )
        } else {
            String::new()
        };
        let endpoints: Vec<String> = etcd.iter().map(|e| format!("\"{e}\"")).collect();
        let policy = format!(
            r#"version = 1
[server]
threads = 1
grace_period = "1s"
[admin]
listen = "{admin}"
token_file = "admin.token"
[[listeners]]
name = "public"
listen = "{listen}"
{internal}
[fleet]
etcd = [{}]
prefix = "{prefix}"
node = "{name}"
{fleet_keys}
"#,
            endpoints.join(", ")
        );
        write_token(&dir.path().join("admin.token"));
        std::fs::write(dir.path().join("meshgate.toml"), policy).unwrap();
        let mut node = Node {
            name: name.to_owned(),
            child: None,
            dir,
            listen,
            admin,
        };
        node.spawn();
        node
    }

    pub fn policy_path(&self) -> PathBuf {
        self.dir.path().join("meshgate.toml")
    }

    pub fn spawn(&mut self) {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("stderr.log"))
            .unwrap();
        self.child = Some(spawn_meshgate_to(
            &self.policy_path(),
            &[],
            std::process::Stdio::null(),
            stderr,
        ));
        // Not ready before a fleet document is served: wait for the listener instead.
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(self.listen).is_err() {
            assert!(Instant::now() < deadline, "{} never listened", self.name);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// The server that answered `/`, or the status.
    pub async fn served_by(&self) -> Result<String, u16> {
        let response = client().get(self.url("/")).send().await.unwrap();
        if response.status() != 200 {
            return Err(response.status().as_u16());
        }
        Ok(response.headers()["x-echo-server"]
            .to_str()
            .unwrap()
            .to_owned())
    }

    /// Waits until `served_by` is `expected`; returns how long it took.
    pub async fn wait_served_by(&self, expected: &str, limit: Duration) -> Duration {
        let start = Instant::now();
        loop {
            if self.served_by().await.as_deref() == Ok(expected) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < limit,
                "{} not served by {expected} after {limit:?}: {:?}\n{}",
                self.name,
                self.served_by().await,
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn readyz(&self) -> String {
        client()
            .get(format!("http://{}/readyz", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A fleet document: one route on every listener to upstream `orders` at `upstream`; with
/// `internal`, a second route on the listener only some nodes have.
pub fn document(upstream: SocketAddr, internal: bool) -> String {
    let extra = if internal {
        "[[routes]]\nname = \"internal\"\nlisteners = [\"internal\"]\nsplit = [{ upstream = \"orders\" }]\n"
    } else {
        ""
    };
    format!(
        "[telemetry]\naccess_log = \"off\"\n\n[[upstreams]]\nname = \"orders\"\nendpoints = [\"{upstream}\"]\n\n[[routes]]\nname = \"orders\"\nlisteners = [\"public\"]\nsplit = [{{ upstream = \"orders\" }}]\n{extra}"
    )
}

/// Runs `meshgate fleet ARGS… --etcd … --prefix …`.
pub fn fleet_command(args: &[&str], etcd: &[String], prefix: &str) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_meshgate"));
    command.arg("fleet").args(args).args(["--prefix", prefix]);
    for endpoint in etcd {
        command.args(["--etcd", endpoint]);
    }
    command.output().unwrap()
}

pub fn push(file: &std::path::Path, etcd: &[String], prefix: &str) -> Output {
    fleet_command(&["push", file.to_str().unwrap()], etcd, prefix)
}

pub fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
