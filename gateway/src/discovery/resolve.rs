//! One resolution of one name with hickory-resolver, and what a failure was.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig,
};
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use meshgate_policy::discovery::{DiscoverySettings, NameQuery};

/// Highest endpoint weight; an SRV weight above it is capped.
const MAX_WEIGHT: u32 = 256;

/// What a name resolved to: addresses with the weight and priority an SRV record gave them
/// (`None` for A and AAAA answers), and how long the answer lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Endpoints found: address, SRV weight, SRV priority.
    pub endpoints: Vec<(SocketAddr, Option<u32>, Option<u32>)>,
    /// The answer's time to live (the shortest of its records').
    pub ttl: Duration,
}

/// Why a resolution failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// No answer in time.
    Timeout,
    /// The server answered SERVFAIL.
    ServFail,
    /// The server refused the query.
    Refused,
    /// No server could be reached, or the system configuration could not be read.
    Unreachable,
    /// The name does not exist.
    NxDomain,
    /// The name exists but has no record of the type asked.
    Empty,
    /// Anything else.
    Other,
}

impl FailureKind {
    /// The `kind` label of `meshgate_discovery_errors_total`.
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Timeout => "timeout",
            FailureKind::ServFail => "servfail",
            FailureKind::Refused => "refused",
            FailureKind::Unreachable => "unreachable",
            FailureKind::NxDomain => "nxdomain",
            FailureKind::Empty => "empty",
            FailureKind::Other => "other",
        }
    }

    /// Whether the answer says there is nothing (as opposed to not knowing).
    pub fn is_empty_answer(self) -> bool {
        matches!(self, FailureKind::NxDomain | FailureKind::Empty)
    }
}

/// A failed resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What kind of failure.
    pub kind: FailureKind,
    /// What the resolver said.
    pub message: String,
}

fn classify(error: &NetError) -> FailureKind {
    if error.is_nx_domain() {
        return FailureKind::NxDomain;
    }
    if error.is_no_records_found() {
        return FailureKind::Empty;
    }
    match error {
        NetError::Timeout => FailureKind::Timeout,
        NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail)) => FailureKind::ServFail,
        NetError::Dns(DnsError::ResponseCode(ResponseCode::Refused)) => FailureKind::Refused,
        NetError::Io(_) | NetError::NoConnections | NetError::Busy => FailureKind::Unreachable,
        _ => FailureKind::Other,
    }
}

fn failure(error: &NetError) -> Failure {
    Failure {
        kind: classify(error),
        message: error.to_string(),
    }
}

/// Builds the resolver `settings` ask for: the listed servers over UDP (TCP when an answer is
/// truncated), or the system's configuration. Nothing is cached, so each refresh asks.
pub fn build_resolver(settings: &DiscoverySettings) -> Result<TokioResolver, String> {
    let provider = hickory_resolver::net::runtime::TokioRuntimeProvider::default();
    let mut builder = if settings.resolvers.is_empty() {
        TokioResolver::builder(provider)
            .map_err(|e| format!("cannot read the system's DNS configuration: {e}"))?
    } else {
        let servers = settings
            .resolvers
            .iter()
            .map(|addr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, vec![], servers),
            provider,
        )
    };
    let options = builder.options_mut();
    options.timeout = settings.timeout;
    options.attempts = 1;
    options.cache_size = 0;
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    builder
        .build()
        .map_err(|e| format!("cannot build the DNS resolver: {e}"))
}

/// Resolves `query` once, within `timeout`.
pub async fn resolve(
    resolver: &TokioResolver,
    query: &NameQuery,
    timeout: Duration,
) -> Result<Resolved, Failure> {
    let work = async {
        match query {
            NameQuery::Address { name, port } => {
                let (addresses, ttl) = lookup_addresses(resolver, name).await?;
                Ok(Resolved {
                    endpoints: addresses
                        .into_iter()
                        .map(|ip| (SocketAddr::new(ip, *port), None, None))
                        .collect(),
                    ttl,
                })
            }
            NameQuery::Service { name } => lookup_service(resolver, name).await,
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(Failure {
            kind: FailureKind::Timeout,
            message: format!("no answer within {timeout:?}"),
        }),
    }
}

async fn lookup_addresses(
    resolver: &TokioResolver,
    name: &str,
) -> Result<(Vec<IpAddr>, Duration), Failure> {
    let lookup = resolver.lookup_ip(name).await.map_err(|e| failure(&e))?;
    let ttl = lookup
        .valid_until()
        .saturating_duration_since(Instant::now());
    let mut addresses: Vec<IpAddr> = lookup.iter().collect();
    addresses.sort_unstable();
    addresses.dedup();
    Ok((addresses, ttl))
}

async fn lookup_service(resolver: &TokioResolver, name: &str) -> Result<Resolved, Failure> {
    let lookup = resolver.srv_lookup(name).await.map_err(|e| failure(&e))?;
    let mut ttl = lookup
        .valid_until()
        .saturating_duration_since(Instant::now());
    let mut endpoints = Vec::new();
    for record in lookup.answers() {
        let RData::SRV(srv) = &record.data else {
            continue;
        };
        // A target that does not resolve is left out; the others still count.
        let Ok((addresses, target_ttl)) = lookup_addresses(resolver, &srv.target.to_string()).await
        else {
            continue;
        };
        ttl = ttl.min(target_ttl);
        // SRV weight 0 means "rarely": the lowest weight meshgate has.
        let weight = u32::from(srv.weight).clamp(1, MAX_WEIGHT);
        for ip in addresses {
            endpoints.push((
                SocketAddr::new(ip, srv.port),
                Some(weight),
                Some(u32::from(srv.priority)),
            ));
        }
    }
    if endpoints.is_empty() {
        return Err(Failure {
            kind: FailureKind::Empty,
            message: "no SRV target resolved to an address".to_owned(),
        });
    }
    Ok(Resolved { endpoints, ttl })
}
