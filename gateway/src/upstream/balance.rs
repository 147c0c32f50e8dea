//! Endpoint selection for each `balance` algorithm, tier by tier: the lowest priority tier
//! with an eligible endpoint takes the request. Lock-free: atomics only.

use std::sync::atomic::Ordering;

use meshgate_policy::compiled::Balance;
use rand::Rng;

use super::set::{EndpointSet, Tier};
use super::UpstreamState;

impl UpstreamState {
    /// The index in `set` of the endpoint a request goes to, if any is eligible.
    pub(super) fn select(&self, set: &EndpointSet, hash_input: Option<&[u8]>) -> Option<usize> {
        set.tiers.iter().find_map(|tier| match self.spec.balance {
            Balance::RoundRobin => self.select_round_robin(set, tier),
            Balance::Random => self.select_random(set, tier),
            Balance::LeastRequest => self.select_least_request(set, tier),
            Balance::ConsistentHash => {
                self.select_consistent(set, tier, hash_input.unwrap_or_default())
            }
        })
    }

    /// Walks the precomputed smooth weighted schedule; skips ineligible endpoints.
    fn select_round_robin(&self, set: &EndpointSet, tier: &Tier) -> Option<usize> {
        let start = self.cursor.fetch_add(1, Ordering::Relaxed) as usize;
        self.first_eligible_from(set, &tier.schedule, start)
    }

    /// A uniformly random slot of the weighted schedule, so weights hold on average.
    fn select_random(&self, set: &EndpointSet, tier: &Tier) -> Option<usize> {
        if tier.schedule.is_empty() {
            return None;
        }
        let start = rand::rng().random_range(0..tier.schedule.len());
        self.first_eligible_from(set, &tier.schedule, start)
    }

    fn first_eligible_from(
        &self,
        set: &EndpointSet,
        schedule: &[u32],
        start: usize,
    ) -> Option<usize> {
        let len = schedule.len();
        (0..len)
            .map(|offset| schedule[(start + offset) % len] as usize)
            .find(|&index| self.eligible(&set.endpoints[index]))
    }

    /// Power of two random choices on in-flight requests per unit of weight, as Envoy and
    /// Linkerd do: close to the best choice without scanning the pool or sharing a lock.
    fn select_least_request(&self, set: &EndpointSet, tier: &Tier) -> Option<usize> {
        let members = &tier.members;
        let count = members.len();
        let eligible = |slot: usize| self.eligible(&set.endpoints[members[slot] as usize]);
        if count == 1 {
            return eligible(0).then_some(members[0] as usize);
        }
        let mut rng = rand::rng();
        let first = rng.random_range(0..count);
        let mut second = rng.random_range(0..count - 1);
        if second >= first {
            second += 1;
        }
        let load = |slot: usize| {
            let endpoint = &set.endpoints[members[slot] as usize];
            // Compare in_flight / weight without dividing: (a_in+1) * b_w vs (b_in+1) * a_w.
            (
                endpoint.in_flight.load(Ordering::Relaxed) + 1,
                u64::from(endpoint.weight()),
            )
        };
        let chosen = match (eligible(first), eligible(second)) {
            (true, true) => {
                let (first_load, first_weight) = load(first);
                let (second_load, second_weight) = load(second);
                if first_load * second_weight <= second_load * first_weight {
                    first
                } else {
                    second
                }
            }
            (true, false) => first,
            (false, true) => second,
            (false, false) => (0..count)
                .filter(|&slot| eligible(slot))
                .min_by_key(|&slot| {
                    let (in_flight, weight) = load(slot);
                    in_flight * 1024 / weight.max(1)
                })?,
        };
        Some(members[chosen] as usize)
    }

    /// Ketama ring: the same key goes to the same endpoint while it is eligible, and to the
    /// next endpoint on the ring otherwise.
    fn select_consistent(&self, set: &EndpointSet, tier: &Tier, key: &[u8]) -> Option<usize> {
        let (ring, positions) = tier.ring.as_ref()?;
        ring.node_iter(key)
            .take(tier.members.len() * 160)
            .filter_map(|addr| positions.get(addr).copied())
            .find(|&index| self.eligible(&set.endpoints[index]))
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
                priority: 0,
            })
            .collect();
        UpstreamState::new(
            UpstreamSpec {
                name: "pool".into(),
                schedule: smooth_weighted_schedule(weights),
                endpoints,
                names: Vec::new(),
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

    fn pick(pool: &UpstreamState, key: Option<&[u8]>) -> Option<usize> {
        pool.select(&pool.endpoints(), key)
    }

    #[test]
    fn round_robin_follows_weights_and_skips_ineligible() {
        let pool = pool(Balance::RoundRobin, &[3, 1]);
        let picks: Vec<usize> = (0..8).map(|_| pick(&pool, None).unwrap()).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 6);
        let set = pool.endpoints();
        set.endpoints[0].ejected.store(true, Ordering::Relaxed);
        set.endpoints[0]
            .ejected_until_ms
            .store(u64::MAX, Ordering::Relaxed);
        assert!((0..8).all(|_| pick(&pool, None) == Some(1)));
        set.endpoints[1].healthy.store(false, Ordering::Relaxed);
        assert_eq!(pick(&pool, None), None);
    }

    #[test]
    fn least_request_prefers_the_idle_endpoint() {
        let pool = pool(Balance::LeastRequest, &[1, 1]);
        pool.endpoints().endpoints[0]
            .in_flight
            .store(50, Ordering::Relaxed);
        assert!((0..50).all(|_| pick(&pool, None) == Some(1)));
    }

    #[test]
    fn consistent_hash_is_sticky_and_fails_over() {
        let pool = pool(Balance::ConsistentHash, &[1, 1, 1]);
        let first = pick(&pool, Some(b"user-42")).unwrap();
        assert!((0..20).all(|_| pick(&pool, Some(b"user-42")) == Some(first)));
        pool.endpoints().endpoints[first]
            .healthy
            .store(false, Ordering::Relaxed);
        let second = pick(&pool, Some(b"user-42")).unwrap();
        assert_ne!(first, second);
    }

    #[test]
    fn the_lowest_tier_with_an_eligible_endpoint_takes_the_traffic() {
        for balance in [
            Balance::RoundRobin,
            Balance::Random,
            Balance::LeastRequest,
            Balance::ConsistentHash,
        ] {
            let pool = pool(balance, &[1, 1, 1]);
            let mut entries = pool.endpoints().entries();
            entries[0].priority = 1;
            assert!(pool.set_endpoints(&entries));
            assert!(
                (0..20).all(|_| pick(&pool, Some(b"k")) != Some(0)),
                "{balance:?}"
            );
            let set = pool.endpoints();
            set.endpoints[1].healthy.store(false, Ordering::Relaxed);
            set.endpoints[2].healthy.store(false, Ordering::Relaxed);
            assert!(
                (0..20).all(|_| pick(&pool, Some(b"k")) == Some(0)),
                "{balance:?}"
            );
        }
    }

    #[test]
    fn endpoints_that_stay_keep_their_state() {
        let pool = pool(Balance::RoundRobin, &[1, 1]);
        let before = pool.endpoints().endpoints[1].clone();
        before.ejections.store(3, Ordering::Relaxed);
        let mut entries = pool.endpoints().entries();
        entries.remove(0);
        entries.push(super::super::EndpointEntry {
            addr: "127.0.0.1:20000".parse().unwrap(),
            weight: 1,
            priority: 0,
        });
        assert!(pool.set_endpoints(&entries));
        assert!(!pool.set_endpoints(&entries));
        let after = pool.endpoints();
        assert!(std::sync::Arc::ptr_eq(&after.endpoints[0], &before));
        assert_eq!(after.endpoints[1].ejections.load(Ordering::Relaxed), 0);
    }
}
