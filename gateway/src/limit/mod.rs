//! Rate limits: token buckets per route and key, in this process (`local`) or shared by every
//! gateway through Redis (`global`). Both keep a bucket as GCRA, so the two agree exactly on
//! what `requests_per_second` and `burst` mean.

mod local;
mod retry_budget;
mod store;

use std::net::IpAddr;
use std::time::Duration;

use http::HeaderValue;
use ipnet::IpNet;
use meshgate_policy::compiled::{LimitKey, RateLimitMode, RateLimitScope, RateLimitSpec};
use meshgate_policy::schema::StoreErrorAction;
use pingora::http::RequestHeader;
use prometheus::IntCounter;
use sha2::{Digest, Sha256};

use crate::telemetry::Metrics;
pub use local::LocalBuckets;
pub use retry_budget::RetryBudget;
pub use store::RateLimitStore;

/// `RateLimit-Policy`: the limit a response is subject to (IETF httpapi draft).
pub const RATELIMIT_POLICY: http::HeaderName = http::HeaderName::from_static("ratelimit-policy");
/// `RateLimit`: what is left of it.
pub const RATELIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit");

/// A token bucket as GCRA, in nanoseconds: one token every `interval`, `capacity` = burst ×
/// interval of credit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    interval: u64,
    capacity: u64,
}

/// The outcome of taking a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether there was a token.
    pub allowed: bool,
    /// Tokens left after this request.
    pub remaining: u64,
    /// Admitted: until the bucket is full again. Refused: until the next token.
    pub wait: Duration,
}

impl Gcra {
    /// The bucket of `requests_per_second` refill and `burst` capacity.
    pub fn new(requests_per_second: f64, burst: u32) -> Gcra {
        let interval = (1e9 / requests_per_second).round().max(1.0) as u64;
        Gcra {
            interval,
            capacity: interval.saturating_mul(u64::from(burst.max(1))),
        }
    }

    /// Takes a token from a bucket whose TAT is `tat`, at `now`. Admitted: the new TAT and the
    /// decision. Refused: the decision (the TAT stays).
    pub fn step(&self, tat: u64, now: u64) -> Result<(u64, Decision), Decision> {
        let next = tat.max(now).saturating_add(self.interval);
        let ahead = next - now;
        if ahead > self.capacity {
            return Err(Decision {
                allowed: false,
                remaining: 0,
                wait: Duration::from_nanos(ahead - self.capacity),
            });
        }
        Ok((
            next,
            Decision {
                allowed: true,
                remaining: (self.capacity - ahead) / self.interval,
                wait: Duration::from_nanos(ahead),
            },
        ))
    }
}

/// What a route's limit says of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitOutcome {
    /// Under the limit.
    Admitted(Decision),
    /// Over the limit in shadow mode: counted, and let through.
    ShadowRefused(Decision),
    /// Over the limit: answer 429.
    Refused(Decision),
    /// The store did not answer in time or at all; `on_error` decides.
    StoreFailed(StoreErrorAction),
}

impl LimitOutcome {
    /// How the access log names the outcome.
    pub fn token(&self) -> &'static str {
        match self {
            LimitOutcome::Admitted(_) => "admitted",
            LimitOutcome::ShadowRefused(_) => "shadow-refused",
            LimitOutcome::Refused(_) => "refused",
            LimitOutcome::StoreFailed(_) => "store-error",
        }
    }
}

/// What a request's key is made of.
pub struct KeySource<'a> {
    /// The client's address, after `trusted_proxies`.
    pub client_ip: IpAddr,
    /// The caller's certificate identity.
    pub identity: Option<&'a str>,
    /// The request.
    pub header: &'a RequestHeader,
}

enum Backend {
    Local(LocalBuckets),
    /// Keys are `<prefix>:<route>:<spec fingerprint>:<key>` in the store.
    Global {
        key_prefix: String,
    },
}

/// One route's rate limit and its buckets.
pub struct RateLimiter {
    /// The spec it enforces; a reload keeps the limiter only while this is unchanged.
    pub spec: RateLimitSpec,
    backend: Backend,
    gcra: Gcra,
    route: String,
    policy_header: HeaderValue,
    limited: IntCounter,
    evictions: IntCounter,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("route", &self.route)
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// A limiter with full buckets. `key_prefix` is the store's, for global limits.
    pub fn new(route: &str, spec: &RateLimitSpec, key_prefix: &str, metrics: &Metrics) -> Self {
        let gcra = Gcra::new(spec.requests_per_second, spec.burst);
        let backend = match spec.scope {
            RateLimitScope::Local => Backend::Local(LocalBuckets::new(
                gcra,
                spec.key == LimitKey::Route,
                spec.max_keys as usize,
            )),
            RateLimitScope::Global => Backend::Global {
                key_prefix: format!("{key_prefix}:{route}:{}:", fingerprint(spec)),
            },
        };
        let (quota, window) = quota_and_window(spec.requests_per_second);
        let policy_header = HeaderValue::from_str(&format!("\"{route}\";q={quota};w={window}"))
            .unwrap_or_else(|_| HeaderValue::from_static("\"limit\""));
        RateLimiter {
            spec: spec.clone(),
            backend,
            gcra,
            route: route.to_owned(),
            policy_header,
            limited: metrics
                .rate_limited_total
                .with_label_values(&[route, spec.mode.as_str()]),
            evictions: metrics.rate_limit_evictions.with_label_values(&[route]),
        }
    }

    /// Takes a token for the request. `store` is the snapshot's, for global limits.
    pub async fn check(
        &self,
        source: &KeySource<'_>,
        store: Option<&RateLimitStore>,
    ) -> LimitOutcome {
        let decision = match &self.backend {
            Backend::Local(buckets) => {
                let (decision, evicted) = match &self.spec.key {
                    LimitKey::Route => buckets.take(()),
                    LimitKey::ClientIp => buckets.take(source.client_ip),
                    LimitKey::Identity => buckets.take(source.identity),
                    LimitKey::Header(name) => buckets.take(header_value(source.header, name)),
                };
                if evicted > 0 {
                    self.evictions.inc_by(evicted);
                }
                decision
            }
            Backend::Global { key_prefix } => {
                let Some(store) = store else {
                    // Validation makes a global limit need a store; this is only a guard.
                    return LimitOutcome::StoreFailed(StoreErrorAction::Allow);
                };
                let key = format!("{key_prefix}{}", self.global_key(source));
                match store.take(&key, self.gcra).await {
                    Ok(decision) => decision,
                    Err(()) => return LimitOutcome::StoreFailed(store.on_error()),
                }
            }
        };
        if decision.allowed {
            return LimitOutcome::Admitted(decision);
        }
        self.limited.inc();
        match self.spec.mode {
            RateLimitMode::Enforce => LimitOutcome::Refused(decision),
            RateLimitMode::Shadow => LimitOutcome::ShadowRefused(decision),
        }
    }

    /// The part of a store key that names the bucket. Addresses are written out; header values
    /// and identities are hashed, so keys stay short whatever the request carries.
    fn global_key(&self, source: &KeySource<'_>) -> String {
        match &self.spec.key {
            LimitKey::Route => "route".to_owned(),
            LimitKey::ClientIp => source.client_ip.to_string(),
            LimitKey::Identity => stable_hash(source.identity.map(str::as_bytes)),
            LimitKey::Header(name) => stable_hash(header_value(source.header, name)),
        }
    }

    /// `RateLimit-Policy` for this limit.
    pub fn policy_header(&self) -> &HeaderValue {
        &self.policy_header
    }

    /// `RateLimit` for a decision.
    pub fn state_header(&self, decision: &Decision) -> HeaderValue {
        let seconds = decision.wait.as_secs_f64().ceil() as u64;
        HeaderValue::from_str(&format!(
            "\"{}\";r={};t={seconds}",
            self.route, decision.remaining
        ))
        .unwrap_or_else(|_| HeaderValue::from_static("\"limit\""))
    }
}

/// `Retry-After` in whole seconds, at least 1, for a refusal.
pub fn retry_after_seconds(decision: &Decision) -> u64 {
    (decision.wait.as_secs_f64().ceil() as u64).max(1)
}

fn header_value<'a>(header: &'a RequestHeader, name: &str) -> Option<&'a [u8]> {
    header.headers.get(name).map(|v| v.as_bytes())
}

/// A hash that is the same in every gateway process and version, for store keys.
fn stable_hash(value: Option<impl AsRef<[u8]>>) -> String {
    match value {
        None => "-".to_owned(),
        Some(bytes) => hex::encode(&Sha256::digest(bytes.as_ref())[..12]),
    }
}

/// Distinguishes limits of the same route in the store, so that a changed limit starts with
/// fresh buckets in every gateway.
fn fingerprint(spec: &RateLimitSpec) -> String {
    let text = format!("{}|{}|{:?}", spec.requests_per_second, spec.burst, spec.key);
    hex::encode(&Sha256::digest(text.as_bytes())[..4])
}

/// The rate as `q` requests per `w` seconds, both whole numbers, for `RateLimit-Policy`.
fn quota_and_window(requests_per_second: f64) -> (u64, u64) {
    for window in 1..=3600u64 {
        let quota = requests_per_second * window as f64;
        if quota >= 1.0 && (quota - quota.round()).abs() < 1e-6 {
            return (quota.round() as u64, window);
        }
    }
    if requests_per_second >= 1.0 {
        (requests_per_second.floor() as u64, 1)
    } else {
        (1, (1.0 / requests_per_second).ceil() as u64)
    }
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the first address in
/// `x-forwarded-for` (read from the right) that is not one.
pub fn client_address(peer: IpAddr, header: &RequestHeader, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops = header
        .headers
        .get_all(http::header::HeaderName::from_static("x-forwarded-for"))
        .iter()
        .collect::<Vec<_>>();
    let mut client = peer;
    for value in hops.iter().rev() {
        let Ok(text) = value.to_str() else {
            return client;
        };
        for hop in text.rsplit(',') {
            let Some(ip) = parse_hop(hop.trim()) else {
                // A hop that is not an address: nothing left of it can be believed.
                return client;
            };
            client = ip;
            if !is_trusted(&ip) {
                return ip;
            }
        }
    }
    client
}

fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_admits_the_burst_then_one_per_interval() {
        let gcra = Gcra::new(10.0, 3);
        let mut tat = 0;
        let now = 1_000_000_000;
        for left in [2, 1, 0] {
            let (next, decision) = gcra.step(tat, now).expect("within burst");
            assert_eq!(decision.remaining, left);
            tat = next;
        }
        let refused = gcra.step(tat, now).expect_err("burst spent");
        assert_eq!(refused.wait, Duration::from_millis(100));
        assert!(gcra.step(tat, now + 100_000_000).is_ok());
    }

    #[test]
    fn quota_is_written_in_whole_numbers() {
        assert_eq!(quota_and_window(100.0), (100, 1));
        assert_eq!(quota_and_window(2.5), (5, 2));
        assert_eq!(quota_and_window(0.5), (1, 2));
    }

    #[test]
    fn the_client_is_the_first_untrusted_hop_from_the_right() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut header = RequestHeader::build("GET", b"/", None).unwrap();
        header
            .append_header("x-forwarded-for", "203.0.113.9, 198.51.100.1, 10.1.1.1")
            .unwrap();
        let proxy: IpAddr = "10.0.0.2".parse().unwrap();
        let outsider: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(
            client_address(proxy, &header, &trusted),
            "198.51.100.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_address(outsider, &header, &trusted), outsider);
        assert_eq!(client_address(proxy, &header, &[]), proxy);
    }
}
