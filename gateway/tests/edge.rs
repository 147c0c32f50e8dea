//! End to end: the edge features of issue 17 with real clients (reqwest and curl): request
//! ids, bodies on gateway-made answers, rewrites, richer matching, CORS and compression.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn is_uuid(value: &str) -> bool {
    value.len() == 36
        && value.char_indices().all(|(i, c)| {
            matches!(i, 8 | 13 | 18 | 23) == (c == '-') && (c == '-' || c.is_ascii_hexdigit())
        })
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

/// Runs curl with `args`; returns (response head, body bytes).
fn curl(args: &[&str]) -> (String, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let head = dir.path().join("head");
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-D"])
        .arg(&head)
        .args(args)
        .output()
        .expect("curl runs");
    assert!(
        output.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (
        std::fs::read_to_string(head).unwrap().to_ascii_lowercase(),
        output.stdout,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn request_ids_travel_with_every_request_and_gateway_answers_have_bodies() {
    let echo = start_echo("app").await;
    let routes = format!(
        r#"
[[upstreams]]
name = "app"
endpoints = ["{echo}"]

[[routes]]
name = "app"
match = {{ path_prefix = "/headers" }}
split = [{{ upstream = "app" }}]
"#
    );
    let gateway = Gateway::start(&routes);
    let client = client();

    // Not trusted (the default): the client's id is replaced, the upstream and the client
    // get the same new one.
    let response = client
        .get(gateway.url("/headers"))
        .header("x-request-id", "client-1")
        .send()
        .await
        .unwrap();
    let id = header(&response, "x-request-id").to_owned();
    assert!(is_uuid(&id), "{id:?}");
    let seen = response.text().await.unwrap();
    assert!(seen.contains(&format!("x-request-id: {id}\n")), "{seen}");
    assert!(!seen.contains("client-1"), "{seen}");

    // A gateway-made answer: JSON with status, reason and request id.
    let response = client.get(gateway.url("/nowhere")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(header(&response, "x-meshgate-reason"), "no-route");
    assert_eq!(header(&response, "content-type"), "application/json");
    let missing_id = header(&response, "x-request-id").to_owned();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({"status": 404, "reason": "no-route", "request_id": missing_id})
    );
    // Plain text when the client prefers it; the head only for HEAD.
    let response = client
        .get(gateway.url("/nowhere"))
        .header("accept", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&response, "content-type"),
        "text/plain; charset=utf-8"
    );
    let text_id = header(&response, "x-request-id").to_owned();
    assert_eq!(
        response.text().await.unwrap(),
        format!("404 no-route (request id {text_id})\n")
    );
    let response = client.head(gateway.url("/nowhere")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert!(response.bytes().await.unwrap().is_empty());

    // The access log names each request's id.
    let records = gateway.access_records_at_least(4).await;
    assert_eq!(records[0]["request_id"], id.as_str());
    assert_eq!(records[1]["request_id"], missing_id.as_str());

    // Trusted: a well-formed id is kept, a malformed one replaced.
    let trusted = format!("trust_request_id = true\n{routes}");
    gateway
        .apply_policy(gateway.policy_with_body(&trusted))
        .await;
    let response = client
        .get(gateway.url("/headers"))
        .header("x-request-id", "client-1")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&response, "x-request-id"), "client-1");
    assert!(response
        .text()
        .await
        .unwrap()
        .contains("x-request-id: client-1\n"));
    let response = client
        .get(gateway.url("/headers"))
        .header("x-request-id", "bad\"id")
        .send()
        .await
        .unwrap();
    assert!(is_uuid(header(&response, "x-request-id")));
}

#[tokio::test(flavor = "multi_thread")]
async fn rewrites_change_what_the_upstream_sees_and_the_log_keeps_both() {
    let echo = start_echo("app").await;
    let gateway = Gateway::start(&format!(
        r#"
[[upstreams]]
name = "app"
endpoints = ["{echo}"]

[[routes]]
name = "prefix"
match = {{ path_prefix = "/api/" }}
split = [{{ upstream = "app" }}]
rewrite = {{ path_prefix = "/headers/v2/" }}

[[routes]]
name = "regex"
match = {{ path_prefix = "/r/" }}
split = [{{ upstream = "app" }}]
rewrite = {{ path_regex = '^/r/([a-z]+)/(\d+)$', path = '/headers/\2/\1' }}

[[routes]]
name = "host"
match = {{ path_prefix = "/h/" }}
split = [{{ upstream = "app" }}]
rewrite = {{ path_prefix = "/headers/", host = "orders.internal" }}
"#
    ));
    let client = client();
    let seen = |path: &str| {
        let request = client.get(gateway.url(path)).send();
        async move { request.await.unwrap().text().await.unwrap() }
    };
    let first_line = |text: String| text.lines().next().unwrap_or("").to_owned();

    let orders = seen("/api/orders?x=1").await;
    assert_eq!(first_line(orders), "GET /headers/v2/orders?x=1 HTTP/1.1");
    let by_regex = seen("/r/orders/42").await;
    assert_eq!(first_line(by_regex), "GET /headers/42/orders HTTP/1.1");
    let seen = seen("/h/x").await;
    assert_eq!(first_line(seen.clone()), "GET /headers/x HTTP/1.1");
    assert!(seen.contains("host: orders.internal\n"), "{seen}");
    // The client's own host still reaches the upstream as x-forwarded-host.
    assert!(
        seen.contains(&format!("x-forwarded-host: {}\n", gateway.listen)),
        "{seen}"
    );

    let records = gateway.access_records_at_least(3).await;
    assert_eq!(records[0]["path"], "/api/orders");
    assert_eq!(records[0]["upstream_path"], "/headers/v2/orders?x=1");
    assert_eq!(records[1]["upstream_path"], "/headers/42/orders");

    let routes = gateway.admin_json("/routes").await;
    assert_eq!(
        routes["routes"][0]["rewrite"],
        "path_prefix \"/headers/v2/\""
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn richer_matching_by_query_header_tests_and_source() {
    let gateway = Gateway::start(
        r#"
[[routes]]
name = "query"
match = { path_prefix = "/m", query = { version = "2" } }
respond = { body = "query" }

[[routes]]
name = "prefix"
match = { path_prefix = "/m", headers = { x-user = { prefix = "admin-" } } }
respond = { body = "prefix" }

[[routes]]
name = "regex"
match = { path_prefix = "/m", headers = { x-build = { regex = "v[0-9]+" } } }
respond = { body = "regex" }

[[routes]]
name = "present"
match = { path_prefix = "/m", headers = { x-canary = { present = true }, x-debug = { present = false } } }
respond = { body = "present" }

[[routes]]
name = "loopback"
match = { path_prefix = "/src", source = ["127.0.0.0/8"] }
respond = { body = "loopback" }

[[routes]]
name = "private"
match = { path_prefix = "/other", source = ["10.0.0.0/8", "::1/128"] }
respond = { body = "private" }
"#,
    );
    let client = client();
    let get = |path: &str, headers: &[(&str, &str)]| {
        let mut request = client.get(gateway.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.text().await.unwrap())
        }
    };
    assert_eq!(get("/m?a=1&version=2", &[]).await.1, "query");
    assert_eq!(get("/m?version=3", &[]).await.0, 404);
    assert_eq!(get("/m", &[("x-user", "admin-ann")]).await.1, "prefix");
    assert_eq!(get("/m", &[("x-user", "ann")]).await.0, 404);
    assert_eq!(get("/m", &[("x-build", "v12")]).await.1, "regex");
    assert_eq!(get("/m", &[("x-build", "xv12")]).await.0, 404);
    assert_eq!(get("/m", &[("x-canary", "")]).await.1, "present");
    assert_eq!(
        get("/m", &[("x-canary", "1"), ("x-debug", "1")]).await.0,
        404
    );
    assert_eq!(get("/src", &[]).await.1, "loopback");
    assert_eq!(get("/other", &[]).await.0, 404);

    // /explain takes query= and source= and says which condition failed.
    let explain = gateway
        .admin_json("/explain?path=/m&query=version%3D3")
        .await;
    assert_eq!(explain["matched"], serde_json::Value::Null);
    let reason = explain["routes"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("query parameter \"version\""), "{reason}");
    let explain = gateway.admin_json("/explain?path=/m%3Fversion%3D2").await;
    assert_eq!(explain["matched"], "query");
    let explain = gateway
        .admin_json("/explain?path=/other&source=10.1.2.3")
        .await;
    assert_eq!(explain["matched"], "private");
    let explain = gateway
        .admin_json("/explain?path=/other&source=192.0.2.1")
        .await;
    assert_eq!(
        explain["routes"][5]["reason"],
        "client address outside the route's source"
    );
    let explain = gateway
        .admin_json("/explain?path=/m&header=x-user:bob")
        .await;
    assert_eq!(
        explain["routes"][1]["reason"],
        "header \"x-user\" fails its condition"
    );
    let routes = gateway.admin_json("/routes").await;
    assert_eq!(
        routes["routes"][1]["conditions"],
        serde_json::json!(["header x-user prefix \"admin-\""])
    );

    // Bad conditions are refused whole, each error with its place.
    let response = gateway
        .put_policy(gateway.policy_with_body(
            r#"
[[routes]]
name = "bad"
match = { headers = { a = { prefix = "x", regex = "y" }, b = { prefx = "x" }, c = { regex = "(" } }, source = ["10.0.0.0/33"] }
respond = {}
"#,
        ))
        .await;
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, 400, "{text}");
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    let errors: Vec<(&str, &str)> = answer["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["path"].as_str().unwrap(), e["message"].as_str().unwrap()))
        .collect();
    for (path, message) in [
        ("routes[0].match.headers.a", "a header condition is a string or a table with exactly one of exact, prefix, regex and present"),
        ("routes[0].match.headers.b.prefx", "unknown field `prefx`, expected one of `exact`, `prefix`, `regex`, `present`"),
        ("routes[0].match.headers.c.regex", "invalid regular expression \"(\": unclosed group"),
        ("routes[0].match.source[0]", "invalid address or CIDR block"),
    ] {
        assert!(
            errors.iter().any(|(p, m)| *p == path && m.starts_with(message)),
            "missing {path}: {message} in {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cors_preflights_are_answered_and_allowed_origins_get_headers() {
    let (echo, echo_config, _task) = start_upstream("app", 200, Duration::ZERO).await;
    let gateway = Gateway::start(&format!(
        r#"
[[upstreams]]
name = "app"
endpoints = ["{echo}"]

[[routes]]
name = "api"
match = {{ path_prefix = "/", methods = ["GET", "PUT"] }}
split = [{{ upstream = "app" }}]
cors = {{ allow_origins = ["https://app.example"], allow_methods = ["GET", "PUT"], allow_headers = ["content-type", "x-token"], expose_headers = ["x-echo-server"], max_age = "10m", allow_credentials = true }}
"#
    ));
    let client = client();
    let preflight = |origin: &'static str, method: &'static str| {
        client
            .request(reqwest::Method::OPTIONS, gateway.url("/orders"))
            .header("origin", origin)
            .header("access-control-request-method", method)
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let before = echo_config
        .requests
        .load(std::sync::atomic::Ordering::Relaxed);

    let response = preflight("https://app.example", "PUT").await.unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(
        header(&response, "access-control-allow-origin"),
        "https://app.example"
    );
    assert_eq!(
        header(&response, "access-control-allow-methods"),
        "GET, PUT"
    );
    assert_eq!(
        header(&response, "access-control-allow-headers"),
        "content-type, x-token"
    );
    assert_eq!(header(&response, "access-control-max-age"), "600");
    assert_eq!(
        header(&response, "access-control-allow-credentials"),
        "true"
    );
    assert_eq!(header(&response, "vary"), "Origin");
    assert_eq!(header(&response, "x-meshgate-reason"), "");

    let response = preflight("https://evil.example", "PUT").await.unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(header(&response, "access-control-allow-origin"), "");
    assert_eq!(header(&response, "access-control-allow-methods"), "");
    // A preflight is matched as the request it announces: no route takes DELETE here.
    let response = preflight("https://app.example", "DELETE").await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(header(&response, "access-control-allow-origin"), "");
    // The upstream saw none of the preflights.
    assert_eq!(
        echo_config
            .requests
            .load(std::sync::atomic::Ordering::Relaxed),
        before
    );

    let response = client
        .get(gateway.url("/orders"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "access-control-allow-origin"),
        "https://app.example"
    );
    assert_eq!(
        header(&response, "access-control-expose-headers"),
        "x-echo-server"
    );
    assert_eq!(
        header(&response, "access-control-allow-credentials"),
        "true"
    );
    assert_eq!(header(&response, "vary"), "Origin");
    let response = client
        .get(gateway.url("/orders"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "access-control-allow-origin"), "");

    let metrics = gateway.metrics().await;
    assert_eq!(
        metric_sum(
            &metrics,
            "meshgate_cors_preflights_total{result=\"allowed\",route=\"api\"}"
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "meshgate_cors_preflights_total{result=\"refused\",route=\"api\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn responses_are_compressed_as_accept_encoding_prefers() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let big = listener.local_addr().unwrap();
    tokio::spawn(meshgate_echo::serve(
        listener,
        meshgate_echo::Config::new("big", 8192),
    ));
    let (small, _, _task) = start_upstream("small", 200, Duration::ZERO).await;
    let gateway = Gateway::start(&format!(
        r#"compress = {{ types = ["text/*"], min_size = "1KiB" }}

[[upstreams]]
name = "big"
endpoints = ["{big}"]

[[upstreams]]
name = "small"
endpoints = ["{small}"]

[[routes]]
name = "small"
match = {{ path_prefix = "/small" }}
split = [{{ upstream = "small" }}]

[[routes]]
name = "plain"
match = {{ path_prefix = "/plain" }}
split = [{{ upstream = "big" }}]
compress = {{ enabled = false }}

[[routes]]
name = "big"
split = [{{ upstream = "big" }}]
"#
    ));
    let url = gateway.url("/data");
    let (head, identity) = curl(&[&url]);
    assert!(!head.contains("content-encoding"), "{head}");
    assert_eq!(identity.len(), 8192);

    for (accept, coding) in [
        ("gzip", "gzip"),
        ("br", "br"),
        ("zstd", "zstd"),
        ("gzip, br, zstd", "zstd"),
        ("gzip;q=1.0, br;q=0.5", "gzip"),
        ("zstd;q=0, br;q=0.2, gzip;q=0.1", "br"),
    ] {
        let accept_header = format!("accept-encoding: {accept}");
        let (head, _) = curl(&["-o", "/dev/null", "-H", &accept_header, &url]);
        assert!(
            head.contains(&format!("content-encoding: {coding}\r\n")),
            "{accept}: {head}"
        );
        assert!(head.contains("vary: accept-encoding"), "{head}");
        assert!(!head.contains("content-length"), "{head}");
        // curl decodes it back to the same bytes.
        let (_, decoded) = curl(&["--compressed", "-H", &accept_header, &url]);
        assert_eq!(decoded, identity, "{accept}");
    }
    // HTTP/2 (h2c) too.
    let (head, decoded) = curl(&[
        "--http2-prior-knowledge",
        "--compressed",
        "-H",
        "accept-encoding: zstd",
        &url,
    ]);
    assert!(head.contains("content-encoding: zstd"), "{head}");
    assert_eq!(decoded, identity);

    // Under min_size, a route that turns it off, and a client that accepts none: as sent.
    let (head, _) = curl(&["-H", "accept-encoding: gzip", &gateway.url("/small")]);
    assert!(!head.contains("content-encoding"), "{head}");
    let (head, _) = curl(&["-H", "accept-encoding: gzip", &gateway.url("/plain")]);
    assert!(!head.contains("content-encoding"), "{head}");
    let (head, body) = curl(&["-H", "accept-encoding: identity", &url]);
    assert!(!head.contains("content-encoding"), "{head}");
    assert_eq!(body, identity);

    let metrics = gateway.metrics().await;
    assert_eq!(
        metric_sum(
            &metrics,
            "meshgate_compressed_responses_total{encoding=\"zstd\",route=\"big\"}"
        ),
        5.0,
        "{metrics}"
    );
}

#[test]
fn meshgate_check_lists_every_bad_edge_key_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.toml");
    std::fs::write(
        &file,
        r#"version = 1
[[listeners]]
name = "public"
listen = "127.0.0.1:8080"
compress = { types = ["json"] }
[[upstreams]]
name = "u"
endpoints = ["127.0.0.1:9"]
[[routes]]
name = "rewrites"
split = [{ upstream = "u" }]
rewrite = { path_prefix = "/v2/", path_regex = "^/(a)$", path = '/\2' }
[[routes]]
name = "cors"
split = [{ upstream = "u" }]
cors = { allow_origins = ["*"], allow_credentials = true, allow_methods = ["get"] }
[[routes]]
name = "mirror"
split = [{ upstream = "u" }]
mirror = [{ upstream = "nowhere", percent = 150, max_in_flight = 0 }]
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
        ":5:23: listeners[0].compress.types[0]: \"json\" is not a media type",
        "routes[0].rewrite.path_regex: only one of path_prefix and path_regex may be given",
        "routes[0].rewrite.path_prefix: rewrite.path_prefix replaces the part matched by match.path_prefix, which this route does not have",
        "routes[0].rewrite.path: path refers to group \\2, but path_regex has 1 capture group(s)",
        "routes[1].cors.allow_credentials: browsers refuse credentials with any origin",
        "routes[1].cors.allow_methods[0]: \"get\" is not a method",
        "routes[2].mirror[0].percent: percent must be between 0 and 100",
        "routes[2].mirror[0].max_in_flight: max_in_flight must be at least 1",
        "routes[2].mirror[0].upstream: unknown upstream \"nowhere\"",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compressed_response_cut_short_by_its_upstream_is_never_completed() {
    // The upstream promises 20,000 bytes of text, sends 6,000 and closes. Compressed, the
    // answer is chunked: the client must see it broken (no last chunk, connection closed),
    // never a well-formed shorter body.
    let (upstream, _) = common::raw::scripted_upstream(|_, _| {
        let mut bytes =
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 20000\r\n\r\n"
                .to_vec();
        bytes.extend(std::iter::repeat_n(b'a', 6000));
        common::raw::Reply::close(bytes)
    })
    .await;
    let gateway = Gateway::start(&route_to(upstream, r#"compress = { types = ["text/*"] }"#));
    for encoding in ["gzip", "br", "zstd"] {
        let request =
            format!("GET /text HTTP/1.1\r\nhost: app\r\naccept-encoding: {encoding}\r\n\r\n");
        let answer =
            common::raw::raw_exchange(gateway.listen, request.as_bytes(), Duration::from_secs(10))
                .await;
        assert!(answer.closed, "{encoding}: the connection must close");
        match answer.statuses().first() {
            Some(200) => {
                assert_eq!(answer.header("content-encoding").as_deref(), Some(encoding));
                assert!(
                    !answer.body().ends_with(b"0\r\n\r\n"),
                    "{encoding}: a cut response must not end with the last chunk"
                );
            }
            Some(502) => {}
            other => panic!("{encoding}: unexpected {other:?}: {}", answer.text()),
        }
    }
}
