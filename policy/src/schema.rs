//! The policy file's schema (version 1) as serde types.
//!
//! Every table refuses unknown keys, so a misspelt key (or a key that this build does not
//! support yet) is an error with a position instead of being silently ignored.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::duration::Duration;
use crate::size::ByteSize;

/// The whole policy file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Schema version; only `1` exists.
    pub version: u32,
    /// Process-wide settings (static: they take effect on restart).
    #[serde(default)]
    pub server: ServerSection,
    /// The admin API (static).
    #[serde(default)]
    pub admin: AdminSection,
    /// Logs, metrics and traces.
    #[serde(default)]
    pub telemetry: TelemetrySection,
    /// Where the gateway accepts traffic (static).
    #[serde(default)]
    pub listeners: Vec<ListenerSpec>,
    /// Named pools of endpoints that routes send traffic to.
    #[serde(default)]
    pub upstreams: Vec<UpstreamSection>,
    /// Routes, tried in file order; the first match wins.
    #[serde(default)]
    pub routes: Vec<RouteSection>,
    /// The shared store of `scope = "global"` rate limits.
    pub rate_limit_store: Option<RateLimitStoreSection>,
    /// How names in upstreams are resolved.
    pub discovery: Option<crate::discovery::DiscoverySection>,
    /// The fleet this node belongs to.
    pub fleet: Option<crate::fleet::FleetSection>,
    /// Routes of `tcp` and `tls_passthrough` listeners, tried in file order.
    #[serde(default)]
    pub tcp_routes: Vec<crate::tcp::TcpRouteSection>,
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Worker threads; defaults to the number of CPUs.
    pub threads: Option<usize>,
    /// How long in-flight requests may take to finish on shutdown or upgrade (default 30s).
    pub grace_period: Option<Duration>,
    /// How long a drain keeps accepting and serving after readiness fails (default 5s).
    pub drain_delay: Option<Duration>,
    /// How long an idle HTTP/1.1 client connection is kept between requests (default 60s).
    pub client_idle_timeout: Option<Duration>,
    /// Addresses and CIDR blocks of proxies in front of the gateway, whose
    /// `x-forwarded-for` is believed when finding a client's address (default none).
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// `"strict"` (the default): normalize request paths before routing and refuse unsafe
    /// ones; `"off"`: route and forward paths as received.
    pub path_normalization: Option<PathNormalization>,
    /// How long a client has to send a whole request head (default 10s).
    pub client_header_timeout: Option<Duration>,
    /// Longest pause between two reads of a request body (default 60s).
    pub client_body_timeout: Option<Duration>,
    /// Largest request head, request line and headers together (default 32KiB).
    pub max_request_header_size: Option<ByteSize>,
    /// Most header fields in a request (default 100).
    pub max_request_headers: Option<u32>,
    /// Longest request target, path and query (default 8KiB).
    pub max_uri_size: Option<ByteSize>,
    /// Largest HTTP/1.1 response head an upstream may send (default 64KiB); `502` over it.
    pub max_upstream_response_header_size: Option<ByteSize>,
    /// Whether HTTP/1.1 header names are forwarded in the case they arrived in (default
    /// false: the common ones titled, the rest lowercase).
    pub preserve_header_case: Option<bool>,
    /// The gateway's zone, for upstreams with `locality = "prefer_local"`. Applies on reload.
    pub zone: Option<String>,
}

/// `[server].path_normalization`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum PathNormalization {
    /// Decode unreserved escapes, merge slashes, remove dot segments; refuse unsafe paths.
    #[default]
    Strict,
    /// Forward the path as received. Unsafe with `allow` lists and path-based routes.
    Off,
}

/// `[admin]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// Listen address of the admin API; defaults to `127.0.0.1:9901`.
    pub listen: Option<String>,
    /// File holding the bearer token. Defaults to `admin.token` beside the policy file, created
    /// with a random token on first start when missing.
    pub token_file: Option<PathBuf>,
    /// How many applied policies are kept for `GET /policy/history` and rollback (default 20).
    pub history: Option<u32>,
    /// Host names the admin API answers besides IP literals and `localhost`.
    pub allowed_hosts: Option<Vec<String>>,
}

/// `[telemetry]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySection {
    /// `"off"`, `"stdout"` (the default) or a file path.
    pub access_log: Option<String>,
    /// OTLP/HTTP collector base URL (`http://host:4318`); tracing is off without it.
    pub otlp_endpoint: Option<String>,
    /// Share of new traces sampled, 0.0 to 1.0 (default 0.01).
    pub trace_sample_ratio: Option<f64>,
    /// `service.name` of exported spans (default `"meshgate"`).
    pub service_name: Option<String>,
    /// The gateway's own log level or `tracing` filter (default `"info"`).
    pub log_level: Option<String>,
    /// The gateway's own log lines: `"text"` (the default) or `"json"` (one object a line).
    pub log_format: Option<crate::compiled::LogFormat>,
    /// A separate listener serving only `GET /metrics` (static; default: none, metrics are
    /// on the admin listener).
    pub metrics_listen: Option<String>,
}

/// One `[[listeners]]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerSpec {
    /// Name routes refer to.
    pub name: String,
    /// `IP:port` to bind.
    pub listen: String,
    /// TLS termination; plain HTTP (and h2c) when absent.
    pub tls: Option<ListenerTlsSection>,
    /// Most client connections served at once (default 10000); more wait to be served.
    pub max_connections: Option<u32>,
    /// Keep a well-formed `x-request-id` from the client (default false: the gateway makes
    /// a new one for every request).
    pub trust_request_id: Option<bool>,
    /// Response compression for every route on this listener without its own `compress`.
    pub compress: Option<crate::compress::CompressSection>,
    /// `"http"` (the default), `"tcp"` or `"tls_passthrough"` (static).
    #[serde(default)]
    pub protocol: crate::tcp::ListenerProtocol,
}

/// `[listeners.tls]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsSection {
    /// PEM certificate chain served when no SNI entry matches.
    pub cert: PathBuf,
    /// PEM private key of `cert`.
    pub key: PathBuf,
    /// More certificates, chosen by the client's SNI.
    #[serde(default)]
    pub sni: Vec<SniCertSection>,
    /// PEM bundle of the CAs that client certificates must chain to.
    pub client_ca: Option<PathBuf>,
    /// Whether clients are asked for a certificate.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// What a route without `allow` does on this listener.
    #[serde(default)]
    pub default_authz: DefaultAuthz,
}

/// One `[[listeners.tls.sni]]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SniCertSection {
    /// Server names this certificate is for: exact, or `*.suffix`.
    pub server_names: Vec<String>,
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Client certificate policy of a TLS listener.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// Clients are not asked for a certificate.
    #[default]
    None,
    /// A certificate is asked for and verified when given; clients without one get in anonymous.
    Optional,
    /// A valid certificate is needed to complete the handshake.
    Require,
}

/// What a route without `allow` does.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum DefaultAuthz {
    /// Every caller may use it.
    #[default]
    Allow,
    /// Nobody may use it.
    Deny,
}

/// One `[[upstreams]]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    /// Name splits refer to.
    pub name: String,
    /// `"IP:port"` or `"host:port"` strings, or `{ address, weight, priority }` tables.
    #[serde(default)]
    pub endpoints: Vec<EndpointEntry>,
    /// Endpoints from DNS, instead of or beside `endpoints`.
    pub discovery: Option<crate::discovery::DiscoveryEntry>,
    /// Upstreams that take this one's requests, in order, while it has no eligible endpoint.
    #[serde(default)]
    pub failover: Vec<String>,
    /// `"prefer_local"`: keep traffic in `[server].zone` while enough of it is eligible.
    pub locality: Option<crate::discovery::Locality>,
    /// Share of the local endpoints that must be eligible to keep traffic local (default 50).
    pub min_local_percent: Option<u32>,
    /// Load-balancing algorithm.
    #[serde(default)]
    pub balance: Balance,
    /// What `consistent_hash` hashes: `client_ip`, `header:<name>` or `path`.
    pub hash_key: Option<String>,
    /// TCP connect timeout (default 1s).
    pub connect_timeout: Option<Duration>,
    /// Protocol spoken to the endpoints.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// How long an idle pooled connection is kept (default 60s).
    pub idle_timeout: Option<Duration>,
    /// Longest wait for the upstream to send anything (default 60s): `504` past it.
    pub read_timeout: Option<Duration>,
    /// Active health checks; none when absent.
    pub health_check: Option<HealthCheckSection>,
    /// Concurrency limits; Envoy-like defaults when absent.
    pub circuit_breaker: Option<CircuitBreakerSection>,
    /// Passive ejection of failing endpoints; off when absent.
    pub outlier_detection: Option<OutlierDetectionSection>,
    /// TLS to the endpoints; plain when absent.
    pub tls: Option<UpstreamTlsSection>,
}

/// `[upstreams.tls]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsSection {
    /// Server name sent and verified; the endpoint's IP address when absent.
    pub sni: Option<String>,
    /// PEM bundle of the CAs the upstream's certificate must chain to; the system's roots when
    /// absent.
    pub ca: Option<PathBuf>,
    /// PEM client certificate chain, for upstreams that require one.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
}

/// `[upstreams.health_check]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSection {
    /// `"http"` (a GET of `path`) or `"tcp"` (a connect); `http` when `path` is given.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// HTTP GET path; a TCP connect check when absent.
    pub path: Option<String>,
    /// Time between checks (default 5s).
    pub interval: Option<Duration>,
    /// Time a check may take (default 1s).
    pub timeout: Option<Duration>,
    /// Passing checks in a row to become healthy (default 2).
    pub healthy_threshold: Option<u32>,
    /// Failing checks in a row to become unhealthy (default 3).
    pub unhealthy_threshold: Option<u32>,
}

/// `[upstreams.circuit_breaker]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerSection {
    /// Upstream connections in use at once (default 1024).
    pub max_connections: Option<u32>,
    /// Requests waiting for a connection at once (default 1024).
    pub max_pending: Option<u32>,
    /// Requests in flight at once (default 1024).
    pub max_requests: Option<u32>,
    /// Retries in flight at once (default 1024).
    pub max_retries: Option<u32>,
}

/// `[upstreams.outlier_detection]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetectionSection {
    /// Failures in a row that eject an endpoint (default 5).
    pub consecutive_failures: Option<u32>,
    /// Ejection time, multiplied by the number of ejections (default 30s).
    pub base_ejection: Option<Duration>,
    /// Longest ejection (default 300s).
    pub max_ejection: Option<Duration>,
    /// Most of the pool ejected at once, in percent (default 50).
    pub max_ejection_percent: Option<u32>,
}

/// An endpoint as written: a bare address or a table with a weight.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointEntry {
    /// `IP:port`, or `host:port` resolved in DNS.
    pub address: String,
    /// Relative weight, 1 to 256 (default 1).
    pub weight: u32,
    /// Priority tier: the lowest tier with an eligible endpoint takes the traffic (default 0).
    pub priority: u32,
    /// The zone it runs in.
    pub zone: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointTable {
    address: String,
    #[serde(default = "default_weight")]
    weight: u32,
    #[serde(default)]
    priority: u32,
    zone: Option<String>,
}

fn default_weight() -> u32 {
    1
}

impl<'de> Deserialize<'de> for EndpointEntry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EndpointVisitor;
        impl<'de> Visitor<'de> for EndpointVisitor {
            type Value = EndpointEntry;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    r#"an address such as "10.0.0.1:8080" or "orders-1.internal:8080", or { address = "…", weight = N, priority = N, zone = "…" }"#,
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<EndpointEntry, E> {
                Ok(EndpointEntry {
                    address: v.to_owned(),
                    weight: 1,
                    priority: 0,
                    zone: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<EndpointEntry, A::Error> {
                let table = EndpointTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(EndpointEntry {
                    address: table.address,
                    weight: table.weight,
                    priority: table.priority,
                    zone: table.zone,
                })
            }
        }
        deserializer.deserialize_any(EndpointVisitor)
    }
}

/// Load-balancing algorithms.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Weighted round robin, exact over every cycle of the weights.
    #[default]
    RoundRobin,
    /// Power of two choices on in-flight requests divided by weight.
    LeastRequest,
    /// Weighted random.
    Random,
    /// Ketama ring on `hash_key`.
    ConsistentHash,
}

impl Balance {
    /// The name as written in the policy.
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::LeastRequest => "least_request",
            Balance::Random => "random",
            Balance::ConsistentHash => "consistent_hash",
        }
    }
}

/// Protocol the gateway speaks to an upstream.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keepalive.
    #[default]
    Http1,
    /// HTTP/2 over cleartext with prior knowledge (gRPC services).
    H2c,
}

/// One `[[routes]]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    /// Unique name, used in metrics, logs and `/explain`.
    pub name: String,
    /// Listeners this route applies to; every listener when absent.
    pub listeners: Option<Vec<String>>,
    /// What a request must look like to take this route.
    #[serde(rename = "match", default)]
    pub matcher: MatchSection,
    /// Weighted upstreams; none with `redirect` or `respond`.
    #[serde(default)]
    pub split: Vec<SplitEntry>,
    /// Send the client elsewhere instead of to an upstream.
    pub redirect: Option<crate::direct::RedirectSection>,
    /// Answer with a fixed status and body instead of an upstream's.
    pub respond: Option<crate::direct::RespondSection>,
    /// Makes the split sticky: `header:<name>`, `client_ip` or `path`.
    pub split_key: Option<String>,
    /// Whether a side whose upstream (with its failovers) has no eligible endpoint gives its
    /// share to the other sides (default true).
    pub split_fallback: Option<bool>,
    /// Time limits.
    pub timeouts: Option<TimeoutsSection>,
    /// Retry policy; no retries when absent.
    pub retry: Option<RetrySection>,
    /// Header rewriting.
    pub headers: Option<HeaderRulesSection>,
    /// Fault injection.
    pub fault: Option<FaultSection>,
    /// Token-bucket rate limit.
    pub rate_limit: Option<RateLimitSection>,
    /// Caller identities allowed; a trailing `/*` makes an entry a prefix; `jwt:sub:<subject>`
    /// and `jwt:claim:<name>=<value>` name a verified token's claims.
    pub allow: Option<Vec<String>>,
    /// Largest request body accepted (default: no limit); larger ones get `413`.
    pub max_request_body: Option<ByteSize>,
    /// The path and `Host` the upstream sees.
    pub rewrite: Option<crate::rewrite::RewriteSection>,
    /// CORS: preflights answered by the gateway, headers added for allowed origins.
    pub cors: Option<crate::cors::CorsSection>,
    /// Response compression (overrides the listener's).
    pub compress: Option<crate::compress::CompressSection>,
    /// Copies of requests sent to other upstreams, fire and forget.
    #[serde(default)]
    pub mirror: Vec<crate::mirror::MirrorSection>,
    /// Bearer-token (JWT) authentication.
    pub jwt: Option<crate::jwt::JwtSection>,
}

/// `[routes.rate_limit]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    /// Refill rate of each bucket; may be fractional (`0.5` is one request every 2 s).
    pub requests_per_second: f64,
    /// Bucket capacity: requests admitted at once after a quiet spell (default: one second's
    /// worth, at least 1).
    pub burst: Option<u32>,
    /// What a bucket belongs to: `client_ip` (the default), `identity`, `header:<name>` or
    /// `route`.
    pub key: Option<String>,
    /// `local` (each gateway alone, the default) or `global` (shared through
    /// `[rate_limit_store]`).
    #[serde(default)]
    pub scope: RateLimitScope,
    /// `enforce` (the default) or `shadow` (count would-be refusals, refuse nothing).
    #[serde(default)]
    pub mode: RateLimitMode,
    /// Whether admitted responses carry the `RateLimit` headers too (default false; refusals
    /// always do).
    pub headers_on_success: Option<bool>,
    /// Most keys a local limit tracks at once (default 100000); idle, full buckets are
    /// evicted first.
    pub max_keys: Option<u32>,
}

/// Where a rate limit's buckets live.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, Hash)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitScope {
    /// In this process.
    #[default]
    Local,
    /// In `[rate_limit_store]`, shared by every gateway that uses it.
    Global,
}

/// What a rate limit does with a request over the limit.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, Hash)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitMode {
    /// Refuse it with 429.
    #[default]
    Enforce,
    /// Count and log it, and let it through.
    Shadow,
}

impl RateLimitMode {
    /// The name as written in the policy.
    pub fn as_str(self) -> &'static str {
        match self {
            RateLimitMode::Enforce => "enforce",
            RateLimitMode::Shadow => "shadow",
        }
    }
}

/// `[rate_limit_store]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitStoreSection {
    /// `redis://[user:password@]host:port[/db]`.
    pub redis: String,
    /// What a global limit does when the store fails: `allow` (the default) or `deny`.
    #[serde(default)]
    pub on_error: StoreErrorAction,
    /// How long one decision may wait for the store (default 50ms).
    pub timeout: Option<Duration>,
    /// Connections to the store, each multiplexed (default 4).
    pub pool_size: Option<u32>,
    /// Prefix of every key the gateway writes (default `meshgate`).
    pub key_prefix: Option<String>,
}

/// What a global rate limit does when its store fails.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum StoreErrorAction {
    /// Admit the request (fail open).
    #[default]
    Allow,
    /// Refuse it with 503 `rate-limit-unavailable` (fail closed).
    Deny,
}

/// `[routes.timeouts]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsSection {
    /// The whole request, every try included.
    pub request: Option<Duration>,
}

/// `[routes.retry]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetrySection {
    /// Retries after the first try (as Istio's `attempts`).
    pub attempts: u32,
    /// Conditions: `connect-failure`, `refused`, `reset`, `5xx`, `gateway-error`, or a status code.
    pub on: Option<Vec<RetryCondition>>,
    /// Time limit of each try.
    pub per_try_timeout: Option<Duration>,
    /// Base backoff between tries, with jitter (default 25ms).
    pub backoff: Option<Duration>,
    /// Retries allowed over 10 s, in percent of requests (default 20).
    pub budget_percent: Option<u32>,
    /// Retries per second always allowed (default 10).
    pub min_retries_per_second: Option<u32>,
    /// Retry non-idempotent requests after their body was sent (default false).
    pub retry_non_idempotent: Option<bool>,
}

/// One retry condition as written: a name or a status code.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum RetryCondition {
    /// A named condition.
    Name(String),
    /// A status code.
    Code(u16),
}

/// `[routes.headers]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct HeaderRulesSection {
    /// Set on the request to the upstream, replacing any value.
    #[serde(default)]
    pub request_set: BTreeMap<String, String>,
    /// Added to the request to the upstream.
    #[serde(default)]
    pub request_add: BTreeMap<String, String>,
    /// Removed from the request to the upstream.
    #[serde(default)]
    pub request_remove: Vec<String>,
    /// Set on the response to the client.
    #[serde(default)]
    pub response_set: BTreeMap<String, String>,
    /// Added to the response to the client.
    #[serde(default)]
    pub response_add: BTreeMap<String, String>,
    /// Removed from the response to the client.
    #[serde(default)]
    pub response_remove: Vec<String>,
}

/// `[routes.fault]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FaultSection {
    /// Delay added to delayed requests.
    pub delay: Option<Duration>,
    /// Share of requests delayed, in percent.
    pub delay_percent: Option<f64>,
    /// Status of aborted requests.
    pub abort_status: Option<u16>,
    /// Share of requests aborted, in percent.
    pub abort_percent: Option<f64>,
}

/// `[routes.match]`; every condition present must hold.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct MatchSection {
    /// Exact host or a `*.suffix` wildcard; case-insensitive, port ignored.
    pub host: Option<String>,
    /// Path starts with this.
    pub path_prefix: Option<String>,
    /// Path equals this.
    pub path_exact: Option<String>,
    /// Path matches this regular expression (anchored at both ends).
    pub path_regex: Option<String>,
    /// Allowed methods; any method when absent.
    pub methods: Option<Vec<String>>,
    /// Header conditions: a plain string is the exact value; a table has one of `exact`,
    /// `prefix`, `regex` and `present`.
    #[serde(default)]
    pub headers: BTreeMap<String, crate::matching::HeaderConditionSection>,
    /// Query parameters that must be present with exactly this (decoded) value.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// Client addresses (after `trusted_proxies`) as CIDR blocks or single addresses.
    pub source: Option<Vec<String>>,
}

/// One `[[routes.split]]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SplitEntry {
    /// Name of an upstream.
    pub upstream: String,
    /// Relative weight, 0 to 10000 (default 1).
    #[serde(default = "default_weight")]
    pub weight: u32,
}
