//! Request and response shapes of the admin API.

use serde::{Deserialize, Serialize};

/// The active policy as `GET /policy` serves it.
#[derive(Debug, Clone)]
pub struct ActivePolicy {
    /// The policy file's text.
    pub source: String,
    /// Hex SHA-256 of `source`; the `ETag`.
    pub hash: String,
    /// Number of the applied policy, counting from 1 at start.
    pub version: u64,
    /// Static sections the policy changes that wait for a restart.
    pub restart_required: Vec<String>,
}

/// The answer to a successful apply (PUT, reload, rollback).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Applied {
    /// Number of the now active policy.
    pub version: u64,
    /// Hash of the now active policy.
    pub hash: String,
    /// Static parts that changed and take effect only on restart.
    pub restart_required: Vec<String>,
    /// False when the policy was identical to the active one, so nothing was swapped.
    pub changed: bool,
    /// What is valid but probably not meant (a route never reached, an unused upstream…).
    #[serde(default)]
    pub warnings: Vec<ErrorItem>,
}

/// One policy error, with its position.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorItem {
    /// 1-based line (0 when the error is not about a position in the file).
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Key path, such as `routes[0].split[1].upstream`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// Why a policy was not applied.
#[derive(Debug, Clone)]
pub enum ApplyError {
    /// The policy is invalid; every error found.
    Invalid(Vec<ErrorItem>),
    /// `If-Match` named another hash than the active policy's.
    Stale {
        /// The active policy's hash.
        current_hash: String,
    },
    /// There is no previous policy to roll back to.
    NoPrevious,
    /// The history holds no policy of that version.
    UnknownVersion {
        /// The version asked for.
        version: u64,
        /// The versions the history holds.
        kept: Vec<u64>,
    },
    /// Reading or writing the policy file failed.
    Io(String),
}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApplyError::Invalid(errors) => {
                write!(f, "the policy is invalid ({} errors)", errors.len())
            }
            ApplyError::Stale { current_hash } => write!(
                f,
                "If-Match names another policy than the active one ({current_hash})"
            ),
            ApplyError::NoPrevious => f.write_str("there is no previous policy to roll back to"),
            ApplyError::UnknownVersion { version, kept } => {
                let kept: Vec<String> = kept.iter().map(u64::to_string).collect();
                write!(
                    f,
                    "the history holds no version {version} (it holds {})",
                    kept.join(", ")
                )
            }
            ApplyError::Io(message) => f.write_str(message),
        }
    }
}

/// `GET /policy/history`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryBody {
    /// The applied policies kept, newest first.
    pub history: Vec<HistoryItem>,
}

/// One applied policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryItem {
    /// Its version.
    pub version: u64,
    /// Its hash.
    pub hash: String,
    /// When it was applied (RFC 3339, UTC).
    pub time: String,
    /// `file`, `api` or `rollback`.
    pub origin: String,
    /// Whether it is the active policy.
    pub active: bool,
}

/// The result of a validation that succeeded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Validated {
    /// Always true.
    pub valid: bool,
    /// Static parts that would take effect only on restart.
    pub restart_required: Vec<String>,
    /// What is valid but probably not meant (a route never reached, an unused upstream…).
    #[serde(default)]
    pub warnings: Vec<ErrorItem>,
}

/// `PUT /policy?dry_run=true`: what applying the policy would change; nothing changed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DryRun {
    /// Always true.
    pub dry_run: bool,
    /// Always true (an invalid policy is answered with its errors).
    pub valid: bool,
    /// Routes and upstreams added, removed and changed (with their keys), the upstreams that
    /// would start fresh, and the other sections changed.
    pub changes: serde_json::Value,
    /// The same, one line each (`+ route api`, `~ upstream app: endpoints`…).
    pub lines: Vec<String>,
    /// Static parts that would take effect only on restart.
    pub restart_required: Vec<String>,
    /// What is valid but probably not meant.
    pub warnings: Vec<ErrorItem>,
}

/// `GET /upstreams`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpstreamsBody {
    /// Every upstream of the active policy, in file order.
    pub upstreams: Vec<UpstreamStatus>,
}

/// One upstream's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpstreamStatus {
    /// Its name.
    pub name: String,
    /// Its load-balancing algorithm.
    pub balance: String,
    /// `http1` or `h2c`.
    pub protocol: String,
    /// Requests currently in flight across all endpoints.
    pub in_flight: u64,
    /// The circuit breaker's limits and counters.
    pub circuit_breaker: BreakerStatus,
    /// Its endpoints.
    pub endpoints: Vec<EndpointStatus>,
    /// Upstreams that take its requests, in order, while it has no eligible endpoint.
    pub failover: Vec<String>,
    /// The names its endpoints are resolved from, and what they answered.
    pub discovery: Vec<NameStatus>,
    /// Every setting of the upstream as an `[[upstreams]]` table with the defaults filled in
    /// (`connect_timeout`, `health_check`, `outlier_detection`, `tls`…), as `GET /config`
    /// shows it.
    #[serde(default)]
    pub settings: serde_json::Value,
}

/// One name an upstream's endpoints come from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NameStatus {
    /// `dns` (A and AAAA records) or `srv`.
    pub kind: String,
    /// The name.
    pub name: String,
    /// The addresses it gives now.
    pub endpoints: Vec<String>,
    /// Seconds since the last good answer; absent before the first.
    pub age_seconds: Option<f64>,
    /// The last good answer's time to live, in seconds.
    pub ttl_seconds: f64,
    /// The error of the last resolution while it fails.
    pub last_error: Option<String>,
    /// When resolution started failing, in seconds since the Unix epoch.
    pub failing_since: Option<u64>,
}

/// One upstream's circuit breaker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BreakerStatus {
    /// True while any limit is reached, so new requests would overflow.
    pub open: bool,
    /// Limit on requests in flight.
    pub max_requests: u32,
    /// Limit on tries waiting for a connection.
    pub max_pending: u32,
    /// Limit on connections in use.
    pub max_connections: u32,
    /// Limit on retries in flight.
    pub max_retries: u32,
    /// Requests in flight.
    pub active_requests: u64,
    /// Tries waiting for a connection.
    pub pending: u64,
    /// Connections in use.
    pub active_connections: u64,
    /// Retries in flight.
    pub active_retries: u64,
    /// Requests refused by a limit since the upstream was created.
    pub overflows_total: u64,
}

/// One endpoint's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointStatus {
    /// `IP:port`.
    pub address: String,
    /// Relative weight in use: the override when one is set, else the policy's (or DNS's).
    pub weight: u32,
    /// The weight an operator set through the admin API, when one is set; runtime state,
    /// kept across reloads while the endpoint exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_override: Option<u32>,
    /// Priority tier: the lowest tier with an eligible endpoint takes the traffic.
    pub priority: u32,
    /// The zone it runs in, when known.
    pub zone: Option<String>,
    /// Whether health checks consider it healthy.
    pub healthy: bool,
    /// Whether outlier detection has ejected it.
    pub ejected: bool,
    /// Requests in flight to it now.
    pub in_flight: u64,
    /// Requests sent to it since its upstream was created.
    pub requests_total: u64,
    /// Failures in a row, as outlier detection counts them.
    pub consecutive_failures: u32,
    /// Times outlier detection ejected it.
    pub ejections: u32,
    /// What an operator set: `enabled` (the default), `draining` or `disabled` (no new
    /// request either way); runtime state, kept across reloads while the endpoint exists.
    #[serde(default)]
    pub state: String,
    /// The last active health check: `passed` or why it failed (`/health answered 503`,
    /// `connect failed: …`, `no answer within 1s`); absent without health checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check: Option<String>,
    /// When that check ran (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check_at: Option<String>,
}

/// `GET /explain` query: the request to explain.
#[derive(Debug, Clone, Default)]
pub struct ExplainQuery {
    /// Listener name; when absent, listener restrictions are ignored.
    pub listener: Option<String>,
    /// Method (default `GET`).
    pub method: String,
    /// Host.
    pub host: Option<String>,
    /// Path (default `/`).
    pub path: String,
    /// Headers as (lower-case name, value).
    pub headers: Vec<(String, String)>,
    /// The query string (`version=2&x=y`); the part of `path` after `?` when absent.
    pub query: Option<String>,
    /// The client's address.
    pub source: Option<std::net::IpAddr>,
    /// A TLS server name: explains the TCP routes (of `listener`, when given) instead of
    /// the HTTP ones; empty for a connection without one.
    pub sni: Option<String>,
}

/// `GET /explain` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Explanation {
    /// The path routes were matched against: the normalized form of the query's path under
    /// `[server].path_normalization = "strict"`, else the path as given.
    pub path: String,
    /// Whether normalization changed the path.
    pub normalized: bool,
    /// Why the path is refused with `400 bad-path`, when it is; no route is tried then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// Every listener, running or pending, so that a route's `listeners` can be read against
    /// what runs.
    pub listeners: Vec<ListenerInfo>,
    /// The route the request takes, if any.
    pub matched: Option<String>,
    /// What the matched route checks before proxying (`jwt: …`, `allow: …`), one line each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<String>,
    /// Every route in match order with its verdict.
    pub routes: Vec<RouteVerdict>,
    /// Where the matched route would send the request.
    pub candidates: Vec<Candidate>,
    /// `tcp` when the TCP routes were explained (a `sni` query, or a `tcp` or
    /// `tls_passthrough` listener); absent for HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// The listener the request was explained on: the one asked for, or, without
    /// `listener=`, the first HTTP listener (assumed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<String>,
    /// Without `listener=`: the route each HTTP listener would give the request, in file
    /// order, so that routes kept to some listeners are read right.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_listener: Vec<ListenerMatch>,
}

/// The route one listener gives a request (`/explain` without `listener=`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListenerMatch {
    /// The listener's name.
    pub listener: String,
    /// The route the request takes on it, if any.
    pub matched: Option<String>,
}

/// One route's verdict.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteVerdict {
    /// Route name.
    pub route: String,
    /// `matched`, `skipped` or `not_reached`.
    pub result: String,
    /// Why it was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One upstream a matched route may send to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Candidate {
    /// Upstream name.
    pub upstream: String,
    /// The split's weight.
    pub weight: u32,
    /// Endpoints eligible now (healthy and not ejected).
    pub endpoints: Vec<String>,
    /// The upstream a request for this side goes to now: this one, one of its failovers,
    /// or none (then `split_fallback` may send it to another side, else it gets `503`).
    pub target: Option<String>,
    /// The priority tier of `target` that takes requests now.
    pub tier: Option<u32>,
    /// The zone `target` keeps requests in (`locality = "prefer_local"`); `None` when they
    /// go to every zone.
    pub zone: Option<String>,
}

/// `GET /routes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoutesBody {
    /// Routes in match order.
    pub routes: Vec<RouteInfo>,
    /// Every listener: those the process runs, and those pending until a restart.
    pub listeners: Vec<ListenerInfo>,
    /// TCP routes in match order.
    #[serde(default)]
    pub tcp_routes: Vec<TcpRouteInfo>,
}

/// One compiled TCP route.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TcpRouteInfo {
    /// Its name.
    pub name: String,
    /// Listeners it applies to (every `tcp` and `tls_passthrough` listener when absent).
    pub listeners: Option<Vec<String>>,
    /// Server names it takes (any when empty).
    pub sni: Vec<String>,
    /// Weighted upstreams.
    pub split: Vec<SplitInfo>,
    /// Client certificate identities allowed, when it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<String>>,
    /// Every setting as a `[[tcp_routes]]` table with the defaults filled in.
    #[serde(default)]
    pub settings: serde_json::Value,
}

/// A listener, running or pending.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListenerInfo {
    /// Its name, which routes refer to.
    pub name: String,
    /// The address it is bound to (running) or will be bound to on restart (pending).
    pub listen: String,
    /// `running` or `pending`.
    pub state: String,
    /// `http`, `tcp` or `tls_passthrough`.
    #[serde(default)]
    pub protocol: String,
    /// What changes on restart (`listens on …`, `removed`, `starts`…), when anything does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_restart: Option<String>,
}

/// One compiled route.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteInfo {
    /// Its name.
    pub name: String,
    /// Listeners it applies to (every listener when absent).
    pub listeners: Option<Vec<String>>,
    /// Host condition.
    pub host: Option<String>,
    /// Path condition, such as `prefix /api`.
    pub path: Option<String>,
    /// Allowed methods (any when empty).
    pub methods: Vec<String>,
    /// Headers that must have exactly this value.
    pub headers: Vec<(String, String)>,
    /// Every other condition, one line each: `header x-canary present`, `header x-v prefix
    /// "2"`, `query version = "2"`, `source 10.0.0.0/8`.
    #[serde(default)]
    pub conditions: Vec<String>,
    /// The path and `Host` the upstream sees, when the route rewrites them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<String>,
    /// The route's CORS rules, when it has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<String>,
    /// The route's own compression settings, when it has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compress: Option<String>,
    /// The route's mirrors: `upstream percent% max_in_flight N`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirror: Vec<String>,
    /// The route's bearer-token check, when it has one: issuer, audiences, where the keys
    /// come from (and, for a URL, how many were fetched), required or optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<String>,
    /// Who may use the route (`allow`), when it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<String>>,
    /// Weighted upstreams.
    pub split: Vec<SplitInfo>,
    /// Sticky split key.
    pub split_key: Option<String>,
    /// Every setting of the route as a `[[routes]]` table with the defaults filled in
    /// (`timeouts`, `retry`, `rate_limit`, `headers`, `fault`…), as `GET /config` shows it.
    #[serde(default)]
    pub settings: serde_json::Value,
}

/// One split of a route.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SplitInfo {
    /// Upstream name.
    pub upstream: String,
    /// Relative weight.
    pub weight: u32,
}
