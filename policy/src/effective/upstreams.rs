//! An upstream's effective settings, as an `[[upstreams]]` table.

use serde_json::{Map, Value};

use super::{duration, path, Table};
use crate::discovery::NameQuery;
use crate::schema::UpstreamProtocol;
use crate::CompiledPolicy;

/// The upstream at `index` as an `[[upstreams]]` table with every default filled in;
/// `/upstreams` shows the same.
pub fn upstream_table(policy: &CompiledPolicy, index: usize) -> Map<String, Value> {
    let spec = &policy.upstreams[index];
    let mut entry = Table::new();
    entry.put("name", spec.name.as_str());
    // Addresses first, then the host names written as endpoints: the loader keeps the two
    // apart, and each keeps its order.
    let mut endpoints: Vec<Value> = spec
        .endpoints
        .iter()
        .map(|endpoint| {
            endpoint_entry(
                endpoint.addr.to_string(),
                endpoint.weight,
                endpoint.priority,
                endpoint.zone.as_deref(),
            )
        })
        .collect();
    let mut discovery = None;
    for source in &spec.names {
        match &source.query {
            NameQuery::Address { name, port } => endpoints.push(endpoint_entry(
                format!("{name}:{port}"),
                source.weight,
                source.priority,
                source.zone.as_deref(),
            )),
            NameQuery::Service { name } => {
                let mut section = Table::new();
                section.put("srv", name.as_str());
                section.opt("zone", source.zone.as_deref());
                discovery = Some(section);
            }
        }
    }
    entry.put("endpoints", endpoints);
    entry.opt("discovery", discovery);
    entry.put(
        "failover",
        policy
            .failover
            .get(index)
            .into_iter()
            .flatten()
            .map(|&to| policy.upstreams[to].name.clone())
            .collect::<Vec<_>>(),
    );
    match &spec.locality {
        Some(locality) => {
            entry.put("locality", "prefer_local");
            entry.put("min_local_percent", locality.min_local_percent);
        }
        None => entry.put("locality", "any"),
    }
    entry.put("balance", spec.balance.as_str());
    entry.opt("hash_key", spec.hash_key.as_ref().map(ToString::to_string));
    entry.put("connect_timeout", duration(spec.connect_timeout));
    entry.put(
        "protocol",
        match spec.protocol {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::H2c => "h2c",
        },
    );
    entry.put("idle_timeout", duration(spec.idle_timeout));
    entry.put("read_timeout", duration(spec.read_timeout));
    if let Some(check) = &spec.health_check {
        let mut section = Table::new();
        section.put("type", if check.path.is_some() { "http" } else { "tcp" });
        section.opt("path", check.path.as_deref());
        section.put("interval", duration(check.interval));
        section.put("timeout", duration(check.timeout));
        section.put("healthy_threshold", check.healthy_threshold);
        section.put("unhealthy_threshold", check.unhealthy_threshold);
        entry.put("health_check", section);
    }
    let breaker = &spec.circuit_breaker;
    let mut section = Table::new();
    section.put("max_connections", breaker.max_connections);
    section.put("max_pending", breaker.max_pending);
    section.put("max_requests", breaker.max_requests);
    section.put("max_retries", breaker.max_retries);
    entry.put("circuit_breaker", section);
    if let Some(outlier) = &spec.outlier_detection {
        let mut section = Table::new();
        section.put("consecutive_failures", outlier.consecutive_failures);
        section.put("base_ejection", duration(outlier.base_ejection));
        section.put("max_ejection", duration(outlier.max_ejection));
        section.put("max_ejection_percent", outlier.max_ejection_percent);
        entry.put("outlier_detection", section);
    }
    if let Some(tls) = &spec.tls {
        let mut section = Table::new();
        section.opt("sni", tls.sni.as_deref());
        section.opt("ca", tls.ca.as_deref().map(path));
        if let Some(files) = &tls.client_cert {
            section.put("cert", path(&files.cert));
            section.put("key", path(&files.key));
        }
        entry.put("tls", section);
    }
    entry.0
}

fn endpoint_entry(address: String, weight: u32, priority: u32, zone: Option<&str>) -> Value {
    let mut entry = Table::new();
    entry.put("address", address);
    entry.put("weight", weight);
    entry.put("priority", priority);
    entry.opt("zone", zone);
    entry.into()
}
