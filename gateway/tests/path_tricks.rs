//! End to end: paths that the gateway and an upstream would read differently. A dot segment
//! with parameters (`/pub/..;/admin`, which Tomcat and Spring serve as `/admin`) is refused,
//! and a route's rewrite that makes a `..` segment is refused rather than forwarded.

mod common;

use std::time::Duration;

use common::raw::{ok_response, raw_exchange, scripted_upstream, Reply};
use common::*;

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn dot_segments_with_parameters_and_rewrites_that_climb_are_refused() {
    // An upstream that answers with the request line it received.
    let (upstream, counts) = scripted_upstream(|_, head| {
        Reply::keep(ok_response(head.lines().next().unwrap_or_default()))
    })
    .await;
    let gateway = Gateway::start(&format!(
        r#"
[[upstreams]]
name = "app"
endpoints = ["{upstream}"]

[[routes]]
name = "admin"
match = {{ path_prefix = "/admin/" }}
split = [{{ upstream = "app" }}]
allow = ["spiffe://prod.test/ns/ops/sa/admin"]

[[routes]]
name = "static"
match = {{ path_prefix = "/static" }}
rewrite = {{ path_prefix = "/assets/" }}
split = [{{ upstream = "app" }}]

[[routes]]
name = "pub"
match = {{ path_prefix = "/pub/" }}
split = [{{ upstream = "app" }}]
"#
    ));
    // The admin route refuses this caller; the tricks must not reach the upstream under `pub`.
    let direct = raw_exchange(gateway.listen, &get("/admin/x"), Duration::from_secs(5)).await;
    assert_eq!(direct.statuses(), vec![403]);
    for trick in [
        "/pub/..;/admin/x",
        "/pub/..;jsessionid=1/admin/x",
        "/pub/.;/x",
        "/pub/..%3B/admin/x",
        "/pub/%2e%2e;/admin/x",
        "/static../private/k",
        "/static/%2e%2e/../private/k",
    ] {
        let answer = raw_exchange(gateway.listen, &get(trick), Duration::from_secs(5)).await;
        println!("{trick}: {:?}", answer.text().lines().next());
        assert_eq!(answer.statuses(), vec![400], "{trick}: {}", answer.text());
        assert_eq!(
            answer.header("x-meshgate-reason").as_deref(),
            Some("bad-path"),
            "{trick}"
        );
    }
    assert_eq!(counts.requests(), 0, "no trick reached the upstream");
    // Parameters on a name pass as they are; a rewrite's `//` is put in normal form.
    for (sent, forwarded) in [
        (
            "/pub/a;jsessionid=1/b",
            "GET /pub/a;jsessionid=1/b HTTP/1.1",
        ),
        ("/static/app.js?v=2", "GET /assets/app.js?v=2 HTTP/1.1"),
    ] {
        let answer = raw_exchange(gateway.listen, &get(sent), Duration::from_secs(5)).await;
        assert_eq!(answer.statuses(), vec![200], "{sent}");
        assert_eq!(String::from_utf8_lossy(&answer.body()), forwarded, "{sent}");
    }
    let records = gateway.access_records_at_least(10).await;
    let refused = records.iter().filter(|r| r["reason"] == "bad-path").count();
    assert_eq!(refused, 7, "{records:?}");
}
