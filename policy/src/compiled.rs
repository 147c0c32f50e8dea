//! The compiled, immutable policy snapshot that the data plane queries.
//!
//! Everything here is resolved once when a policy is loaded: names become indexes, strings
//! become addresses and matchers, weights become schedules. Matching a request allocates nothing.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use regex::Regex;

pub use crate::schema::{
    Balance, ClientAuth, DefaultAuthz, RateLimitMode, RateLimitScope, StoreErrorAction,
    UpstreamProtocol,
};

/// A validated, compiled policy.
#[derive(Debug)]
pub struct CompiledPolicy {
    /// `[server]`.
    pub server: ServerSettings,
    /// `[admin]`.
    pub admin: AdminSettings,
    /// `[telemetry]`.
    pub telemetry: TelemetrySettings,
    /// Listeners in file order.
    pub listeners: Vec<Listener>,
    /// Upstreams in file order.
    pub upstreams: Vec<UpstreamSpec>,
    /// Routes in file order.
    pub routes: Vec<Route>,
    /// For each listener (by index), the routes that apply to it, in file order.
    pub routes_by_listener: Vec<Vec<usize>>,
    /// `[server].trusted_proxies`: peers whose `x-forwarded-for` is believed. Unlike the rest
    /// of `[server]` it applies on reload.
    pub trusted_proxies: Vec<IpNet>,
    /// `[rate_limit_store]`, when present.
    pub rate_limit_store: Option<RateLimitStoreSettings>,
    /// `[discovery]`, defaults filled in.
    pub discovery: crate::discovery::DiscoverySettings,
    /// `[server].zone`. Unlike the rest of `[server]` it applies on reload.
    pub zone: Option<String>,
    /// `[fleet]`, when the node is part of a fleet (static).
    pub fleet: Option<crate::fleet::FleetSettings>,
    /// Each upstream's `failover` (by index, parallel to `upstreams`). Kept out of
    /// [`UpstreamSpec`] so that changing the chain does not reset the pool.
    pub failover: Vec<Vec<usize>>,
    /// `[[tcp_routes]]` in file order.
    pub tcp_routes: Vec<crate::tcp::TcpRoute>,
    /// For each listener (by index), the TCP routes that apply to it, in file order.
    pub tcp_routes_by_listener: Vec<Vec<usize>>,
}

impl CompiledPolicy {
    /// The TCP route a connection on `listener` with server name `sni` takes: the first that
    /// applies to the listener and matches the name.
    pub fn tcp_route_for(&self, listener: usize, sni: Option<&str>) -> Option<usize> {
        self.tcp_routes_by_listener
            .get(listener)?
            .iter()
            .copied()
            .find(|&i| self.tcp_routes[i].matches_sni(sni))
    }

    /// A route's `listeners` (indexes) by name, when it names them.
    pub fn listener_names(&self, indexes: Option<&[usize]>) -> Option<Vec<String>> {
        indexes.map(|indexes| {
            indexes
                .iter()
                .map(|&i| self.listeners[i].name.clone())
                .collect()
        })
    }
}

/// `[rate_limit_store]`: the Redis that `scope = "global"` limits share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitStoreSettings {
    /// The `redis://` URL.
    pub redis_url: String,
    /// What a global limit does when the store fails.
    pub on_error: StoreErrorAction,
    /// How long one decision may wait for the store.
    pub timeout: Duration,
    /// Multiplexed connections to the store.
    pub pool_size: u32,
    /// Prefix of every key written.
    pub key_prefix: String,
}

/// What a rate limit's buckets belong to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LimitKey {
    /// The client's address ([`CompiledPolicy::trusted_proxies`] decides which one).
    ClientIp,
    /// The caller's certificate identity; callers without one share a bucket.
    Identity,
    /// A request header's value (lower-case name); requests without it share a bucket.
    Header(String),
    /// The whole route: one bucket.
    Route,
}

impl LimitKey {
    /// Parses `client_ip`, `identity`, `header:<name>` or `route`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "client_ip" => Ok(LimitKey::ClientIp),
            "identity" => Ok(LimitKey::Identity),
            "route" => Ok(LimitKey::Route),
            _ => match text.strip_prefix("header:") {
                Some(name) if is_header_name(name) => Ok(LimitKey::Header(name.to_ascii_lowercase())),
                Some(name) => Err(format!("{name:?} is not a valid header name")),
                None => Err(format!(
                    "unknown key {text:?}: expected \"client_ip\", \"identity\", \"header:<name>\" or \"route\""
                )),
            },
        }
    }
}

/// A route's token-bucket rate limit.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitSpec {
    /// Refill rate of each bucket.
    pub requests_per_second: f64,
    /// Bucket capacity.
    pub burst: u32,
    /// What a bucket belongs to.
    pub key: LimitKey,
    /// Local or shared through the store.
    pub scope: RateLimitScope,
    /// Enforce or shadow.
    pub mode: RateLimitMode,
    /// Whether admitted responses carry the `RateLimit` headers.
    pub headers_on_success: bool,
    /// Most keys a local limit tracks.
    pub max_keys: u32,
}

/// Process-wide settings; static.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// Worker threads.
    pub threads: usize,
    /// Drain time on shutdown and upgrade.
    pub grace_period: Duration,
    /// How long a drain keeps accepting after readiness fails.
    pub drain_delay: Duration,
    /// How long an idle HTTP/1.1 client connection is kept between requests.
    pub client_idle_timeout: Duration,
    /// Whether request paths are normalized before routing.
    pub path_normalization: crate::schema::PathNormalization,
    /// How long a client has to send a whole request head.
    pub client_header_timeout: Duration,
    /// Longest pause between two reads of a request body.
    pub client_body_timeout: Duration,
    /// Largest request head in bytes (request line and header fields); `431` over it.
    pub max_request_header_size: usize,
    /// Most header fields in a request; `431` over it.
    pub max_request_headers: usize,
    /// Longest request line (method and target) in bytes; `414` over it.
    pub max_uri_size: usize,
    /// Largest HTTP/1.1 response head an upstream may send, in bytes; `502` over it.
    pub max_upstream_response_header_size: usize,
    /// Whether HTTP/1.1 header names keep the case they arrived in, both ways.
    pub preserve_header_case: bool,
}

/// The admin API's settings; static.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSettings {
    /// Where the admin API listens.
    pub listen: SocketAddr,
    /// The bearer token's file.
    pub token_file: PathBuf,
    /// Whether `token_file` was written in the policy (as opposed to the default beside it).
    pub token_file_explicit: bool,
    /// Applied policies kept for rollback.
    pub history: usize,
    /// Host names the API answers besides IP literals and `localhost` (lower-case).
    pub allowed_hosts: Vec<String>,
}

/// Where access log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    /// No access log.
    Off,
    /// Standard output.
    Stdout,
    /// Appended to a file.
    File(PathBuf),
}

/// `[telemetry]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetrySettings {
    /// Access log destination.
    pub access_log: AccessLogTarget,
    /// Trace export; `None` when `otlp_endpoint` is not set.
    pub tracing: Option<TraceSettings>,
    /// The gateway's log filter (`info`, `debug`, `meshgate=debug,pingora=warn`, ...).
    pub log_level: String,
    /// How the gateway's log lines are written.
    pub log_format: LogFormat,
    /// The metrics-only listener (static).
    pub metrics_listen: Option<SocketAddr>,
}

/// How the gateway's own log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line of text: time, level, target, message and fields.
    #[default]
    Text,
    /// One JSON object a line: `ts`, `level`, `target`, `msg` and the fields.
    Json,
}

/// Where and how spans are exported.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    /// The OTLP/HTTP traces URL (the endpoint with `/v1/traces`).
    pub traces_url: String,
    /// Share of new traces sampled; a caller's sampling decision is always followed.
    pub sample_ratio: f64,
    /// `service.name` of the spans.
    pub service_name: String,
}

// The ratio is validated to be a finite number in [0, 1], so equality is total.
impl Eq for TraceSettings {}

/// A listener. Its name, address and whether it speaks TLS are static; its certificates,
/// client authentication and `default_authz` apply on reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Its name.
    pub name: String,
    /// Its bind address.
    pub addr: SocketAddr,
    /// TLS termination.
    pub tls: Option<ListenerTls>,
    /// What a route without `allow` does here.
    pub default_authz: DefaultAuthz,
    /// Most client connections served at once.
    pub max_connections: u32,
    /// Whether a client's well-formed `x-request-id` is kept.
    pub trust_request_id: bool,
    /// Response compression for routes without their own.
    pub compress: Option<crate::compress::Compress>,
    /// What it speaks (static).
    pub protocol: crate::tcp::ListenerProtocol,
}

/// A certificate chain and its key, as files.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertFiles {
    /// PEM chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// A TLS listener's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    /// Served when no SNI entry matches.
    pub default_cert: CertFiles,
    /// `(server names, certificate)`, in file order; names are lower-case, exact or `*.suffix`.
    pub sni: Vec<(Vec<String>, CertFiles)>,
    /// CAs of client certificates.
    pub client_ca: Option<PathBuf>,
    /// Whether clients are asked for a certificate.
    pub client_auth: ClientAuth,
}

impl ListenerTls {
    /// Every file the listener reads, for the file watcher.
    pub fn files(&self) -> Vec<&PathBuf> {
        let mut files = vec![&self.default_cert.cert, &self.default_cert.key];
        for (_, cert) in &self.sni {
            files.extend([&cert.cert, &cert.key]);
        }
        files.extend(&self.client_ca);
        files
    }
}

/// TLS from the gateway to an upstream's endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamTls {
    /// Server name sent and verified; the endpoint's address when `None`.
    pub sni: Option<String>,
    /// CAs of the upstream's certificate; the system's roots when `None`.
    pub ca: Option<PathBuf>,
    /// The gateway's client certificate.
    pub client_cert: Option<CertFiles>,
}

/// An entry of a route's `allow` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityPattern {
    /// This identity.
    Exact(String),
    /// Any identity starting with this (the entry without its trailing `*`).
    Prefix(String),
    /// A verified JWT whose `sub` is this (`jwt:sub:alice`).
    JwtSubject(String),
    /// A verified JWT whose claim `name` is `value`, or is a list holding it
    /// (`jwt:claim:team=payments`).
    JwtClaim {
        /// The claim.
        name: String,
        /// The value wanted.
        value: String,
    },
}

impl IdentityPattern {
    /// Whether `identity` (the client certificate's) matches; JWT entries never do.
    pub fn matches(&self, identity: &str) -> bool {
        match self {
            IdentityPattern::Exact(exact) => identity == exact,
            IdentityPattern::Prefix(prefix) => identity.starts_with(prefix.as_str()),
            IdentityPattern::JwtSubject(_) | IdentityPattern::JwtClaim { .. } => false,
        }
    }

    /// Whether a verified token's claims match; certificate entries never do. A claim's
    /// string, number or boolean value is compared as text; a list matches when one of its
    /// items does.
    pub fn matches_claims(&self, claims: &serde_json::Map<String, serde_json::Value>) -> bool {
        let (name, wanted) = match self {
            IdentityPattern::JwtSubject(subject) => ("sub", subject.as_str()),
            IdentityPattern::JwtClaim { name, value } => (name.as_str(), value.as_str()),
            IdentityPattern::Exact(_) | IdentityPattern::Prefix(_) => return false,
        };
        let scalar_is = |value: &serde_json::Value| match value {
            serde_json::Value::String(text) => text == wanted,
            serde_json::Value::Number(number) => number.to_string() == wanted,
            serde_json::Value::Bool(flag) => flag.to_string() == wanted,
            _ => false,
        };
        match claims.get(name) {
            Some(serde_json::Value::Array(items)) => items.iter().any(scalar_is),
            Some(value) => scalar_is(value),
            None => false,
        }
    }

    /// Whether this entry names a JWT subject or claim.
    pub fn is_jwt(&self) -> bool {
        matches!(
            self,
            IdentityPattern::JwtSubject(_) | IdentityPattern::JwtClaim { .. }
        )
    }
}

/// What a sticky split or a consistent hash keys on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestKey {
    /// The client's address (without port).
    ClientIp,
    /// A request header's value (lower-case name).
    Header(String),
    /// The request path.
    Path,
}

impl RequestKey {
    /// Parses `client_ip`, `path` or `header:<name>`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "client_ip" => Ok(RequestKey::ClientIp),
            "path" => Ok(RequestKey::Path),
            _ => match text.strip_prefix("header:") {
                Some(name) if is_header_name(name) => {
                    Ok(RequestKey::Header(name.to_ascii_lowercase()))
                }
                Some(name) => Err(format!("{name:?} is not a valid header name")),
                None => Err(format!(
                    "unknown key {text:?}: expected \"client_ip\", \"path\" or \"header:<name>\""
                )),
            },
        }
    }
}

/// One endpoint of an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    /// Its address.
    pub addr: SocketAddr,
    /// Its relative weight (1 to 256).
    pub weight: u32,
    /// Its priority tier (0 first).
    pub priority: u32,
    /// The zone it runs in.
    pub zone: Option<String>,
}

/// A compiled upstream. Two specs that compare equal describe the same pool, so the gateway
/// keeps the pool's runtime state across a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSpec {
    /// Its name.
    pub name: String,
    /// Endpoints written as addresses, in file order.
    pub endpoints: Vec<EndpointSpec>,
    /// Endpoints found in DNS: host names written as endpoints, then `discovery`.
    pub names: Vec<crate::discovery::NamedSource>,
    /// Whether traffic stays in the gateway's zone.
    pub locality: Option<crate::discovery::LocalitySpec>,
    /// Load-balancing algorithm.
    pub balance: Balance,
    /// What `consistent_hash` hashes.
    pub hash_key: Option<RequestKey>,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Protocol spoken to the endpoints.
    pub protocol: UpstreamProtocol,
    /// Endpoint indexes in smooth weighted round-robin order, one full cycle of the weights.
    pub schedule: Vec<u32>,
    /// How long an idle pooled connection is kept.
    pub idle_timeout: Duration,
    /// Longest wait for the upstream to send the next bytes of its answer.
    pub read_timeout: Duration,
    /// Active health checks.
    pub health_check: Option<HealthCheckSpec>,
    /// Concurrency limits.
    pub circuit_breaker: BreakerSpec,
    /// Passive ejection of failing endpoints.
    pub outlier_detection: Option<OutlierSpec>,
    /// TLS to the endpoints.
    pub tls: Option<UpstreamTls>,
}

/// Active health check settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckSpec {
    /// HTTP GET path; a TCP connect check when `None`.
    pub path: Option<String>,
    /// Time between checks.
    pub interval: Duration,
    /// Time one check may take.
    pub timeout: Duration,
    /// Passing checks in a row to become healthy.
    pub healthy_threshold: u32,
    /// Failing checks in a row to become unhealthy.
    pub unhealthy_threshold: u32,
}

/// Circuit breaker limits of one upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSpec {
    /// Connections in use at once.
    pub max_connections: u32,
    /// Requests waiting for a connection at once.
    pub max_pending: u32,
    /// Requests in flight at once.
    pub max_requests: u32,
    /// Retries in flight at once.
    pub max_retries: u32,
}

/// Outlier detection settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierSpec {
    /// Failures in a row that eject an endpoint.
    pub consecutive_failures: u32,
    /// Ejection time per ejection so far.
    pub base_ejection: Duration,
    /// Longest ejection.
    pub max_ejection: Duration,
    /// Most of the pool ejected at once, in percent.
    pub max_ejection_percent: u32,
}

/// When a failed try is retried.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// Any failure to connect, timeouts included.
    pub connect_failure: bool,
    /// The endpoint refused the connection (or an HTTP/2 stream).
    pub refused: bool,
    /// The connection broke after it was made, or a read timed out.
    pub reset: bool,
    /// Any 5xx response.
    pub server_error: bool,
    /// 502, 503 or 504.
    pub gateway_error: bool,
    /// These status codes.
    pub codes: Vec<u16>,
}

impl RetryOn {
    /// Whether a response with `status` is retried.
    pub fn status(&self, status: u16) -> bool {
        (self.server_error && (500..600).contains(&status))
            || (self.gateway_error && matches!(status, 502..=504))
            || self.codes.contains(&status)
    }
}

/// A route's retry policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySpec {
    /// Retries after the first try.
    pub retries: u32,
    /// Conditions.
    pub on: RetryOn,
    /// Time limit of each try.
    pub per_try_timeout: Option<Duration>,
    /// Base backoff.
    pub backoff: Duration,
    /// Retries allowed over 10 s, in percent of requests.
    pub budget_percent: u32,
    /// Retries per second always allowed.
    pub min_retries_per_second: u32,
    /// Retry non-idempotent requests whose body was sent.
    pub non_idempotent: bool,
}

/// Header rewriting of a route; names are lower-case and valid, values valid.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderRules {
    /// Set on the upstream request.
    pub request_set: Vec<(String, String)>,
    /// Added to the upstream request.
    pub request_add: Vec<(String, String)>,
    /// Removed from the upstream request.
    pub request_remove: Vec<String>,
    /// Set on the response.
    pub response_set: Vec<(String, String)>,
    /// Added to the response.
    pub response_add: Vec<(String, String)>,
    /// Removed from the response.
    pub response_remove: Vec<String>,
}

/// Fault injection of a route.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultSpec {
    /// Delay and the share of requests (0 to 100) it applies to.
    pub delay: Option<(Duration, f64)>,
    /// Abort status and the share of requests (0 to 100) aborted.
    pub abort: Option<(u16, f64)>,
}

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    /// Its name.
    pub name: String,
    /// Listener indexes it applies to; `None` means every listener.
    pub listeners: Option<Vec<usize>>,
    /// Its match conditions.
    pub matcher: RouteMatcher,
    /// Upstream indexes and weights.
    pub splits: Vec<Split>,
    /// Split indexes in smooth weighted round-robin order, one full cycle of the weights.
    pub split_schedule: Vec<u32>,
    /// Makes the split sticky.
    pub split_key: Option<RequestKey>,
    /// Whether a dead side's share goes to the other sides.
    pub split_fallback: bool,
    /// The gateway's own answer instead of a split (`redirect`, `respond`).
    pub direct: Option<crate::direct::DirectAnswer>,
    /// Time limit of the whole request.
    pub timeout: Option<Duration>,
    /// Retry policy.
    pub retry: Option<RetrySpec>,
    /// Header rewriting.
    pub headers: HeaderRules,
    /// Fault injection.
    pub fault: Option<FaultSpec>,
    /// Rate limit.
    pub rate_limit: Option<RateLimitSpec>,
    /// Caller identities allowed; `None` leaves it to the listener's `default_authz`.
    pub allow: Option<Vec<IdentityPattern>>,
    /// Largest request body in bytes; `None` for no limit.
    pub max_request_body: Option<u64>,
    /// The path and `Host` the upstream sees.
    pub rewrite: Option<crate::rewrite::Rewrite>,
    /// CORS rules.
    pub cors: Option<crate::cors::Cors>,
    /// Response compression (overrides the listener's).
    pub compress: Option<crate::compress::Compress>,
    /// Mirrors.
    pub mirrors: Vec<crate::mirror::Mirror>,
    /// Bearer-token authentication.
    pub jwt: Option<crate::jwt::Jwt>,
}

/// One weighted target of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Upstream index.
    pub upstream: usize,
    /// Relative weight.
    pub weight: u32,
}

/// How a route matches the host.
#[derive(Debug, Clone)]
pub enum HostMatch {
    /// Equal, ignoring case (stored lower-case).
    Exact(String),
    /// Ends with this suffix (stored lower-case, with its leading dot), with at least one
    /// character before it.
    Suffix(String),
}

impl HostMatch {
    /// Whether `host` (without a port) matches, ignoring case.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Exact(expected) => host.eq_ignore_ascii_case(expected),
            HostMatch::Suffix(suffix) => {
                host.len() > suffix.len()
                    && host.is_char_boundary(host.len() - suffix.len())
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        }
    }
}

/// How a route matches the path.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// Starts with.
    Prefix(String),
    /// Equals.
    Exact(String),
    /// Matches the whole path.
    Regex(Regex),
}

/// A route's compiled conditions.
#[derive(Debug, Clone, Default)]
pub struct RouteMatcher {
    /// Host condition.
    pub host: Option<HostMatch>,
    /// Path condition.
    pub path: Option<PathMatch>,
    /// Allowed methods (upper-case); empty means any.
    pub methods: Vec<String>,
    /// Header conditions by lower-case name.
    pub headers: Vec<(String, crate::matching::HeaderTest)>,
    /// Required query parameters and their exact decoded values.
    pub query: Vec<(String, String)>,
    /// Client address blocks; any address when empty.
    pub source: Vec<IpNet>,
    /// Whether a CORS preflight (`OPTIONS` with `Access-Control-Request-Method`) is matched
    /// as the request it announces (routes with `cors`).
    pub preflight_as_announced: bool,
}

/// What the matcher needs to know about a request.
pub trait RequestView {
    /// The method, such as `GET`.
    fn method(&self) -> &str;
    /// The host (from `Host` or the URI authority), possibly with a port.
    fn host(&self) -> Option<&str>;
    /// The path, without the query.
    fn path(&self) -> &str;
    /// A header's value by lower-case name.
    fn header(&self, name: &str) -> Option<&[u8]>;
    /// The query string, without the `?`.
    fn query(&self) -> Option<&str>;
    /// The client's address, after `trusted_proxies`.
    fn source(&self) -> Option<std::net::IpAddr>;
}

/// Why a route did not match a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// The route does not apply to the listener.
    Listener,
    /// The method is not among the route's methods.
    Method,
    /// The host differs.
    Host,
    /// The path differs.
    Path,
    /// A header condition failed; the header's name.
    Header(String),
    /// A required query parameter is missing or differs; its name.
    Query(String),
    /// The client's address is outside the route's `source` blocks.
    Source,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::Listener => f.write_str("route does not apply to this listener"),
            Mismatch::Method => f.write_str("method not allowed by the route"),
            Mismatch::Host => f.write_str("host does not match"),
            Mismatch::Path => f.write_str("path does not match"),
            Mismatch::Header(name) => write!(f, "header {name:?} fails its condition"),
            Mismatch::Query(name) => write!(f, "query parameter {name:?} missing or different"),
            Mismatch::Source => f.write_str("client address outside the route's source"),
        }
    }
}

/// Strips a port from a host (`example.com:8080`, `[::1]:8080`).
pub fn host_without_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

impl RouteMatcher {
    /// Checks a request against the conditions, cheapest first.
    pub fn check(&self, request: &impl RequestView) -> Result<(), Mismatch> {
        if !self.methods.is_empty() {
            let mut method = request.method();
            if self.preflight_as_announced && method == "OPTIONS" {
                if let Some(announced) = request.header("access-control-request-method") {
                    method = std::str::from_utf8(announced).unwrap_or(method);
                }
            }
            if !self.methods.iter().any(|m| m == method) {
                return Err(Mismatch::Method);
            }
        }
        if let Some(host_match) = &self.host {
            let host = request.host().map(host_without_port).unwrap_or("");
            if !host_match.matches(host) {
                return Err(Mismatch::Host);
            }
        }
        if let Some(path_match) = &self.path {
            let path = request.path();
            let ok = match path_match {
                PathMatch::Prefix(prefix) => path.starts_with(prefix.as_str()),
                PathMatch::Exact(exact) => path == exact,
                PathMatch::Regex(regex) => regex.is_match(path),
            };
            if !ok {
                return Err(Mismatch::Path);
            }
        }
        for (name, test) in &self.headers {
            if !test.passes(request.header(name)) {
                return Err(Mismatch::Header(name.clone()));
            }
        }
        for (name, value) in &self.query {
            let found = request
                .query()
                .and_then(|query| crate::matching::query_value(query, name));
            if found.as_deref() != Some(value.as_str()) {
                return Err(Mismatch::Query(name.clone()));
            }
        }
        if !self.source.is_empty() {
            let inside = request
                .source()
                .is_some_and(|ip| self.source.iter().any(|block| block.contains(&ip)));
            if !inside {
                return Err(Mismatch::Source);
            }
        }
        Ok(())
    }
}

/// One route's verdict in an explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The request takes this route.
    Matched,
    /// The route was tried and did not match.
    Skipped(Mismatch),
    /// An earlier route matched first.
    NotReached,
}

impl CompiledPolicy {
    /// The listener index for a name.
    pub fn listener_index(&self, name: &str) -> Option<usize> {
        self.listeners.iter().position(|l| l.name == name)
    }

    /// The index of the first route on `listener` that matches the request.
    pub fn match_route(&self, listener: usize, request: &impl RequestView) -> Option<usize> {
        self.routes_by_listener
            .get(listener)?
            .iter()
            .copied()
            .find(|&index| self.routes[index].matcher.check(request).is_ok())
    }

    /// Every route's verdict for a request, in match order. With `listener = None` the
    /// listener restriction of each route is ignored.
    pub fn explain(&self, listener: Option<usize>, request: &impl RequestView) -> Vec<Verdict> {
        let mut matched = false;
        self.routes
            .iter()
            .map(|route| {
                if matched {
                    return Verdict::NotReached;
                }
                if let (Some(listener), Some(allowed)) = (listener, &route.listeners) {
                    if !allowed.contains(&listener) {
                        return Verdict::Skipped(Mismatch::Listener);
                    }
                }
                match route.matcher.check(request) {
                    Ok(()) => {
                        matched = true;
                        Verdict::Matched
                    }
                    Err(mismatch) => Verdict::Skipped(mismatch),
                }
            })
            .collect()
    }

    /// Names of the static parts (which take effect on restart) that differ from `other`.
    pub fn static_changes(&self, other: &CompiledPolicy) -> Vec<&'static str> {
        self.static_parts().changes(&other.static_parts())
    }

    /// The parts of this policy that take effect only when the process starts.
    pub fn static_parts(&self) -> StaticParts {
        StaticParts {
            server: self.server.clone(),
            admin: self.admin.clone(),
            listeners: self
                .listeners
                .iter()
                .map(|l| {
                    (
                        l.name.clone(),
                        l.addr,
                        l.tls.is_some(),
                        l.max_connections,
                        l.protocol,
                    )
                })
                .collect(),
            metrics_listen: self.telemetry.metrics_listen,
            fleet: self.fleet.clone(),
        }
    }

    /// Makes the listeners the process runs (`running`, as bound at start) the listeners of
    /// this policy, whatever it says of them: a running listener keeps its name, address and
    /// whether it has TLS until the restart, while what applies on reload (its certificates,
    /// `client_ca`, `client_auth`, `default_authz`) comes from this policy when it still names
    /// the listener. A running listener this policy no longer names is kept as it ran, with
    /// the routes that apply to every listener. Listeners this policy adds stay in the list,
    /// unbound, so routes may name them ahead of the restart.
    pub fn adopt_running_listeners(&mut self, running: &[Listener]) {
        for live in running {
            match self.listeners.iter_mut().find(|l| l.name == live.name) {
                Some(listener) => {
                    listener.addr = live.addr;
                    listener.max_connections = live.max_connections;
                    listener.protocol = live.protocol;
                    if listener.tls.is_some() != live.tls.is_some() {
                        listener.tls = live.tls.clone();
                        listener.default_authz = live.default_authz;
                    }
                }
                None => self.listeners.push(live.clone()),
            }
        }
        // What a running listener speaks decides which routes serve it.
        self.routes_by_listener = crate::tcp::routes_by_listener(
            &self.listeners,
            true,
            self.routes.iter().map(|r| &r.listeners),
        );
        self.tcp_routes_by_listener = crate::tcp::routes_by_listener(
            &self.listeners,
            false,
            self.tcp_routes.iter().map(|r| &r.listeners),
        );
    }
}

/// What of a policy takes effect only at start: `[server]`, `[admin]`, the listeners' names,
/// addresses, TLS-or-not and connection limits, and `[telemetry].metrics_listen`.
#[derive(Debug, Clone, PartialEq)]
pub struct StaticParts {
    server: ServerSettings,
    admin: AdminSettings,
    listeners: Vec<(String, SocketAddr, bool, u32, crate::tcp::ListenerProtocol)>,
    metrics_listen: Option<SocketAddr>,
    fleet: Option<crate::fleet::FleetSettings>,
}

impl StaticParts {
    /// The section names that differ between `self` and `other`, in a fixed order.
    pub fn changes(&self, other: &StaticParts) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if self.server != other.server {
            changed.push("server");
        }
        if self.admin != other.admin {
            changed.push("admin");
        }
        if self.listeners != other.listeners {
            changed.push("listeners");
        }
        if self.metrics_listen != other.metrics_listen {
            changed.push("telemetry.metrics_listen");
        }
        if self.fleet != other.fleet {
            changed.push("fleet");
        }
        changed
    }
}

/// Every section `restart_required` may name.
pub const STATIC_SECTIONS: &[&str] = &[
    "server",
    "admin",
    "listeners",
    "telemetry.metrics_listen",
    "fleet",
];

/// Whether `name` is a valid HTTP header name (RFC 9110 token).
pub fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// One full cycle of smooth weighted round robin over `weights`, reduced by their greatest
/// common divisor: index `i` appears `weights[i] / gcd` times, spread as evenly as possible.
/// Zero weights never appear. Returns an empty schedule when every weight is zero.
pub fn smooth_weighted_schedule(weights: &[u32]) -> Vec<u32> {
    let divisor = weights.iter().copied().filter(|&w| w > 0).fold(0u32, gcd);
    if divisor == 0 {
        return Vec::new();
    }
    let reduced: Vec<i64> = weights.iter().map(|&w| i64::from(w / divisor)).collect();
    let total: i64 = reduced.iter().sum();
    let mut current = vec![0i64; reduced.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..reduced.len() {
            current[i] += reduced[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        schedule.push(best as u32);
    }
    schedule
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_follows_weights_exactly_and_spreads_them() {
        let schedule = smooth_weighted_schedule(&[90, 10]);
        assert_eq!(schedule.len(), 10);
        assert_eq!(schedule.iter().filter(|&&i| i == 0).count(), 9);
        let schedule = smooth_weighted_schedule(&[3, 1, 0]);
        assert_eq!(schedule, vec![0, 0, 1, 0]);
        assert!(smooth_weighted_schedule(&[0, 0]).is_empty());
        // 5:1:1 is interleaved, never five of the same in a row.
        let schedule = smooth_weighted_schedule(&[5, 1, 1]);
        assert_eq!(schedule.len(), 7);
        assert!(schedule.windows(5).all(|w| w.iter().any(|&i| i != 0)));
    }

    #[test]
    fn host_port_is_stripped() {
        assert_eq!(host_without_port("example.com:8080"), "example.com");
        assert_eq!(host_without_port("example.com"), "example.com");
        assert_eq!(host_without_port("[::1]:80"), "::1");
    }
}
