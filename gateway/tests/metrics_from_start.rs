//! End to end: every documented metric family a policy's features use is exported from the
//! start, at 0, for each route or upstream that has the feature, so that dashboards and alerts
//! can be written before the first event.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn feature_metrics_exist_at_zero_before_any_request() {
    let echo = start_echo("app").await;
    let spare = start_echo("spare").await;
    let gateway = Gateway::start(&format!(
        r#"
[[upstreams]]
name = "app"
endpoints = ["{echo}"]
failover = ["spare"]

[[upstreams]]
name = "spare"
endpoints = ["{spare}"]

[[upstreams]]
name = "named"
endpoints = ["localhost:{port}"]

[[routes]]
name = "web"
match = {{ path_prefix = "/web" }}
split = [{{ upstream = "app" }}]
cors = {{ allow_origins = ["https://app.example"] }}
compress = {{ min_size = 1024 }}
mirror = [{{ upstream = "spare", percent = 10 }}]

[[routes]]
name = "api"
match = {{ path_prefix = "/api" }}
split = [{{ upstream = "named" }}]
jwt = {{ jwks_url = "http://127.0.0.1:9/jwks.json" }}
rate_limit = {{ requests_per_second = 10, scope = "global" }}

[rate_limit_store]
redis = "redis://127.0.0.1:9/0"
"#,
        port = echo.port()
    ));
    let metrics = gateway.metrics().await;
    let series = |family: &str, labels: &[&str]| {
        metrics
            .lines()
            .any(|line| line.starts_with(family) && labels.iter().all(|label| line.contains(label)))
    };
    for (family, labels) in [
        (
            "meshgate_cors_preflights_total",
            vec!["route=\"web\"", "result=\"allowed\""],
        ),
        (
            "meshgate_compressed_responses_total",
            vec!["route=\"web\"", "encoding=\"gzip\""],
        ),
        (
            "meshgate_mirror_dropped_total",
            vec!["route=\"web\"", "upstream=\"spare\""],
        ),
        (
            "meshgate_failovers_total",
            vec!["upstream=\"app\"", "to=\"spare\""],
        ),
        (
            "meshgate_discovery_errors_total",
            vec!["upstream=\"named\""],
        ),
        (
            "meshgate_jwks_fetches_total",
            vec!["url=\"http://127.0.0.1:9/jwks.json\"", "result=\"ok\""],
        ),
        (
            "meshgate_rate_limit_store_errors_total",
            vec!["kind=\"unavailable\""],
        ),
    ] {
        assert!(
            series(family, &labels),
            "{family} {labels:?} is not exported at start:\n{}",
            metrics
                .lines()
                .filter(|l| l.starts_with("meshgate_") && !l.starts_with("meshgate_request"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // The compression family is at 0 for every encoding, and nothing else names the route.
    for encoding in ["gzip", "br", "zstd"] {
        let label = format!("encoding=\"{encoding}\"");
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("meshgate_compressed_responses_total")
                    && l.contains(&label)
                    && l.contains("route=\"web\"")
                    && l.ends_with(" 0")),
            "{label}"
        );
    }
    assert!(!series(
        "meshgate_compressed_responses_total",
        &["route=\"api\""]
    ));
}
