//! End to end: a hand upgrade that goes wrong ends on its own and says why. The documented
//! steps stop (instead of waiting for ever) when the new process cannot start, and the old
//! process keeps serving; a new process never handed the sockets exits after about 6 s with
//! a sentence that says what to do, not Pingora's raw `EAGAIN`.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

/// A folder with `etc/meshgate.toml` serving `upstream`, and `run/`.
fn prepared(upstream: SocketAddr) -> (tempfile::TempDir, SocketAddr, SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("etc")).unwrap();
    std::fs::create_dir_all(dir.path().join("run")).unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    write_token(&dir.path().join("etc/admin.token"));
    let policy = policy_head(listen, admin, "off") + &route_to(upstream, "");
    std::fs::write(dir.path().join("etc/meshgate.toml"), policy).unwrap();
    (dir, listen, admin)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_documented_steps_stop_when_the_new_process_cannot_start() {
    let upstream = start_echo("u").await;
    let (dir, listen, admin) = prepared(upstream);
    let (etc, run) = (dir.path().join("etc"), dir.path().join("run"));
    // The new process is given a bad policy: a `meshgate` first on PATH swaps the policy of
    // any `--upgrade` start for one with an error.
    std::fs::write(
        etc.join("bad.toml"),
        "version = 1\n[server]\nthreads = \"many\"\n",
    )
    .unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let wrapper = bin.join("meshgate");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncase \" $* \" in *\" --upgrade \"*) exec {real} run -c {bad} --upgrade --upgrade-sock {run}/upgrade.sock --pid-file {run}/new.pid ;; esac\nexec {real} \"$@\"\n",
            real = env!("CARGO_BIN_EXE_meshgate"),
            bad = etc.join("bad.toml").display(),
            run = run.display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = hand_upgrade_script()
        .replace("/etc/meshgate/", &format!("{}/", etc.display()))
        .replace("/run/meshgate/", &format!("{}/", run.display()))
        .replace("localhost:9901", &admin.to_string());
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let err_path = dir.path().join("script.err");
    let err = std::fs::File::create(&err_path).unwrap();
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        bounded(60, "bash")
            .arg("-c")
            .arg(format!("set -e\n{script}"))
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .status()
            .unwrap()
    })
    .await
    .unwrap();
    let took = started.elapsed();
    let said = std::fs::read_to_string(&err_path).unwrap();
    let old_pid: u32 = std::fs::read_to_string(run.join("meshgate.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let serving = http_status(listen, "/");
    signal_pid(old_pid, "KILL");
    println!("the steps ended with {status} after {took:?}: {said}");
    assert_eq!(status.code(), Some(1), "{said}");
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert!(said.contains("the new process did not start"), "{said}");
    assert!(
        said.contains("server.threads"),
        "the new process said why: {said}"
    );
    assert_eq!(serving, Some(200), "the old process still serves");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_never_handed_the_sockets_exits_saying_what_to_do() {
    let upstream = start_echo("u").await;
    let gateway = Gateway::start(&route_to(upstream, ""));
    let err_path = gateway.dir.path().join("new.err");
    let err = std::fs::File::create(&err_path).unwrap();
    let policy = gateway.policy_path.clone();
    let sock = gateway.dir.path().join("upgrade.sock");
    let started = Instant::now();
    // The old process is never sent SIGQUIT.
    let status = tokio::task::spawn_blocking(move || {
        bounded(30, env!("CARGO_BIN_EXE_meshgate"))
            .arg("run")
            .arg("-c")
            .arg(&policy)
            .arg("--upgrade")
            .arg("--upgrade-sock")
            .arg(&sock)
            .arg("--pid-file")
            .arg(policy.with_file_name("new.pid"))
            .stdout(Stdio::null())
            .stderr(err)
            .status()
            .unwrap()
    })
    .await
    .unwrap();
    let took = started.elapsed();
    let said = std::fs::read_to_string(&err_path).unwrap();
    println!("exit {status} after {took:?}: {said}");
    assert!(!status.success());
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(15),
        "{took:?}"
    );
    assert!(
        said.contains("did not hand over its listening sockets"),
        "{said}"
    );
    assert!(said.contains("kill -QUIT"), "{said}");
    assert!(!said.contains("EAGAIN"), "{said}");
    assert_eq!(http_status(gateway.listen, "/"), Some(200));
}
