//! An upstream's endpoints at one moment: the literal ones from the policy plus what DNS
//! answered, in priority tiers, with each tier's weighted schedule and hash ring. A new answer
//! builds a new set and swaps it in; an endpoint that stays is the same `Arc<EndpointState>`
//! in both, so its health, ejection, in-flight count, counters and pooled connections carry
//! over, and requests that picked it from the old set end on it as usual.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use meshgate_policy::compiled::{
    smooth_weighted_schedule, Balance, UpstreamProtocol, UpstreamSpec,
};
use pingora::protocols::ALPN;
use pingora::upstreams::peer::HttpPeer;

/// One endpoint and its live counters.
#[derive(Debug)]
pub struct EndpointState {
    /// Its address.
    pub addr: SocketAddr,
    /// The relative weight its source gives: the policy, or an SRV record's weight.
    pub weight: AtomicU32,
    /// The weight an operator set through the admin API, taking the place of `weight`;
    /// 0 when none is set. The set's schedules are rebuilt when it changes.
    pub weight_override: AtomicU32,
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
    pub(super) ejected_until_ms: AtomicU64,
    /// What an operator set through the admin API: [`ADMIN_ENABLED`], [`ADMIN_DRAINING`] or
    /// [`ADMIN_DISABLED`]. Anything but enabled takes no new request.
    pub admin_state: std::sync::atomic::AtomicU8,
    /// The last active health check: `passed` or what failed, and when.
    pub last_check: std::sync::Mutex<Option<(String, std::time::SystemTime)>>,
}

/// An endpoint taking requests (the default).
pub const ADMIN_ENABLED: u8 = 0;
/// An endpoint taking no new request while those in flight finish.
pub const ADMIN_DRAINING: u8 = 1;
/// An endpoint out of service.
pub const ADMIN_DISABLED: u8 = 2;

/// The name of an admin state, as `/upstreams` shows it and the API takes it.
pub fn admin_state_name(state: u8) -> &'static str {
    match state {
        ADMIN_DRAINING => "draining",
        ADMIN_DISABLED => "disabled",
        _ => "enabled",
    }
}

impl EndpointState {
    /// A fresh endpoint of `spec` at `addr`.
    pub fn new(spec: &UpstreamSpec, addr: SocketAddr, weight: u32) -> EndpointState {
        // Without `sni`, the endpoint's address is the name verified (an IP SAN), so
        // verification is never skipped.
        let sni = spec
            .tls
            .as_ref()
            .map(|t| t.sni.clone().unwrap_or_else(|| addr.ip().to_string()));
        let mut peer = HttpPeer::new(addr, sni.is_some(), sni.unwrap_or_default());
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
            addr,
            weight: AtomicU32::new(weight),
            weight_override: AtomicU32::new(0),
            peer,
            in_flight: AtomicU64::new(0),
            requests_total: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            ejected: AtomicBool::new(false),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            admin_state: std::sync::atomic::AtomicU8::new(ADMIN_ENABLED),
            last_check: std::sync::Mutex::new(None),
        }
    }

    /// Its weight now: the operator's override when one is set, else its source's.
    #[inline]
    pub fn weight(&self) -> u32 {
        match self.weight_override.load(Ordering::Relaxed) {
            0 => self.weight.load(Ordering::Relaxed),
            weight => weight,
        }
    }

    /// The operator's weight override, if one is set.
    pub fn weight_override(&self) -> Option<u32> {
        match self.weight_override.load(Ordering::Relaxed) {
            0 => None,
            weight => Some(weight),
        }
    }
}

/// An endpoint as a source gives it: address, weight, priority tier and zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointEntry {
    /// Its address.
    pub addr: SocketAddr,
    /// Its relative weight.
    pub weight: u32,
    /// Its priority tier (0 first).
    pub priority: u32,
    /// The zone it runs in.
    pub zone: Option<Arc<str>>,
}

/// The endpoints of one priority.
pub(super) struct Tier {
    /// The priority.
    pub(super) priority: u32,
    /// Indexes into [`EndpointSet::endpoints`].
    pub(super) members: Vec<u32>,
    /// Member indexes in smooth weighted round-robin order.
    pub(super) schedule: Vec<u32>,
    /// The ketama ring of the members, for `consistent_hash`.
    pub(super) ring: Option<(pingora_ketama::Continuum, HashMap<SocketAddr, usize>)>,
    /// With `locality = "prefer_local"`, the members in the gateway's zone, as a tier of
    /// their own; `None` when there are none.
    pub(super) local: Option<Box<Tier>>,
}

impl Tier {
    /// The tier of `members` (indexes into `endpoints`).
    fn new(
        spec: &UpstreamSpec,
        endpoints: &[Arc<EndpointState>],
        priority: u32,
        members: Vec<u32>,
    ) -> Tier {
        let weights: Vec<u32> = members
            .iter()
            .map(|&i| endpoints[i as usize].weight())
            .collect();
        let schedule = smooth_weighted_schedule(&weights)
            .into_iter()
            .map(|slot| members[slot as usize])
            .collect();
        let ring = (spec.balance == Balance::ConsistentHash).then(|| {
            let buckets: Vec<_> = members
                .iter()
                .map(|&i| {
                    let e = &endpoints[i as usize];
                    pingora_ketama::Bucket::new(e.addr, e.weight())
                })
                .collect();
            let positions = members
                .iter()
                .map(|&i| (endpoints[i as usize].addr, i as usize))
                .collect();
            (pingora_ketama::Continuum::new(&buckets), positions)
        });
        Tier {
            priority,
            members,
            schedule,
            ring,
            local: None,
        }
    }
}

impl std::fmt::Debug for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tier")
            .field("priority", &self.priority)
            .field("members", &self.members)
            .finish_non_exhaustive()
    }
}

/// An upstream's endpoints at one moment.
#[derive(Debug, Default)]
pub struct EndpointSet {
    /// Every endpoint, literal ones first in file order, then discovered ones.
    pub endpoints: Vec<Arc<EndpointState>>,
    /// Each endpoint's priority tier, parallel to `endpoints`.
    pub priorities: Vec<u32>,
    /// Each endpoint's zone, parallel to `endpoints`.
    pub zones: Vec<Option<Arc<str>>>,
    /// Tiers, lowest priority first.
    pub(super) tiers: Vec<Tier>,
}

impl EndpointSet {
    /// Builds the set of `entries` (an address listed twice is kept once, its first entry
    /// winning), taking each endpoint that `previous` already has from it.
    pub fn build(
        spec: &UpstreamSpec,
        entries: &[EndpointEntry],
        previous: Option<&EndpointSet>,
    ) -> EndpointSet {
        let mut seen = HashMap::new();
        let mut endpoints = Vec::with_capacity(entries.len());
        let mut priorities = Vec::with_capacity(entries.len());
        let mut zones = Vec::with_capacity(entries.len());
        for entry in entries {
            if seen.insert(entry.addr, endpoints.len()).is_some() {
                continue;
            }
            let kept = previous.and_then(|p| p.endpoints.iter().find(|e| e.addr == entry.addr));
            let endpoint = match kept {
                Some(endpoint) => {
                    endpoint.weight.store(entry.weight, Ordering::Relaxed);
                    endpoint.clone()
                }
                None => Arc::new(EndpointState::new(spec, entry.addr, entry.weight)),
            };
            endpoints.push(endpoint);
            priorities.push(entry.priority);
            zones.push(entry.zone.clone());
        }
        let mut levels: Vec<u32> = priorities.clone();
        levels.sort_unstable();
        levels.dedup();
        let tiers = levels
            .into_iter()
            .map(|priority| {
                let members: Vec<u32> = (0..endpoints.len() as u32)
                    .filter(|&i| priorities[i as usize] == priority)
                    .collect();
                let local: Vec<u32> = match &spec.locality {
                    Some(locality) => members
                        .iter()
                        .copied()
                        .filter(|&i| zones[i as usize].as_deref() == Some(locality.zone.as_str()))
                        .collect(),
                    None => Vec::new(),
                };
                let mut tier = Tier::new(spec, &endpoints, priority, members);
                if !local.is_empty() {
                    tier.local = Some(Box::new(Tier::new(spec, &endpoints, priority, local)));
                }
                tier
            })
            .collect();
        EndpointSet {
            endpoints,
            priorities,
            zones,
            tiers,
        }
    }

    /// The addresses, weights and tiers of the set, as their sources gave them (without
    /// operator overrides), as entries.
    pub fn entries(&self) -> Vec<EndpointEntry> {
        self.endpoints
            .iter()
            .zip(&self.priorities)
            .zip(&self.zones)
            .map(|((e, &priority), zone)| EndpointEntry {
                addr: e.addr,
                weight: e.weight.load(Ordering::Relaxed),
                priority,
                zone: zone.clone(),
            })
            .collect()
    }
}
