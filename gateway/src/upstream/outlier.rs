//! Outlier detection: an endpoint that fails `consecutive_failures` times in a row is ejected
//! for `base_ejection` × the number of its ejections (capped at `max_ejection`), as long as no
//! more than `max_ejection_percent` of the pool is ejected at once. When the time is up it
//! comes back on probation: one more failure ejects it again.

use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::Instant;

use super::{EndpointState, UpstreamState};

/// Milliseconds since the first call in this process; a monotonic clock for ejection deadlines.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl UpstreamState {
    /// Records the outcome of a try on `endpoint`. Returns true when this failure ejected it.
    pub fn report_outcome(&self, endpoint: &EndpointState, success: bool) -> bool {
        if success {
            endpoint.consecutive_failures.store(0, Ordering::Relaxed);
            return false;
        }
        let failures = endpoint
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        let Some(spec) = &self.spec.outlier_detection else {
            return false;
        };
        if failures < spec.consecutive_failures || endpoint.ejected.load(Ordering::Relaxed) {
            return false;
        }
        // Reserve a place under the cap before ejecting, so concurrent failures cannot
        // eject more of the pool than allowed.
        let pool = self.endpoints().endpoints.len() as u64;
        let allowed = self
            .ejected_count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |ejected| {
                ((u64::from(ejected) + 1) * 100 <= u64::from(spec.max_ejection_percent) * pool)
                    .then_some(ejected + 1)
            })
            .is_ok();
        if !allowed {
            return false;
        }
        if endpoint
            .ejected
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            self.uncount_ejection();
            return false;
        }
        let times = endpoint.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let duration = spec
            .base_ejection
            .saturating_mul(times)
            .min(spec.max_ejection);
        // One more millisecond: `now_ms` rounds down, so without it an ejection could end up
        // to a millisecond before its time.
        endpoint.ejected_until_ms.store(
            now_ms() + duration.as_millis() as u64 + 1,
            Ordering::Release,
        );
        tracing::warn!(
            upstream = %self.spec.name,
            endpoint = %endpoint.addr,
            failures,
            ejection = times,
            seconds = duration.as_secs_f64(),
            "endpoint ejected"
        );
        true
    }

    /// Ends the ejection of `endpoint` if its time is up; returns whether it is back.
    pub(super) fn end_ejection_if_due(&self, endpoint: &EndpointState) -> bool {
        if now_ms() < endpoint.ejected_until_ms.load(Ordering::Acquire) {
            return false;
        }
        if endpoint
            .ejected
            .compare_exchange(true, false, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.uncount_ejection();
            // Probation: the next failure ejects it again at once.
            let threshold = self
                .spec
                .outlier_detection
                .map_or(1, |spec| spec.consecutive_failures);
            endpoint
                .consecutive_failures
                .store(threshold.saturating_sub(1), Ordering::Relaxed);
            tracing::info!(upstream = %self.spec.name, endpoint = %endpoint.addr, "endpoint back on probation");
        }
        true
    }

    /// One ejection fewer; never below zero (a new endpoint set recounts them, and an
    /// endpoint that left may still end its ejection).
    fn uncount_ejection(&self) {
        let _ = self
            .ejected_count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(1))
            });
    }
}
