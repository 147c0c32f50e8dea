//! The policy loader on `[discovery]`, `discovery`, host-name endpoints, `failover` and
//! `split_fallback`: every error with its line and path, nothing resolved while validating.

use std::path::Path;
use std::time::Duration;

use meshgate_policy::discovery::NameQuery;
use meshgate_policy::load;

mod common;
use common::*;

#[test]
fn names_and_discovery_compile_without_resolving() {
    // `.invalid` never resolves: the policy is still valid.
    let source = r#"version = 1
[discovery]
resolvers = ["127.0.0.1:8600", "[::1]:53"]
min_refresh = "2s"
empty_after = "30s"
[[upstreams]]
name = "orders"
discovery = { srv = "_orders._tcp.service.invalid" }
failover = ["orders-dc2"]
[[upstreams]]
name = "orders-dc2"
endpoints = ["orders-1.dc2.invalid:8080", { address = "10.0.0.9:80", priority = 1 }]
discovery = { dns = "orders.dc2.invalid", port = 8080 }
[[routes]]
name = "r"
split = [{ upstream = "orders" }]
split_fallback = false
"#;
    let policy = load(source, Path::new(".")).expect("valid");
    assert_eq!(policy.discovery.resolvers.len(), 2);
    assert_eq!(policy.discovery.min_refresh, Duration::from_secs(2));
    assert_eq!(policy.discovery.max_refresh, Duration::from_secs(60));
    assert_eq!(policy.discovery.timeout, Duration::from_secs(2));
    assert_eq!(policy.discovery.empty_after, Duration::from_secs(30));
    assert!(policy.upstreams[0].endpoints.is_empty());
    assert_eq!(
        policy.upstreams[0].names[0].query,
        NameQuery::Service {
            name: "_orders._tcp.service.invalid".into()
        }
    );
    assert_eq!(policy.upstreams[1].endpoints[0].priority, 1);
    assert_eq!(policy.upstreams[1].names.len(), 2);
    assert_eq!(
        policy.upstreams[1].names[0].query,
        NameQuery::Address {
            name: "orders-1.dc2.invalid".into(),
            port: 8080
        }
    );
    assert_eq!(policy.failover, vec![vec![1], vec![]]);
    assert!(!policy.routes[0].split_fallback);
}

#[test]
fn defaults_apply_without_a_discovery_section() {
    let source = r#"version = 1
[[upstreams]]
name = "u"
endpoints = ["10.0.0.1:80"]
[[routes]]
name = "r"
split = [{ upstream = "u" }]
"#;
    let policy = load(source, Path::new(".")).expect("valid");
    assert!(policy.discovery.resolvers.is_empty());
    assert_eq!(policy.discovery.refresh, None);
    assert!(policy.routes[0].split_fallback);
}

#[test]
fn bad_discovery_keys_are_all_reported() {
    let source = r#"version = 1
[discovery]
resolvers = ["nope"]
min_refresh = "10s"
max_refresh = "5s"
timeout = "1ms"
[[upstreams]]
name = "a"
discovery = { dns = "a.example", srv = "_a._tcp.example" }
[[upstreams]]
name = "b"
discovery = { dns = "b.example" }
[[upstreams]]
name = "c"
discovery = { srv = "_c._tcp.example", port = 80 }
[[upstreams]]
name = "d"
discovery = { dns = "-bad-.example", port = 80 }
[[upstreams]]
name = "e"
endpoints = ["not a name:80", "e.example:0", "e.example", "ok.example:80", "OK.example:80"]
[[upstreams]]
name = "f"
[[upstreams]]
name = "g"
endpoints = [{ address = "10.0.0.1:80", priority = 5000 }]
discovery = { name = "x" }
"#;
    let errors = refused(source);
    assert_errors(
        &errors,
        &[
            (3, "discovery.resolvers[0]", "invalid address"),
            (
                5,
                "discovery.max_refresh",
                "not be shorter than min_refresh",
            ),
            (6, "discovery.timeout", "at least 100ms"),
            (9, "upstreams[0].discovery", "not both"),
            (12, "upstreams[1].discovery.port", "needs `port`"),
            (15, "upstreams[2].discovery.port", "leave out `port`"),
            (18, "upstreams[3].discovery.dns", "is not a DNS name"),
            (21, "upstreams[4].endpoints[0]", "is not a DNS name"),
            (21, "upstreams[4].endpoints[1]", "port must not be 0"),
            (
                21,
                "upstreams[4].endpoints[2]",
                "expected IP:port or host:port",
            ),
            (21, "upstreams[4].endpoints[4]", "listed twice"),
            (
                22,
                "upstreams[5].endpoints",
                "at least one endpoint, or `discovery`",
            ),
            (
                26,
                "upstreams[6].endpoints[0].priority",
                "between 0 and 1000",
            ),
            (27, "upstreams[6].discovery.name", "unknown field"),
        ],
    );
}

#[test]
fn failover_names_and_loops_are_checked() {
    let source = r#"version = 1
[[upstreams]]
name = "a"
endpoints = ["10.0.0.1:80"]
failover = ["b", "nope", "a", "b"]
[[upstreams]]
name = "b"
endpoints = ["10.0.0.2:80"]
failover = ["c"]
[[upstreams]]
name = "c"
endpoints = ["10.0.0.3:80"]
failover = ["a"]
[[routes]]
name = "r"
split = [{ upstream = "a" }]
split_fallback = "yes"
"#;
    let errors = refused(source);
    assert_errors(
        &errors,
        &[
            (5, "upstreams[0].failover[1]", "unknown upstream \"nope\""),
            (5, "upstreams[0].failover[2]", "cannot fail over to itself"),
            (5, "upstreams[0].failover[3]", "listed twice"),
            (
                5,
                "upstreams[0].failover",
                "failover loop: a -> b -> c -> a",
            ),
            (17, "routes[0].split_fallback", "invalid type"),
        ],
    );
}

#[test]
fn locality_needs_the_gateway_zone() {
    let source = r#"version = 1
[[upstreams]]
name = "a"
endpoints = [{ address = "10.0.0.1:80", zone = "eu 1a" }]
locality = "prefer_local"
min_local_percent = 150
[[upstreams]]
name = "b"
endpoints = ["10.0.0.2:80"]
min_local_percent = 10
locality = "nearest"
"#;
    let errors = refused(source);
    assert_errors(
        &errors,
        &[
            (4, "upstreams[0].endpoints[0].zone", "invalid name"),
            (5, "upstreams[0].locality", "needs [server].zone"),
            (6, "upstreams[0].min_local_percent", "between 0 and 100"),
            (11, "upstreams[1].locality", "unknown variant `nearest`"),
        ],
    );
    let source = r#"version = 1
[server]
zone = "eu-1a"
[[upstreams]]
name = "a"
endpoints = [{ address = "10.0.0.1:80", zone = "eu-1a" }, "10.0.0.2:80"]
discovery = { dns = "a.invalid", port = 80, zone = "eu-1b" }
locality = "prefer_local"
[[upstreams]]
name = "b"
endpoints = ["10.0.0.3:80"]
min_local_percent = 10
"#;
    let errors = refused(source);
    assert_errors(
        &errors,
        &[(
            12,
            "upstreams[1].min_local_percent",
            "only with locality = \"prefer_local\"",
        )],
    );
    let valid = source.replace("min_local_percent = 10\n", "");
    let policy = load(&valid, Path::new(".")).expect("valid");
    assert_eq!(policy.zone.as_deref(), Some("eu-1a"));
    let locality = policy.upstreams[0].locality.clone().unwrap();
    assert_eq!(
        (locality.zone.as_str(), locality.min_local_percent),
        ("eu-1a", 50)
    );
    assert_eq!(
        policy.upstreams[0].endpoints[0].zone.as_deref(),
        Some("eu-1a")
    );
    assert_eq!(policy.upstreams[0].names[0].zone.as_deref(), Some("eu-1b"));
}
