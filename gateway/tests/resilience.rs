//! End to end: timeouts, retries and their budget, circuit breaking, outlier ejection, health
//! checks, fault injection and header rules, against real upstreams that fail.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn one_route(upstreams: &str, route_extra: &str) -> String {
    format!(
        r#"
{upstreams}

[[routes]]
name = "main"
match = {{ path_prefix = "/" }}
split = [{{ upstream = "pool" }}]
{route_extra}
"#
    )
}

fn endpoint<'a>(upstreams: &'a Value, address: &str) -> &'a Value {
    upstreams["upstreams"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == address)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_upstream_behind_a_route_timeout_answers_504_fast() {
    let (slow, _, _task) = start_upstream("slow", 200, Duration::from_secs(2)).await;
    let body = one_route(
        &format!("[[upstreams]]\nname = \"pool\"\nendpoints = [\"{slow}\"]"),
        "[routes.timeouts]\nrequest = \"500ms\"",
    );
    let gateway = Gateway::start(&body);
    let started = Instant::now();
    let response = client().get(gateway.url("/")).send().await.unwrap();
    let took = started.elapsed();
    assert_eq!(response.status(), 504);
    assert_eq!(response.headers()["x-meshgate-reason"], "upstream-timeout");
    assert!(took < Duration::from_millis(1500), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_cover_a_dead_endpoint_and_5xx_but_not_posts() {
    let dead = format!("127.0.0.1:{}", free_port());
    let (live, live_config, _live_task) = start_upstream("live", 200, Duration::ZERO).await;
    let (failing, failing_config, _failing_task) =
        start_upstream("failing", 503, Duration::ZERO).await;
    let body = format!(
        r#"
[[upstreams]]
name = "with-dead"
endpoints = ["{dead}", "{live}"]

[[upstreams]]
name = "with-5xx"
endpoints = ["{failing}", "{live}"]

[[routes]]
name = "connect"
match = {{ path_prefix = "/connect" }}
split = [{{ upstream = "with-dead" }}]
retry = {{ attempts = 2, on = ["connect-failure"], backoff = "5ms" }}

[[routes]]
name = "server-error"
match = {{ path_prefix = "/5xx" }}
split = [{{ upstream = "with-5xx" }}]
retry = {{ attempts = 2, on = ["5xx"], backoff = "5ms", budget_percent = 100 }}
"#
    );
    let gateway = Gateway::start(&body);
    let client = client();
    for i in 0..40 {
        let response = client.get(gateway.url("/connect")).send().await.unwrap();
        assert_eq!(response.status(), 200, "GET {i} over a dead endpoint");
    }
    // Round robin sends every first try to the failing endpoint, so each GET needs a retry:
    // this route lifts the budget (tested on its own below) to test the retry rules.
    for i in 0..30 {
        let response = client.get(gateway.url("/5xx")).send().await.unwrap();
        assert_eq!(response.status(), 200, "GET {i} retried on 5xx");
    }
    let failing_before = failing_config.requests.load(Ordering::Relaxed);
    let live_before = live_config.requests.load(Ordering::Relaxed);
    let mut refused = 0;
    for _ in 0..20 {
        let response = client
            .post(gateway.url("/5xx"))
            .body("order=1")
            .send()
            .await
            .unwrap();
        if response.status() == 503 {
            refused += 1;
        }
    }
    let failing_seen = failing_config.requests.load(Ordering::Relaxed) - failing_before;
    let live_seen = live_config.requests.load(Ordering::Relaxed) - live_before;
    assert_eq!(failing_seen + live_seen, 20, "a POST was sent twice");
    assert_eq!(
        refused, failing_seen,
        "every POST that met a 503 got it back"
    );
    assert!(
        refused >= 5,
        "round robin sent {refused} of 20 POSTs to the failing endpoint"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn outlier_detection_ejects_the_failing_endpoint_but_never_the_whole_pool() {
    let (good, _, _good_task) = start_upstream("good", 200, Duration::ZERO).await;
    let (bad, _, _bad_task) = start_upstream("bad", 500, Duration::ZERO).await;
    let outlier = "[upstreams.outlier_detection]\nconsecutive_failures = 3\nbase_ejection = \"60s\"\nmax_ejection_percent = 50";
    let body = one_route(
        &format!("[[upstreams]]\nname = \"pool\"\nendpoints = [\"{good}\", \"{bad}\"]\n{outlier}"),
        "",
    );
    let gateway = Gateway::start(&body);
    let client = client();
    let mut failed = 0;
    for _ in 0..100 {
        if client.get(gateway.url("/")).send().await.unwrap().status() != 200 {
            failed += 1;
        }
    }
    eprintln!("{failed} of 100 requests failed before the ejection");
    assert!(failed <= 5, "{failed} of 100 failed");
    let state = gateway.admin_json("/upstreams").await;
    assert_eq!(
        endpoint(&state, &bad.to_string())["ejected"],
        true,
        "{state}"
    );
    assert_eq!(
        endpoint(&state, &good.to_string())["ejected"],
        false,
        "{state}"
    );

    // A reload that changes only another route keeps the ejection.
    let (other, _, _other_task) = start_upstream("other", 200, Duration::ZERO).await;
    let changed = format!(
        "{body}\n[[upstreams]]\nname = \"other\"\nendpoints = [\"{other}\"]\n\n[[routes]]\nname = \"other\"\nmatch = {{ path_prefix = \"/other\" }}\nsplit = [{{ upstream = \"other\" }}]\n"
    );
    gateway
        .apply_policy(gateway.policy_with_body(&changed))
        .await;
    let state = gateway.admin_json("/upstreams").await;
    assert_eq!(
        endpoint(&state, &bad.to_string())["ejected"],
        true,
        "{state}"
    );

    // Both endpoints failing: only half the pool may be ejected.
    let (bad1, _, _t1) = start_upstream("bad1", 500, Duration::ZERO).await;
    let (bad2, _, _t2) = start_upstream("bad2", 500, Duration::ZERO).await;
    let body = one_route(
        &format!("[[upstreams]]\nname = \"pool\"\nendpoints = [\"{bad1}\", \"{bad2}\"]\n{outlier}"),
        "",
    );
    let gateway = Gateway::start(&body);
    for _ in 0..30 {
        client.get(gateway.url("/")).send().await.unwrap();
    }
    let state = gateway.admin_json("/upstreams").await;
    let ejected = state["upstreams"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ejected"] == true)
        .count();
    assert_eq!(ejected, 1, "{state}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_breaker_answers_503_overflow_at_once() {
    let (slow, slow_config, _task) = start_upstream("slow", 200, Duration::from_millis(1500)).await;
    let body = one_route(
        &format!(
            "[[upstreams]]\nname = \"pool\"\nendpoints = [\"{slow}\"]\n[upstreams.circuit_breaker]\nmax_requests = 2"
        ),
        "",
    );
    let gateway = Gateway::start(&body);
    let client = client();
    let mut calls = Vec::new();
    for _ in 0..12 {
        let client = client.clone();
        let url = gateway.url("/");
        calls.push(tokio::spawn(async move {
            let started = Instant::now();
            let response = client.get(url).send().await.unwrap();
            let reason = response
                .headers()
                .get("x-meshgate-reason")
                .map(|v| v.to_str().unwrap().to_owned());
            let limit = response
                .headers()
                .get("x-meshgate-overflow")
                .map(|v| v.to_str().unwrap().to_owned());
            (response.status().as_u16(), reason, limit, started.elapsed())
        }));
    }
    let mut fast_overflows = 0;
    let mut admitted_ok = 0;
    for call in calls {
        let (status, reason, limit, took) = call.await.unwrap();
        if status == 503 && reason.as_deref() == Some("overflow") {
            assert_eq!(limit.as_deref(), Some("max_requests"));
            if took < Duration::from_millis(500) {
                fast_overflows += 1;
            }
        } else {
            // Every request the breaker admitted is served by the slow upstream.
            assert_eq!(status, 200, "an admitted request failed: {reason:?}");
            admitted_ok += 1;
        }
    }
    eprintln!("{fast_overflows} of 12 got a fast 503 overflow, {admitted_ok} were served");
    // All twelve arrive within the 1.5 s the first two take: exactly two are admitted.
    assert_eq!(admitted_ok, 2, "max_requests = 2 admitted {admitted_ok}");
    assert_eq!(fast_overflows, 10, "{fast_overflows} fast overflows of 12");
    assert_eq!(
        slow_config
            .requests
            .load(std::sync::atomic::Ordering::Relaxed),
        2,
        "the upstream saw only the admitted requests"
    );
    assert_eq!(fast_overflows + admitted_ok, 12);
    let state = gateway.admin_json("/upstreams").await;
    assert!(
        state["upstreams"][0]["circuit_breaker"]["overflows_total"]
            .as_u64()
            .unwrap()
            >= 8
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_retry_budget_stops_a_retry_storm() {
    let (down, config, _task) = start_upstream("down", 503, Duration::ZERO).await;
    let body = one_route(
        &format!("[[upstreams]]\nname = \"pool\"\nendpoints = [\"{down}\"]"),
        "retry = { attempts = 3, on = [\"5xx\"], backoff = \"1ms\" }",
    );
    let gateway = Gateway::start(&body);
    let client = client();
    let started = Instant::now();
    let mut requests = 0u64;
    while started.elapsed() < Duration::from_secs(3) {
        let response = client.get(gateway.url("/")).send().await.unwrap();
        assert_eq!(response.status(), 503);
        requests += 1;
    }
    let seconds = started.elapsed().as_secs_f64().ceil() as u64 + 1;
    let seen = config.requests.load(Ordering::Relaxed);
    let bound = requests * 12 / 10 + 10 * seconds + 5;
    eprintln!("{requests} requests, upstream saw {seen}, bound {bound}");
    assert!(requests > 50, "only {requests} requests");
    assert!(
        seen <= bound,
        "upstream saw {seen} for {requests} requests (bound {bound})"
    );
    assert!(seen > requests, "no retry at all");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_checks_take_a_dead_endpoint_out_and_bring_it_back() {
    let (steady, _, _steady_task) = start_upstream("steady", 200, Duration::ZERO).await;
    let (flaky, _, flaky_task) = start_upstream("flaky", 200, Duration::ZERO).await;
    let check = "[upstreams.health_check]\npath = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nunhealthy_threshold = 2\nhealthy_threshold = 1";
    let body = one_route(
        &format!(
            "[[upstreams]]\nname = \"pool\"\nendpoints = [\"{steady}\", \"{flaky}\"]\n{check}"
        ),
        "",
    );
    let gateway = Gateway::start(&body);
    flaky_task.abort();
    let killed = Instant::now();
    loop {
        let state = gateway.admin_json("/upstreams").await;
        if endpoint(&state, &flaky.to_string())["healthy"] == false {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(3),
            "not taken out: {state}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("taken out after {:?}", killed.elapsed());
    let counts = count_servers(&client(), &gateway.url("/"), 20).await;
    assert_eq!(counts.get("steady"), Some(&20), "{counts:?}");

    let listener = tokio::net::TcpListener::bind(flaky).await.unwrap();
    tokio::spawn(meshgate_echo::serve(
        listener,
        meshgate_echo::Config::new("flaky", 64),
    ));
    let revived = Instant::now();
    loop {
        let state = gateway.admin_json("/upstreams").await;
        if endpoint(&state, &flaky.to_string())["healthy"] == true {
            break;
        }
        assert!(
            revived.elapsed() < Duration::from_secs(3),
            "not back: {state}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let counts = count_servers(&client(), &gateway.url("/"), 20).await;
    assert_eq!(counts.get("flaky"), Some(&10), "{counts:?}");

    // An upstream added by a reload gets its checks too.
    let dead = format!("127.0.0.1:{}", free_port());
    let with_new =
        format!("{body}\n[[upstreams]]\nname = \"added\"\nendpoints = [\"{dead}\"]\n{check}\n");
    gateway
        .apply_policy(gateway.policy_with_body(&with_new))
        .await;
    let applied = Instant::now();
    loop {
        let state = gateway.admin_json("/upstreams").await;
        let added = state["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == "added")
            .unwrap();
        if added["endpoints"][0]["healthy"] == false {
            break;
        }
        assert!(
            applied.elapsed() < Duration::from_secs(3),
            "added upstream unchecked: {state}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_abort_and_delay_the_configured_share() {
    let (up, _, _task) = start_upstream("up", 200, Duration::ZERO).await;
    let body = format!(
        r#"
[[upstreams]]
name = "pool"
endpoints = ["{up}"]

[[routes]]
name = "abort"
match = {{ path_prefix = "/abort" }}
split = [{{ upstream = "pool" }}]
fault = {{ abort_status = 503, abort_percent = 50 }}

[[routes]]
name = "delay"
match = {{ path_prefix = "/delay" }}
split = [{{ upstream = "pool" }}]
fault = {{ delay = "300ms", delay_percent = 100 }}
"#
    );
    let gateway = Gateway::start(&body);
    let client = client();
    let mut aborted = 0;
    for _ in 0..200 {
        let response = client.get(gateway.url("/abort")).send().await.unwrap();
        if response.status() == 503 {
            assert_eq!(response.headers()["x-meshgate-reason"], "fault-abort");
            aborted += 1;
        }
    }
    eprintln!("{aborted} of 200 aborted");
    assert!((70..=130).contains(&aborted), "{aborted} of 200 aborted");
    let started = Instant::now();
    let response = client.get(gateway.url("/delay")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test(flavor = "multi_thread")]
async fn header_rules_rewrite_requests_and_responses() {
    let up = start_echo("up").await;
    let body = one_route(
        &format!("[[upstreams]]\nname = \"pool\"\nendpoints = [\"{up}\"]"),
        r#"[routes.headers]
request_set = { "x-env" = "prod" }
request_add = { "x-added" = "1" }
request_remove = ["x-secret"]
response_set = { "x-served-by" = "meshgate" }
response_remove = ["x-echo-server"]"#,
    );
    let gateway = Gateway::start(&body);
    let response = client()
        .get(gateway.url("/headers"))
        .header("x-env", "dev")
        .header("x-secret", "s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-served-by"], "meshgate");
    assert!(response.headers().get("x-echo-server").is_none());
    let text = response.text().await.unwrap();
    assert!(text.contains("x-env: prod\n"), "{text}");
    assert!(!text.contains("x-env: dev"), "{text}");
    assert!(text.contains("x-added: 1\n"), "{text}");
    assert!(!text.contains("x-secret"), "{text}");
}
