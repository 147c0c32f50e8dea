//! Upstream pools: endpoints with their runtime state, and endpoint selection.
//!
//! An [`UpstreamState`] lives as long as its spec does not change: a reload that leaves an
//! upstream's spec equal hands the same `Arc<UpstreamState>` to the new snapshot, so counters,
//! health and (in Pingora's pool, keyed by peer) connections carry over.

mod balance;
mod breaker;
mod control;
pub mod health;
mod outlier;
mod set;
pub use control::EndpointControls;
pub use outlier::now_ms;
pub use set::{
    admin_state_name, EndpointEntry, EndpointSet, EndpointState, ADMIN_DISABLED, ADMIN_DRAINING,
    ADMIN_ENABLED,
};

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use meshgate_policy::compiled::UpstreamSpec;

/// An upstream pool.
pub struct UpstreamState {
    /// The compiled spec it was built from.
    pub spec: UpstreamSpec,
    /// Its endpoints now; swapped whole when DNS answers change them.
    set: ArcSwap<EndpointSet>,
    cursor: AtomicU64,
    /// Circuit breaker counters.
    pub breaker: breaker::BreakerState,
    /// Endpoints ejected now.
    ejected_count: AtomicU32,
    /// Held while a new set is built and swapped in, so that a weight override and a DNS
    /// answer arriving together do not build from the same set and lose one of the two.
    rebuilding: std::sync::Mutex<()>,
    /// Certificates for TLS to the endpoints, rotated live.
    pub tls: Option<Arc<crate::tls::UpstreamTlsState>>,
    /// `meshgate_upstream_connect_duration_seconds` of this upstream.
    pub connect_duration: prometheus::Histogram,
    /// `meshgate_upstream_connections_total` of this upstream: `[new, reused]`.
    pub connections: [prometheus::IntCounter; 2],
}

pub use breaker::{give_back as breaker_give_back, BreakerState, Overflow};

impl std::fmt::Debug for UpstreamState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamState")
            .field("spec", &self.spec)
            .field("endpoints", &self.set.load().endpoints)
            .finish_non_exhaustive()
    }
}

impl UpstreamState {
    /// Builds a fresh pool for a spec; `tls` holds the certificates of `spec.tls`.
    pub fn new(
        spec: UpstreamSpec,
        tls: Option<Arc<crate::tls::UpstreamTlsState>>,
        metrics: &crate::telemetry::Metrics,
    ) -> Self {
        let set = EndpointSet::build(&spec, &Self::literal_entries(&spec), None);
        let connect_duration = metrics
            .upstream_connect_duration
            .with_label_values(&[&spec.name]);
        let connections = ["false", "true"].map(|reused| {
            metrics
                .upstream_connections
                .with_label_values(&[spec.name.as_str(), reused])
        });
        UpstreamState {
            spec,
            set: ArcSwap::from_pointee(set),
            cursor: AtomicU64::new(0),
            breaker: breaker::BreakerState::default(),
            ejected_count: AtomicU32::new(0),
            rebuilding: std::sync::Mutex::new(()),
            tls,
            connect_duration,
            connections,
        }
    }

    /// The endpoints written as addresses in the policy.
    pub fn literal_entries(spec: &UpstreamSpec) -> Vec<EndpointEntry> {
        spec.endpoints
            .iter()
            .map(|e| EndpointEntry {
                addr: e.addr,
                weight: e.weight,
                priority: e.priority,
                zone: e.zone.as_deref().map(Arc::from),
            })
            .collect()
    }

    /// The endpoints now.
    #[inline]
    pub fn endpoints(&self) -> arc_swap::Guard<Arc<EndpointSet>> {
        self.set.load()
    }

    /// Makes `entries` the endpoints: those that stay keep their state, new ones join, and
    /// gone ones get no new request (those in flight finish). Returns whether anything
    /// changed.
    pub fn set_endpoints(&self, entries: &[EndpointEntry]) -> bool {
        let _rebuilding = self.rebuilding.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.set.load_full();
        if current.entries() == entries {
            return false;
        }
        self.swap_in(EndpointSet::build(&self.spec, entries, Some(&current)));
        true
    }

    /// Sets (or with `None` clears) the weight override of the endpoint at `addr` and
    /// rebuilds the schedules and hash rings with it; the endpoints keep their state.
    /// Returns whether the endpoint is in the set.
    pub fn set_weight_override(&self, addr: std::net::SocketAddr, weight: Option<u32>) -> bool {
        let _rebuilding = self.rebuilding.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.set.load_full();
        let Some(endpoint) = current.endpoints.iter().find(|e| e.addr == addr) else {
            return false;
        };
        if endpoint.weight_override() == weight {
            return true;
        }
        endpoint
            .weight_override
            .store(weight.unwrap_or(0), Ordering::Relaxed);
        self.swap_in(EndpointSet::build(
            &self.spec,
            &current.entries(),
            Some(&current),
        ));
        true
    }

    fn swap_in(&self, next: EndpointSet) {
        // Ejected endpoints that left no longer count against the ejection cap.
        let ejected = next
            .endpoints
            .iter()
            .filter(|e| e.ejected.load(Ordering::Relaxed))
            .count() as u32;
        self.set.store(Arc::new(next));
        self.ejected_count.store(ejected, Ordering::Relaxed);
    }

    /// Whether `endpoint` may take requests now: healthy, and not ejected (an ejection whose
    /// time is up ends here, and the endpoint comes back on probation).
    #[inline]
    pub fn eligible(&self, endpoint: &EndpointState) -> bool {
        if !endpoint.healthy.load(Ordering::Relaxed)
            || endpoint.admin_state.load(Ordering::Relaxed) != set::ADMIN_ENABLED
        {
            return false;
        }
        !endpoint.ejected.load(Ordering::Relaxed) || self.end_ejection_if_due(endpoint)
    }

    /// Whether the upstream can take a request now: an eligible endpoint, and room under its
    /// breaker's limits. A failover or split fallback skips an upstream that cannot.
    pub fn available(&self) -> bool {
        self.below_limits() && self.has_eligible()
    }

    /// Whether any endpoint may take requests now.
    pub fn has_eligible(&self) -> bool {
        self.endpoints().endpoints.iter().any(|e| self.eligible(e))
    }

    /// Requests in flight across every endpoint.
    pub fn in_flight(&self) -> u64 {
        self.endpoints()
            .endpoints
            .iter()
            .map(|e| e.in_flight.load(Ordering::Relaxed))
            .sum()
    }

    /// Picks an eligible endpoint and counts the request against it. `hash_input` is the
    /// consistent-hash key's value, when the balance needs one.
    pub fn acquire(&self, hash_input: Option<&[u8]>) -> Option<Arc<EndpointState>> {
        let set = self.endpoints();
        let index = self.select(&set, hash_input)?;
        let endpoint = set.endpoints[index].clone();
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        endpoint.requests_total.fetch_add(1, Ordering::Relaxed);
        Some(endpoint)
    }

    /// Ends a request counted by [`Self::acquire`].
    pub fn release(&self, endpoint: &EndpointState) {
        endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
