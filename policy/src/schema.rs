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
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Worker threads; defaults to the number of CPUs.
    pub threads: Option<usize>,
    /// How long in-flight requests may take to finish on shutdown or upgrade (default 30s).
    pub grace_period: Option<Duration>,
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
}

/// `[telemetry]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySection {
    /// `"off"`, `"stdout"` (the default) or a file path.
    pub access_log: Option<String>,
}

/// One `[[listeners]]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerSpec {
    /// Name routes refer to.
    pub name: String,
    /// `IP:port` to bind.
    pub listen: String,
}

/// One `[[upstreams]]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    /// Name splits refer to.
    pub name: String,
    /// `"IP:port"` strings or `{ address, weight }` tables.
    pub endpoints: Vec<EndpointEntry>,
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
}

/// An endpoint as written: a bare address or a table with a weight.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointEntry {
    /// `IP:port`.
    pub address: String,
    /// Relative weight, 1 to 256 (default 1).
    pub weight: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointTable {
    address: String,
    #[serde(default = "default_weight")]
    weight: u32,
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
                    r#"an address such as "10.0.0.1:8080" or { address = "…", weight = N }"#,
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<EndpointEntry, E> {
                Ok(EndpointEntry {
                    address: v.to_owned(),
                    weight: 1,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<EndpointEntry, A::Error> {
                let table = EndpointTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(EndpointEntry {
                    address: table.address,
                    weight: table.weight,
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
    /// Weighted upstreams.
    pub split: Vec<SplitEntry>,
    /// Makes the split sticky: `header:<name>`, `client_ip` or `path`.
    pub split_key: Option<String>,
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
    /// Headers that must be present with exactly this value.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
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
