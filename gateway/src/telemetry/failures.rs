//! The gateway's own line for a request that failed upstream (in place of Pingora's `Fail to
//! proxy: …`): route, upstream, endpoint, reason, status and request id as fields. One line
//! per route and reason per second at most; the next one says how many were held back.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often one route and reason may log.
const INTERVAL: Duration = Duration::from_secs(1);

/// By route, then by reason token: when the last line was written and the lines held back
/// since. Looked up by the route's `&str`, so a held-back line allocates nothing.
type Recent = HashMap<String, HashMap<&'static str, (Instant, u64)>>;

/// Routes and reasons with their last line and the lines held back since.
#[derive(Default)]
pub struct FailureLog {
    recent: Mutex<Recent>,
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
        let now = Instant::now();
        let suppressed = {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            if recent.len() > 10_000 {
                // Routes come from the policy, reasons from a fixed list: this only bounds a
                // pathological policy.
                recent.retain(|_, reasons| {
                    reasons.retain(|_, (at, _)| now.duration_since(*at) < INTERVAL);
                    !reasons.is_empty()
                });
            }
            if !recent.contains_key(failure.route) {
                recent.insert(failure.route.to_owned(), HashMap::new());
            }
            let reasons = recent.get_mut(failure.route).expect("inserted above");
            match reasons.get_mut(failure.reason) {
                Some((at, held)) if now.duration_since(*at) < INTERVAL => {
                    *held += 1;
                    return;
                }
                Some((at, held)) => {
                    *at = now;
                    std::mem::take(held)
                }
                None => {
                    reasons.insert(failure.reason, (now, 0));
                    0
                }
            }
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
        let log = FailureLog::default();
        let failure = Failure {
            route: "r",
            upstream: "u",
            endpoint: None,
            reason: "connect-failure",
            status: 502,
            request_id: "id",
            cause: "refused".into(),
        };
        for _ in 0..5 {
            log.record(&failure);
        }
        let recent = log.recent.lock().unwrap();
        assert_eq!(recent["r"]["connect-failure"].1, 4);
    }
}
