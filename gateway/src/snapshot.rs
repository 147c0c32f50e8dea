//! The data plane's view of one applied policy: the compiled policy plus the runtime state of
//! its upstreams and routes. A request loads one `Arc<Snapshot>` and keeps it to the end.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use meshgate_policy::CompiledPolicy;

use crate::upstream::UpstreamState;

/// Per-route runtime state.
#[derive(Debug, Default)]
pub struct RouteState {
    /// Position in the route's split schedule.
    pub split_cursor: AtomicU64,
}

/// One applied policy and its runtime state.
#[derive(Debug)]
pub struct Snapshot {
    /// The compiled policy.
    pub policy: CompiledPolicy,
    /// Upstream pools, parallel to `policy.upstreams`.
    pub upstreams: Vec<Arc<UpstreamState>>,
    /// Route state, parallel to `policy.routes`.
    pub routes: Vec<RouteState>,
    /// The applied policy's number.
    pub version: u64,
}

impl Snapshot {
    /// Builds a snapshot, taking over the pool of every upstream of `previous` whose name and
    /// spec are unchanged.
    pub fn build(policy: CompiledPolicy, previous: Option<&Snapshot>, version: u64) -> Snapshot {
        let upstreams = policy
            .upstreams
            .iter()
            .map(|spec| {
                previous
                    .and_then(|old| old.upstreams.iter().find(|u| u.spec == *spec))
                    .cloned()
                    .unwrap_or_else(|| Arc::new(UpstreamState::new(spec.clone())))
            })
            .collect();
        let routes = policy
            .routes
            .iter()
            .map(|_| RouteState::default())
            .collect();
        Snapshot {
            policy,
            upstreams,
            routes,
            version,
        }
    }

    /// The index of the listener bound to `local`: an exact address match first, then a
    /// wildcard address on the same port.
    pub fn listener_for(&self, local: std::net::SocketAddr) -> Option<usize> {
        let listeners = &self.policy.listeners;
        listeners.iter().position(|l| l.addr == local).or_else(|| {
            listeners
                .iter()
                .position(|l| l.addr.port() == local.port() && l.addr.ip().is_unspecified())
        })
    }
}
