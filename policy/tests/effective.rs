//! The effective policy (`GET /config`, `meshgate check --print`): every default filled in,
//! and what is printed loads back into the same policy.

mod common;

use std::path::Path;

use meshgate_policy::effective::{effective, to_toml};
use meshgate_policy::{diff::diff, load, CompiledPolicy};

/// A public RSA key (from the JWT tests), so that a `jwks_file` loads.
const JWKS: &str = r#"{"keys":[{"kty":"RSA","kid":"r1","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"}]}"#;

/// Loads `source`, prints its effective policy, loads the print, and returns both.
fn round_trip(source: &str, dir: &Path) -> (CompiledPolicy, CompiledPolicy, String) {
    let first = load(source, dir).unwrap_or_else(|e| panic!("{e:#?}"));
    let printed = to_toml(&effective(&first));
    let second = load(&printed, dir).unwrap_or_else(|e| panic!("{printed}\n{e:#?}"));
    (first, second, printed)
}

#[test]
fn every_key_prints_and_loads_back_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    for name in ["server", "other", "ca", "client"] {
        common::write_pair(base, name);
    }
    std::fs::write(base.join("jwks.json"), JWKS).unwrap();
    std::fs::write(base.join("token"), "secret-token-of-32-characters-xx").unwrap();
    std::fs::set_permissions(
        base.join("token"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let source = r#"version = 1
[server]
threads = 3
grace_period = "45s"
drain_delay = "2s"
client_idle_timeout = "90s"
trusted_proxies = ["10.0.0.0/8", "192.168.1.1"]
path_normalization = "off"
client_header_timeout = "7s"
client_body_timeout = "1m 30s"
max_request_header_size = "16KiB"
max_request_headers = 50
max_uri_size = "4KiB"
preserve_header_case = true
zone = "eu-1a"

[admin]
listen = "127.0.0.1:19901"
token_file = "token"
history = 5

[telemetry]
access_log = "access.log"
otlp_endpoint = "http://127.0.0.1:4318"
trace_sample_ratio = 0.5
service_name = "edge"
log_level = "debug"
log_format = "json"
metrics_listen = "127.0.0.1:19902"

[[listeners]]
name = "public"
listen = "127.0.0.1:18443"
max_connections = 500
trust_request_id = true
compress = { types = ["text/html"], min_size = "2KiB" }
[listeners.tls]
cert = "server.crt"
key = "server.key"
client_ca = "ca.crt"
client_auth = "optional"
default_authz = "deny"
[[listeners.tls.sni]]
server_names = ["other.test", "*.other.test"]
cert = "other.crt"
key = "other.key"

[[listeners]]
name = "plain"
listen = "127.0.0.1:18080"

[[listeners]]
name = "pg"
listen = "127.0.0.1:15432"
protocol = "tcp"
max_connections = 50
tls = { cert = "server.crt", key = "server.key", client_ca = "ca.crt", client_auth = "require" }

[[listeners]]
name = "edge"
listen = "127.0.0.1:10443"
protocol = "tls_passthrough"

[[tcp_routes]]
name = "postgres"
listeners = ["pg"]
match = { sni = ["pg.internal", "*.pg.internal"] }
split = [{ upstream = "shadow", weight = 3 }, { upstream = "app", weight = 1 }]
allow = ["spiffe://prod/ns/shop/*"]
idle_timeout = "15m"
rate_limit = { connections_per_second = 5.5, burst = 9, key = "route" }

[[tcp_routes]]
name = "passthrough"
split = [{ upstream = "shadow" }]

[[upstreams]]
name = "app"
endpoints = ["127.0.0.1:9001", { address = "127.0.0.1:9002", weight = 3, priority = 1, zone = "eu-1b" }, "localhost:9003"]
failover = ["backup"]
locality = "prefer_local"
min_local_percent = 70
balance = "consistent_hash"
hash_key = "header:x-user"
connect_timeout = "250ms"
protocol = "h2c"
idle_timeout = "2m"
health_check = { interval = "3s", timeout = "500ms", healthy_threshold = 1, unhealthy_threshold = 4 }
circuit_breaker = { max_connections = 10, max_pending = 20, max_requests = 30, max_retries = 4 }
outlier_detection = { consecutive_failures = 2, base_ejection = "10s", max_ejection = "1m", max_ejection_percent = 30 }
tls = { sni = "app.internal", ca = "ca.crt", cert = "client.crt", key = "client.key" }

[[upstreams]]
name = "backup"
discovery = { srv = "_http._tcp.backup.internal", zone = "eu-1a" }

[[upstreams]]
name = "shadow"
endpoints = ["127.0.0.1:9100"]
health_check = {}

[rate_limit_store]
redis = "redis://127.0.0.1:6379/2"
on_error = "deny"
timeout = "20ms"
pool_size = 2
key_prefix = "edge"

[discovery]
resolvers = ["127.0.0.1:5353"]
refresh = "10s"
min_refresh = "2s"
max_refresh = "5m"
timeout = "1s"
empty_after = "10m"

[[routes]]
name = "api"
listeners = ["public"]
split = [{ upstream = "app", weight = 90 }, { upstream = "backup", weight = 10 }]
split_key = "client_ip"
split_fallback = false
timeouts = { request = "12s" }
retry = { attempts = 2, on = ["connect-failure", "reset", "gateway-error", 409], per_try_timeout = "2s", backoff = "50ms", budget_percent = 30, min_retries_per_second = 3, retry_non_idempotent = true }
headers = { request_set = { x-env = "prod" }, request_add = { x-added = "1" }, request_remove = ["x-debug"], response_set = { x-served-by = "edge" }, response_add = { x-a = "b" }, response_remove = ["server"] }
fault = { delay = "100ms", delay_percent = 5.5, abort_status = 503, abort_percent = 1.0 }
rate_limit = { requests_per_second = 0.5, burst = 3, key = "header:x-api-key", scope = "global", mode = "shadow", headers_on_success = true }
allow = ["spiffe://prod/ns/shop/*", "spiffe://prod/ns/web/sa/front", "jwt:sub:alice", "jwt:claim:team=payments"]
max_request_body = "1MiB"
rewrite = { path_prefix = "/v2", host = "api.internal" }
cors = { allow_origins = ["https://shop.example"], allow_methods = ["GET", "PUT"], allow_headers = ["x-a", "x-b"], expose_headers = ["x-c"], max_age = "10m", allow_credentials = true }
compress = { enabled = false }
mirror = [{ upstream = "shadow", percent = 12.5, max_in_flight = 7 }]
jwt = { issuer = "https://issuer.example", audiences = ["shop"], jwks_file = "jwks.json", required = false, forward_claims = { sub = "x-user", team = "x-team" }, forward_token = false, leeway = "30s", algorithms = ["RS256", "PS256"] }
[routes.match]
host = "*.shop.example"
path_prefix = "/api"
methods = ["GET", "PUT"]
query = { version = "2" }
source = ["10.0.0.0/8", "127.0.0.1"]
[routes.match.headers]
x-exact = "a"
x-prefix = { prefix = "b" }
x-regex = { regex = "v[0-9]+" }
x-present = { present = true }
x-absent = { present = false }

[[routes]]
name = "regex-rewrite"
match = { path_regex = "/old/([a-z]+)" }
split = [{ upstream = "app" }]
rewrite = { path_regex = "^/old/([a-z]+)", path = "/new/\\1" }
jwt = { jwks_url = "https://keys.example/jwks.json", jwks_ca = "ca.crt", min_refresh = "1m", max_refresh = "2h" }

[[routes]]
name = "moved"
match = { path_exact = "/moved" }
redirect = { scheme = "https", host = "new.example", port = 8443, path = "/here", status = 308, strip_query = true }

[[routes]]
name = "teapot"
match = { host = "tea.example" }
respond = { status = 418, body = "short and stout", content_type = "text/plain" }
"#;
    let (first, second, printed) = round_trip(source, base);
    let changes = diff(&first, &second);
    assert!(
        changes.is_empty(),
        "{printed}\nchanged: {:?}",
        changes.lines()
    );
    // Printing the reloaded policy gives the same text: nothing drifts on a second trip.
    assert_eq!(printed, to_toml(&effective(&second)));
    for line in [
        "grace_period = \"45s\"",
        "client_body_timeout = \"1m 30s\"",
        "[[listeners.tls.sni]]",
        "address = \"localhost:9003\"",
        "srv = \"_http._tcp.backup.internal\"",
        "min_local_percent = 70",
        "path_regex = \"/old/([a-z]+)\"",
        "\"jwt:claim:team=payments\"",
        "on = [\"connect-failure\", \"reset\", \"gateway-error\", 409]",
        "protocol = \"tls_passthrough\"",
        "[[tcp_routes]]",
        "idle_timeout = \"1h\"",
    ] {
        assert!(printed.contains(line), "{line} missing from\n{printed}");
    }
    // The JSON form has the same content.
    let json = serde_json::to_string(&effective(&first)).unwrap();
    let as_value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(as_value["routes"][0]["retry"]["budget_percent"], 30);
    assert_eq!(as_value["upstreams"][0]["tls"]["sni"], "app.internal");
}

#[test]
fn defaults_are_filled_in() {
    let dir = tempfile::tempdir().unwrap();
    // The default token file is printed as `token_file`, which must exist to load.
    std::fs::write(
        dir.path().join("admin.token"),
        "secret-token-of-32-characters-xx",
    )
    .unwrap();
    // Read again as an explicit `token_file`, which must be private.
    std::fs::set_permissions(
        dir.path().join("admin.token"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let source = r#"version = 1
[[listeners]]
name = "main"
listen = "127.0.0.1:18080"
[[upstreams]]
name = "app"
endpoints = ["127.0.0.1:9001"]
health_check = {}
outlier_detection = {}
[[routes]]
name = "all"
split = [{ upstream = "app" }]
retry = { attempts = 1 }
rate_limit = { requests_per_second = 10 }
"#;
    let (first, second, printed) = round_trip(source, dir.path());
    // The only difference: the token file is now written in the policy, not defaulted.
    let changes = diff(&first, &second);
    assert_eq!(changes.lines(), ["~ [admin]"], "{printed}");
    assert!(!first.admin.token_file_explicit && second.admin.token_file_explicit);
    assert_eq!(first.admin.token_file, second.admin.token_file);
    assert_eq!(printed, to_toml(&effective(&second)));
    let value = effective(&first);
    let token = dir.path().join("admin.token");
    assert_eq!(value["server"]["grace_period"], "30s");
    assert_eq!(value["server"]["drain_delay"], "5s");
    assert_eq!(value["server"]["path_normalization"], "strict");
    assert_eq!(value["server"]["max_request_header_size"], "32KiB");
    assert_eq!(value["admin"]["listen"], "127.0.0.1:9901");
    assert_eq!(value["admin"]["token_file"], token.display().to_string());
    assert_eq!(value["telemetry"]["access_log"], "stdout");
    assert_eq!(value["telemetry"]["log_format"], "text");
    assert_eq!(value["listeners"][0]["max_connections"], 10000);
    let upstream = &value["upstreams"][0];
    assert_eq!(upstream["balance"], "round_robin");
    assert_eq!(upstream["connect_timeout"], "1s");
    assert_eq!(upstream["idle_timeout"], "1m");
    assert_eq!(upstream["protocol"], "http1");
    assert_eq!(upstream["health_check"]["interval"], "5s");
    assert_eq!(upstream["health_check"]["timeout"], "1s");
    assert_eq!(upstream["health_check"]["healthy_threshold"], 2);
    assert_eq!(upstream["health_check"]["unhealthy_threshold"], 3);
    assert_eq!(upstream["circuit_breaker"]["max_requests"], 1024);
    assert_eq!(upstream["outlier_detection"]["consecutive_failures"], 5);
    assert_eq!(upstream["outlier_detection"]["base_ejection"], "30s");
    let route = &value["routes"][0];
    assert_eq!(route["split"][0]["weight"], 1);
    assert_eq!(route["split_fallback"], true);
    assert_eq!(route["retry"]["backoff"], "25ms");
    assert_eq!(route["retry"]["budget_percent"], 20);
    assert_eq!(route["rate_limit"]["burst"], 10);
    assert_eq!(route["rate_limit"]["key"], "client_ip");
    assert_eq!(route["rate_limit"]["scope"], "local");
    assert_eq!(route["rate_limit"]["max_keys"], 100000);
    // Keys keep the documented order: a section reads as the docs list it.
    let server_keys: Vec<&String> = value["server"].as_object().unwrap().keys().collect();
    assert_eq!(server_keys[..3], ["threads", "grace_period", "drain_delay"]);
}
