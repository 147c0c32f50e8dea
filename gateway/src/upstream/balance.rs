//! Endpoint selection for each `balance` algorithm. Lock-free: atomics only.

use std::sync::atomic::Ordering;

use meshgate_policy::compiled::Balance;
use rand::Rng;

use super::UpstreamState;

impl UpstreamState {
    pub(super) fn select(&self, hash_input: Option<&[u8]>) -> Option<usize> {
        match self.spec.balance {
            Balance::RoundRobin => self.select_round_robin(),
            Balance::Random => self.select_random(),
            Balance::LeastRequest => self.select_least_request(),
            Balance::ConsistentHash => self.select_consistent(hash_input.unwrap_or_default()),
        }
    }

    /// Walks the precomputed smooth weighted schedule; skips ineligible endpoints.
    fn select_round_robin(&self) -> Option<usize> {
        let schedule = &self.spec.schedule;
        let start = self.cursor.fetch_add(1, Ordering::Relaxed) as usize;
        self.first_eligible_from(schedule, start)
    }

    /// A uniformly random slot of the weighted schedule, so weights hold on average.
    fn select_random(&self) -> Option<usize> {
        let schedule = &self.spec.schedule;
        if schedule.is_empty() {
            return None;
        }
        let start = rand::rng().random_range(0..schedule.len());
        self.first_eligible_from(schedule, start)
    }

    fn first_eligible_from(&self, schedule: &[u32], start: usize) -> Option<usize> {
        let len = schedule.len();
        (0..len)
            .map(|offset| schedule[(start + offset) % len] as usize)
            .find(|&index| self.eligible(index))
    }

    /// Power of two random choices on in-flight requests per unit of weight, as Envoy and
    /// Linkerd do: close to the best choice without scanning the pool or sharing a lock.
    fn select_least_request(&self) -> Option<usize> {
        let count = self.endpoints.len();
        if count == 1 {
            return self.eligible(0).then_some(0);
        }
        let mut rng = rand::rng();
        let first = rng.random_range(0..count);
        let mut second = rng.random_range(0..count - 1);
        if second >= first {
            second += 1;
        }
        let load = |index: usize| {
            let endpoint = &self.endpoints[index];
            // Compare in_flight / weight without dividing: (a_in+1) * b_w vs (b_in+1) * a_w.
            (
                endpoint.in_flight.load(Ordering::Relaxed) + 1,
                u64::from(endpoint.weight),
            )
        };
        let candidates = match (self.eligible(first), self.eligible(second)) {
            (true, true) => {
                let (first_load, first_weight) = load(first);
                let (second_load, second_weight) = load(second);
                if first_load * second_weight <= second_load * first_weight {
                    return Some(first);
                }
                return Some(second);
            }
            (true, false) => return Some(first),
            (false, true) => return Some(second),
            (false, false) => 0..count,
        };
        candidates
            .filter(|&index| self.eligible(index))
            .min_by_key(|&index| {
                let (in_flight, weight) = load(index);
                in_flight * 1024 / weight.max(1)
            })
    }

    /// Ketama ring: the same key goes to the same endpoint while it is eligible, and to the
    /// next endpoint on the ring otherwise.
    fn select_consistent(&self, key: &[u8]) -> Option<usize> {
        let (ring, positions) = self.ring.as_ref()?;
        ring.node_iter(key)
            .take(self.endpoints.len() * 160)
            .filter_map(|addr| positions.get(addr).copied())
            .find(|&index| self.eligible(index))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use meshgate_policy::compiled::{
        smooth_weighted_schedule, Balance, BreakerSpec, EndpointSpec, UpstreamProtocol,
        UpstreamSpec,
    };

    use super::UpstreamState;

    fn pool(balance: Balance, weights: &[u32]) -> UpstreamState {
        let endpoints: Vec<EndpointSpec> = weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| EndpointSpec {
                addr: format!("127.0.0.1:{}", 10000 + i).parse().unwrap(),
                weight,
            })
            .collect();
        UpstreamState::new(
            UpstreamSpec {
                name: "pool".into(),
                schedule: smooth_weighted_schedule(weights),
                endpoints,
                balance,
                hash_key: None,
                connect_timeout: std::time::Duration::from_secs(1),
                protocol: UpstreamProtocol::Http1,
                idle_timeout: std::time::Duration::from_secs(60),
                health_check: None,
                circuit_breaker: BreakerSpec {
                    max_connections: 10,
                    max_pending: 10,
                    max_requests: 10,
                    max_retries: 10,
                },
                outlier_detection: None,
                tls: None,
            },
            None,
            &crate::telemetry::Metrics::new(),
        )
    }

    #[test]
    fn round_robin_follows_weights_and_skips_ineligible() {
        let pool = pool(Balance::RoundRobin, &[3, 1]);
        let picks: Vec<usize> = (0..8).map(|_| pool.select(None).unwrap()).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 6);
        pool.endpoints[0].ejected.store(true, Ordering::Relaxed);
        pool.endpoints[0]
            .ejected_until_ms
            .store(u64::MAX, Ordering::Relaxed);
        assert!((0..8).all(|_| pool.select(None) == Some(1)));
        pool.endpoints[1].healthy.store(false, Ordering::Relaxed);
        assert_eq!(pool.select(None), None);
    }

    #[test]
    fn least_request_prefers_the_idle_endpoint() {
        let pool = pool(Balance::LeastRequest, &[1, 1]);
        pool.endpoints[0].in_flight.store(50, Ordering::Relaxed);
        assert!((0..50).all(|_| pool.select(None) == Some(1)));
    }

    #[test]
    fn consistent_hash_is_sticky_and_fails_over() {
        let pool = pool(Balance::ConsistentHash, &[1, 1, 1]);
        let first = pool.select(Some(b"user-42")).unwrap();
        assert!((0..20).all(|_| pool.select(Some(b"user-42")) == Some(first)));
        pool.endpoints[first]
            .healthy
            .store(false, Ordering::Relaxed);
        let second = pool.select(Some(b"user-42")).unwrap();
        assert_ne!(first, second);
    }
}
