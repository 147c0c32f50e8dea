//! End to end: a certificate rotated in a busy folder (a log writer appending to other files
//! in it all the time, and a thousand other files) is served to new handshakes within 1 s.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::https::{echo_route, replace_by_rename, served_cn, start_tls_gateway};
use common::pki::Authority;
use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_rotation_in_a_busy_folder_is_served_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    let ca = Authority::new(path, "ca");
    let first = ca.server(path, "first", "first", &["main.test"]);
    let second = ca.server(path, "second", "second", &["main.test"]);
    let live = path.join("live");
    std::fs::create_dir(&live).unwrap();
    for i in 0..1000 {
        std::fs::write(live.join(format!("other-{i}.txt")), "x").unwrap();
    }
    let (cert, key) = (live.join("tls.crt"), live.join("tls.key"));
    std::fs::copy(&first.cert, &cert).unwrap();
    std::fs::copy(&first.key, &key).unwrap();
    let upstream = start_echo("u").await;
    let tls = format!(
        "cert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let gateway = start_tls_gateway(dir, &tls, &echo_route(upstream, "u", "/", ""));
    let port = gateway.listen.port();
    assert!(served_cn(port).contains("first"), "{}", served_cn(port));

    // A writer keeps the folder busy: appends and renames, thousands of events a second.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let live = live.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(live.join("app.log"))
                .unwrap();
            let mut events = 0u64;
            while !stop.load(Ordering::Relaxed) && events < 2_000_000 {
                writeln!(log, "line {events}").unwrap();
                let n = events % 1000;
                let _ = std::fs::rename(
                    live.join(format!("other-{n}.txt")),
                    live.join(format!("other-{n}.tmp")),
                );
                let _ = std::fs::rename(
                    live.join(format!("other-{n}.tmp")),
                    live.join(format!("other-{n}.txt")),
                );
                events += 3;
            }
            events
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    replace_by_rename(&second.key, &key);
    replace_by_rename(&second.cert, &cert);
    let rotated = Instant::now();
    let seen = loop {
        if served_cn(port).contains("second") {
            break rotated.elapsed();
        }
        assert!(
            rotated.elapsed() < Duration::from_secs(5),
            "new handshakes still get {}",
            served_cn(port)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stop.store(true, Ordering::Relaxed);
    let events = writer.join().unwrap();
    println!("rotation served after {seen:?} with {events} file events in the folder");
    assert!(seen < Duration::from_secs(1), "{seen:?}");
    assert!(events > 1000, "the folder was busy: {events} events");
}
