//! End to end: routing, splits, load balancing and protocols through the real binary.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};

#[tokio::test(flavor = "multi_thread")]
async fn split_90_10_is_exact_over_1000_sequential_requests() {
    let v1 = start_echo("v1").await;
    let v2 = start_echo("v2").await;
    let gateway = Gateway::start(&split_policy(v1, v2, 90, 10));
    let client = client();
    let mut servers = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let response = client.get(gateway.url("/")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        servers.push(
            response.headers()["x-echo-server"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(servers.iter().filter(|s| *s == "v1").count(), 900);
    // Exact, not just on average: every run of 10 consecutive requests is split 9:1.
    for (start, window) in servers.windows(10).enumerate() {
        let to_v2 = window.iter().filter(|s| *s == "v2").count();
        assert_eq!(to_v2, 1, "requests {start}..{}: {window:?}", start + 10);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_route_is_404_with_reason_and_logged() {
    let v1 = start_echo("v1").await;
    let body = format!(
        r#"
[[upstreams]]
name = "v1"
endpoints = ["{v1}"]

[[routes]]
name = "api"
match = {{ host = "*.example.com", path_prefix = "/api", methods = ["GET"], headers = {{ "x-canary" = "on" }} }}
split = [{{ upstream = "v1" }}]
"#
    );
    let gateway = Gateway::start(&body);
    let client = client();
    let ok = client
        .get(gateway.url("/api/x"))
        .header("host", "shop.example.com")
        .header("x-canary", "on")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    for (host, path, canary) in [
        ("example.com", "/api", "on"),
        ("shop.example.com", "/other", "on"),
        ("shop.example.com", "/api", "off"),
    ] {
        let response = client
            .get(gateway.url(path))
            .header("host", host)
            .header("x-canary", canary)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{host}{path} {canary}");
        assert_eq!(response.headers()["x-meshgate-reason"], "no-route");
    }
    let post = client
        .post(gateway.url("/api"))
        .header("host", "a.example.com")
        .header("x-canary", "on")
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 404);
    let records = gateway.access_records_at_least(5).await;
    let has = |check: &dyn Fn(&serde_json::Value) -> bool| records.iter().any(check);
    assert!(
        has(&|r| r["status"] == 404 && r["reason"] == "no-route" && r["route"].is_null()),
        "access log:\n{records:#?}"
    );
    assert!(
        has(&|r| r["status"] == 200
            && r["reason"].is_null()
            && r["listener"] == "public"
            && r["route"] == "api"
            && r["upstream"] == "v1"
            && r["method"] == "GET"
            && r["endpoint"].is_string()
            && r["duration_ms"].is_number()
            && r["upstream_ms"].is_number()
            && r["client"] == "127.0.0.1"),
        "access log:\n{records:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarding_headers_are_set_and_identity_headers_stripped() {
    let v1 = start_echo("v1").await;
    let gateway = Gateway::start(&split_policy(v1, v1, 1, 0));
    let text = client()
        .get(gateway.url("/headers"))
        .header("host", "shop.example.com")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-client-cert", "URI=spiffe://evil/forged")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("x-forwarded-for: 203.0.113.9, 127.0.0.1\n"),
        "{text}"
    );
    assert!(text.contains("x-forwarded-proto: http\n"), "{text}");
    assert!(
        text.contains("x-forwarded-host: shop.example.com\n"),
        "{text}"
    );
    assert!(!text.contains("x-forwarded-client-cert"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn h2c_downstream_reaches_http1_upstream() {
    let v1 = start_echo("v1").await;
    let gateway = Gateway::start(&split_policy(v1, v1, 1, 0));
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = h2.get(gateway.url("/headers")).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(text.contains("HTTP/1.1"), "upstream saw: {text}");
    assert!(
        text.contains(&format!("host: {}", gateway.listen)),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_upgrade_is_proxied() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut socket = tokio_tungstenite::accept_async(stream).await.unwrap();
                while let Some(Ok(message)) = socket.next().await {
                    if message.is_text() {
                        let echoed = format!("echo: {}", message.into_text().unwrap());
                        socket.send(echoed.into()).await.unwrap();
                    }
                }
            });
        }
    });
    let gateway = Gateway::start(&split_policy(ws_addr, ws_addr, 1, 0));
    let (mut socket, response) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws", gateway.listen))
            .await
            .expect("upgrade through the gateway");
    assert_eq!(response.status(), 101);
    for i in 0..3 {
        socket.send(format!("hello {i}").into()).await.unwrap();
        let reply = socket.next().await.unwrap().unwrap();
        assert_eq!(
            reply.into_text().unwrap().as_str(),
            format!("echo: hello {i}")
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_over_h2c_upstream_works_end_to_end() {
    let grpc_port = free_port();
    let grpc_addr: std::net::SocketAddr = format!("127.0.0.1:{grpc_port}").parse().unwrap();
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("checkout", tonic_health::ServingStatus::Serving)
        .await;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve(grpc_addr),
    );
    let body = format!(
        r#"
[[upstreams]]
name = "grpc"
endpoints = ["{grpc_addr}"]
protocol = "h2c"

[[routes]]
name = "grpc"
match = {{ path_prefix = "/grpc.health.v1.Health/" }}
split = [{{ upstream = "grpc" }}]
"#
    );
    let gateway = Gateway::start(&body);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", gateway.listen))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for _ in 0..5 {
        let answer = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "checkout".into(),
            })
            .await
            .expect("gRPC call through the gateway")
            .into_inner();
        assert_eq!(
            answer.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }
    let missing = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        missing.code(),
        tonic::Code::NotFound,
        "gRPC status travels back"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn weighted_round_robin_and_sticky_balancing() {
    let a = start_echo("a").await;
    let b = start_echo("b").await;
    let c = start_echo("c").await;
    let body = format!(
        r#"
[[upstreams]]
name = "weighted"
endpoints = [{{ address = "{a}", weight = 3 }}, "{b}"]

[[upstreams]]
name = "hashed"
endpoints = ["{a}", "{b}", "{c}"]
balance = "consistent_hash"
hash_key = "header:x-user"

[[upstreams]]
name = "least"
endpoints = ["{a}", "{b}"]
balance = "least_request"

[[routes]]
name = "weighted"
match = {{ path_prefix = "/w" }}
split = [{{ upstream = "weighted" }}]

[[routes]]
name = "hashed"
match = {{ path_prefix = "/h" }}
split = [{{ upstream = "hashed" }}]

[[routes]]
name = "least"
match = {{ path_prefix = "/l" }}
split = [{{ upstream = "least" }}]
"#
    );
    let gateway = Gateway::start(&body);
    let client = client();
    let counts = count_servers(&client, &gateway.url("/w"), 400).await;
    assert_eq!(counts.get("a"), Some(&300), "{counts:?}");
    assert_eq!(counts.get("b"), Some(&100), "{counts:?}");

    let mut seen = std::collections::BTreeSet::new();
    for user in 0..30 {
        let mut servers = std::collections::BTreeSet::new();
        for _ in 0..3 {
            let response = client
                .get(gateway.url("/h"))
                .header("x-user", format!("user-{user}"))
                .send()
                .await
                .unwrap();
            servers.insert(
                response.headers()["x-echo-server"]
                    .to_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        assert_eq!(servers.len(), 1, "user-{user} moved between {servers:?}");
        seen.extend(servers);
    }
    assert!(seen.len() >= 2, "30 users all hashed to {seen:?}");

    let counts = count_servers(&client, &gateway.url("/l"), 100).await;
    assert_eq!(counts.values().sum::<usize>(), 100);
    assert!(counts.len() == 2, "least_request used only {counts:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn least_request_splits_light_traffic_by_weight() {
    let heavy = start_echo("heavy").await;
    let light = start_echo("light").await;
    let gateway = Gateway::start(&format!(
        r#"
[[upstreams]]
name = "least"
endpoints = [{{ address = "{heavy}", weight = 2 }}, {{ address = "{light}", weight = 1 }}]
balance = "least_request"

[[routes]]
name = "least"
split = [{{ upstream = "least" }}]
"#
    ));
    let client = client();
    // One request at a time: nothing is ever in flight, so every pick is a tie.
    let counts = count_servers(&client, &gateway.url("/"), 60).await;
    println!("weights 2:1, 60 sequential requests: {counts:?}");
    assert_eq!(counts.get("heavy"), Some(&40), "{counts:?}");
    assert_eq!(counts.get("light"), Some(&20), "{counts:?}");
    // A runtime override of the light endpoint's weight to 6 makes it 1:3.
    let overridden = client
        .post(gateway.admin_url(&format!("/upstreams/least/endpoints/{light}/weight")))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({ "weight": 6 }))
        .send()
        .await
        .unwrap();
    assert_eq!(overridden.status(), 200);
    let counts = count_servers(&client, &gateway.url("/"), 80).await;
    println!("weights 2:6 (runtime), 80 sequential requests: {counts:?}");
    assert_eq!(counts.get("heavy"), Some(&20), "{counts:?}");
    assert_eq!(counts.get("light"), Some(&60), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sticky_split_by_header_keeps_each_user_on_one_side() {
    let v1 = start_echo("v1").await;
    let v2 = start_echo("v2").await;
    let body = split_policy(v1, v2, 50, 50).replace(
        "name = \"split\"\n",
        "name = \"split\"\nsplit_key = \"header:x-user-id\"\n",
    );
    let gateway = Gateway::start(&body);
    let client = client();
    let mut sides = std::collections::BTreeMap::new();
    for user in 0..40 {
        for _ in 0..3 {
            let response = client
                .get(gateway.url("/"))
                .header("x-user-id", user.to_string())
                .send()
                .await
                .unwrap();
            let server = response.headers()["x-echo-server"]
                .to_str()
                .unwrap()
                .to_owned();
            let first = sides.entry(user).or_insert_with(|| server.clone());
            assert_eq!(*first, server, "user {user} switched sides");
        }
    }
    let on_v1 = sides.values().filter(|s| s.as_str() == "v1").count();
    assert!((8..=32).contains(&on_v1), "{on_v1} of 40 users on v1");
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_failure_answers_502_with_reason() {
    let dead: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gateway = Gateway::start(&split_policy(dead, dead, 1, 0));
    let response = client().get(gateway.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(response.headers()["x-meshgate-reason"], "connect-failure");
    // An HTTP/2 client gets the same answer, not a reset stream, every time.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for _ in 0..10 {
        let response = h2
            .get(gateway.url("/"))
            .send()
            .await
            .expect("an answer, not RST_STREAM");
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        assert_eq!(response.status(), 502);
        assert_eq!(response.headers()["x-meshgate-reason"], "connect-failure");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_client_connections_are_closed_after_the_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let v1 = start_echo("v1").await;
    let body = split_policy(v1, v1, 1, 0);
    let listen: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policy = policy_head(listen, admin, "off").replace(
        "grace_period = \"1s\"",
        "grace_period = \"1s\"\nclient_idle_timeout = \"1s\"",
    ) + &body;
    let gateway = Gateway::start_with(dir, &policy, listen, admin);
    let mut stream = tokio::net::TcpStream::connect(gateway.listen)
        .await
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buffer = vec![0u8; 4096];
    let read = stream.read(&mut buffer).await.unwrap();
    assert!(buffer[..read].starts_with(b"HTTP/1.1 200"));
    let started = std::time::Instant::now();
    // Read until the gateway closes the idle connection (or give up after 10 s).
    let closed = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "idle connection still open after 10 s");
    let idle = started.elapsed();
    assert!(
        idle >= std::time::Duration::from_millis(900),
        "closed too early: {idle:?}"
    );
    eprintln!("idle connection closed after {idle:?}");
}

/// The endpoint that answers `path` with header `x-user: user`.
async fn served_by(client: &reqwest::Client, url: &str, user: &str) -> String {
    let response = client.get(url).header("x-user", user).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.headers()["x-echo-server"]
        .to_str()
        .unwrap()
        .to_owned()
}

/// Consistent hashing's defining properties: a key always lands on the same endpoint, and
/// when an endpoint is added only the keys that now belong to it move (about a quarter of
/// them for a fourth endpoint), none between the old ones. Round robin fails both.
#[tokio::test(flavor = "multi_thread")]
async fn consistent_hashing_moves_few_keys_when_an_endpoint_is_added() {
    let servers = [
        start_echo("a").await,
        start_echo("b").await,
        start_echo("c").await,
        start_echo("d").await,
    ];
    let upstreams = |n: usize| {
        let endpoints: Vec<String> = servers[..n].iter().map(|s| format!("\"{s}\"")).collect();
        format!(
            "\n[[upstreams]]\nname = \"hashed\"\nendpoints = [{}]\nbalance = \"consistent_hash\"\nhash_key = \"header:x-user\"\n\n[[routes]]\nname = \"hashed\"\nmatch = {{ path_prefix = \"/\" }}\nsplit = [{{ upstream = \"hashed\" }}]\n",
            endpoints.join(", ")
        )
    };
    let gateway = Gateway::start(&upstreams(3));
    let client = client();
    let url = gateway.url("/");
    let mut before = Vec::new();
    for user in 0..200 {
        let user = format!("user-{user}");
        let first = served_by(&client, &url, &user).await;
        assert_eq!(served_by(&client, &url, &user).await, first, "{user} moved");
        before.push(first);
    }
    gateway
        .apply_policy(gateway.policy_with_body(&upstreams(4)))
        .await;
    let mut moved = 0;
    for (user, old) in before.iter().enumerate() {
        let now = served_by(&client, &url, &format!("user-{user}")).await;
        if &now != old {
            assert_eq!(
                now, "d",
                "user-{user} moved from {old} to {now}, not to the new endpoint"
            );
            moved += 1;
        }
    }
    println!("{moved} of 200 keys moved to the fourth endpoint");
    assert!((20..=90).contains(&moved), "{moved} of 200 keys moved");
}

/// least_request's defining property, under concurrency: a slow endpoint holds its requests
/// longer, so new requests go to the other one. Round robin would send half to each.
#[tokio::test(flavor = "multi_thread")]
async fn least_request_avoids_the_busy_endpoint_under_concurrency() {
    let (slow, slow_config, _slow) = start_upstream("slow", 200, Duration::from_millis(400)).await;
    let (fast, fast_config, _fast) = start_upstream("fast", 200, Duration::ZERO).await;
    let gateway = Gateway::start(&format!(
        "\n[[upstreams]]\nname = \"least\"\nendpoints = [\"{slow}\", \"{fast}\"]\nbalance = \"least_request\"\n\n[[routes]]\nname = \"least\"\nmatch = {{ path_prefix = \"/\" }}\nsplit = [{{ upstream = \"least\" }}]\n"
    ));
    let client = client();
    let mut calls = Vec::new();
    for i in 0..40 {
        let client = client.clone();
        let url = gateway.url("/");
        calls.push(tokio::spawn(async move {
            // Spread the requests over the slow endpoint's answer time.
            tokio::time::sleep(Duration::from_millis(i * 10)).await;
            client.get(url).send().await.unwrap().status().as_u16()
        }));
    }
    for call in calls {
        assert_eq!(call.await.unwrap(), 200);
    }
    let slow_count = slow_config
        .requests
        .load(std::sync::atomic::Ordering::SeqCst);
    let fast_count = fast_config
        .requests
        .load(std::sync::atomic::Ordering::SeqCst);
    println!("least_request: slow {slow_count}, fast {fast_count} of 40");
    assert_eq!(slow_count + fast_count, 40);
    assert!(slow_count <= 6, "the busy endpoint got {slow_count} of 40");
}

/// `balance = "random"`: both endpoints serve, in no fixed order.
#[tokio::test(flavor = "multi_thread")]
async fn random_balancing_uses_every_endpoint_in_no_fixed_order() {
    let a = start_echo("a").await;
    let b = start_echo("b").await;
    let gateway = Gateway::start(&format!(
        "\n[[upstreams]]\nname = \"random\"\nendpoints = [\"{a}\", \"{b}\"]\nbalance = \"random\"\n\n[[routes]]\nname = \"random\"\nmatch = {{ path_prefix = \"/\" }}\nsplit = [{{ upstream = \"random\" }}]\n"
    ));
    let client = client();
    let mut sequence = String::new();
    for _ in 0..200 {
        let response = client.get(gateway.url("/")).send().await.unwrap();
        sequence.push_str(response.headers()["x-echo-server"].to_str().unwrap());
    }
    let a_count = sequence.matches('a').count();
    println!("random: {a_count} of 200 on a");
    // Binomial(200, 0.5): 70 to 130 holds with a probability above 0.9999.
    assert!((70..=130).contains(&a_count), "{a_count} of 200 on a");
    // Round robin alternates; random repeats an endpoint about half the time.
    let repeats = sequence
        .as_bytes()
        .windows(2)
        .filter(|w| w[0] == w[1])
        .count();
    assert!(repeats > 50, "only {repeats} repeats: {sequence}");
}
