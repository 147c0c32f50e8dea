//! Circuit breaking: per-upstream limits on requests, retries, pending connects and
//! connections in use. A request over a limit is refused at once instead of queueing behind a
//! struggling upstream.

use std::sync::atomic::{AtomicU64, Ordering};

use super::UpstreamState;

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// `max_requests`.
    Requests,
    /// `max_pending`.
    Pending,
    /// `max_connections`.
    Connections,
}

impl Overflow {
    /// The limit's key in the policy, sent in `x-meshgate-overflow`.
    pub fn limit(self) -> &'static str {
        match self {
            Overflow::Requests => "max_requests",
            Overflow::Pending => "max_pending",
            Overflow::Connections => "max_connections",
        }
    }
}

/// Live counters of one upstream's breaker.
#[derive(Debug, Default)]
pub struct BreakerState {
    /// Requests in flight.
    pub active_requests: AtomicU64,
    /// Retries in flight.
    pub active_retries: AtomicU64,
    /// Tries waiting for a connection.
    pub pending: AtomicU64,
    /// Connections in use by a request.
    pub active_connections: AtomicU64,
    /// Requests refused by any limit.
    pub overflows: AtomicU64,
}

/// Takes one unit of `counter` if it is below `limit`.
fn take(counter: &AtomicU64, limit: u32) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < u64::from(limit)).then_some(n + 1)
        })
        .is_ok()
}

/// Gives back one unit of `counter`.
pub fn give_back(counter: &AtomicU64) {
    let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
}

impl UpstreamState {
    /// Admits a new request (`max_requests`), or says which limit refused it.
    pub fn admit_request(&self) -> Result<(), Overflow> {
        let limits = self.spec.circuit_breaker;
        if take(&self.breaker.active_requests, limits.max_requests) {
            Ok(())
        } else {
            self.breaker.overflows.fetch_add(1, Ordering::Relaxed);
            Err(Overflow::Requests)
        }
    }

    /// Whether a new request would pass `max_requests` and find a connection under
    /// `max_connections` now (nothing is taken).
    pub fn below_limits(&self) -> bool {
        let limits = self.spec.circuit_breaker;
        self.breaker.active_requests.load(Ordering::Acquire) < u64::from(limits.max_requests)
            && self.breaker.active_connections.load(Ordering::Acquire)
                < u64::from(limits.max_connections)
    }

    /// Admits one try's wait for a connection (`max_pending` and `max_connections`).
    pub fn admit_connect(&self) -> Result<(), Overflow> {
        let limits = self.spec.circuit_breaker;
        if self.breaker.active_connections.load(Ordering::Acquire)
            >= u64::from(limits.max_connections)
        {
            self.breaker.overflows.fetch_add(1, Ordering::Relaxed);
            return Err(Overflow::Connections);
        }
        if take(&self.breaker.pending, limits.max_pending) {
            Ok(())
        } else {
            self.breaker.overflows.fetch_add(1, Ordering::Relaxed);
            Err(Overflow::Pending)
        }
    }

    /// Admits a proxied TCP connection (`max_connections`); give it back with
    /// [`give_back`] on `breaker.active_connections` when it closes.
    pub fn admit_tcp_connection(&self) -> Result<(), Overflow> {
        if take(
            &self.breaker.active_connections,
            self.spec.circuit_breaker.max_connections,
        ) {
            Ok(())
        } else {
            self.breaker.overflows.fetch_add(1, Ordering::Relaxed);
            Err(Overflow::Connections)
        }
    }

    /// Admits a retry (`max_retries`). A retry over the limit is simply not made: the
    /// failure of the last try is the answer.
    pub fn admit_retry(&self) -> bool {
        let admitted = take(
            &self.breaker.active_retries,
            self.spec.circuit_breaker.max_retries,
        );
        if !admitted {
            self.breaker.overflows.fetch_add(1, Ordering::Relaxed);
        }
        admitted
    }
}
