//! The retry budget of a route.
//!
//! It bounds retries over a sliding 10 s window to `budget_percent` of the requests
//! plus `min_retries_per_second` for each second of the window that saw requests, as Linkerd does, so that an outage cannot
//! multiply the load on an upstream by the number of attempts.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::upstream::now_ms;

const WINDOW_SECONDS: u64 = 10;

/// The current second, counted from 1 so that a bucket's 0 means "never used".
fn current_second() -> u64 {
    now_ms() / 1000 + 1
}

#[derive(Debug, Default)]
struct Bucket {
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// Requests and retries over the last 10 seconds, in one-second buckets.
#[derive(Debug, Default)]
pub struct RetryBudget {
    buckets: [Bucket; WINDOW_SECONDS as usize],
}

impl RetryBudget {
    fn bucket(&self, second: u64) -> &Bucket {
        let bucket = &self.buckets[(second % WINDOW_SECONDS) as usize];
        let seen = bucket.second.load(Ordering::Acquire);
        if seen != second
            && bucket
                .second
                .compare_exchange(seen, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // This bucket last counted a second that has left the window.
            bucket.requests.store(0, Ordering::Release);
            bucket.retries.store(0, Ordering::Release);
        }
        bucket
    }

    /// Counts one original request.
    pub fn record_request(&self) {
        let second = current_second();
        self.bucket(second).requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget if the window allows it. The floor counts only the
    /// seconds of the window that saw requests, so a burst of failures right after a quiet
    /// spell cannot spend ten seconds' worth of floor at once.
    pub fn try_retry(&self, budget_percent: u32, min_per_second: u32) -> bool {
        let now = current_second();
        let (mut requests, mut retries, mut active_seconds) = (0u64, 0u64, 0u64);
        for bucket in &self.buckets {
            let second = bucket.second.load(Ordering::Acquire);
            if second != 0 && second + WINDOW_SECONDS > now && second <= now {
                requests += bucket.requests.load(Ordering::Relaxed);
                retries += bucket.retries.load(Ordering::Relaxed);
                active_seconds += 1;
            }
        }
        let allowed = requests * u64::from(budget_percent) / 100
            + u64::from(min_per_second) * active_seconds.max(1);
        if retries >= allowed {
            return false;
        }
        self.bucket(now).retries.fetch_add(1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::RetryBudget;

    #[test]
    fn budget_allows_the_floor_plus_a_share_of_requests() {
        let budget = RetryBudget::default();
        for _ in 0..1000 {
            budget.record_request();
        }
        // 20% of 1000, plus 1 for the one second that saw requests.
        let allowed = (0..1000).filter(|_| budget.try_retry(20, 1)).count();
        assert_eq!(allowed, 201);
    }
}
