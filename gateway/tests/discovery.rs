//! End to end: endpoints from DNS. A real dnsmasq on loopback serves A and SRV records that
//! the tests change while traffic runs; the real gateway resolves them in the background and
//! swaps its endpoints. Echo upstreams listen on 127.0.0.2, .3 and .4 at one port, so that an
//! A record (which has no port) can name each of them.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::dns::Dnsmasq;
use common::*;

/// Echo upstreams named `names[i]` on `127.0.0.{i+2}`, all at one port; returns the port.
async fn echoes_on_one_port(names: &[&str]) -> u16 {
    'port: loop {
        let port = free_port();
        let mut listeners = Vec::new();
        for i in 0..names.len() {
            let addr: SocketAddr = format!("127.0.0.{}:{port}", i + 2).parse().unwrap();
            match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => listeners.push(listener),
                Err(_) => continue 'port,
            }
        }
        for (listener, name) in listeners.into_iter().zip(names) {
            tokio::spawn(meshgate_echo::serve(
                listener,
                meshgate_echo::Config::new(name, 64),
            ));
        }
        return port;
    }
}

/// `[discovery]` asking `dns`, refreshing every 200 ms, dropping a name after `empty_after`.
fn discovery_section(dns: &Dnsmasq, empty_after: &str) -> String {
    format!(
        "\n[discovery]\nresolvers = [\"{}\"]\nrefresh = \"200ms\"\nmin_refresh = \"100ms\"\ntimeout = \"500ms\"\nempty_after = \"{empty_after}\"\n",
        dns.resolver()
    )
}

/// One route to upstream `orders`, whose keys are `upstream_keys`.
fn orders_policy(upstream_keys: &str) -> String {
    format!(
        r#"
[[upstreams]]
name = "orders"
{upstream_keys}

[[routes]]
name = "main"
match = {{ path_prefix = "/" }}
split = [{{ upstream = "orders" }}]
"#
    )
}

/// The server that answered a GET of `/`, or the status when it was not 200.
async fn served_by(gateway: &Gateway) -> Result<String, u16> {
    let response = client().get(gateway.url("/")).send().await.unwrap();
    if response.status() != 200 {
        return Err(response.status().as_u16());
    }
    Ok(response
        .headers()
        .get("x-echo-server")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default())
}

/// Polls until `served_by` gives `expected`; returns how long it took.
async fn wait_served_by(
    gateway: &Gateway,
    expected: Result<&str, u16>,
    limit: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let now = served_by(gateway).await;
        if now.as_deref().map_err(|s| *s) == expected {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "still {now:?} after {limit:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs wrk for `seconds` on another thread.
fn wrk_in_background(url: String, seconds: u32) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        run_wrk(&["-t1", "-c8", &format!("-d{seconds}s"), "--latency"], &url)
    })
}

/// Acceptance: a record change under wrk moves the traffic with 0 errors; the resolver
/// stopped keeps the last good endpoints (counted as errors), and restarted it is used again.
#[tokio::test(flavor = "multi_thread")]
async fn a_record_change_moves_traffic_without_errors_and_a_dead_resolver_is_no_outage() {
    let _machine = load_test_lock();
    let port = echoes_on_one_port(&["a", "b"]).await;
    let mut dns = Dnsmasq::start(&[("orders.svc.test", "127.0.0.2")], &[]);
    let keys = format!("discovery = {{ dns = \"orders.svc.test\", port = {port} }}");
    let gateway = Gateway::start(&(discovery_section(&dns, "60s") + &orders_policy(&keys)));
    let first = wait_served_by(&gateway, Ok("a"), Duration::from_secs(10)).await;
    println!("first answer used after {first:?}");

    let load = wrk_in_background(gateway.url("/"), 4);
    tokio::time::sleep(Duration::from_secs(1)).await;
    dns.set_hosts(&[("orders.svc.test", "127.0.0.3")]);
    let moved = wait_served_by(&gateway, Ok("b"), Duration::from_secs(5)).await;
    let output = load.join().unwrap();
    let (requests, non_2xx, socket_errors) = wrk_summary(&output);
    println!("record change to traffic on the new endpoint: {moved:?}; wrk: {requests} requests, {non_2xx} non-2xx, {socket_errors} socket errors");
    assert!(requests > 1000, "{output}");
    assert_eq!((non_2xx, socket_errors), (0, 0), "{output}");
    let counts = count_servers(&client(), &gateway.url("/"), 20).await;
    assert_eq!(counts.get("b"), Some(&20), "{counts:?}");

    // The resolver goes away: the last good endpoint keeps serving. A stopped server is a
    // timeout or unreachable, by how the port's closing is seen.
    dns.stop();
    let deadline = Instant::now() + Duration::from_secs(5);
    let errors = loop {
        let metrics = gateway.metrics().await;
        let errors = metric_sum(&metrics, "meshgate_discovery_errors_total{");
        if errors >= 1.0 || Instant::now() > deadline {
            println!("resolver stopped: {errors} discovery errors counted");
            break errors;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(errors >= 1.0);
    let counts = count_servers(&client(), &gateway.url("/"), 50).await;
    assert_eq!(counts.get("b"), Some(&50), "{counts:?}");
    let upstreams = gateway.admin_json("/upstreams").await;
    let name = &upstreams["upstreams"][0]["discovery"][0];
    println!("/upstreams while the resolver is down: {name}");
    assert_eq!(name["endpoints"][0], format!("127.0.0.3:{port}"));
    assert!(name["last_error"].is_string(), "{name}");

    // Back, with a new answer: it is used again.
    dns.set_hosts(&[("orders.svc.test", "127.0.0.2")]);
    dns.restart(&[]);
    let back = wait_served_by(&gateway, Ok("a"), Duration::from_secs(10)).await;
    println!("resolver restarted: new answer used after {back:?}");
    let upstreams = gateway.admin_json("/upstreams").await;
    let name = &upstreams["upstreams"][0]["discovery"][0];
    assert!(name["last_error"].is_null(), "{name}");
    assert_eq!(name["kind"], "dns");
}

/// NXDOMAIN keeps the last endpoints for `empty_after`, then empties the upstream (503
/// no-healthy-upstream); a name that resolves again brings them back. A name that never
/// resolved leaves the upstream empty while the gateway starts and serves other routes.
#[tokio::test(flavor = "multi_thread")]
async fn an_empty_answer_empties_the_upstream_only_after_empty_after() {
    let port = echoes_on_one_port(&["a"]).await;
    let dns = Dnsmasq::start(&[], &[]);
    let keys = format!("discovery = {{ dns = \"orders.svc.test\", port = {port} }}");
    let gateway = Gateway::start(&(discovery_section(&dns, "2s") + &orders_policy(&keys)));
    // Not resolvable at start: the gateway runs, the upstream has no endpoint.
    assert_eq!(served_by(&gateway).await, Err(503));
    let response = client().get(gateway.url("/")).send().await.unwrap();
    assert_eq!(
        response.headers()["x-meshgate-reason"],
        "no-healthy-upstream"
    );

    dns.set_hosts(&[("orders.svc.test", "127.0.0.2")]);
    wait_served_by(&gateway, Ok("a"), Duration::from_secs(5)).await;
    dns.set_hosts(&[]);
    let emptied_at = Instant::now();
    // For about 2 s the last answer stays.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(served_by(&gateway).await, Ok("a".to_owned()));
    wait_served_by(&gateway, Err(503), Duration::from_secs(5)).await;
    let after = emptied_at.elapsed();
    println!("NXDOMAIN emptied the upstream after {after:?} (empty_after = 2s)");
    assert!(after >= Duration::from_millis(1900), "{after:?}");
    let metrics = gateway.metrics().await;
    assert!(
        metric_sum(
            &metrics,
            "meshgate_discovery_errors_total{kind=\"nxdomain\",upstream=\"orders\"}"
        ) >= 1.0,
        "{metrics}"
    );
    dns.set_hosts(&[("orders.svc.test", "127.0.0.2")]);
    wait_served_by(&gateway, Ok("a"), Duration::from_secs(5)).await;
}

/// SRV records: each target's port, weight and priority. The lowest priority takes all the
/// traffic while it has an eligible endpoint; weights split it.
#[tokio::test(flavor = "multi_thread")]
async fn srv_records_give_ports_weights_and_priorities() {
    let port = echoes_on_one_port(&["a", "b", "c"]).await;
    let hosts = [
        ("a.svc.test", "127.0.0.2"),
        ("b.svc.test", "127.0.0.3"),
        ("c.svc.test", "127.0.0.4"),
    ];
    let mut dns = Dnsmasq::start(
        &hosts,
        &[
            ("_orders._tcp.svc.test", "a.svc.test", port, 0, 30),
            ("_orders._tcp.svc.test", "b.svc.test", port, 0, 10),
            ("_orders._tcp.svc.test", "c.svc.test", port, 1, 10),
        ],
    );
    let keys = "discovery = { srv = \"_orders._tcp.svc.test\" }";
    let gateway = Gateway::start(&(discovery_section(&dns, "60s") + &orders_policy(keys)));
    wait_served_by(&gateway, Ok("a"), Duration::from_secs(10)).await;
    let counts = count_servers(&client(), &gateway.url("/"), 400).await;
    println!("weights 30:10, priority 0: {counts:?}");
    assert_eq!(counts.get("c"), None, "{counts:?}");
    assert_eq!(counts.get("a"), Some(&300), "{counts:?}");
    assert_eq!(counts.get("b"), Some(&100), "{counts:?}");
    let upstreams = gateway.admin_json("/upstreams").await;
    let endpoints = upstreams["upstreams"][0]["endpoints"]
        .as_array()
        .unwrap()
        .clone();
    let c = endpoints
        .iter()
        .find(|e| e["address"] == format!("127.0.0.4:{port}"))
        .unwrap();
    assert_eq!(c["priority"], 1);
    assert_eq!(c["weight"], 10);

    // The first tier's records go: the next tier takes the traffic.
    dns.restart(&[("_orders._tcp.svc.test", "c.svc.test", port, 1, 10)]);
    let moved = wait_served_by(&gateway, Ok("c"), Duration::from_secs(10)).await;
    println!("SRV change moved the traffic to the second tier after {moved:?}");
}

/// A reload that rebuilds an upstream (its spec changed) starts it with its names' last
/// answers: no request sees an empty pool. A reload that changes `[discovery].resolvers`
/// takes effect without a restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_keeps_the_answers_and_applies_new_resolvers() {
    let port = echoes_on_one_port(&["a", "b"]).await;
    let dns = Dnsmasq::start(&[("orders.svc.test", "127.0.0.2")], &[]);
    let other = Dnsmasq::start(&[("orders.svc.test", "127.0.0.3")], &[]);
    let keys = format!("discovery = {{ dns = \"orders.svc.test\", port = {port} }}");
    let body = discovery_section(&dns, "60s") + &orders_policy(&keys);
    let gateway = Gateway::start(&body);
    wait_served_by(&gateway, Ok("a"), Duration::from_secs(10)).await;

    // The upstream's spec changes, and the resolver now answers nothing: only the kept
    // answer can serve after the reload.
    let dead_resolver = format!("127.0.0.1:{}", free_port());
    let rebuilt = body.replace(&dns.resolver(), &dead_resolver).replace(
        "name = \"orders\"\n",
        "name = \"orders\"\nconnect_timeout = \"2s\"\n",
    );
    gateway
        .apply_policy(gateway.policy_with_body(&rebuilt))
        .await;
    assert_eq!(served_by(&gateway).await, Ok("a".to_owned()));
    let counts = count_servers(&client(), &gateway.url("/"), 20).await;
    assert_eq!(counts.get("a"), Some(&20), "{counts:?}");

    // Another resolver, which answers .3.
    let switched = body.replace(&dns.resolver(), &other.resolver());
    gateway
        .apply_policy(gateway.policy_with_body(&switched))
        .await;
    let moved = wait_served_by(&gateway, Ok("b"), Duration::from_secs(5)).await;
    println!("new resolver's answer used {moved:?} after the reload");
}
