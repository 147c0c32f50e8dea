//! TCP proxying: listeners' `protocol`, `[[tcp_routes]]` as written, and their compiled form.
//!
//! A `tcp` listener proxies bytes (after terminating TLS when it has `[listeners.tls]`); a
//! `tls_passthrough` listener reads the ClientHello's server name, never decrypts, and splices
//! the connection to the upstream its route names.

use std::time::Duration;

use serde::Deserialize;

use crate::compiled::{HostMatch, IdentityPattern, Split};
use crate::schema::SplitEntry;

/// What a listener speaks.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ListenerProtocol {
    /// HTTP/1.1 and HTTP/2, routed by `[[routes]]`.
    #[default]
    Http,
    /// Bytes both ways, routed by `[[tcp_routes]]`; TLS is terminated first with
    /// `[listeners.tls]`.
    Tcp,
    /// TLS left to the endpoints: routed by the ClientHello's server name, never decrypted.
    TlsPassthrough,
}

impl ListenerProtocol {
    /// The name as written in the policy.
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerProtocol::Http => "http",
            ListenerProtocol::Tcp => "tcp",
            ListenerProtocol::TlsPassthrough => "tls_passthrough",
        }
    }
}

/// One `[[tcp_routes]]` entry as written.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TcpRouteSection {
    /// Unique name among TCP routes, used in metrics, logs and `/explain`.
    pub name: String,
    /// The `tcp` and `tls_passthrough` listeners it applies to; every one when absent.
    pub listeners: Option<Vec<String>>,
    /// What a connection must look like to take this route.
    #[serde(rename = "match")]
    pub matcher: Option<TcpMatchSection>,
    /// Weighted upstreams.
    #[serde(default)]
    pub split: Vec<SplitEntry>,
    /// Client certificate identities allowed to connect (listeners with client certificates).
    pub allow: Option<Vec<String>>,
    /// How long a connection may pass no byte either way before it is closed (default 1h).
    pub idle_timeout: Option<crate::duration::Duration>,
    /// A limit on new connections.
    pub rate_limit: Option<TcpRateLimitSection>,
}

/// `[tcp_routes.match]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct TcpMatchSection {
    /// Server names (exact or `*.suffix`) of the TLS handshake.
    pub sni: Option<Vec<String>>,
}

/// `[tcp_routes.rate_limit]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TcpRateLimitSection {
    /// New connections admitted per second, refilled continuously.
    pub connections_per_second: f64,
    /// Connections admitted at once after a quiet spell (default: one second's worth).
    pub burst: Option<u32>,
    /// `client_ip` (the default: a bucket per client address) or `route` (one bucket).
    pub key: Option<String>,
}

/// A compiled TCP route.
#[derive(Debug, Clone)]
pub struct TcpRoute {
    /// Its name.
    pub name: String,
    /// Listener indexes it applies to; `None`: every `tcp` and `tls_passthrough` listener.
    pub listeners: Option<Vec<usize>>,
    /// Server names it takes; any connection (with or without a name) when empty.
    pub sni: Vec<HostMatch>,
    /// Upstream indexes and weights.
    pub splits: Vec<Split>,
    /// Split indexes in smooth weighted round-robin order.
    pub split_schedule: Vec<u32>,
    /// Client identities allowed; `None` leaves it to the listener's `default_authz`.
    pub allow: Option<Vec<IdentityPattern>>,
    /// Longest time without a byte either way.
    pub idle_timeout: Duration,
    /// The limit on new connections.
    pub rate_limit: Option<TcpRateLimit>,
}

impl TcpRoute {
    /// Whether a connection with server name `sni` takes this route.
    pub fn matches_sni(&self, sni: Option<&str>) -> bool {
        self.sni.is_empty() || sni.is_some_and(|name| self.sni.iter().any(|m| m.matches(name)))
    }
}

/// A TCP route's limit on new connections.
#[derive(Debug, Clone, PartialEq)]
pub struct TcpRateLimit {
    /// Refill rate.
    pub connections_per_second: f64,
    /// Bucket capacity.
    pub burst: u32,
    /// One bucket per client address (`true`) or one for the route.
    pub per_client: bool,
}

/// For each listener, the routes (of the kind it speaks: `[[routes]]` for HTTP listeners when
/// `http`, else `[[tcp_routes]]`) that apply to it, in file order; `route_listeners` gives each
/// route's `listeners`.
pub(crate) fn routes_by_listener<'r>(
    listeners: &[crate::compiled::Listener],
    http: bool,
    route_listeners: impl Iterator<Item = &'r Option<Vec<usize>>> + Clone,
) -> Vec<Vec<usize>> {
    listeners
        .iter()
        .enumerate()
        .map(|(index, listener)| {
            if (listener.protocol == ListenerProtocol::Http) != http {
                return Vec::new();
            }
            route_listeners
                .clone()
                .enumerate()
                .filter(|(_, wanted)| wanted.as_ref().is_none_or(|l| l.contains(&index)))
                .map(|(i, _)| i)
                .collect()
        })
        .collect()
}
