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
        set.tiers.iter().find_map(|tier| {
            // `prefer_local`: the tier's local endpoints while enough of them are eligible,
            // else the whole tier, every zone in proportion to its eligible endpoints.
            if let Some(local) = &tier.local {
                if self.keeps_local(set, local) {
                    if let Some(index) = self.select_in(set, local, hash_input) {
                        return Some(index);
                    }
                }
            }
            self.select_in(set, tier, hash_input)
        })
    }

    /// Where requests go now, without choosing an endpoint: the priority tier (the lowest
    /// with an eligible endpoint), and the zone when `prefer_local` keeps them in the
    /// gateway's zone (`None`: every zone).
    pub fn serving(&self) -> Option<(u32, Option<String>)> {
        let set = self.endpoints();
        let any_eligible = |members: &[u32]| {
            members
                .iter()
                .any(|&i| self.eligible(&set.endpoints[i as usize]))
        };
        set.tiers.iter().find_map(|tier| {
            if let (Some(local), Some(locality)) = (&tier.local, &self.spec.locality) {
                if self.keeps_local(&set, local) && any_eligible(&local.members) {
                    return Some((tier.priority, Some(locality.zone.clone())));
                }
            }
            any_eligible(&tier.members).then_some((tier.priority, None))
        })
    }

    /// Whether at least `min_local_percent` of a tier's local endpoints are eligible.
    pub(super) fn keeps_local(&self, set: &EndpointSet, local: &Tier) -> bool {
        let Some(locality) = &self.spec.locality else {
            return false;
        };
        let eligible = local
            .members
            .iter()
            .filter(|&&i| self.eligible(&set.endpoints[i as usize]))
            .count();
        eligible * 100 >= locality.min_local_percent as usize * local.members.len()
    }

    fn select_in(
        &self,
        set: &EndpointSet,
        tier: &Tier,
        hash_input: Option<&[u8]>,
    ) -> Option<usize> {
        match self.spec.balance {
            Balance::RoundRobin => self.select_round_robin(set, tier),
            Balance::Random => self.select_random(set, tier),
            Balance::LeastRequest => self.select_least_request(set, tier),
            Balance::ConsistentHash => {
                self.select_consistent(set, tier, hash_input.unwrap_or_default())
            }
        }
    }

    /// Walks the precomputed smooth weighted schedule. An ineligible endpoint's turn is
    /// skipped by taking the next turn of the shared cursor, so its share spreads over the
    /// eligible endpoints by weight instead of all going to the one after it.
    fn select_round_robin(&self, set: &EndpointSet, tier: &Tier) -> Option<usize> {
        let len = tier.schedule.len();
        (0..len)
            .map(|_| {
                let turn = self.cursor.fetch_add(1, Ordering::Relaxed) as usize;
                tier.schedule[turn % len] as usize
            })
            .find(|&index| self.eligible(&set.endpoints[index]))
    }

    /// A uniformly random slot of the weighted schedule, so weights hold on average; an
    /// ineligible endpoint's slot is drawn again.
    fn select_random(&self, set: &EndpointSet, tier: &Tier) -> Option<usize> {
        let len = tier.schedule.len();
        let mut rng = rand::rng();
        (0..len)
            .map(|_| tier.schedule[rng.random_range(0..len)] as usize)
            .find(|&index| self.eligible(&set.endpoints[index]))
            // Unlucky draws: take any eligible endpoint.
            .or_else(|| {
                tier.members
                    .iter()
                    .map(|&i| i as usize)
                    .find(|&index| self.eligible(&set.endpoints[index]))
            })
    }

    /// Power of two random choices on in-flight requests per unit of weight, as Envoy and
    /// Linkerd do: close to the best choice without scanning the pool or sharing a lock.
    ///
    /// Two candidates with as many requests in flight tie, and a tie is broken by the weights:
    /// the next turn of the smooth weighted schedule takes the request when its endpoint is
    /// no busier than they are. Under light traffic every endpoint ties (nothing in flight),
    /// so requests split exactly by weight, where comparing in-flight per weight alone sent
    /// every one to the heaviest endpoint; under load the least loaded is still preferred.
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
                if first_load == second_load {
                    if let Some(turn) = self.select_round_robin(set, tier) {
                        let busy = set.endpoints[turn].in_flight.load(Ordering::Relaxed) + 1;
                        if busy <= first_load {
                            return Some(turn);
                        }
                    }
                }
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
                zone: None,
            })
            .collect();
        UpstreamState::new(
            UpstreamSpec {
                name: "pool".into(),
                schedule: smooth_weighted_schedule(weights),
                endpoints,
                names: Vec::new(),
                locality: None,
                balance,
                hash_key: None,
                connect_timeout: std::time::Duration::from_secs(1),
                protocol: UpstreamProtocol::Http1,
                idle_timeout: std::time::Duration::from_secs(60),
                read_timeout: std::time::Duration::from_secs(60),
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

    /// An endpoint that a DNS answer brings.
    fn new_endpoint() -> super::super::EndpointEntry {
        super::super::EndpointEntry {
            addr: "127.0.0.1:20000".parse().unwrap(),
            weight: 1,
            priority: 0,
            zone: None,
        }
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
    fn least_request_breaks_ties_by_weight() {
        let pool = pool(Balance::LeastRequest, &[2, 1]);
        let picks: Vec<usize> = (0..30).map(|_| pick(&pool, None).unwrap()).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 20, "{picks:?}");
        // Busy, the heavier endpoint loses to the idle one.
        pool.endpoints().endpoints[0]
            .in_flight
            .store(10, Ordering::Relaxed);
        assert!((0..20).all(|_| pick(&pool, None) == Some(1)));
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
        entries.push(new_endpoint());
        assert!(pool.set_endpoints(&entries));
        assert!(!pool.set_endpoints(&entries));
        let after = pool.endpoints();
        assert!(std::sync::Arc::ptr_eq(&after.endpoints[0], &before));
        assert_eq!(after.endpoints[1].ejections.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_weight_override_holds_through_new_endpoint_sets() {
        for balance in [
            Balance::RoundRobin,
            Balance::Random,
            Balance::ConsistentHash,
        ] {
            let pool = pool(balance, &[1, 1]);
            let endpoint = pool.endpoints().endpoints[0].clone();
            assert!(pool.set_weight_override(endpoint.addr, Some(9)));
            let count_first = |pool: &UpstreamState| {
                (0..1000)
                    .map(|i: u32| pick(pool, Some(&i.to_be_bytes())))
                    .filter(|&p| p == Some(0))
                    .count()
            };
            // 9 to 1: about 900 of 1000 (exactly for round robin).
            assert!(count_first(&pool) > 800, "{balance:?}");
            // A DNS answer with one more endpoint: the override stays (the same endpoint),
            // and the entries still say the source's weight.
            let mut entries = pool.endpoints().entries();
            assert_eq!(entries[0].weight, 1);
            entries.push(new_endpoint());
            assert!(pool.set_endpoints(&entries));
            assert!(std::sync::Arc::ptr_eq(
                &pool.endpoints().endpoints[0],
                &endpoint
            ));
            assert!(count_first(&pool) > 700, "{balance:?}");
            assert!(pool.set_weight_override(endpoint.addr, None));
            assert!(count_first(&pool) < 500, "{balance:?}");
        }
    }

    #[test]
    fn prefer_local_keeps_traffic_in_the_zone_until_too_few_are_eligible() {
        use meshgate_policy::discovery::LocalitySpec;
        let mut pool = pool(Balance::RoundRobin, &[1, 1, 1, 1]);
        pool.spec.locality = Some(LocalitySpec {
            zone: "a".into(),
            min_local_percent: 60,
        });
        let mut entries = pool.endpoints().entries();
        for (i, entry) in entries.iter_mut().enumerate() {
            entry.zone = Some(if i < 2 { "a" } else { "b" }.into());
        }
        let pool =
            super::UpstreamState::new(pool.spec.clone(), None, &crate::telemetry::Metrics::new());
        assert!(pool.set_endpoints(&entries));
        assert!((0..40).all(|_| pick(&pool, None).unwrap() < 2));
        assert_eq!(pool.serving(), Some((0, Some("a".to_owned()))));
        // One of two local endpoints down: 50% < 60%, so every zone, by eligible endpoint.
        pool.endpoints().endpoints[0]
            .healthy
            .store(false, Ordering::Relaxed);
        let picks: Vec<usize> = (0..30).map(|_| pick(&pool, None).unwrap()).collect();
        assert!(picks.iter().all(|&i| i != 0));
        for remote in [1, 2, 3] {
            assert_eq!(
                picks.iter().filter(|&&i| i == remote).count(),
                10,
                "{picks:?}"
            );
        }
        assert_eq!(pool.serving().map(|s| s.1), Some(None));
    }
}
