//! `protocol`, `[[tcp_routes]]` and `health_check.type`: what compiles, and every mistake
//! placed at its line and key.

mod common;

use std::path::Path;

use common::*;
use meshgate_policy::load;
use meshgate_policy::tcp::ListenerProtocol;

const UPSTREAMS: &str = r#"
[[upstreams]]
name = "pg"
endpoints = ["127.0.0.1:5432"]
health_check = { type = "tcp" }

[[upstreams]]
name = "web"
endpoints = ["127.0.0.1:8443"]
"#;

#[test]
fn tcp_and_passthrough_listeners_route_by_listener_and_server_name() {
    let source = format!(
        r#"version = 1
[[listeners]]
name = "http"
listen = "127.0.0.1:8080"
[[listeners]]
name = "pg"
listen = "127.0.0.1:15432"
protocol = "tcp"
[[listeners]]
name = "edge"
listen = "127.0.0.1:10443"
protocol = "tls_passthrough"
{UPSTREAMS}
[[routes]]
name = "all-http"
split = [{{ upstream = "web" }}]

[[tcp_routes]]
name = "postgres"
listeners = ["pg"]
split = [{{ upstream = "pg" }}]
idle_timeout = "10m"
rate_limit = {{ connections_per_second = 2.5 }}

[[tcp_routes]]
name = "shop"
listeners = ["edge"]
match = {{ sni = ["shop.example", "*.shop.example"] }}
split = [{{ upstream = "web" }}]
rate_limit = {{ connections_per_second = 100, burst = 200, key = "route" }}
"#
    );
    let policy = load(&source, Path::new(".")).unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!(policy.listeners[1].protocol, ListenerProtocol::Tcp);
    // HTTP routes without `listeners` apply to HTTP listeners only, TCP ones to the others.
    assert_eq!(policy.routes_by_listener, [vec![0], vec![], vec![]]);
    assert_eq!(policy.tcp_routes_by_listener, [vec![], vec![0], vec![1]]);
    assert_eq!(policy.tcp_route_for(1, None), Some(0));
    assert_eq!(policy.tcp_route_for(2, Some("SHOP.example")), Some(1));
    assert_eq!(policy.tcp_route_for(2, Some("eu.shop.example")), Some(1));
    assert_eq!(policy.tcp_route_for(2, Some("other.example")), None);
    assert_eq!(policy.tcp_route_for(2, None), None);
    let postgres = &policy.tcp_routes[0];
    assert_eq!(postgres.idle_timeout.as_secs(), 600);
    let limit = postgres.rate_limit.as_ref().unwrap();
    assert_eq!((limit.burst, limit.per_client), (3, true));
    assert_eq!(policy.tcp_routes[1].idle_timeout.as_secs(), 3600);
    assert!(policy.upstreams[0]
        .health_check
        .as_ref()
        .unwrap()
        .path
        .is_none());
}

#[test]
fn every_tcp_mistake_is_placed() {
    let source = r#"version = 1
[[listeners]]
name = "http"
listen = "127.0.0.1:8080"
[[listeners]]
name = "pg"
listen = "127.0.0.1:15432"
protocol = "tcp"
[[listeners]]
name = "edge"
listen = "127.0.0.1:10443"
protocol = "tls_passthrough"
compress = {}
tls = { cert = "a.pem", key = "a.key" }
[[listeners]]
name = "odd"
listen = "127.0.0.1:10444"
protocol = "udp"

[[upstreams]]
name = "pg"
endpoints = ["127.0.0.1:5432"]
health_check = { type = "tcp", path = "/x" }

[[routes]]
name = "web"
listeners = ["pg"]
split = [{ upstream = "pg" }]

[[tcp_routes]]
name = "postgres"
listeners = ["http", "pg", "nope"]
match = { sni = ["pg.example", "*bad"] }
split = [{ upstream = "missing" }]
allow = ["spiffe://prod/ns/a/sa/b"]
idle_timeout = "0s"
rate_limit = { connections_per_second = -1, key = "ip" }
colour = "blue"

[[tcp_routes]]
name = "empty"
split = []
"#;
    let errors = refused(source);
    assert_errors(
        &errors,
        &[
            (
                13,
                "listeners[2].compress",
                "compress applies to HTTP listeners",
            ),
            (
                14,
                "listeners[2].tls",
                "a tls_passthrough listener never decrypts",
            ),
            (18, "listeners[3].protocol", "unknown variant `udp`"),
            (
                23,
                "upstreams[0].health_check.path",
                "a tcp health check only connects",
            ),
            (
                27,
                "routes[0].listeners[0]",
                "listener \"pg\" has protocol = \"tcp\"",
            ),
            (
                32,
                "tcp_routes[0].listeners[0]",
                "listener \"http\" has protocol = \"http\"",
            ),
            (
                32,
                "tcp_routes[0].listeners[2]",
                "unknown listener \"nope\"",
            ),
            (33, "tcp_routes[0].match.sni", "sees no TLS handshake"),
            (
                33,
                "tcp_routes[0].match.sni[1]",
                "a wildcard host name must look like",
            ),
            (
                34,
                "tcp_routes[0].split[0].upstream",
                "unknown upstream \"missing\"",
            ),
            (35, "tcp_routes[0].allow", "has no client certificates"),
            (36, "tcp_routes[0].idle_timeout", "more than zero"),
            (
                37,
                "tcp_routes[0].rate_limit.connections_per_second",
                "above 0",
            ),
            (38, "tcp_routes[0].colour", "unknown field `colour`"),
            (
                42,
                "tcp_routes[1].split",
                "a TCP route needs at least one split",
            ),
        ],
    );
}

#[test]
fn the_bundled_tcp_example_loads_without_warnings() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf/examples");
    let source = std::fs::read_to_string(dir.join("tcp.toml")).unwrap();
    let (policy, warnings) =
        meshgate_policy::load_with_warnings(&source, &dir).unwrap_or_else(|e| panic!("{e:#?}"));
    assert!(warnings.is_empty(), "{warnings:#?}");
    assert_eq!(policy.tcp_routes.len(), 3);
    assert_eq!(policy.tcp_route_for(2, Some("eu.shop.example")), Some(2));
    assert_eq!(policy.failover[0], vec![1]);
}
