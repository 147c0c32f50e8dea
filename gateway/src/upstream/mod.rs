//! Upstream pools: endpoints with their runtime state, and endpoint selection.
//!
//! An [`UpstreamState`] lives as long as its spec does not change: a reload that leaves an
//! upstream's spec equal hands the same `Arc<UpstreamState>` to the new snapshot, so counters,
//! health and (in Pingora's pool, keyed by peer) connections carry over.

mod balance;
mod breaker;
pub mod health;
mod outlier;
pub use outlier::now_ms;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use meshgate_policy::compiled::{Balance, UpstreamProtocol, UpstreamSpec};
use pingora::protocols::ALPN;
use pingora::upstreams::peer::HttpPeer;

/// One endpoint and its live counters.
#[derive(Debug)]
pub struct EndpointState {
    /// Its address.
    pub addr: SocketAddr,
    /// Its relative weight.
    pub weight: u32,
    /// The peer handed to Pingora, built once.
    pub peer: HttpPeer,
    /// Requests in flight to it now.
    pub in_flight: AtomicU64,
    /// Requests sent to it.
    pub requests_total: AtomicU64,
    /// Active health checks' view (true until checks say otherwise).
    pub healthy: AtomicBool,
    /// Outlier detection's view.
    pub ejected: AtomicBool,
    /// Failures in a row (5xx, connect failures, resets).
    pub consecutive_failures: AtomicU32,
    /// Times outlier detection ejected it.
    pub ejections: AtomicU32,
    /// When the current ejection ends, in ms since the process started.
    ejected_until_ms: AtomicU64,
}

/// An upstream pool.
pub struct UpstreamState {
    /// The compiled spec it was built from.
    pub spec: UpstreamSpec,
    /// Endpoints in spec order.
    pub endpoints: Vec<EndpointState>,
    cursor: AtomicU64,
    ring: Option<(pingora_ketama::Continuum, HashMap<SocketAddr, usize>)>,
    /// Circuit breaker counters.
    pub breaker: breaker::BreakerState,
    /// Endpoints ejected now.
    ejected_count: AtomicU32,
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
            .field("endpoints", &self.endpoints)
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
        let endpoints = spec
            .endpoints
            .iter()
            .map(|endpoint| {
                // Without `sni`, the endpoint's address is the name verified (an IP SAN), so
                // verification is never skipped.
                let sni = spec.tls.as_ref().map(|t| {
                    t.sni
                        .clone()
                        .unwrap_or_else(|| endpoint.addr.ip().to_string())
                });
                let mut peer = HttpPeer::new(endpoint.addr, sni.is_some(), sni.unwrap_or_default());
                peer.options.connection_timeout = Some(spec.connect_timeout);
                peer.options.idle_timeout = Some(spec.idle_timeout);
                if spec.tls.is_some() {
                    peer.options.alpn = ALPN::H1;
                }
                if spec.protocol == UpstreamProtocol::H2c {
                    peer.options.alpn = ALPN::H2;
                    peer.options.max_h2_streams = 128;
                }
                EndpointState {
                    addr: endpoint.addr,
                    weight: endpoint.weight,
                    peer,
                    in_flight: AtomicU64::new(0),
                    requests_total: AtomicU64::new(0),
                    healthy: AtomicBool::new(true),
                    ejected: AtomicBool::new(false),
                    consecutive_failures: AtomicU32::new(0),
                    ejections: AtomicU32::new(0),
                    ejected_until_ms: AtomicU64::new(0),
                }
            })
            .collect();
        let ring = (spec.balance == Balance::ConsistentHash).then(|| {
            let buckets: Vec<_> = spec
                .endpoints
                .iter()
                .map(|e| pingora_ketama::Bucket::new(e.addr, e.weight))
                .collect();
            let positions = spec
                .endpoints
                .iter()
                .enumerate()
                .map(|(i, e)| (e.addr, i))
                .collect();
            (pingora_ketama::Continuum::new(&buckets), positions)
        });
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
            endpoints,
            cursor: AtomicU64::new(0),
            ring,
            breaker: breaker::BreakerState::default(),
            ejected_count: AtomicU32::new(0),
            tls,
            connect_duration,
            connections,
        }
    }

    /// Whether endpoint `index` may take requests now: healthy, and not ejected (an ejection
    /// whose time is up ends here, and the endpoint comes back on probation).
    #[inline]
    pub fn eligible(&self, index: usize) -> bool {
        let endpoint = &self.endpoints[index];
        if !endpoint.healthy.load(Ordering::Relaxed) {
            return false;
        }
        !endpoint.ejected.load(Ordering::Relaxed) || self.end_ejection_if_due(index)
    }

    /// Requests in flight across every endpoint.
    pub fn in_flight(&self) -> u64 {
        self.endpoints
            .iter()
            .map(|e| e.in_flight.load(Ordering::Relaxed))
            .sum()
    }

    /// Picks an eligible endpoint, counts the request against it, and returns its index.
    /// `hash_input` is the consistent-hash key's value, when the balance needs one.
    pub fn acquire(&self, hash_input: Option<&[u8]>) -> Option<usize> {
        let index = self.select(hash_input)?;
        let endpoint = &self.endpoints[index];
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        endpoint.requests_total.fetch_add(1, Ordering::Relaxed);
        Some(index)
    }

    /// Ends a request counted by [`Self::acquire`].
    pub fn release(&self, index: usize) {
        if let Some(endpoint) = self.endpoints.get(index) {
            endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
