//! End to end: routes that answer themselves. `redirect` sends the client elsewhere (the usual
//! HTTP-to-HTTPS redirect is one line); `respond` answers with a fixed status and body. No
//! upstream is involved, and the answers carry no `x-meshgate-reason`.

mod common;

use std::time::Duration;

use common::*;

const ROUTES: &str = r#"
[[upstreams]]
name = "app"
endpoints = ["127.0.0.1:9"]

[[routes]]
name = "to-https"
match = { host = "old.example" }
redirect = { scheme = "https" }

[[routes]]
name = "moved"
match = { path_prefix = "/old/" }
redirect = { path = "/new/", status = 308, strip_query = true, host = "new.example", port = 8443 }

[[routes]]
name = "ping"
match = { path_exact = "/ping" }
respond = { body = "pong\n" }

[[routes]]
name = "gone"
match = { path_prefix = "/gone" }
respond = { status = 410, body = '{"gone":true}', content_type = "application/json" }

[[routes]]
name = "app"
split = [{ upstream = "app" }]
"#;

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn redirects_and_direct_answers_come_from_the_gateway() {
    let gateway = Gateway::start(ROUTES);
    let client = no_redirects();

    let response = client
        .get(gateway.url("/cart?item=3"))
        .header("host", "old.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 301);
    assert_eq!(
        response.headers()["location"],
        "https://old.example/cart?item=3"
    );
    assert!(response.headers().get("x-meshgate-reason").is_none());

    let response = client
        .get(gateway.url("/old/page?x=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 308);
    assert_eq!(
        response.headers()["location"],
        "http://new.example:8443/new/"
    );

    let response = client.get(gateway.url("/ping")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
    assert_eq!(response.text().await.unwrap(), "pong\n");

    let response = client.get(gateway.url("/gone/now")).send().await.unwrap();
    assert_eq!(response.status(), 410);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.text().await.unwrap(), r#"{"gone":true}"#);

    // HEAD: the head only, its length as GET's.
    let response = client.head(gateway.url("/ping")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-length"], "5");
    assert_eq!(response.text().await.unwrap(), "");

    // Over HTTP/2 too, with curl.
    let output = std::process::Command::new("curl")
        .args(["-s", "--http2-prior-knowledge", "-D", "-"])
        .arg(gateway.url("/ping"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.starts_with("HTTP/2 200"), "{text}");
    assert!(text.ends_with("pong\n"), "{text}");

    let records = gateway.access_records_at_least(6).await;
    let reasons: Vec<&str> = records
        .iter()
        .map(|r| r["reason"].as_str().unwrap_or(""))
        .collect();
    println!("access log reasons: {reasons:?}");
    assert_eq!(
        &reasons[..5],
        ["redirect", "redirect", "respond", "respond", "respond"]
    );
    assert_eq!(records[0]["route"], "to-https");
}

#[test]
fn a_route_has_one_of_split_redirect_and_respond() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.toml");
    std::fs::write(
        &file,
        r#"version = 1
[[upstreams]]
name = "u"
endpoints = ["127.0.0.1:9"]
[[routes]]
name = "both"
split = [{ upstream = "u" }]
redirect = { scheme = "https" }
[[routes]]
name = "bad"
redirect = { status = 303, scheme = "ftp", path = "no-slash" }
[[routes]]
name = "bad-respond"
respond = { status = 100 }
[[routes]]
name = "nothing"
"#,
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .arg("check")
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stderr}");
    assert!(!output.status.success());
    for expected in [
        "routes[0]: a route has one of split, redirect and respond, not split and redirect",
        "routes[1].redirect.status: a redirect's status is 301, 302, 307 or 308",
        "routes[1].redirect.scheme: scheme is \"http\" or \"https\"",
        "routes[1].redirect.path: the path must start with",
        "routes[2].respond.status: the status must be between 200 and 599",
        "routes[3].split: a route needs at least one split, or redirect or respond",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in {stderr}"
        );
    }
}
