//! End to end: files named in a policy are read safely (a device, a FIFO or a huge file is
//! refused quickly, naming the key and the file, and the gateway keeps serving), and
//! `meshgate check` refuses exactly what `meshgate run` refuses.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Peak resident memory of the process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmHWM in /proc status")
}

/// The peak resident memory of the largest child this process has waited for, in KiB.
fn children_peak_rss_kib() -> u64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole rusage into the pointer it is given.
    let usage = unsafe {
        assert_eq!(
            libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr()),
            0
        );
        usage.assume_init()
    };
    usage.ru_maxrss as u64
}

/// The bad files of the issue: a device, a FIFO, a 512 MiB file and a directory.
fn bad_files(dir: &Path) -> Vec<(&'static str, String)> {
    let fifo = dir.join("fifo.pem");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let large = dir.join("large.pem");
    std::fs::File::create(&large)
        .unwrap()
        .set_len(512 << 20)
        .unwrap();
    vec![
        ("/dev/zero", "/dev/zero".to_owned()),
        ("a FIFO", fifo.display().to_string()),
        ("a 512 MiB file", large.display().to_string()),
        ("a directory", dir.display().to_string()),
    ]
}

fn tls_listener(head: &str, listen: std::net::SocketAddr, cert: &str, key: &str) -> String {
    head.replacen(
        &format!("listen = \"{listen}\"\n"),
        &format!("listen = \"{listen}\"\n[listeners.tls]\ncert = \"{cert}\"\nkey = \"{key}\"\n"),
        1,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_files_in_a_policy_are_refused_fast_and_the_gateway_keeps_serving() {
    let upstream = start_echo("echo").await;
    let body = format!(
        "\n[[upstreams]]\nname = \"pool\"\nendpoints = [\"{upstream}\"]\n\n[[routes]]\nname = \"main\"\nsplit = [{{ upstream = \"pool\" }}]\n"
    );
    let gateway = Gateway::start(&body);
    let dir = tempfile::tempdir().unwrap();
    let pki = common::pki::Authority::new(dir.path(), "ca");
    let good = pki.server(dir.path(), "good", "good.test", &["good.test"]);
    let client = client();
    for (what, file) in bad_files(dir.path()) {
        for (key, cert_file, key_file) in [
            ("cert", file.clone(), good.key.display().to_string()),
            ("key", good.cert.display().to_string(), file.clone()),
        ] {
            let policy = tls_listener(
                &gateway.policy_with_body(&body),
                gateway.listen,
                &cert_file,
                &key_file,
            );
            let started = Instant::now();
            let response = client
                .post(gateway.admin_url("/policy/validate"))
                .bearer_auth(TOKEN)
                .body(policy)
                .send()
                .await
                .unwrap();
            let took = started.elapsed();
            let status = response.status();
            let answer: serde_json::Value = response.json().await.unwrap();
            let peak = peak_rss_kib(gateway.pid());
            println!(
                "{what} as {key}: {status} in {took:?}, gateway peak RSS {peak} KiB: {}",
                answer["errors"][0]["message"]
            );
            assert_eq!(status, 400, "{answer}");
            let error = answer["errors"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["path"] == format!("listeners[0].tls.{key}"))
                .unwrap_or_else(|| panic!("no error at listeners[0].tls.{key}: {answer}"));
            assert!(
                error["message"].as_str().unwrap().contains(&file),
                "the error names the file: {error}"
            );
            assert!(took < Duration::from_secs(1), "{what}: {took:?}");
            assert!(peak < 64 * 1024, "{what}: peak RSS {peak} KiB");
        }
    }
    // The data plane never stopped.
    let response = client.get(gateway.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

fn check(file: &Path) -> (bool, String, Duration) {
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .arg("check")
        .arg(file)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        started.elapsed(),
    )
}

#[test]
fn check_refuses_bad_files_fast_in_little_memory() {
    let dir = tempfile::tempdir().unwrap();
    let pki = common::pki::Authority::new(dir.path(), "ca");
    let good = pki.server(dir.path(), "good", "good.test", &["good.test"]);
    for (what, file) in bad_files(dir.path()) {
        let policy = format!(
            "version = 1\n[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8443\"\n[listeners.tls]\ncert = \"{file}\"\nkey = \"{}\"\n",
            good.key.display()
        );
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, policy).unwrap();
        let (ok, stderr, took) = check(&path);
        println!("check with {what}: {took:?}: {stderr}");
        assert!(!ok);
        assert!(stderr.contains("listeners[0].tls.cert"), "{stderr}");
        assert!(took < Duration::from_secs(1), "{what}: {took:?}");
    }
    // The policy file itself is held to the same rules.
    let (ok, stderr, took) = check(Path::new("/dev/zero"));
    println!("check /dev/zero: {took:?}: {stderr}");
    assert!(!ok && stderr.contains("is a device"), "{stderr}");
    assert!(took < Duration::from_secs(1));
    let peak = children_peak_rss_kib();
    println!("largest meshgate check peak RSS: {peak} KiB");
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB");
}

#[test]
fn check_refuses_what_run_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("short.token");
    std::fs::write(&token, "12345\n").unwrap();
    let admin = free_port();
    let short_token = format!(
        "version = 1\n[admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken_file = \"{}\"\n",
        token.display()
    );
    let typo_level = "version = 1\n[telemetry]\nlog_level = \"warning\"\n";
    for (what, policy, path, message) in [
        (
            "a 5-character token",
            short_token.as_str(),
            "admin.token_file",
            "at least 16 characters",
        ),
        (
            "log_level = \"warning\"",
            typo_level,
            "telemetry.log_level",
            "error, warn, info, debug, trace and off",
        ),
    ] {
        let file = dir.path().join("policy.toml");
        std::fs::write(&file, policy).unwrap();
        let (ok, stderr, _) = check(&file);
        println!("check with {what}: {stderr}");
        assert!(!ok, "check passed {what}");
        assert!(
            stderr.contains(path) && stderr.contains(message),
            "{what}: {stderr}"
        );
        // `run` refuses it too, with the same words, and does not start.
        let run = bounded(20, env!("CARGO_BIN_EXE_meshgate"))
            .arg("run")
            .arg("-c")
            .arg(&file)
            .output()
            .unwrap();
        let run_stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success(), "run started with {what}");
        assert!(run_stderr.contains(message), "{what}: {run_stderr}");
    }
}
