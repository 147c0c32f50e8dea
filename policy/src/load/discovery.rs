//! `[discovery]`, each upstream's `discovery` and host-name endpoints, and `failover`. Names
//! are checked for their form only: nothing is resolved while validating.

use super::*;
use crate::discovery::{
    check_dns_name, DiscoveryEntry, DiscoverySection, DiscoverySettings, NameQuery,
};

/// Highest `priority` of an endpoint.
pub(super) const MAX_PRIORITY: u32 = 1000;

/// An endpoint's `address` as written.
pub(super) enum EndpointAddress {
    /// `IP:port`.
    Literal(SocketAddr),
    /// `host:port`, resolved in DNS.
    Name(String, u16),
}

/// Reads `IP:port` or `host:port`.
pub(super) fn parse_endpoint_address(text: &str) -> Result<EndpointAddress, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(EndpointAddress::Literal(addr));
    }
    let invalid = || {
        format!(
            "invalid address {text:?}: expected IP:port or host:port, such as \"127.0.0.1:8080\", \"[::1]:8080\" or \"orders-1.internal:8080\""
        )
    };
    let (host, port) = text.rsplit_once(':').ok_or_else(invalid)?;
    let port: u16 = port.parse().map_err(|_| invalid())?;
    if port == 0 {
        return Err(format!("invalid address {text:?}: the port must not be 0"));
    }
    if host.starts_with('[') || host.contains(':') || host.parse::<std::net::IpAddr>().is_ok() {
        return Err(invalid());
    }
    check_dns_name(host).map_err(|message| format!("invalid address {text:?}: {message}"))?;
    Ok(EndpointAddress::Name(host.to_owned(), port))
}

/// An upstream's `discovery` table: exactly one of `dns` (with `port`) and `srv` (without).
pub(super) fn compile_discovery_entry(
    entry: &DiscoveryEntry,
    path: &KeyPath,
    sink: &mut ErrorSink<'_>,
) -> Option<NameQuery> {
    let mut check = |key: &str, name: &str| match check_dns_name(name) {
        Ok(()) => true,
        Err(message) => {
            sink.at(&path.key(key), message);
            false
        }
    };
    match (&entry.dns, &entry.srv) {
        (Some(name), None) => {
            let named = check("dns", name);
            let Some(port) = entry.port.filter(|p| *p != 0) else {
                sink.at(
                    &path.key("port"),
                    "discovery by `dns` needs `port` (1 to 65535): A and AAAA records carry no port",
                );
                return None;
            };
            named.then(|| NameQuery::Address {
                name: name.clone(),
                port,
            })
        }
        (None, Some(name)) => {
            if entry.port.is_some() {
                sink.at(
                    &path.key("port"),
                    "discovery by `srv` takes each endpoint's port from its SRV record; leave out `port`",
                );
                return None;
            }
            check("srv", name).then(|| NameQuery::Service { name: name.clone() })
        }
        (Some(_), Some(_)) => {
            sink.at(path, "give either `dns` (with `port`) or `srv`, not both");
            None
        }
        (None, None) => {
            sink.at(path, "give `dns` (with `port`) or `srv`");
            None
        }
    }
}

/// `[discovery]` with its defaults.
pub(super) fn compile_discovery(
    section: Option<DiscoverySection>,
    sink: &mut ErrorSink<'_>,
) -> DiscoverySettings {
    let path = KeyPath::root().key("discovery");
    let section = section.unwrap_or_default();
    let mut settings = DiscoverySettings::default();
    for (i, text) in section.resolvers.iter().flatten().enumerate() {
        match parse_socket_addr(text) {
            Ok(addr) => settings.resolvers.push(addr),
            Err(message) => sink.at(&path.key("resolvers").index(i), message),
        }
    }
    if section.resolvers.as_ref().is_some_and(|r| r.is_empty()) {
        sink.at(
            &path.key("resolvers"),
            "resolvers must list at least one IP:port; leave the key out to use /etc/resolv.conf",
        );
    }
    let mut duration = |value: Option<crate::duration::Duration>, default: Duration, key: &str| {
        let value = value.map_or(default, |d| d.get());
        if value < Duration::from_millis(100) {
            sink.at(&path.key(key), format!("{key} must be at least 100ms"));
        }
        value
    };
    settings.refresh = section
        .refresh
        .map(|r| duration(Some(r), Duration::ZERO, "refresh"));
    settings.min_refresh = duration(section.min_refresh, settings.min_refresh, "min_refresh");
    settings.max_refresh = duration(section.max_refresh, settings.max_refresh, "max_refresh");
    settings.timeout = duration(section.timeout, settings.timeout, "timeout");
    settings.empty_after = duration(section.empty_after, settings.empty_after, "empty_after");
    if settings.max_refresh < settings.min_refresh {
        sink.at(
            &path.key("max_refresh"),
            "max_refresh must not be shorter than min_refresh",
        );
    }
    settings
}

/// Each upstream's `failover`, as upstream indexes: unknown names, an upstream listed twice,
/// an upstream failing over to itself, and chains that come back to where they started are
/// errors.
pub(super) fn compile_failover(
    upstreams: &[Option<UpstreamSection>],
    declared: &HashSet<String>,
    sink: &mut ErrorSink<'_>,
) -> Vec<Vec<usize>> {
    let base = KeyPath::root().key("upstreams");
    let names: HashMap<&str, usize> = upstreams
        .iter()
        .enumerate()
        .filter_map(|(i, spec)| Some((spec.as_ref()?.name.as_str(), i)))
        .collect();
    let chains: Vec<Vec<usize>> = upstreams
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let Some(spec) = spec else { return Vec::new() };
            let mut chain = Vec::new();
            for (j, name) in spec.failover.iter().enumerate() {
                let path = base.index(i).key("failover").index(j);
                match names.get(name.as_str()) {
                    // Declared, but refused for its own errors, which are reported.
                    None if declared.contains(name) => {}
                    None => sink.at(&path, format!("unknown upstream {name:?}")),
                    Some(&target) if target == i => sink.at(
                        &path,
                        format!("upstream {name:?} cannot fail over to itself"),
                    ),
                    Some(&target) if chain.contains(&target) => {
                        sink.at(&path, format!("upstream {name:?} is listed twice"))
                    }
                    Some(&target) => chain.push(target),
                }
            }
            chain
        })
        .collect();
    // A loop: following failover lists from an upstream leads back to it.
    for (start, spec) in upstreams.iter().enumerate() {
        let Some(spec) = spec else { continue };
        let mut stack: Vec<(usize, Vec<usize>)> = vec![(start, vec![start])];
        let mut visited = vec![false; chains.len()];
        while let Some((at, trail)) = stack.pop() {
            for &next in &chains[at] {
                if next == start && trail.len() > 1 {
                    let mut names: Vec<&str> = trail
                        .iter()
                        .filter_map(|&k| upstreams[k].as_ref().map(|u| u.name.as_str()))
                        .collect();
                    names.push(&spec.name);
                    sink.at(
                        &base.index(start).key("failover"),
                        format!("failover loop: {}", names.join(" -> ")),
                    );
                    stack.clear();
                    break;
                }
                if !visited[next] {
                    visited[next] = true;
                    let mut longer = trail.clone();
                    longer.push(next);
                    stack.push((next, longer));
                }
            }
        }
    }
    chains
}

/// An upstream's `locality` and `min_local_percent`, with the gateway's `zone`.
pub(super) fn compile_locality(
    spec: &UpstreamSection,
    zone: Option<&str>,
    path: &KeyPath,
    sink: &mut ErrorSink<'_>,
) -> Option<crate::discovery::LocalitySpec> {
    let min_local_percent = spec.min_local_percent.unwrap_or(50);
    if min_local_percent > 100 {
        sink.at(
            &path.key("min_local_percent"),
            "min_local_percent must be between 0 and 100",
        );
    }
    match spec.locality.unwrap_or_default() {
        crate::discovery::Locality::Any => {
            if spec.min_local_percent.is_some() {
                sink.at(
                    &path.key("min_local_percent"),
                    "min_local_percent applies only with locality = \"prefer_local\"",
                );
            }
            None
        }
        crate::discovery::Locality::PreferLocal => match zone {
            Some(zone) => Some(crate::discovery::LocalitySpec {
                zone: zone.to_owned(),
                min_local_percent,
            }),
            None => {
                sink.at(
                    &path.key("locality"),
                    "locality = \"prefer_local\" needs [server].zone: the zone this gateway runs in",
                );
                None
            }
        },
    }
}
