//! The policy loader on whole files: the bundled config, every error with its position, keys
//! that this build does not know yet.

use std::path::Path;

use meshgate_policy::compiled::{LimitKey, RateLimitMode, RateLimitScope, StoreErrorAction};
use meshgate_policy::load;

mod common;
use common::*;

#[test]
fn bundled_config_loads() {
    let source = include_str!("../../conf/meshgate.toml");
    let policy = load(source, Path::new(env!("CARGO_MANIFEST_DIR"))).expect("conf/meshgate.toml");
    assert_eq!(policy.routes.len(), 1);
    assert_eq!(policy.routes[0].split_schedule.len(), 10);
    assert_eq!(policy.routes_by_listener, vec![vec![0]]);
}

#[test]
fn every_error_is_reported_with_its_line_and_path() {
    let source = r#"version = 1
[server]
threads = 0
[[listeners]]
name = "a"
listen = "nope"
[[listeners]]
name = "a"
listen = "127.0.0.1:1"
[[upstreams]]
name = "u"
endpoints = ["10.0.0.1:80", { address = "10.0.0.2:80", weight = 0 }]
connect_timeout = "soon"
hash_key = "client_ip"
[[upstreams]]
name = "u"
endpoints = []
[[routes]]
name = "r"
match = { path_prefix = "api", path_exact = "/x", methods = ["get"] }
split = [{ upstream = "missing", weight = 20000 }]
split_key = "cookie"
[[routes]]
name = "r2"
split = [{ upstream = "u", weight = "heavy" }, { upstream = "u", extra = 1 }]
"#;
    let errors = refused(source);
    for (line, path, message) in [
        (3, "server.threads", "between 1 and 1024"),
        (6, "listeners[0].listen", "invalid address"),
        (8, "listeners[1].name", "duplicate listener name"),
        (12, "upstreams[0].endpoints[1].weight", "between 1 and 256"),
        (13, "upstreams[0].connect_timeout", "invalid duration"),
        (16, "upstreams[1].name", "duplicate upstream name"),
        (17, "upstreams[1].endpoints", "at least one endpoint"),
        (20, "routes[0].match.path_exact", "only one of"),
        (20, "routes[0].match.path_prefix", "must start with"),
        (20, "routes[0].match.methods[0]", "upper case"),
        (21, "routes[0].split[0].weight", "between 0 and 10000"),
        (
            21,
            "routes[0].split[0].upstream",
            "unknown upstream \"missing\"",
        ),
        (22, "routes[0].split_key", "unknown key"),
        (25, "routes[1].split[0].weight", "invalid type"),
        (25, "routes[1].split[1].extra", "unknown field `extra`"),
    ] {
        assert!(
            has(&errors, line, path, message),
            "missing {line} {path} {message}: {errors:#?}"
        );
    }
    // hash_key without consistent_hash is an error too.
    assert!(
        has(&errors, 14, "upstreams[0].hash_key", "only to balance"),
        "{errors:#?}"
    );
}

#[test]
fn telemetry_keys_are_validated() {
    let source = r#"version = 1
[telemetry]
otlp_endpoint = "grpc://127.0.0.1:4317"
trace_sample_ratio = 1.5
service_name = ""
log_level = "meshgate=loud"
tracing_backend = "zipkin"
"#;
    let errors = refused(source);
    for (line, path, message) in [
        (3, "telemetry.otlp_endpoint", "must be an http:// URL"),
        (4, "telemetry.trace_sample_ratio", "between 0.0 and 1.0"),
        (5, "telemetry.service_name", "must not be empty"),
        (6, "telemetry.log_level", "\"meshgate=loud\""),
        (7, "telemetry.tracing_backend", "unknown field"),
    ] {
        assert!(
            has(&errors, line, path, message),
            "missing {line} {path} {message}: {errors:#?}"
        );
    }
    let errors = refused("version = 1\n[telemetry]\ntrace_sample_ratio = 0.5\n");
    assert!(
        has(
            &errors,
            3,
            "telemetry.trace_sample_ratio",
            "needs `otlp_endpoint`"
        ),
        "{errors:#?}"
    );
    // A bad access_log does not hide the errors of the other keys.
    let errors = refused(
        "version = 1\n[telemetry]\naccess_log = \"\"\nservice_name = \"edge\"\nlog_level = \"\"\nmetrics_listen = \"nope\"\n",
    );
    for (line, path, message) in [
        (3, "telemetry.access_log", "file path"),
        (4, "telemetry.service_name", "needs `otlp_endpoint`"),
        (5, "telemetry.log_level", "must not be empty"),
        (6, "telemetry.metrics_listen", "invalid address"),
    ] {
        assert!(
            has(&errors, line, path, message),
            "missing {line} {path} {message}: {errors:#?}"
        );
    }
}

#[test]
fn log_levels_take_the_tracing_filter_syntax() {
    for filter in [
        "debug",
        "WARN",
        "warn,meshgate=debug",
        "meshgate",
        "pingora_core::server=off",
    ] {
        let source = format!("version = 1\n[telemetry]\nlog_level = \"{filter}\"\n");
        let policy =
            load(&source, Path::new(".")).unwrap_or_else(|e| panic!("{filter:?} refused: {e:#?}"));
        assert_eq!(policy.telemetry.log_level, filter);
    }
    // A misspelt level would be read by `tracing` as a target and silence every line.
    for typo in ["warning", "information", "meshgate=loud", "warn,erorr"] {
        let source = format!("version = 1\n[telemetry]\nlog_level = \"{typo}\"\n");
        let errors = refused(&source);
        assert!(
            has(
                &errors,
                3,
                "telemetry.log_level",
                "the levels are error, warn, info"
            ),
            "{typo}: {errors:#?}"
        );
    }
}

#[test]
fn tracing_compiles_with_documented_defaults() {
    let base = "version = 1\n[telemetry]\n";
    let policy = load(
        &format!("{base}otlp_endpoint = \"http://127.0.0.1:4318\"\n"),
        Path::new("."),
    )
    .unwrap();
    let tracing = policy.telemetry.tracing.expect("tracing on");
    assert_eq!(tracing.traces_url, "http://127.0.0.1:4318/v1/traces");
    assert_eq!(tracing.sample_ratio, 0.01);
    assert_eq!(tracing.service_name, "meshgate");
    assert_eq!(policy.telemetry.log_level, "info");
    let policy = load(
        &format!("{base}otlp_endpoint = \"http://otel.example:4318/v1/traces\"\ntrace_sample_ratio = 1\nservice_name = \"edge\"\nlog_level = \"warn,meshgate=debug\"\n"),
        Path::new("."),
    )
    .unwrap();
    let tracing = policy.telemetry.tracing.expect("tracing on");
    assert_eq!(tracing.traces_url, "http://otel.example:4318/v1/traces");
    assert_eq!(tracing.sample_ratio, 1.0);
    assert_eq!(policy.telemetry.log_level, "warn,meshgate=debug");
    let policy = load(base, Path::new(".")).unwrap();
    assert!(
        policy.telemetry.tracing.is_none(),
        "off without an endpoint"
    );
}

#[test]
fn rate_limits_compile_with_documented_defaults() {
    let source = r#"version = 1
[server]
trusted_proxies = ["10.0.0.0/8", "192.0.2.7"]
[[upstreams]]
name = "u"
endpoints = ["10.0.0.1:80"]
[[routes]]
name = "r"
split = [{ upstream = "u" }]
rate_limit = { requests_per_second = 2.5 }
[[routes]]
name = "g"
split = [{ upstream = "u" }]
rate_limit = { requests_per_second = 100, burst = 200, key = "header:X-Tenant", scope = "global", mode = "shadow" }
[rate_limit_store]
redis = "redis://127.0.0.1:6379/0"
"#;
    let policy = load(source, Path::new(".")).expect("valid policy");
    let local = policy.routes[0].rate_limit.as_ref().expect("limit");
    assert_eq!(local.burst, 3, "burst defaults to one second's worth");
    assert_eq!(local.key, LimitKey::ClientIp);
    assert_eq!(local.scope, RateLimitScope::Local);
    assert_eq!(local.mode, RateLimitMode::Enforce);
    assert_eq!(local.max_keys, 100_000);
    assert!(!local.headers_on_success);
    let global = policy.routes[1].rate_limit.as_ref().expect("limit");
    assert_eq!(global.key, LimitKey::Header("x-tenant".into()));
    assert_eq!(global.mode, RateLimitMode::Shadow);
    let store = policy.rate_limit_store.as_ref().expect("store");
    assert_eq!(store.on_error, StoreErrorAction::Allow);
    assert_eq!(store.timeout.as_millis(), 50);
    assert_eq!(store.pool_size, 4);
    assert_eq!(store.key_prefix, "meshgate");
    assert_eq!(policy.trusted_proxies.len(), 2);
}

#[test]
fn bad_rate_limits_are_all_reported() {
    let source = r#"version = 1
[server]
trusted_proxies = ["10.0.0.0/33"]
[[upstreams]]
name = "u"
endpoints = ["10.0.0.1:80"]
[[routes]]
name = "a"
split = [{ upstream = "u" }]
rate_limit = { requests_per_second = 0, burst = 0 }
[[routes]]
name = "b"
split = [{ upstream = "u" }]
rate_limit = { requests_per_second = 5, key = "cookie:x", scope = "global" }
[[routes]]
name = "c"
split = [{ upstream = "u" }]
rate_limit = { requests_per_second = 5, mode = "dry-run", per_minute = 3 }
"#;
    let errors = refused(source);
    for (line, path, message) in [
        (
            3,
            "server.trusted_proxies[0]",
            "invalid address or CIDR block",
        ),
        (
            10,
            "routes[0].rate_limit.requests_per_second",
            "more than zero",
        ),
        (10, "routes[0].rate_limit.burst", "at least one request"),
        (14, "routes[1].rate_limit.key", "unknown key \"cookie:x\""),
        (
            14,
            "routes[1].rate_limit.scope",
            "needs a [rate_limit_store]",
        ),
        (18, "routes[2].rate_limit.mode", "unknown variant `dry-run`"),
        (18, "routes[2].rate_limit.per_minute", "unknown field"),
    ] {
        assert!(has(&errors, line, path, message), "{path}: {errors:#?}");
    }

    let store = r#"version = 1
[rate_limit_store]
redis = "http://127.0.0.1:6379"
timeout = "0s"
pool_size = 0
on_error = "maybe"
"#;
    let errors = refused(store);
    for (line, path, message) in [
        (3, "rate_limit_store.redis", "only redis://"),
        (4, "rate_limit_store.timeout", "more than zero"),
        (5, "rate_limit_store.pool_size", "between 1 and 64"),
        (6, "rate_limit_store.on_error", "unknown variant `maybe`"),
    ] {
        assert!(has(&errors, line, path, message), "{path}: {errors:#?}");
    }
}

#[test]
fn syntax_errors_have_positions() {
    let errors = refused("version = 1\n[[routes]\nname = \"x\"\n");
    assert_eq!(errors[0].line, 2, "{errors:#?}");
    assert_eq!(errors[0].path, "(syntax)");
}

#[test]
fn admin_off_loopback_needs_an_explicit_token_file() {
    let errors = refused("version = 1\n[admin]\nlisten = \"0.0.0.0:9901\"\n");
    assert!(
        has(&errors, 3, "admin.listen", "explicit `token_file`"),
        "{errors:#?}"
    );
    let errors = refused("version = 1\n[admin]\ntoken_file = \"/nonexistent/admin.token\"\n");
    assert!(
        has(&errors, 3, "admin.token_file", "does not exist"),
        "{errors:#?}"
    );
}

#[test]
fn odd_input_is_refused_with_its_line_and_path() {
    for (source, line, path, message) in [
        ("", 1, "(document)", "missing key `version`"),
        ("version = \"one\"", 1, "version", "invalid type: string"),
        (
            "version = 1\n[server]\npreserve_header_case = \"yes\"\n",
            3,
            "server.preserve_header_case",
            "invalid type: string",
        ),
        (
            "listeners = 3\nversion = 1",
            1,
            "listeners",
            "expected an array of tables",
        ),
        (
            "version = 1\n[[routes]]\nmatch = 1\n",
            2,
            "routes[0]",
            "missing field `name`",
        ),
        (
            "version = 1\n[[routes]]\nmatch = 1\n",
            3,
            "routes[0].match",
            "invalid type: integer",
        ),
        (
            "version = 1\nroutes = [1, \"x\"]",
            2,
            "routes[0]",
            "invalid type: integer",
        ),
        (
            "version = 1\nroutes = [1, \"x\"]",
            2,
            "routes[1]",
            "invalid type: string",
        ),
        (
            "version = 1\n[[upstreams]]\nendpoints = [[1]]\nname = \"\"\n",
            3,
            "upstreams[0].endpoints[0]",
            "expected an address",
        ),
        (
            "version = 1\n[[routes]]\nname = \"r\"\nmatch = { host = \"*\" }\nsplit = []",
            4,
            "routes[0].match.host",
            "a wildcard host name must look like",
        ),
        (
            "version = 1\n[[routes]]\nname = \"r\"\nmatch = { host = \"*\" }\nsplit = []",
            5,
            "routes[0].split",
            "at least one split",
        ),
    ] {
        let errors = refused(source);
        assert!(
            has(&errors, line, path, message),
            "{source:?}: expected line {line}, {path}: {message}; got {errors:#?}"
        );
    }
    // A byte order mark before the first key is not an error.
    assert!(load("\u{feff}version = 1", Path::new(".")).is_ok());
}

#[test]
fn tls_settings_and_files_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_pair(dir.path(), "a");
    let (_, other_key) = write_pair(dir.path(), "b");
    std::fs::write(dir.path().join("garbage.pem"), "not PEM at all").unwrap();
    let good = format!(
        r#"version = 1
[[listeners]]
name = "public"
listen = "127.0.0.1:8443"
[listeners.tls]
cert = "{cert}"
key = "{key}"
client_ca = "{cert}"
client_auth = "require"
default_authz = "deny"
[[listeners.tls.sni]]
server_names = ["a.test", "*.a.test"]
cert = "a.crt"
key = "a.key"
[[upstreams]]
name = "u"
endpoints = ["10.0.0.1:443"]
tls = {{ sni = "u.internal", ca = "a.crt", cert = "a.crt", key = "a.key" }}
[[routes]]
name = "r"
split = [{{ upstream = "u" }}]
allow = ["spiffe://prod/ns/shop/*", "spiffe://prod/ns/ops/sa/admin"]
"#
    );
    let policy = load(&good, dir.path()).expect("valid TLS policy");
    let tls = policy.listeners[0].tls.as_ref().expect("tls");
    assert_eq!(tls.sni[0].0, ["a.test", "*.a.test"]);
    assert_eq!(
        tls.sni[0].1.cert,
        dir.path().join("a.crt"),
        "relative paths resolve beside the policy"
    );
    assert_eq!(
        policy.listeners[0].default_authz,
        meshgate_policy::compiled::DefaultAuthz::Deny
    );
    let allow = policy.routes[0].allow.as_ref().expect("allow");
    assert!(allow[0].matches("spiffe://prod/ns/shop/sa/cart"));
    assert!(!allow[0].matches("spiffe://prod/ns/shopping/sa/cart"));
    assert!(allow[1].matches("spiffe://prod/ns/ops/sa/admin"));

    let bad = format!(
        r#"version = 1
[[listeners]]
name = "public"
listen = "127.0.0.1:8443"
[listeners.tls]
cert = "{cert}"
key = "{other_key}"
client_ca = "missing-ca.pem"
[[listeners.tls.sni]]
server_names = ["bad name!", "a.test"]
cert = "garbage.pem"
key = "a.key"
[[upstreams]]
name = "u"
endpoints = ["10.0.0.1:443"]
health_check = {{ path = "/healthz" }}
tls = {{ cert = "a.crt" }}
[[routes]]
name = "r"
split = [{{ upstream = "u" }}]
allow = ["spiffe://prod/ns/*/sa/x", ""]
"#
    );
    let errors = load(&bad, dir.path()).expect_err("policy should be refused");
    for (line, path, message) in [
        (
            7,
            "listeners[0].tls.key",
            "does not belong to the certificate",
        ),
        (8, "listeners[0].tls.client_ca", "cannot read"),
        (5, "listeners[0].tls.client_auth", "client_auth is \"none\""),
        (
            10,
            "listeners[0].tls.sni[0].server_names[0]",
            "invalid server name",
        ),
        (11, "listeners[0].tls.sni[0].cert", "no PEM"),
        (16, "upstreams[0].health_check.path", "do not speak TLS"),
        (17, "upstreams[0].tls.key", "cert needs key"),
        (21, "routes[0].allow[0]", "only as a trailing"),
        (21, "routes[0].allow[1]", "invalid identity"),
    ] {
        assert!(has(&errors, line, path, message), "{path}: {errors:#?}");
    }
}

#[test]
fn retry_conditions_name_what_is_wrong() {
    let source = r#"version = 1
[[upstreams]]
name = "u"
endpoints = ["127.0.0.1:1"]
[[routes]]
name = "r"
split = [{ upstream = "u" }]
retry = { attempts = 1, on = ["409", "sometimes", 700, "reset", 503] }
"#;
    let errors = refused(source);
    assert_eq!(errors.len(), 3, "{errors:#?}");
    for (path, message) in [
        ("routes[0].retry.on[0]", "write 409 without quotes"),
        (
            "routes[0].retry.on[1]",
            "unknown retry condition \"sometimes\"",
        ),
        ("routes[0].retry.on[2]", "700 is not an HTTP status code"),
    ] {
        assert!(
            has(&errors, 8, path, message),
            "missing {path}: {errors:#?}"
        );
    }
}
