//! `[discovery]` and an upstream's `discovery` key: endpoints found in DNS. The schema types
//! (as written) and the compiled ones (as the gateway uses them) of that one section.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

/// `[discovery]` as written.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct DiscoverySection {
    /// `IP:port` of the DNS servers asked; the system's `/etc/resolv.conf` when absent.
    pub resolvers: Option<Vec<String>>,
    /// A fixed time between two resolutions of a name; the answer's TTL when absent.
    pub refresh: Option<crate::duration::Duration>,
    /// Shortest time between two resolutions of a name (default 1s).
    pub min_refresh: Option<crate::duration::Duration>,
    /// Longest time between two resolutions of a name (default 60s).
    pub max_refresh: Option<crate::duration::Duration>,
    /// How long one resolution may take (default 2s).
    pub timeout: Option<crate::duration::Duration>,
    /// How long a name must answer NXDOMAIN or nothing before its endpoints are dropped
    /// (default 60s).
    pub empty_after: Option<crate::duration::Duration>,
}

/// An upstream's `discovery = { dns = "…", port = N }` or `{ srv = "…" }` as written.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryEntry {
    /// A name whose A and AAAA records are the endpoints.
    pub dns: Option<String>,
    /// The port of every address of `dns`.
    pub port: Option<u16>,
    /// A name whose SRV records are the endpoints (target, port, weight, priority).
    pub srv: Option<String>,
    /// The zone of every endpoint the name gives.
    pub zone: Option<String>,
}

/// An upstream's `locality`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Locality {
    /// Endpoints are chosen whatever their zone.
    #[default]
    Any,
    /// Endpoints in the gateway's zone are chosen while enough of them are eligible.
    PreferLocal,
}

/// `locality = "prefer_local"` with the gateway's zone, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalitySpec {
    /// `[server].zone`.
    pub zone: String,
    /// Share of the local endpoints (0 to 100) that must be eligible to keep traffic local.
    pub min_local_percent: u32,
}

/// `[discovery]`, compiled; defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoverySettings {
    /// The DNS servers asked; empty for the system's configuration.
    pub resolvers: Vec<SocketAddr>,
    /// A fixed refresh; `None` follows each answer's TTL.
    pub refresh: Option<Duration>,
    /// Lower bound of the refresh.
    pub min_refresh: Duration,
    /// Upper bound of the refresh.
    pub max_refresh: Duration,
    /// Time one resolution may take.
    pub timeout: Duration,
    /// How long empty answers must last before a name's endpoints are dropped.
    pub empty_after: Duration,
}

impl Default for DiscoverySettings {
    fn default() -> Self {
        DiscoverySettings {
            resolvers: Vec::new(),
            refresh: None,
            min_refresh: DEFAULT_MIN_REFRESH,
            max_refresh: DEFAULT_MAX_REFRESH,
            timeout: DEFAULT_TIMEOUT,
            empty_after: DEFAULT_EMPTY_AFTER,
        }
    }
}

impl DiscoverySettings {
    /// How long to wait before resolving again a name whose answer lives `ttl`.
    pub fn refresh_after(&self, ttl: Duration) -> Duration {
        self.refresh
            .unwrap_or(ttl)
            .clamp(self.min_refresh, self.max_refresh)
    }
}

/// Default `[discovery].min_refresh`.
pub const DEFAULT_MIN_REFRESH: Duration = Duration::from_secs(1);
/// Default `[discovery].max_refresh`.
pub const DEFAULT_MAX_REFRESH: Duration = Duration::from_secs(60);
/// Default `[discovery].timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default `[discovery].empty_after`.
pub const DEFAULT_EMPTY_AFTER: Duration = Duration::from_secs(60);

/// A name resolved into endpoints, with what each of its endpoints gets.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NameQuery {
    /// A and AAAA records of `name`, each address at `port`.
    Address {
        /// The name, as written.
        name: String,
        /// The port of every address.
        port: u16,
    },
    /// SRV records of `name`: each target's addresses at the record's port, with its weight
    /// and priority.
    Service {
        /// The name, as written.
        name: String,
    },
}

impl NameQuery {
    /// The name asked.
    pub fn name(&self) -> &str {
        match self {
            NameQuery::Address { name, .. } | NameQuery::Service { name } => name,
        }
    }

    /// `dns` or `srv`, as the policy and the admin API say it.
    pub fn kind(&self) -> &'static str {
        match self {
            NameQuery::Address { .. } => "dns",
            NameQuery::Service { .. } => "srv",
        }
    }
}

/// Where some of an upstream's endpoints come from: a name, with the weight, priority and
/// zone its addresses get (an SRV record's own weight and priority win over these).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NamedSource {
    /// What is resolved.
    pub query: NameQuery,
    /// Weight of each address (1 for `discovery`).
    pub weight: u32,
    /// Priority tier of each address (0 for `discovery`).
    pub priority: u32,
    /// Zone of each address.
    pub zone: Option<String>,
}

/// Whether `name` is a DNS name as meshgate resolves it: dot-separated labels of letters,
/// digits, `-` and `_` (SRV names start labels with `_`), each 1 to 63 characters, not
/// starting or ending with `-`, 253 characters at most, an optional final dot.
pub fn check_dns_name(name: &str) -> Result<(), String> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() || trimmed.len() > 253 {
        return Err(format!(
            "{name:?} is not a DNS name: it must be 1 to 253 characters"
        ));
    }
    for label in trimmed.split('.') {
        let valid = (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !valid {
            return Err(format!(
                "{name:?} is not a DNS name: label {label:?} must be 1 to 63 letters, digits, '-' or '_', not starting or ending with '-'"
            ));
        }
    }
    if trimmed.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!("{name:?} is an address, not a name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        for good in [
            "orders.service.consul",
            "_orders._tcp.service.consul",
            "localhost",
            "a-b.example.",
        ] {
            assert!(check_dns_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "-a.example",
            "a..b",
            "a b",
            "ö.example",
            "10.0.0.1",
        ] {
            assert!(check_dns_name(bad).is_err(), "{bad}");
        }
        let long = "a".repeat(64);
        assert!(check_dns_name(&long).is_err());
    }

    #[test]
    fn refresh_follows_the_ttl_within_bounds() {
        let settings = DiscoverySettings::default();
        assert_eq!(settings.refresh_after(Duration::ZERO), DEFAULT_MIN_REFRESH);
        assert_eq!(
            settings.refresh_after(Duration::from_secs(30)),
            Duration::from_secs(30)
        );
        assert_eq!(
            settings.refresh_after(Duration::from_secs(3600)),
            DEFAULT_MAX_REFRESH
        );
    }
}
