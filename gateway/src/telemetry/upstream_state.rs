//! Metric families read from the upstream pools at scrape time: breaker state, endpoint
//! health and ejections. Labels are upstream names and configured endpoint addresses, both
//! from the policy, so cardinality is bounded by the policy.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use crate::snapshot::Snapshot;

/// Appends the families to a Prometheus text exposition.
pub fn render(snapshot: &Snapshot, out: &mut String) {
    type Read = fn(&crate::upstream::UpstreamState) -> u64;
    let upstream_families: [(&str, &str, &str, Read); 4] = [
        (
            "meshgate_upstream_breaker_open",
            "gauge",
            "1 while a circuit breaker limit of the upstream is reached.",
            |u| {
                let limits = u.spec.circuit_breaker;
                let b = &u.breaker;
                u64::from(
                    b.active_requests.load(Ordering::Relaxed) >= u64::from(limits.max_requests)
                        || b.pending.load(Ordering::Relaxed) >= u64::from(limits.max_pending)
                        || b.active_connections.load(Ordering::Relaxed)
                            >= u64::from(limits.max_connections),
                )
            },
        ),
        (
            "meshgate_upstream_overflows_total",
            "counter",
            "Requests refused by the upstream's circuit breaker.",
            |u| u.breaker.overflows.load(Ordering::Relaxed),
        ),
        (
            "meshgate_upstream_active_requests",
            "gauge",
            "Requests in flight to the upstream.",
            |u| u.breaker.active_requests.load(Ordering::Relaxed),
        ),
        (
            "meshgate_upstream_active_retries",
            "gauge",
            "Retries in flight to the upstream.",
            |u| u.breaker.active_retries.load(Ordering::Relaxed),
        ),
    ];
    for (name, kind, help, read) in upstream_families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for upstream in &snapshot.upstreams {
            let _ = writeln!(
                out,
                "{name}{{upstream=\"{}\"}} {}",
                upstream.spec.name,
                read(upstream)
            );
        }
    }

    type ReadEndpoint = fn(&crate::upstream::EndpointState) -> u64;
    let endpoint_families: [(&str, &str, &str, ReadEndpoint); 4] = [
        (
            "meshgate_endpoint_healthy",
            "gauge",
            "1 when active health checks consider the endpoint healthy.",
            |e| u64::from(e.healthy.load(Ordering::Relaxed)),
        ),
        (
            "meshgate_endpoint_ejected",
            "gauge",
            "1 while outlier detection has the endpoint ejected.",
            |e| u64::from(e.ejected.load(Ordering::Relaxed)),
        ),
        (
            "meshgate_endpoint_ejections_total",
            "counter",
            "Times outlier detection ejected the endpoint.",
            |e| u64::from(e.ejections.load(Ordering::Relaxed)),
        ),
        (
            "meshgate_endpoint_in_flight",
            "gauge",
            "Requests in flight to the endpoint.",
            |e| e.in_flight.load(Ordering::Relaxed),
        ),
    ];
    for (name, kind, help, read) in endpoint_families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for upstream in &snapshot.upstreams {
            for endpoint in &upstream.endpoints().endpoints {
                let _ = writeln!(
                    out,
                    "{name}{{upstream=\"{}\",endpoint=\"{}\"}} {}",
                    upstream.spec.name,
                    endpoint.addr,
                    read(endpoint)
                );
            }
        }
    }
}
