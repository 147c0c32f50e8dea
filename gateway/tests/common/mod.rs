//! Test harness: the real `meshgate` binary, real echo upstreams, real sockets on loopback.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod dns;
pub mod etcd;
pub mod fleet;
pub mod https;
pub mod nginx;
pub mod pki;
pub mod raw;
pub mod tokens;

pub const TOKEN: &str = "test-token-0123456789abcdef";

/// A free loopback port, handed to no other test of this run. The kernel's port is bound and
/// released, so another test process could be given the same one a moment later; and the
/// gateway binds with `SO_REUSEPORT` (for upgrades), so two gateways on one port would share
/// its connections instead of failing. Every port handed out is recorded in a file shared by
/// the test processes (under a file lock) and never handed out again for 10 minutes.
pub fn free_port() -> u16 {
    use std::io::{Read, Seek, Write};
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("ports-in-use");
    let mut registry = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .expect("open the port registry");
    registry.lock().expect("lock the port registry");
    let mut text = String::new();
    registry.read_to_string(&mut text).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Lines are `port seconds`; forget those older than 10 minutes.
    let mut issued: Vec<(u16, u64)> = text
        .lines()
        .filter_map(|l| {
            let (port, at) = l.split_once(' ')?;
            Some((port.parse().ok()?, at.parse().ok()?))
        })
        .filter(|(_, at)| now.saturating_sub(*at) < 600)
        .collect();
    let port = (0..1000)
        .map(|_| {
            TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .find(|port| !issued.iter().any(|(p, _)| p == port))
        .expect("a port no other test holds");
    issued.push((port, now));
    let text: String = issued.iter().map(|(p, at)| format!("{p} {at}\n")).collect();
    registry.set_len(0).unwrap();
    registry.rewind().unwrap();
    registry.write_all(text.as_bytes()).unwrap();
    port
}

/// Writes the test admin token to `path`, readable by its owner only (an explicit
/// `token_file` that others may read is refused).
pub fn write_token(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, TOKEN).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A child process killed (and reaped) when dropped, so that a test that fails or panics
/// leaves no process behind.
pub struct OwnedChild(pub Child);

impl std::ops::Deref for OwnedChild {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for OwnedChild {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for OwnedChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `meshgate check ARGS…`: its exit code and everything it printed (standard output, then
/// standard error).
pub fn meshgate_check<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .arg("check")
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

/// Sends signal `name` (`KILL`, `QUIT`…) to process `pid`.
pub fn signal_pid(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// The shell block of docs/operations.md's hand upgrade (between its `upgrade-by-hand`
/// markers), as written.
pub fn hand_upgrade_script() -> String {
    let docs = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/operations.md"
    ))
    .unwrap();
    let start = docs
        .find("<!-- upgrade-by-hand -->")
        .expect("the marked block");
    let end = docs.find("<!-- /upgrade-by-hand -->").expect("its end");
    docs[start..end]
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a sh block")
        .to_owned()
}

/// Starts an upstream that accepts connections, holds them, and never answers; returns its
/// address.
pub async fn start_silent_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

/// Starts an in-process echo upstream named `name`; returns its address.
pub async fn start_echo(name: &str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(meshgate_echo::serve(
        listener,
        meshgate_echo::Config::new(name, 1024),
    ));
    addr
}

/// Starts an in-process upstream that answers `status` after `delay`; returns its address,
/// its config (with the count of requests it received) and its task, whose abort stops it
/// accepting connections.
pub async fn start_upstream(
    name: &str,
    status: u16,
    delay: Duration,
) -> (
    SocketAddr,
    std::sync::Arc<meshgate_echo::Config>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = meshgate_echo::Config::with_behaviour(name, 64, status, delay);
    let task = tokio::spawn(meshgate_echo::serve(listener, config.clone()));
    (addr, config, task)
}

/// One upstream `pool` at `upstream`, and one route `main` to it for every path, with
/// `route_extra` added to the route's table.
pub fn route_to(upstream: SocketAddr, route_extra: &str) -> String {
    format!(
        r#"
[[upstreams]]
name = "pool"
endpoints = ["{upstream}"]

[[routes]]
name = "main"
match = {{ path_prefix = "/" }}
split = [{{ upstream = "pool" }}]
{route_extra}
"#
    )
}

/// A running gateway process and its files.
pub struct Gateway {
    child: Child,
    pub dir: tempfile::TempDir,
    pub policy_path: PathBuf,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
}

/// The policy's fixed head: one listener and the admin API on the given ports.
pub fn policy_head(listen: SocketAddr, admin: SocketAddr, access_log: &str) -> String {
    format!(
        r#"version = 1

[server]
threads = 2
grace_period = "1s"

[admin]
listen = "{admin}"
token_file = "admin.token"

[telemetry]
access_log = "{access_log}"

[[listeners]]
name = "public"
listen = "{listen}"
"#
    )
}

impl Gateway {
    /// Starts a gateway whose policy is the standard head, with `server_keys` added to its
    /// `[server]` table, followed by `body`.
    pub fn start_with_server(server_keys: &str, body: &str) -> Gateway {
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let access_log = dir.path().join("access.log");
        let head = policy_head(listen, admin, access_log.to_str().unwrap()).replacen(
            "[server]\n",
            &format!("[server]\n{server_keys}\n"),
            1,
        );
        Gateway::start_with(dir, &(head + body), listen, admin)
    }

    /// Starts a gateway whose policy is the standard head followed by `body`.
    pub fn start(body: &str) -> Gateway {
        Gateway::start_with_server("", body)
    }

    /// Starts a gateway on a complete policy text.
    pub fn start_with(
        dir: tempfile::TempDir,
        policy: &str,
        listen: SocketAddr,
        admin: SocketAddr,
    ) -> Gateway {
        Gateway::start_with_stdout(dir, policy, listen, admin, Stdio::null())
    }

    /// Starts a gateway on a complete policy text, its stdout to `stdout`.
    pub fn start_with_stdout(
        dir: tempfile::TempDir,
        policy: &str,
        listen: SocketAddr,
        admin: SocketAddr,
        stdout: impl Into<Stdio>,
    ) -> Gateway {
        write_token(&dir.path().join("admin.token"));
        let policy_path = dir.path().join("meshgate.toml");
        std::fs::write(&policy_path, policy).unwrap();
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let child = spawn_meshgate_to(&policy_path, &[], stdout, stderr);
        let gateway = Gateway {
            child,
            dir,
            policy_path,
            listen,
            admin,
        };
        gateway.wait_ready();
        gateway
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if http_status(self.admin, "/readyz") == Some(200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("gateway did not become ready; stderr:\n{}", self.stderr());
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// The access log's records, one JSON object per line (every line must parse).
    pub fn access_records(&self) -> Vec<serde_json::Value> {
        self.access_log()
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("access log line is not JSON ({e}): {line}"))
            })
            .collect()
    }

    /// The access log's records once it holds at least `lines` of them. A request is logged
    /// after its response is sent, and the writer drains its queue every 50 ms: waits up to
    /// 5 s.
    pub async fn access_records_at_least(&self, lines: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.access_log().lines().count() < lines && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.access_records()
    }

    /// The access log's records once `done` holds for them (waits up to 5 s; returns what is
    /// there then, for the caller's assertion to report).
    pub async fn access_records_until(
        &self,
        done: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let records = self.access_records();
            if done(&records) || Instant::now() > deadline {
                return records;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits up to `limit` for the metric sample starting with `prefix` (name and labels) to
    /// reach `at_least`; returns its last value.
    pub async fn wait_for_metric(&self, prefix: &str, at_least: f64, limit: Duration) -> f64 {
        let deadline = Instant::now() + limit;
        loop {
            let value = self
                .metrics()
                .await
                .lines()
                .find(|l| l.starts_with(prefix))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .unwrap_or(0.0);
            if value >= at_least || Instant::now() > deadline {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The policy text with the standard head, for PUTs.
    pub fn policy_with_body(&self, body: &str) -> String {
        let access_log = self.dir.path().join("access.log");
        policy_head(self.listen, self.admin, access_log.to_str().unwrap()) + body
    }

    /// PUTs `policy` to `/policy` with the admin token.
    pub async fn put_policy(&self, policy: impl Into<String>) -> reqwest::Response {
        client()
            .put(self.admin_url("/policy"))
            .bearer_auth(TOKEN)
            .body(policy.into())
            .send()
            .await
            .unwrap()
    }

    /// PUTs `policy`, asserts it was applied (`200`) and returns the answer's JSON.
    pub async fn apply_policy(&self, policy: impl Into<String>) -> serde_json::Value {
        let response = self.put_policy(policy).await;
        let status = response.status();
        let text = response.text().await.unwrap();
        assert_eq!(status, 200, "the policy was refused: {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// GET an authenticated admin endpoint and parse its JSON.
    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        client()
            .get(self.admin_url(path))
            .header("authorization", format!("Bearer {TOKEN}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        metrics_at(self.admin).await
    }
}

impl Gateway {
    /// The gateway's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The gateway's resident memory in KiB; fails the test when `/proc` can't tell.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_else(|e| panic!("cannot read the gateway's /proc status: {e}"));
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .filter(|&kib: &u64| kib > 0)
            .unwrap_or_else(|| panic!("no VmRSS in the gateway's /proc status:\n{status}"))
    }

    /// Starts a second gateway process on the same policy with `--upgrade`: it waits for the
    /// listening sockets, which this one hands over on SIGQUIT.
    pub fn spawn_upgrade(&self) -> OwnedChild {
        self.spawn_upgrade_numbered(1)
    }

    /// Starts the `n`-th new process of a series of upgrades (its own stderr and PID file),
    /// and returns once it waits for the sockets: it has bound the upgrade socket.
    pub fn spawn_upgrade_numbered(&self, n: u32) -> OwnedChild {
        let sock = self.dir.path().join("upgrade.sock");
        let _ = std::fs::remove_file(&sock);
        let name = if n == 1 {
            "stderr-upgrade.log".to_owned()
        } else {
            format!("stderr-upgrade-{n}.log")
        };
        let stderr = std::fs::File::create(self.dir.path().join(name)).unwrap();
        let mut child = OwnedChild(
            Command::new(env!("CARGO_BIN_EXE_meshgate"))
                .arg("run")
                .arg("-c")
                .arg(&self.policy_path)
                .arg("--upgrade")
                .arg("--upgrade-sock")
                .arg(&sock)
                .arg("--pid-file")
                .arg(self.dir.path().join(format!("meshgate-upgrade-{n}.pid")))
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .expect("start the new meshgate"),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sock.exists() {
            assert!(
                Instant::now() < deadline && matches!(child.try_wait(), Ok(None)),
                "the new process did not wait for the sockets"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    /// Sends a signal (`"TERM"`, `"QUIT"`…) to the process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits up to `limit` for the process to exit; returns whether it did.
    pub fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if !self.is_running() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `meshgate run` on `policy`, with its upgrade socket and PID file beside it, `env` added to
/// its environment and its stderr to `stderr`.
pub fn spawn_meshgate(
    policy: &std::path::Path,
    env: &[(&str, &str)],
    stderr: impl Into<Stdio>,
) -> Child {
    spawn_meshgate_to(policy, env, Stdio::null(), stderr)
}

/// [`spawn_meshgate`] with its stdout to `stdout`.
pub fn spawn_meshgate_to(
    policy: &std::path::Path,
    env: &[(&str, &str)],
    stdout: impl Into<Stdio>,
    stderr: impl Into<Stdio>,
) -> Child {
    let dir = policy.parent().expect("the policy's folder");
    Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .arg("run")
        .arg("-c")
        .arg(policy)
        .arg("--upgrade-sock")
        .arg(dir.join("upgrade.sock"))
        .arg("--pid-file")
        .arg(dir.join("meshgate.pid"))
        .envs(env.iter().copied())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("start meshgate")
}

/// Waits up to 20 s for the admin API at `admin` to answer `/readyz` with 200.
pub fn wait_ready_at(admin: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_status(admin, "/readyz") != Some(200) {
        assert!(Instant::now() < deadline, "the gateway did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The status of a plain HTTP/1.1 GET over std sockets, for code outside an async context.
pub fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

/// An async HTTP client for tests.
pub fn client() -> ::reqwest::Client {
    ::reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// The standard demo body: two upstreams with a 90/10 split.
pub fn split_policy(v1: SocketAddr, v2: SocketAddr, w1: u32, w2: u32) -> String {
    format!(
        r#"
[[upstreams]]
name = "v1"
endpoints = ["{v1}"]

[[upstreams]]
name = "v2"
endpoints = ["{v2}"]

[[routes]]
name = "split"
[routes.match]
path_prefix = "/"
[[routes.split]]
upstream = "v1"
weight = {w1}
[[routes.split]]
upstream = "v2"
weight = {w2}
"#
    )
}

/// Sends `count` sequential GETs and counts answers per `x-echo-server`.
pub async fn count_servers(
    client: &::reqwest::Client,
    url: &str,
    count: usize,
) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..count {
        let response = client.get(url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let server = response
            .headers()
            .get("x-echo-server")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        *counts.entry(server).or_default() += 1;
    }
    counts
}

/// Parses wrk's summary: (requests, non-2xx/3xx responses, socket errors).
pub fn wrk_summary(output: &str) -> (u64, u64, u64) {
    let requests = output
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let non_2xx = output
        .lines()
        .find(|l| l.contains("Non-2xx or 3xx responses"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    let socket_errors = output
        .lines()
        .find(|l| l.contains("Socket errors"))
        .map(|l| {
            l.split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    (requests, non_2xx, socket_errors)
}

/// `program` under coreutils' `timeout`: killed after `seconds` (and SIGKILLed 5 s later if
/// it ignores SIGTERM), so that no external tool can hang a test.
pub fn bounded(seconds: u32, program: &str) -> Command {
    let mut command = Command::new("timeout");
    command
        .arg("--kill-after=5")
        .arg(seconds.to_string())
        .arg(program);
    command
}

/// Kills a process started with [`bounded`] and whatever it runs: `timeout` leads a process
/// group of its own, so SIGKILL to the group reaches the tool too (SIGKILL to `timeout` alone
/// would leave the tool running).
pub fn kill_bounded(child: &mut Child) {
    // SAFETY: kill(2) with a negative pid signals a process group; it touches no memory.
    unsafe {
        libc::kill(-(child.id() as i32), libc::SIGKILL);
    }
    let _ = child.wait();
}

/// Runs wrk (bounded by `-d`, and killed after 120 s whatever it was asked) with `args`
/// before the URL; returns its standard output.
pub fn run_wrk(args: &[&str], url: &str) -> String {
    let output = bounded(120, "wrk")
        .args(args)
        .arg(url)
        .output()
        .expect("wrk is installed by `make deps`");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A real `redis-server` on a loopback port, killed on drop.
pub struct Redis {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Redis {
    /// Starts Redis on `port` (a free one when `None`) and waits until it answers.
    pub fn start(port: Option<u16>) -> Redis {
        let port = port.unwrap_or_else(free_port);
        let dir = tempfile::tempdir().unwrap();
        let child = bounded(600, "redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed by `make deps`");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis { child, port, dir }
    }

    /// `redis://` URL of database 0.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing is answered, as with
    /// a Redis stuck on a slow command.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// Signals the server and the `timeout` that bounds it: their process group.
    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg("--")
            .arg(format!("-{}", self.child.id()))
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} redis-server");
    }

    /// Kills the server at once (SIGKILL) and waits for it to be gone.
    pub fn kill(&mut self) {
        kill_bounded(&mut self.child);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Holds the machine for a load test: load tests (those that run `wrk`) take turns, whatever
/// the test runner runs in parallel, so that each one measures the gateway and not its
/// neighbours. The lock is a file lock, so it works across test processes too.
pub fn load_test_lock() -> std::fs::File {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("load-test.lock");
    let file = std::fs::File::create(path).expect("create the load-test lock file");
    file.lock().expect("take the load-test lock");
    file
}

/// The sum of the samples of a Prometheus text whose line starts with `prefix` (a name, or a
/// name and the start of its labels).
pub fn metric_sum(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The Prometheus text of `/metrics` on the admin API at `admin`.
pub async fn metrics_at(admin: SocketAddr) -> String {
    client()
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// An upstream `pool` of `a` and `b` and a route `main` to it, with `route_extra` keys.
pub fn pool_of_two(a: std::net::SocketAddr, b: std::net::SocketAddr, route_extra: &str) -> String {
    format!(
        r#"
[[upstreams]]
name = "pool"
endpoints = ["{a}", "{b}"]

[[routes]]
name = "main"
split = [{{ upstream = "pool" }}]
{route_extra}
"#
    )
}
