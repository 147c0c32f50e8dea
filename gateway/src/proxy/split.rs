//! Choosing where a request goes: the route's split side, that side's upstream or the first
//! of its `failover` upstreams that can take the request, and, when none can and
//! `split_fallback` is on, another side of the route. Then the request is admitted to the
//! chosen upstream's breaker, so that an overflow is answered like any other gateway answer.

use std::sync::atomic::Ordering;

use pingora::proxy::Session;

use crate::snapshot::Snapshot;
use crate::telemetry::Metrics;
use crate::upstream::Overflow;

use super::context::RequestCtx;
use super::request::key_hash;

/// The request's slot in the route's split schedule: its sticky key's hash, or the next turn.
pub(super) fn slot(
    snapshot: &Snapshot,
    route_index: usize,
    session: &Session,
    ctx: &RequestCtx,
) -> usize {
    match &snapshot.policy.routes[route_index].split_key {
        Some(key) => key_hash(key, session.req_header(), ctx.client_ip) as usize,
        None => snapshot.routes[route_index]
            .split_cursor
            .fetch_add(1, Ordering::Relaxed) as usize,
    }
}

/// The upstream that takes a request meant for `upstream`: itself when it can, else the
/// first of its failovers that can.
pub(crate) fn target(snapshot: &Snapshot, upstream: usize) -> Option<usize> {
    if snapshot.upstreams[upstream].available() {
        return Some(upstream);
    }
    snapshot.policy.failover[upstream]
        .iter()
        .copied()
        .find(|&other| snapshot.upstreams[other].available())
}

/// Chooses the side and the upstream for `slot`, sets them in `ctx`, and admits the request
/// to the upstream's breaker.
pub(super) fn choose(
    snapshot: &Snapshot,
    route_index: usize,
    slot: usize,
    ctx: &mut RequestCtx,
    metrics: &Metrics,
) -> Result<(), Overflow> {
    let route = &snapshot.policy.routes[route_index];
    let schedule = &route.split_schedule;
    let mut split = schedule[slot % schedule.len()] as usize;
    let planned = route.splits[split].upstream;
    let mut upstream = planned;
    let fallback = route.split_fallback && route.splits.len() > 1;
    // Only routes that have somewhere else to go look at the upstream first: the others
    // answer `no-healthy-upstream` when the endpoint is chosen, as they always did.
    if fallback || !snapshot.policy.failover[planned].is_empty() {
        let mut chosen = target(snapshot, planned).map(|to| (split, to));
        if chosen.is_none() && fallback {
            chosen = (1..schedule.len())
                .map(|offset| schedule[(slot + offset) % schedule.len()] as usize)
                .filter(|&other| route.splits[other].upstream != planned)
                .find_map(|other| Some((other, target(snapshot, route.splits[other].upstream)?)));
            if chosen.is_some() {
                metrics
                    .split_fallbacks
                    .with_label_values(&[
                        route.name.as_str(),
                        &snapshot.upstreams[planned].spec.name,
                    ])
                    .inc();
            }
        }
        if let Some((side, to)) = chosen {
            let meant = route.splits[side].upstream;
            if to != meant {
                metrics
                    .failovers
                    .with_label_values(&[
                        snapshot.upstreams[meant].spec.name.as_str(),
                        &snapshot.upstreams[to].spec.name,
                    ])
                    .inc();
            }
            split = side;
            upstream = to;
        }
    }
    ctx.split = Some(split);
    ctx.upstream = Some(upstream);
    if let Err(overflow) = snapshot.upstreams[upstream].admit_request() {
        ctx.overflow = Some(overflow);
        return Err(overflow);
    }
    ctx.holds_request = true;
    Ok(())
}
