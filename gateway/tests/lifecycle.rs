//! Drain, graceful shutdown and zero-drop upgrades, on the real binary, under keepalive load.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::raw::read_until_closed;
use common::*;
use tokio::io::AsyncWriteExt;

/// A gateway in front of `upstream` (every path), with the given grace period and drain delay.
fn start_with(upstream: SocketAddr, grace: &str, drain_delay: &str) -> Gateway {
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let access_log = dir.path().join("access.log");
    let policy = policy_head(listen, admin, access_log.to_str().unwrap()).replace(
        "grace_period = \"1s\"",
        &format!("grace_period = \"{grace}\"\ndrain_delay = \"{drain_delay}\""),
    ) + &split_policy(upstream, upstream, 1, 0);
    Gateway::start_with(dir, &policy, listen, admin)
}

fn post_drain(gateway: &Gateway) {
    let response = bounded(10, "curl")
        .args(["-sS", "-X", "POST", "-H"])
        .arg(format!("Authorization: Bearer {TOKEN}"))
        .arg(gateway.admin_url("/drain"))
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&response.stdout);
    assert!(body.contains("\"draining\":true"), "{body}");
}

/// Sends a request to a 1.5 s upstream, then ends the gateway with `end`, and checks the
/// drain as a load balancer sees it: `/readyz` answers 503 at once while the listener still
/// accepts and serves (with `Connection: close`) for the drain delay; then the listener
/// closes, the in-flight request finishes, and the process exits as soon as it has, well
/// before its 10 s grace period.
async fn ends_gracefully(end: impl FnOnce(&Gateway)) {
    let (upstream, _, _task) = start_upstream("slow", 200, Duration::from_millis(1500)).await;
    let mut gateway = start_with(upstream, "10s", "800ms");
    let url = gateway.url("/");
    let in_flight = tokio::spawn(async move {
        let response = client().get(url).send().await;
        (response.map(|r| r.status()), Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    end(&gateway);

    let deadline = Instant::now() + Duration::from_millis(300);
    while http_status(gateway.admin, "/readyz") != Some(503) {
        assert!(Instant::now() < deadline, "readiness still passes");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Within the drain delay a new connection is still served, and told to go.
    let mut stream = tokio::net::TcpStream::connect(gateway.listen)
        .await
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut stream, Duration::from_secs(3)).await;
    assert_eq!(answer.statuses(), vec![200], "{}", answer.text());
    assert_eq!(answer.header("connection").as_deref(), Some("close"));
    assert!(answer.closed, "the connection closes after its answer");

    let deadline = Instant::now() + Duration::from_secs(3);
    while std::net::TcpStream::connect(gateway.listen).is_ok() {
        assert!(Instant::now() < deadline, "the listener still accepts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let closed_after = started.elapsed();
    assert!(
        closed_after >= Duration::from_millis(750),
        "the listener closed {closed_after:?} into an 800 ms drain delay"
    );
    let (status, finished) = in_flight.await.unwrap();
    assert_eq!(status.expect("the in-flight request finished"), 200);
    assert!(
        gateway.wait_exit(Duration::from_secs(5)),
        "the process did not exit; stderr:\n{}",
        gateway.stderr()
    );
    let exited = Instant::now();
    println!(
        "readiness 503 at once, listener closed after {closed_after:?}, exited {:?} after the last request",
        exited - finished
    );
    assert!(
        exited - finished < Duration::from_secs(2),
        "the process waited {:?} after its last request",
        exited - finished
    );
}

/// Acceptance: after `/drain`, `/readyz` answers 503 at once, listeners keep serving for the
/// drain delay, then stop accepting; in-flight requests finish; the process exits at once.
#[tokio::test(flavor = "multi_thread")]
async fn drain_fails_readiness_and_lets_in_flight_requests_finish() {
    ends_gracefully(post_drain).await;
}

/// SIGTERM drains the same way.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_shuts_down_gracefully() {
    ends_gracefully(|gateway| gateway.signal("TERM")).await;
}

/// An idle gateway exits right after its drain delay, not after its 30 s grace period.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_gateway_exits_right_after_the_drain_delay() {
    let upstream = start_echo("u").await;
    let mut gateway = start_with(upstream, "30s", "200ms");
    // A keepalive client left idle: it is closed after a second of idleness.
    let mut idle = tokio::net::TcpStream::connect(gateway.listen)
        .await
        .unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    gateway.signal("TERM");
    let answer = read_until_closed(&mut idle, Duration::from_secs(5)).await;
    assert!(
        answer.closed,
        "the idle keepalive connection was not closed"
    );
    assert!(gateway.wait_exit(Duration::from_secs(5)), "still running");
    println!("idle gateway exited {:?} after SIGTERM", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// Acceptance: keepalive load through a drain, and on past the moment the listeners close
/// (`drain_delay`), loses no request: every request written on an open connection gets its
/// `200`; connections are closed between requests (`Connection: close`), and the only failures
/// are new connections refused once the listeners have closed.
#[tokio::test(flavor = "multi_thread")]
async fn a_drain_under_keepalive_load_drops_nothing() {
    let _machine = load_test_lock();
    let upstream = start_echo("u").await;
    let gateway = start_with(upstream, "5s", "2s");
    let started = Instant::now();
    let load: Vec<_> = (0..16)
        .map(|_| tokio::spawn(keepalive_client(gateway.listen, Duration::from_secs(6))))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let drained = Instant::now();
    tokio::task::block_in_place(|| post_drain(&gateway));
    let mut total = LoadOutcome::default();
    for client in load {
        let outcome = client.await.unwrap();
        total.answered += outcome.answered;
        total.dropped.extend(outcome.dropped);
        total.refused += outcome.refused;
        total.last_answer = total.last_answer.max(outcome.last_answer);
    }
    let last_answer = total.last_answer.saturating_sub(drained - started);
    println!(
        "16 keepalive clients through a drain: {} answered, {:?} dropped, {} connections refused; the last answer {last_answer:?} after the drain began",
        total.answered, total.dropped, total.refused
    );
    // No request is lost while the listeners accept. When they close, a connection the kernel
    // had completed but the gateway not yet accepted is reset with the listening socket, as
    // NGINX's and HAProxy's are: only a connection's first request, and only at the close
    // (drain_delay after the drain began; a load balancer stopped sending by then).
    let closing = (drained - started) + Duration::from_millis(1900);
    for (at, first) in &total.dropped {
        assert!(
            *first && *at >= closing,
            "a request was lost {at:?} after the load began (first on its connection: {first}); the listeners closed at about {:?}",
            closing + Duration::from_millis(100)
        );
    }
    assert!(total.answered > 1000, "the load never moved");
    assert!(
        total.refused > 0,
        "the load ended before the listeners closed"
    );
    assert!(
        last_answer >= Duration::from_millis(1800),
        "requests were served through the drain delay: the last at {last_answer:?}"
    );
}

/// What one keepalive client saw.
#[derive(Debug, Default)]
struct LoadOutcome {
    /// Requests answered `200`.
    answered: u64,
    /// Requests written on an open connection that got no whole answer, or not a `200`: when
    /// each happened, from the client's start, and whether it was the connection's first.
    dropped: Vec<(Duration, bool)>,
    /// New connections refused.
    refused: u64,
    /// When the last answer came, from the client's start.
    last_answer: Duration,
}

/// GETs `/` over a keepalive connection until `limit`: reconnects when the gateway closes the
/// connection between requests, and stops once a new connection is refused.
async fn keepalive_client(addr: SocketAddr, limit: Duration) -> LoadOutcome {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = Instant::now();
    let mut outcome = LoadOutcome::default();
    'connections: while started.elapsed() < limit {
        let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
            outcome.refused += 1;
            return outcome;
        };
        let mut first = true;
        loop {
            if started.elapsed() >= limit {
                return outcome;
            }
            if stream
                .write_all(b"GET / HTTP/1.1\r\nhost: load\r\n\r\n")
                .await
                .is_err()
            {
                // Closed by the gateway after its last answer: not a request lost.
                continue 'connections;
            }
            let mut answer = Vec::new();
            let mut chunk = [0u8; 4096];
            let whole = loop {
                if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if answer.len() >= end + 4 + length {
                        break Some(head);
                    }
                }
                match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await {
                    Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&chunk[..n]),
                    // Closed (or timed out) before the whole answer: the request is lost. The
                    // gateway may only close after an answer that says `Connection: close`.
                    _ => break None,
                }
            };
            let was_first = std::mem::replace(&mut first, false);
            match whole {
                Some(head) if head.starts_with("http/1.1 200") => {
                    outcome.answered += 1;
                    outcome.last_answer = started.elapsed();
                    if head.contains("connection: close") {
                        continue 'connections;
                    }
                }
                _ => {
                    outcome.dropped.push((started.elapsed(), was_first));
                    continue 'connections;
                }
            }
        }
    }
    outcome
}

fn wait_child(child: &mut Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// `meshgate_requests_total` summed over its samples, from the process answering `admin`.
async fn requests_served(admin: SocketAddr) -> f64 {
    let text = client()
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("meshgate_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Upgrades `gateway` `times` in a row while `load` runs: each new process takes the sockets
/// and the old one exits once its connections have gone. Returns the last process.
fn upgrade_in_a_row(gateway: &mut Gateway, times: u32) -> OwnedChild {
    let mut old: Option<OwnedChild> = None;
    for n in 1..=times {
        let new = gateway.spawn_upgrade_numbered(n);
        match old.as_mut() {
            None => gateway.signal("QUIT"),
            Some(previous) => signal_pid(previous.id(), "QUIT"),
        }
        let exited = match old.as_mut() {
            None => gateway.wait_exit(Duration::from_secs(20)),
            Some(previous) => wait_child(previous, Duration::from_secs(20)),
        };
        assert!(exited, "the old process of upgrade {n} did not exit");
        if let Some(mut previous) = old.take() {
            let _ = previous.wait();
        }
        old = Some(new);
    }
    old.expect("at least one upgrade")
}

/// Acceptance: two upgrades in a row (`--upgrade` plus SIGQUIT) during a `wrk -c32`
/// keepalive run cause 0 errors; the new process served part of the load, and serves
/// afterwards, admin API included.
#[tokio::test(flavor = "multi_thread")]
async fn upgrades_under_keepalive_load_drop_nothing() {
    let _machine = load_test_lock();
    let upstream = start_echo("u").await;
    let mut gateway = start_with(upstream, "10s", "1s");
    let url = gateway.url("/");
    let load = tokio::task::spawn_blocking(move || run_wrk(&["-t2", "-c32", "-d16s"], &url));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut last = tokio::task::block_in_place(|| upgrade_in_a_row(&mut gateway, 2));
    let served_by_last_before = requests_served(gateway.admin).await;
    let output = load.await.unwrap();
    println!("{output}");
    let (requests, non_2xx, socket_errors) = wrk_summary(&output);
    let served_by_last = requests_served(gateway.admin).await;
    println!(
        "wrk -c32 across 2 upgrades: {requests} requests, {non_2xx} non-2xx, {socket_errors} socket errors; the last process served {served_by_last}"
    );
    assert!(requests > 1000, "wrk made only {requests} requests");
    assert_eq!((non_2xx, socket_errors), (0, 0), "{output}");
    assert!(
        served_by_last > served_by_last_before && served_by_last < requests as f64,
        "the last process served {served_by_last} of {requests}"
    );
    assert!(matches!(last.try_wait(), Ok(None)), "the new process runs");
    assert_eq!(http_status(gateway.listen, "/"), Some(200));
    assert_eq!(http_status(gateway.admin, "/readyz"), Some(200));
}

/// The same over HTTP/2 (h2c). Across a first upgrade under `h2load`, every stream the
/// gateway received is answered `200`: h2load counts as errored the requests it could not
/// start once the GOAWAY came (it never opens a new connection; it does the same across an
/// `nginx -s reload`), and none of those reached the gateway. Across a second upgrade, a
/// client that reconnects after GOAWAY, as browsers and gRPC do, sees no failed and no refused
/// stream, and its load moves to the new process.
#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_under_http2_load_drops_nothing() {
    let _machine = load_test_lock();
    let upstream = start_echo("u").await;
    let mut gateway = start_with(upstream, "10s", "1s");
    let url = gateway.url("/");
    let load = tokio::task::spawn_blocking(move || {
        let output = bounded(60, "h2load")
            .args(["-c", "8", "-m", "4", "-D", "9", "--warm-up-time=0"])
            .arg(&url)
            .output()
            .expect("h2load is installed by `make deps` (nghttp2-client)");
        String::from_utf8_lossy(&output.stdout).into_owned()
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Killed however the test ends, like every process it starts.
    let mut first = tokio::task::block_in_place(|| upgrade_in_a_row(&mut gateway, 1));
    let output = load.await.unwrap();
    println!("{output}");
    let line = |prefix: &str| {
        output
            .lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .unwrap_or_default()
            .to_owned()
    };
    // "requests: 1000 total, 1000 started, 1000 done, 1000 succeeded, 0 failed, 0 errored, 0 timeout"
    let requests = line("requests:");
    let number = |word: &str| -> u64 {
        requests
            .split(',')
            .find(|part| part.trim().ends_with(word))
            .and_then(|part| part.split_whitespace().find_map(|w| w.parse().ok()))
            .unwrap_or(u64::MAX)
    };
    let status = line("status codes:");
    assert!(number("succeeded") > 1000, "{output}");
    assert!(status.contains(" 0 3xx, 0 4xx, 0 5xx"), "{output}");
    // The streams still open when h2load's time ran out ("started" but not "done") reached
    // the gateway too; the errored ones did not.
    let reached = number("succeeded") + number("started") - number("done");
    let records = gateway
        .access_records_until(|r| r.len() as u64 >= reached)
        .await;
    println!("{} streams reached the gateway", records.len());
    assert_eq!(
        records.len() as u64,
        reached,
        "a stream the gateway received was not answered: {output}"
    );

    // The second upgrade: `gateway` now points at the first new process.
    let listen = gateway.listen;
    let load = tokio::spawn(meshgate_echo::reconnecting_h2::run(
        listen,
        8,
        4,
        Duration::from_secs(10),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sock = gateway.dir.path().join("upgrade.sock");
    let _ = std::fs::remove_file(&sock);
    let _last = tokio::task::block_in_place(|| {
        let second = gateway.spawn_upgrade_numbered(2);
        signal_pid(first.id(), "QUIT");
        assert!(
            wait_child(&mut first, Duration::from_secs(20)),
            "the first new process did not exit"
        );
        second
    });
    let summary = load.await.unwrap();
    println!("across the second upgrade: {summary}");
    assert!(summary.ok > 1000, "{summary}");
    assert_eq!(
        (summary.non_2xx, summary.failed, summary.refused),
        (0, 0, 0),
        "{summary}: {:?}",
        summary.problems
    );
    assert!(summary.connections > 8, "the load never moved: {summary}");
}

/// `docs/operations.md`'s hand upgrade, run as it is written: only its paths move to a
/// temporary folder and its admin port to a free one.
#[tokio::test(flavor = "multi_thread")]
async fn the_documented_hand_upgrade_works_as_written() {
    let script = hand_upgrade_script();

    let upstream = start_echo("u").await;
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    let run = dir.path().join("run");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::create_dir_all(&run).unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    write_token(&etc.join("admin.token"));
    let policy = policy_head(listen, admin, "off") + &split_policy(upstream, upstream, 1, 0);
    std::fs::write(etc.join("meshgate.toml"), policy).unwrap();
    let script = script
        .replace("/etc/meshgate/", &format!("{}/", etc.display()))
        .replace("/run/meshgate/", &format!("{}/", run.display()))
        .replace("localhost:9901", &admin.to_string());
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_meshgate"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // The steps run with `set -e`, under a time limit; the gateway they leave running is the
    // new process, whose PID the script leaves in the PID file.
    // Its output goes to a file: the gateways it starts in the background would hold a pipe
    // open after the script ends.
    let out_path = dir.path().join("script.out");
    let out = std::fs::File::create(&out_path).unwrap();
    let status = tokio::task::spawn_blocking(move || {
        bounded(60, "bash")
            .arg("-c")
            .arg(format!("set -e\n{script}"))
            .env("PATH", path)
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = std::fs::read_to_string(&out_path).unwrap();
    let new_pid: u32 = std::fs::read_to_string(run.join("meshgate.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    println!("the hand upgrade printed {stdout:?}; the new process is {new_pid}");
    let serving = http_status(listen, "/");
    let ready = http_status(admin, "/readyz");
    signal_pid(new_pid, "KILL");
    assert!(status.success(), "the documented steps failed: {stdout}");
    assert!(stdout.ends_with("ready"), "step 4 did not answer: {stdout}");
    assert_eq!(serving, Some(200));
    assert_eq!(ready, Some(200));
}

/// Kills, when the test ends however it ends, the daemons whose PIDs were in a PID file.
struct KillDaemonsOnDrop(Vec<u32>);

impl Drop for KillDaemonsOnDrop {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
        }
    }
}

fn pid_in(file: &std::path::Path) -> u32 {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .trim()
        .parse()
        .unwrap_or(0)
}

fn alive(pid: u32) -> bool {
    Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The systemd unit's `ExecStart` and `ExecReload` lines, run as systemd runs them (one after
/// the other, `$MAINPID` from the PID file): `--daemon` starts a detached gateway, and the
/// reload hands its sockets to a new daemon under `wrk -c32` with no error.
#[tokio::test(flavor = "multi_thread")]
async fn the_units_daemon_start_and_reload_upgrade_under_load() {
    let _machine = load_test_lock();
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../systemd/meshgate.service"
    ))
    .unwrap();
    let lines = |key: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(key))
            .map(str::to_owned)
            .collect()
    };
    let (start, reload) = (lines("ExecStart="), lines("ExecReload="));
    assert_eq!((start.len(), reload.len()), (1, 3), "{unit}");

    let upstream = start_echo("u").await;
    let dir = tempfile::tempdir().unwrap();
    let (etc, run) = (dir.path().join("etc"), dir.path().join("run"));
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::create_dir_all(&run).unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    write_token(&etc.join("admin.token"));
    let policy = policy_head(listen, admin, "off").replace(
        "admin.token",
        &etc.join("admin.token").display().to_string(),
    ) + &split_policy(upstream, upstream, 1, 0);
    std::fs::write(etc.join("meshgate.toml"), policy).unwrap();
    let pid_file = run.join("meshgate.pid");
    let as_written = |line: &str, main_pid: u32| {
        line.replace("/usr/local/bin/meshgate", env!("CARGO_BIN_EXE_meshgate"))
            .replace("/etc/meshgate/", &format!("{}/", etc.display()))
            .replace("/run/meshgate/", &format!("{}/", run.display()))
            .replace("$MAINPID", &main_pid.to_string())
    };
    let run_line = |line: String| {
        let status = bounded(30, "bash")
            .arg("-c")
            .arg(&line)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "{line}: {status}");
    };

    tokio::task::block_in_place(|| run_line(as_written(&start[0], 0)));
    wait_ready_at(admin);
    let first = pid_in(&pid_file);
    let mut daemons = KillDaemonsOnDrop(vec![first]);
    assert!(first > 0 && alive(first), "no daemon in the PID file");

    let url = format!("http://{listen}/");
    let load = tokio::task::spawn_blocking(move || run_wrk(&["-t2", "-c32", "-d8s"], &url));
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| {
        for line in &reload {
            run_line(as_written(line, first));
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while alive(first) {
        assert!(Instant::now() < deadline, "the old daemon did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second = pid_in(&pid_file);
    daemons.0.push(second);
    assert!(
        second != first && alive(second),
        "the PID file names {second}"
    );
    let output = load.await.unwrap();
    let (requests, non_2xx, socket_errors) = wrk_summary(&output);
    println!("wrk -c32 across the unit's reload: {requests} requests, {non_2xx} non-2xx, {socket_errors} socket errors");
    assert!(requests > 1000, "{output}");
    assert_eq!((non_2xx, socket_errors), (0, 0), "{output}");
    assert!(
        requests_served(admin).await > 0.0,
        "the new daemon served none"
    );
    assert_eq!(http_status(listen, "/"), Some(200));
    assert_eq!(http_status(admin, "/readyz"), Some(200));
}
