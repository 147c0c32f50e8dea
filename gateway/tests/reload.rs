//! End to end: policy reloads through the admin API and the file, under load.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn bearer(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    request.header("authorization", format!("Bearer {TOKEN}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_put_is_refused_with_lines_and_the_old_split_keeps_serving() {
    let v1 = start_echo("v1").await;
    let v2 = start_echo("v2").await;
    let gateway = Gateway::start(&split_policy(v1, v2, 90, 10));
    let client = client();
    let before = std::fs::read_to_string(&gateway.policy_path).unwrap();

    let bad = gateway.policy_with_body(
        &split_policy(v1, v2, 90, 10)
            .replace("upstream = \"v2\"\nweight", "upstream = \"v3\"\nweight"),
    );
    let bad_line = bad.lines().position(|l| l.contains("\"v3\"")).unwrap() + 1;
    let response = bearer(client.put(gateway.admin_url("/policy")))
        .body(bad.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    let errors = body["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{body}");
    assert_eq!(errors[0]["line"], bad_line as u64, "{body}");
    assert_eq!(errors[0]["path"], "routes[0].split[1].upstream");
    assert!(errors[0]["message"]
        .as_str()
        .unwrap()
        .contains("unknown upstream \"v3\""));

    // The old policy serves, and the file was not touched.
    let counts = count_servers(&client, &gateway.url("/"), 100).await;
    assert_eq!(counts.get("v1"), Some(&90), "{counts:?}");
    assert_eq!(
        std::fs::read_to_string(&gateway.policy_path).unwrap(),
        before
    );

    // `meshgate check` points at the same line.
    let bad_file = gateway.dir.path().join("bad.toml");
    std::fs::write(&bad_file, &bad).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .arg("check")
        .arg(&bad_file)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected = format!(
        "{}:{bad_line}:12: routes[0].split[1].upstream: unknown upstream \"v3\"",
        bad_file.display()
    );
    assert!(stderr.contains(&expected), "{stderr}\nexpected {expected}");

    let good = std::process::Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .arg("check")
        .arg(&gateway.policy_path)
        .output()
        .unwrap();
    assert_eq!(good.status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn good_put_applies_at_once_persists_and_rolls_back() {
    let v1 = start_echo("v1").await;
    let v2 = start_echo("v2").await;
    let gateway = Gateway::start(&split_policy(v1, v2, 90, 10));
    let client = client();

    let get = bearer(client.get(gateway.admin_url("/policy")))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 200);
    assert_eq!(get.headers()["x-meshgate-policy-version"], "1");
    let etag = get.headers()["etag"].to_str().unwrap().to_owned();
    let original = get.text().await.unwrap();

    let all_v2 = gateway.policy_with_body(&split_policy(v1, v2, 0, 100));
    // A stale If-Match is refused.
    let stale = bearer(client.put(gateway.admin_url("/policy")))
        .header("if-match", "\"0000\"")
        .body(all_v2.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 412);

    let response = bearer(client.put(gateway.admin_url("/policy")))
        .header("if-match", etag)
        .body(all_v2.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let applied: Value = response.json().await.unwrap();
    assert_eq!(applied["version"], 2);
    assert_eq!(applied["restart_required"], serde_json::json!([]));
    let counts = count_servers(&client, &gateway.url("/"), 20).await;
    assert_eq!(counts.get("v2"), Some(&20), "{counts:?}");
    assert_eq!(
        std::fs::read_to_string(&gateway.policy_path).unwrap(),
        all_v2
    );

    // Changing a listener is accepted but reported as needing a restart.
    let moved = all_v2.replace(&gateway.listen.to_string(), "127.0.0.1:1");
    let response = bearer(client.post(gateway.admin_url("/policy/validate")))
        .body(moved)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let validated: Value = response.json().await.unwrap();
    assert_eq!(
        validated["restart_required"],
        serde_json::json!(["listeners"])
    );

    let response = bearer(client.post(gateway.admin_url("/policy/rollback")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let counts = count_servers(&client, &gateway.url("/"), 100).await;
    assert_eq!(counts.get("v1"), Some(&90), "{counts:?}");
    assert_eq!(
        std::fs::read_to_string(&gateway.policy_path).unwrap(),
        original
    );
    let get = bearer(client.get(gateway.admin_url("/policy")))
        .send()
        .await
        .unwrap();
    assert_eq!(get.headers()["x-meshgate-policy-version"], "3");
}

#[tokio::test(flavor = "multi_thread")]
async fn file_edit_by_rename_applies_within_seconds_and_bad_edits_are_ignored() {
    let v1 = start_echo("v1").await;
    let v2 = start_echo("v2").await;
    let gateway = Gateway::start(&split_policy(v1, v2, 100, 0));
    let client = client();

    // A broken edit is refused; the gateway keeps serving v1.
    let temp = gateway.dir.path().join("edit.tmp");
    std::fs::write(&temp, "version = 1\n[[routes]]\nname = 3\n").unwrap();
    std::fs::rename(&temp, &gateway.policy_path).unwrap();
    // Wait for the watcher to have read and refused the broken file.
    let refused = gateway
        .wait_for_metric(
            "meshgate_policy_reloads_total{result=\"invalid\"}",
            1.0,
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(refused, 1.0, "the broken edit was not seen");
    let counts = count_servers(&client, &gateway.url("/"), 10).await;
    assert_eq!(counts.get("v1"), Some(&10));

    // Like an editor: write a temporary file, rename it over the policy.
    std::fs::write(
        &temp,
        gateway.policy_with_body(&split_policy(v1, v2, 0, 100)),
    )
    .unwrap();
    let written = Instant::now();
    std::fs::rename(&temp, &gateway.policy_path).unwrap();
    loop {
        let counts = count_servers(&client, &gateway.url("/"), 1).await;
        if counts.contains_key("v2") {
            break;
        }
        assert!(
            written.elapsed() < Duration::from_secs(5),
            "edit not applied in 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("rename applied after {:?}", written.elapsed());

    // POST /reload re-reads the file too.
    std::fs::write(
        &gateway.policy_path,
        gateway.policy_with_body(&split_policy(v1, v2, 100, 0)),
    )
    .unwrap();
    let response = bearer(client.post(gateway.admin_url("/reload")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let counts = count_servers(&client, &gateway.url("/"), 10).await;
    assert_eq!(counts.get("v1"), Some(&10));
}

#[tokio::test(flavor = "multi_thread")]
async fn unchanged_upstreams_keep_their_state_across_reloads() {
    let v1 = start_echo("v1").await;
    let v2 = start_echo("v2").await;
    let gateway = Gateway::start(&split_policy(v1, v2, 50, 50));
    let client = client();
    count_servers(&client, &gateway.url("/"), 10).await;

    // Change v2's endpoint list (a new spec) and the route's weights; v1 is unchanged.
    let v2b = start_echo("v2").await;
    let changed = split_policy(v1, v2, 50, 50)
        .replace(&format!("[\"{v2}\"]"), &format!("[\"{v2}\", \"{v2b}\"]"))
        .replace(
            "weight = 50\n[[routes.split]]",
            "weight = 60\n[[routes.split]]",
        );
    let response = bearer(client.put(gateway.admin_url("/policy")))
        .body(gateway.policy_with_body(&changed))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let upstreams = gateway.admin_json("/upstreams").await;
    let totals = |name: &str| -> u64 {
        upstreams["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == name)
            .unwrap()["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["requests_total"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(totals("v1"), 5, "v1 kept its counters: {upstreams}");
    assert_eq!(totals("v2"), 0, "v2 changed and starts fresh: {upstreams}");
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_swaps_under_wrk_load_drop_nothing() {
    let _machine = load_test_lock();
    let (v1, v1_config, _v1_task) = start_upstream("v1", 200, Duration::ZERO).await;
    let (v2, v2_config, _v2_task) = start_upstream("v2", 200, Duration::ZERO).await;
    let served = || {
        (
            v1_config.requests.load(std::sync::atomic::Ordering::SeqCst),
            v2_config.requests.load(std::sync::atomic::Ordering::SeqCst),
        )
    };
    let gateway = Gateway::start(&split_policy(v1, v2, 90, 10));
    let url = gateway.url("/");
    let wrk = std::thread::spawn(move || {
        bounded(120, "wrk")
            .args(["-t2", "-c16", "-d8s", "--latency", &url])
            .output()
            .expect("wrk is installed by `make deps`")
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = client();
    let mut windows = Vec::new();
    for swap in 0..20 {
        let (w1, w2) = if swap % 2 == 0 { (10, 90) } else { (90, 10) };
        let response = bearer(client.put(gateway.admin_url("/policy")))
            .body(gateway.policy_with_body(&split_policy(v1, v2, w1, w2)))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "swap {swap}");
        // What each side served while this version was the active one.
        let before = served();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = served();
        windows.push((w1, after.0 - before.0, after.1 - before.1));
    }
    println!("(v1 weight, v1 served, v2 served) per version: {windows:?}");
    for (swap, (w1, to_v1, to_v2)) in windows.iter().enumerate() {
        assert!(
            to_v1 + to_v2 > 100,
            "swap {swap}: traffic did not run: {windows:?}"
        );
        // Traffic moved with each version: the 90% side took the bulk of its window.
        let (heavy, light) = if *w1 == 90 {
            (to_v1, to_v2)
        } else {
            (to_v2, to_v1)
        };
        assert!(heavy > &(light * 4), "swap {swap}: {windows:?}");
    }
    let output = wrk.join().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    eprintln!("{text}");
    let (requests, non_2xx, socket_errors) = wrk_summary(&text);
    assert!(
        requests > 1000,
        "wrk made only {requests} requests:\n{text}"
    );
    assert_eq!(non_2xx, 0, "{text}");
    assert_eq!(socket_errors, 0, "{text}");
    let get = bearer(client.get(gateway.admin_url("/policy")))
        .send()
        .await
        .unwrap();
    assert_eq!(get.headers()["x-meshgate-policy-version"], "21");
}
