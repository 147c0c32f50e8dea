//! The gateway's own lines for what fails often and alike: a request that failed upstream (in
//! place of Pingora's `Fail to proxy: …`: route, upstream, endpoint, reason, status and request
//! id as fields) and a downstream TLS handshake that failed (in place of Pingora's ERROR line
//! per connection). One line per route (or listener) and reason per second at most; the next
//! one says how many were held back.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often one route and reason may log.
const INTERVAL: Duration = Duration::from_secs(1);

/// By key (a route or listener name), then by reason token: when the last line was written and
/// the lines held back since. Looked up by the key's `&str`, so a held-back line allocates
/// nothing.
type Recent = HashMap<String, HashMap<&'static str, (Instant, u64)>>;

/// Keys and reasons with their last line and the lines held back since.
#[derive(Default)]
pub struct Throttle {
    recent: Mutex<Recent>,
}

impl Throttle {
    /// Whether a line for `key` and `reason` may be written now: `Some(held back since the
    /// last one)`, or `None` when one was written less than a second ago (this one is counted).
    pub fn admit(&self, key: &str, reason: &'static str) -> Option<u64> {
        let now = Instant::now();
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() > 10_000 {
            // Keys come from the policy, reasons from fixed lists: this only bounds a
            // pathological policy.
            recent.retain(|_, reasons| {
                reasons.retain(|_, (at, _)| now.duration_since(*at) < INTERVAL);
                !reasons.is_empty()
            });
        }
        if !recent.contains_key(key) {
            recent.insert(key.to_owned(), HashMap::new());
        }
        let reasons = recent.get_mut(key).expect("inserted above");
        match reasons.get_mut(reason) {
            Some((at, held)) if now.duration_since(*at) < INTERVAL => {
                *held += 1;
                None
            }
            Some((at, held)) => {
                *at = now;
                Some(std::mem::take(held))
            }
            None => {
                reasons.insert(reason, (now, 0));
                Some(0)
            }
        }
    }
}

/// Failed requests, logged through a [`Throttle`].
#[derive(Default)]
pub struct FailureLog {
    throttle: Throttle,
}

/// A failed request, as logged.
pub struct Failure<'a> {
    /// The route's name.
    pub route: &'a str,
    /// The upstream's name, if one was chosen.
    pub upstream: &'a str,
    /// The last endpoint tried, if any.
    pub endpoint: Option<std::net::SocketAddr>,
    /// The reason token (`connect-failure`…).
    pub reason: &'static str,
    /// The status answered (0 when the client was gone).
    pub status: u16,
    /// The request's id.
    pub request_id: &'a str,
    /// What failed, in words.
    pub cause: String,
}

impl FailureLog {
    /// Logs `failure` unless its route and reason logged less than a second ago (then it is
    /// counted, and the next line says how many were held back).
    pub fn record(&self, failure: &Failure<'_>) {
        let Some(suppressed) = self.throttle.admit(failure.route, failure.reason) else {
            return;
        };
        let endpoint = failure.endpoint.map(|e| e.to_string()).unwrap_or_default();
        tracing::warn!(
            route = failure.route,
            upstream = failure.upstream,
            endpoint = endpoint.as_str(),
            reason = failure.reason,
            status = failure.status,
            request_id = failure.request_id,
            suppressed,
            "request failed: {}",
            failure.cause
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_repeats_within_a_second() {
        let throttle = Throttle::default();
        assert_eq!(throttle.admit("r", "connect-failure"), Some(0));
        for _ in 0..4 {
            assert_eq!(throttle.admit("r", "connect-failure"), None);
        }
        // Another reason, or another key, has its own second.
        assert_eq!(throttle.admit("r", "timeout"), Some(0));
        assert_eq!(throttle.admit("s", "connect-failure"), Some(0));
        let recent = throttle.recent.lock().unwrap();
        assert_eq!(recent["r"]["connect-failure"].1, 4);
    }
}
