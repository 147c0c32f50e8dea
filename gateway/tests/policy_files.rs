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

/// Every key that names a file to read, each given a FIFO, a device, a folder and a file one
/// byte over 1 MiB in turn: `meshgate check` refuses each at once, naming the key and the
/// file.
#[test]
fn every_file_key_refuses_fifos_devices_folders_and_large_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = common::pki::Authority::new(d, "ca");
    let good = pki.server(d, "good", "good.test", &["good.test"]);
    let token = d.join("admin.token");
    write_token(&token);
    let password = d.join("etcd.password");
    std::fs::write(&password, "secret").unwrap();
    let jwks = d.join("jwks.json");
    let signing = common::tokens::SigningKey::ec("k1");
    std::fs::write(&jwks, common::tokens::jwks(&[&signing])).unwrap();
    let fifo = d.join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let over = d.join("over.pem");
    std::fs::write(&over, vec![b'x'; 1024 * 1024 + 1]).unwrap();
    let folder = d.join("folder");
    std::fs::create_dir(&folder).unwrap();
    let bad: [(&str, &Path); 4] = [
        ("a FIFO", &fifo),
        ("a device", Path::new("/dev/zero")),
        ("a folder", &folder),
        ("1 MiB + 1", &over),
    ];
    let (cert, key, ca) = (
        good.cert.display().to_string(),
        good.key.display().to_string(),
        pki.file.display().to_string(),
    );
    // Each policy names good files, with `{}` where the file under test goes.
    let policy = |tls: &str, upstream_tls: &str, jwt: &str, admin: &str, fleet: &str| {
        format!(
            "version = 1\n[admin]\nlisten = \"127.0.0.1:19901\"\ntoken_file = \"{admin}\"\n[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:18443\"\n[listeners.tls]\n{tls}\n{fleet}"
        ) + &if fleet.is_empty() {
            format!("[[upstreams]]\nname = \"app\"\nendpoints = [\"127.0.0.1:9000\"]\n[upstreams.tls]\n{upstream_tls}\n[[routes]]\nname = \"main\"\nsplit = [{{ upstream = \"app\" }}]\njwt = {{ {jwt} }}\n")
        } else {
            String::new()
        }
    };
    let listener = |c: &str, k: &str, client_ca: &str, sni_c: &str, sni_k: &str| {
        format!("cert = \"{c}\"\nkey = \"{k}\"\nclient_ca = \"{client_ca}\"\nclient_auth = \"require\"\nsni = [{{ server_names = [\"a.test\"], cert = \"{sni_c}\", key = \"{sni_k}\" }}]")
    };
    let upstream = |u_ca: &str, u_c: &str, u_k: &str| {
        format!("ca = \"{u_ca}\"\ncert = \"{u_c}\"\nkey = \"{u_k}\"")
    };
    let jwks_file = |f: &str| format!("jwks_file = \"{f}\"");
    let jwks_url = |f: &str| format!("jwks_url = \"https://idp.test/jwks\", jwks_ca = \"{f}\"");
    let fleet = |f_ca: &str, f_c: &str, f_k: &str, f_p: &str| {
        format!("[fleet]\netcd = [\"https://127.0.0.1:2379\"]\nprefix = \"/m\"\nnode = \"n\"\ntls = {{ ca = \"{f_ca}\", cert = \"{f_c}\", key = \"{f_k}\" }}\nusername = \"u\"\npassword_file = \"{f_p}\"\n")
    };
    let t = token.display().to_string();
    let p = password.display().to_string();
    let j = jwks.display().to_string();
    let ok_listener = listener(&cert, &key, &ca, &cert, &key);
    let ok_upstream = upstream(&ca, &cert, &key);
    /// A policy text with the file under test in its place.
    type Policy<'a> = Box<dyn Fn(&str) -> String + 'a>;
    let cases: Vec<(&str, Policy)> = vec![
        (
            "listeners[0].tls.cert",
            Box::new(|f| {
                policy(
                    &listener(f, &key, &ca, &cert, &key),
                    &ok_upstream,
                    &jwks_file(&j),
                    &t,
                    "",
                )
            }),
        ),
        (
            "listeners[0].tls.key",
            Box::new(|f| {
                policy(
                    &listener(&cert, f, &ca, &cert, &key),
                    &ok_upstream,
                    &jwks_file(&j),
                    &t,
                    "",
                )
            }),
        ),
        (
            "listeners[0].tls.client_ca",
            Box::new(|f| {
                policy(
                    &listener(&cert, &key, f, &cert, &key),
                    &ok_upstream,
                    &jwks_file(&j),
                    &t,
                    "",
                )
            }),
        ),
        (
            "listeners[0].tls.sni[0].cert",
            Box::new(|f| {
                policy(
                    &listener(&cert, &key, &ca, f, &key),
                    &ok_upstream,
                    &jwks_file(&j),
                    &t,
                    "",
                )
            }),
        ),
        (
            "listeners[0].tls.sni[0].key",
            Box::new(|f| {
                policy(
                    &listener(&cert, &key, &ca, &cert, f),
                    &ok_upstream,
                    &jwks_file(&j),
                    &t,
                    "",
                )
            }),
        ),
        (
            "upstreams[0].tls.ca",
            Box::new(|f| {
                policy(
                    &ok_listener,
                    &upstream(f, &cert, &key),
                    &jwks_file(&j),
                    &t,
                    "",
                )
            }),
        ),
        (
            "upstreams[0].tls.cert",
            Box::new(|f| {
                policy(
                    &ok_listener,
                    &upstream(&ca, f, &key),
                    &jwks_file(&j),
                    &t,
                    "",
                )
            }),
        ),
        (
            "upstreams[0].tls.key",
            Box::new(|f| {
                policy(
                    &ok_listener,
                    &upstream(&ca, &cert, f),
                    &jwks_file(&j),
                    &t,
                    "",
                )
            }),
        ),
        (
            "routes[0].jwt.jwks_file",
            Box::new(|f| policy(&ok_listener, &ok_upstream, &jwks_file(f), &t, "")),
        ),
        (
            "routes[0].jwt.jwks_ca",
            Box::new(|f| policy(&ok_listener, &ok_upstream, &jwks_url(f), &t, "")),
        ),
        (
            "admin.token_file",
            Box::new(|f| policy(&ok_listener, &ok_upstream, &jwks_file(&j), f, "")),
        ),
        (
            "fleet.tls.ca",
            Box::new(|f| policy(&ok_listener, "", "", &t, &fleet(f, &cert, &key, &p))),
        ),
        (
            "fleet.tls.cert",
            Box::new(|f| policy(&ok_listener, "", "", &t, &fleet(&ca, f, &key, &p))),
        ),
        (
            "fleet.tls.key",
            Box::new(|f| policy(&ok_listener, "", "", &t, &fleet(&ca, &cert, f, &p))),
        ),
        (
            "fleet.password_file",
            Box::new(|f| policy(&ok_listener, "", "", &t, &fleet(&ca, &cert, &key, f))),
        ),
    ];
    let path = d.join("policy.toml");
    for (key_path, make) in &cases {
        // With good files, the policy passes: only the file under test is wrong below.
        std::fs::write(
            &path,
            make(&cert_or_key_for(key_path, &cert, &key, &ca, &t, &p, &j)),
        )
        .unwrap();
        let (ok, stderr, _) = check(&path);
        assert!(ok, "{key_path} with a good file: {stderr}");
        for (what, file) in &bad {
            std::fs::write(&path, make(&file.display().to_string())).unwrap();
            let (ok, stderr, took) = check(&path);
            assert!(!ok, "{key_path} took {what}");
            assert!(
                stderr
                    .lines()
                    .any(|l| l.contains(key_path) && l.contains(&file.display().to_string())),
                "{key_path} with {what}: {stderr}"
            );
            assert!(
                took < Duration::from_secs(1),
                "{key_path} with {what}: {took:?}"
            );
        }
        println!("{key_path}: refuses a FIFO, a device, a folder and 1 MiB + 1");
    }
}

/// The good file for `key_path`.
fn cert_or_key_for(
    key_path: &str,
    cert: &str,
    key: &str,
    ca: &str,
    token: &str,
    password: &str,
    jwks: &str,
) -> String {
    match key_path {
        k if k.ends_with(".key") => key,
        k if k.ends_with(".ca") || k.ends_with("client_ca") || k.ends_with("jwks_ca") => ca,
        "admin.token_file" => token,
        "fleet.password_file" => password,
        "routes[0].jwt.jwks_file" => jwks,
        _ => cert,
    }
    .to_owned()
}
