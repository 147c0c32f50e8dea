//! Metrics and the access log end to end: counts that match what was sent, a real
//! `promtool check metrics`, one JSON record per request.

mod common;

use std::io::Write;
use std::process::Stdio;

use common::*;

fn sum(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|label| l.contains(label)))
        .filter(|l| l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Acceptance: after N requests to a route, `meshgate_requests_total` for that route sums to
/// exactly N, the histogram and the code label exist, and `promtool check metrics` passes.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_every_request_and_pass_promtool() {
    let v1 = start_echo("v1").await;
    let gateway = Gateway::start(&split_policy(v1, v1, 1, 0));
    let client = client();
    const N: usize = 37;
    for _ in 0..N {
        let response = client.get(gateway.url("/")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
    }
    // One request no route takes.
    let unmatched = client
        .get(gateway.url("/"))
        .header("host", "elsewhere.test")
        .send()
        .await
        .unwrap();
    assert_eq!(
        unmatched.status(),
        200,
        "the split route matches every host"
    );

    // A request is counted in its logging phase, which runs once the response is sent: the
    // last one may be counted a moment after the client has it.
    let route = "route=\"split\"";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let metrics = loop {
        let metrics = gateway.metrics().await;
        let counted = sum(&metrics, "meshgate_requests_total", &[route]);
        if counted >= (N + 1) as f64 || std::time::Instant::now() > deadline {
            break metrics;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(
        sum(&metrics, "meshgate_requests_total", &[route]),
        (N + 1) as f64,
        "{metrics}"
    );
    assert_eq!(
        sum(
            &metrics,
            "meshgate_requests_total",
            &[route, "code=\"200\"", "upstream=\"v1\""]
        ),
        (N + 1) as f64
    );
    assert_eq!(
        sum(
            &metrics,
            "meshgate_request_duration_seconds_count",
            &[route, "upstream=\"v1\""]
        ),
        (N + 1) as f64,
        "{metrics}"
    );
    assert!(metrics.contains(
        "meshgate_request_duration_seconds_bucket{route=\"split\",upstream=\"v1\",le=\"0.005\"}"
    ));
    assert_eq!(
        sum(&metrics, "meshgate_response_bytes_total", &[route]),
        ((N + 1) * 1024) as f64,
        "the echo upstream answers 1 KiB"
    );
    assert_eq!(sum(&metrics, "meshgate_requests_in_flight", &[route]), 0.0);
    assert_eq!(
        sum(
            &metrics,
            "meshgate_upstream_connections_total",
            &["upstream=\"v1\""]
        ),
        (N + 1) as f64,
        "one connection use per try"
    );
    assert!(
        sum(
            &metrics,
            "meshgate_upstream_connections_total",
            &["upstream=\"v1\"", "reused=\"true\""]
        ) >= (N - 2) as f64,
        "keepalive reuses the connection: {metrics}"
    );
    assert!(
        sum(
            &metrics,
            "meshgate_upstream_connect_duration_seconds_count",
            &["upstream=\"v1\""]
        ) >= 1.0
    );

    let mut promtool = bounded(60, "promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is installed by `make deps`");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let output = promtool.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Acceptance: the access log has one parseable JSON object per request, with status and
/// route.
#[tokio::test(flavor = "multi_thread")]
async fn the_access_log_has_one_json_object_per_request() {
    let v1 = start_echo("v1").await;
    let body = split_policy(v1, v1, 1, 0).replace(
        "[routes.match]\npath_prefix = \"/\"",
        "[routes.match]\npath_prefix = \"/app\"",
    );
    let gateway = Gateway::start(&body);
    let client = client();
    for path in ["/app/a?x=1", "/app/b", "/nowhere"] {
        client
            .get(gateway.url(path))
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .send()
            .await
            .unwrap();
    }
    let records = gateway.access_records_at_least(3).await;
    assert_eq!(records.len(), 3, "{records:#?}");
    assert_eq!(records[0]["route"], "split");
    assert_eq!(records[0]["status"], 200);
    assert_eq!(records[0]["path"], "/app/a");
    assert_eq!(records[0]["query"], "x=1");
    assert_eq!(records[0]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(records[0]["response_bytes"], 1024);
    assert_eq!(records[2]["status"], 404);
    assert_eq!(records[2]["reason"], "no-route");
    assert!(records[2]["route"].is_null());
}

/// Spans a test OTLP/HTTP receiver got: each POST's path and decoded body.
type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, ExportTraceServiceRequest)>>>;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

/// A real OTLP/HTTP receiver on loopback that decodes every protobuf export it gets.
async fn start_otlp_receiver() -> (std::net::SocketAddr, Received) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Received::default();
    let store = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let store = store.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let store = store.clone();
                        async move {
                            let path = request.uri().path().to_owned();
                            let body = request.into_body().collect().await?.to_bytes();
                            let decoded =
                                <ExportTraceServiceRequest as prost::Message>::decode(body)
                                    .expect("an OTLP protobuf export");
                            store.lock().unwrap().push((path, decoded));
                            Ok::<_, hyper::Error>(
                                hyper::Response::builder()
                                    .header("content-type", "application/x-protobuf")
                                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, received)
}

/// A gateway in front of `upstream` that exports traces to `otlp` with `ratio`.
fn start_traced(upstream: std::net::SocketAddr, otlp: &str, ratio: f64) -> Gateway {
    let listen: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let access_log = dir.path().join("access.log");
    let policy = policy_head(listen, admin, access_log.to_str().unwrap()).replace(
        "[telemetry]\n",
        &format!("[telemetry]\notlp_endpoint = \"{otlp}\"\ntrace_sample_ratio = {ratio:?}\nservice_name = \"edge-test\"\n"),
    ) + &split_policy(upstream, upstream, 1, 0);
    Gateway::start_with(dir, &policy, listen, admin)
}

/// The body of the answer to `request`.
async fn text_of(request: reqwest::RequestBuilder) -> String {
    request.send().await.unwrap().text().await.unwrap()
}

/// The `traceparent` an echo upstream reports having received.
fn forwarded_traceparent(echoed: &str) -> Vec<String> {
    let line = echoed
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("traceparent:"))
        .unwrap_or_else(|| panic!("no traceparent reached the upstream:\n{echoed}"));
    line.split_once(':')
        .unwrap()
        .1
        .trim()
        .split('-')
        .map(str::to_owned)
        .collect()
}

/// Acceptance: an incoming `traceparent` is continued with a new parent span, and a test
/// OTLP receiver gets a POST to `/v1/traces` that carries that trace id. A request without
/// one starts a trace; with `trace_sample_ratio = 0` that trace is not exported.
#[tokio::test(flavor = "multi_thread")]
async fn traces_are_continued_and_exported_over_otlp() {
    let upstream = start_echo("v1").await;
    let (otlp, received) = start_otlp_receiver().await;
    let gateway = start_traced(upstream, &format!("http://{otlp}"), 0.0);
    let client = client();
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const CALLER_SPAN: &str = "00f067aa0ba902b7";

    let echoed = text_of(
        client
            .get(gateway.url("/headers"))
            .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01"))
            .header("tracestate", "vendor=abc"),
    )
    .await;
    let parts = forwarded_traceparent(&echoed);
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1], TRACE, "the trace is continued");
    assert_ne!(
        parts[2], CALLER_SPAN,
        "the gateway's span is the upstream's parent"
    );
    assert_eq!(parts[3], "01", "the caller's sampling decision is kept");
    assert!(
        echoed
            .to_ascii_lowercase()
            .contains("tracestate: vendor=abc"),
        "{echoed}"
    );
    let gateway_span = parts[2].clone();

    // Without a caller's trace, one is started; ratio 0 samples none of those.
    let echoed = text_of(client.get(gateway.url("/headers"))).await;
    let started = forwarded_traceparent(&echoed);
    assert_eq!(started[1].len(), 32);
    assert_ne!(started[1], TRACE);
    assert_eq!(started[3], "00", "not sampled at ratio 0");

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let spans = loop {
        let spans: Vec<_> = received
            .lock()
            .unwrap()
            .iter()
            .inspect(|(path, _)| assert_eq!(path, "/v1/traces"))
            .flat_map(|(_, export)| export.resource_spans.clone())
            .collect();
        if !spans.is_empty() || std::time::Instant::now() > deadline {
            break spans;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(!spans.is_empty(), "no export reached the OTLP receiver");
    let service = spans[0]
        .resource
        .as_ref()
        .unwrap()
        .attributes
        .iter()
        .find(|a| a.key == "service.name")
        .and_then(|a| a.value.clone())
        .and_then(|v| v.value);
    assert_eq!(format!("{service:?}"), "Some(StringValue(\"edge-test\"))");
    let exported: Vec<_> = spans
        .iter()
        .flat_map(|r| r.scope_spans.iter())
        .flat_map(|s| s.spans.iter())
        .collect();
    eprintln!("{} span(s) exported", exported.len());
    assert_eq!(exported.len(), 1, "only the sampled trace is exported");
    let span = exported[0];
    assert_eq!(hex(&span.trace_id), TRACE);
    assert_eq!(hex(&span.parent_span_id), CALLER_SPAN);
    assert_eq!(hex(&span.span_id), gateway_span);
    assert_eq!(span.name, "GET split");
    let status = span
        .attributes
        .iter()
        .find(|a| a.key == "http.response.status_code")
        .and_then(|a| a.value.clone())
        .and_then(|v| v.value);
    assert_eq!(format!("{status:?}"), "Some(IntValue(200))");

    // The access log carries the trace id of both requests.
    let records = gateway.access_records_at_least(2).await;
    assert_eq!(records[0]["trace_id"], TRACE);
    assert_eq!(records[1]["trace_id"], started[1].as_str());
}

/// The exporter's failure never fails a request: the collector accepts each export
/// connection and drops it at once, unanswered. Its accept count shows that exports were
/// attempted, so the requests ran while the exporter failed.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_collector_fails_no_request() {
    let upstream = start_echo("v1").await;
    let collector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = format!("http://{}", collector.local_addr().unwrap());
    let attempts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = attempts.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = collector.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(stream);
        }
    });
    let mut gateway = start_traced(upstream, &dead, 1.0);
    let client = client();
    for _ in 0..200 {
        let response = client.get(gateway.url("/")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    // Until the exporter has tried (and failed) to send, then more requests past it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while attempts.load(std::sync::atomic::Ordering::SeqCst) == 0
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let tried = attempts.load(std::sync::atomic::Ordering::SeqCst);
    println!("export connections the dead collector dropped: {tried}");
    assert!(tried > 0, "no export was attempted");
    for _ in 0..50 {
        let response = client.get(gateway.url("/")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    assert!(gateway.is_running(), "{}", gateway.stderr());
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `[telemetry].log_level` applies on reload: at `error`, a refused policy's warning is not
/// logged; back at `warn`, it is.
#[tokio::test(flavor = "multi_thread")]
async fn the_log_level_follows_the_policy() {
    let v1 = start_echo("v1").await;
    let body = split_policy(v1, v1, 1, 0);
    let gateway = Gateway::start(&body);
    let client = client();
    let put = |source: String| {
        client
            .put(gateway.admin_url("/policy"))
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(source)
            .send()
    };
    let with_level = |level: &str| {
        gateway.policy_with_body(&body).replace(
            "[telemetry]\n",
            &format!("[telemetry]\nlog_level = \"{level}\"\n"),
        )
    };
    let refused = || {
        format!(
            "{}\n[[routes]]\nname = \"bad\"\nsplit = [{{ upstream = \"nope\" }}]\n",
            gateway.policy_with_body(&body)
        )
    };
    let warnings = || gateway.stderr().matches("policy refused").count();

    assert_eq!(put(with_level("error")).await.unwrap().status(), 200);
    assert_eq!(put(refused()).await.unwrap().status(), 400);
    assert_eq!(
        warnings(),
        0,
        "at error, warnings are not logged:\n{}",
        gateway.stderr()
    );
    assert_eq!(put(with_level("warn")).await.unwrap().status(), 200);
    assert_eq!(put(refused()).await.unwrap().status(), 400);
    assert!(warnings() >= 1, "at warn, they are:\n{}", gateway.stderr());
}
