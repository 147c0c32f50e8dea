//! In-process token buckets, kept as GCRA: a bucket is one number, the theoretical arrival time
//! (TAT) of the next request, so a decision is a compare and a store. A bucket whose TAT has
//! passed is full, and a full bucket is the same as no bucket at all, which is what makes
//! evicting it free.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use super::{Decision, Gcra};

/// Most shards of a keyed limit: enough that two cores rarely meet on one lock.
const MAX_SHARDS: usize = 64;
/// Keys per shard below which one shard is enough.
const KEYS_PER_SHARD: usize = 1024;

/// The buckets of one local limit.
pub struct LocalBuckets {
    gcra: Gcra,
    epoch: Instant,
    storage: Storage,
}

enum Storage {
    /// `key = "route"`: one lock-free bucket.
    Single(AtomicU64),
    /// One bucket per key, in shards of bounded size.
    Keyed(KeyedBuckets),
}

/// Key hash → TAT.
type Shard = HashMap<u64, u64, BuildHasherDefault<PrehashedKey>>;

struct KeyedBuckets {
    shards: Box<[Mutex<Shard>]>,
    shard_capacity: usize,
    hasher: std::hash::RandomState,
}

/// Keys are already SipHash outputs under a per-process random key, so the map uses them as
/// they are.
#[derive(Default)]
struct PrehashedKey(u64);

impl Hasher for PrehashedKey {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }
    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

impl LocalBuckets {
    /// Buckets for `gcra`: one when `single`, else up to about `max_keys`.
    pub fn new(gcra: Gcra, single: bool, max_keys: usize) -> Self {
        let storage = if single {
            Storage::Single(AtomicU64::new(0))
        } else {
            let shards = (max_keys.next_power_of_two() / KEYS_PER_SHARD).clamp(1, MAX_SHARDS);
            Storage::Keyed(KeyedBuckets {
                shards: (0..shards).map(|_| Mutex::default()).collect(),
                shard_capacity: max_keys.div_ceil(shards).max(1),
                hasher: std::hash::RandomState::new(),
            })
        };
        LocalBuckets {
            gcra,
            // Starting the clock a little in the past keeps "now" above zero, the TAT of a
            // bucket never used.
            epoch: Instant::now()
                .checked_sub(std::time::Duration::from_secs(1))
                .unwrap_or_else(Instant::now),
            storage,
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Takes one token from the bucket of `key` (ignored for a single bucket).
    /// Returns the decision and how many buckets were evicted to make room.
    pub fn take(&self, key: impl Hash) -> (Decision, u64) {
        let now = self.now();
        match &self.storage {
            Storage::Single(tat) => {
                let mut current = tat.load(Ordering::Relaxed);
                loop {
                    match self.gcra.step(current, now) {
                        Err(refused) => return (refused, 0),
                        Ok((next, admitted)) => match tat.compare_exchange_weak(
                            current,
                            next,
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        ) {
                            Ok(_) => return (admitted, 0),
                            Err(actual) => current = actual,
                        },
                    }
                }
            }
            Storage::Keyed(keyed) => {
                let hash = keyed.hasher.hash_one(key);
                // The high bits pick the shard; the map uses the whole hash.
                let shard = (hash >> 32) as usize % keyed.shards.len();
                let mut buckets = keyed.shards[shard]
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                let current = buckets.get(&hash).copied();
                match self.gcra.step(current.unwrap_or(0), now) {
                    Err(refused) => (refused, 0),
                    Ok((next, admitted)) => {
                        let mut evicted = 0;
                        if current.is_none() && buckets.len() >= keyed.shard_capacity {
                            evicted = evict(&mut buckets, now);
                        }
                        buckets.insert(hash, next);
                        (admitted, evicted)
                    }
                }
            }
        }
    }

    /// Buckets held now (1 for a single bucket).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        match &self.storage {
            Storage::Single(_) => 1,
            Storage::Keyed(keyed) => keyed
                .shards
                .iter()
                .map(|s| s.lock().map_or(0, |b| b.len()))
                .sum(),
        }
    }
}

/// Makes room in a full shard: every full bucket goes (forgetting them loses nothing), and
/// when none is full, the one closest to full. Returns how many buckets went.
fn evict<S: BuildHasher>(buckets: &mut HashMap<u64, u64, S>, now: u64) -> u64 {
    let before = buckets.len();
    buckets.retain(|_, tat| *tat > now);
    if buckets.len() < before {
        return (before - buckets.len()) as u64;
    }
    match buckets.iter().min_by_key(|(_, tat)| **tat).map(|(k, _)| *k) {
        Some(key) => {
            buckets.remove(&key);
            1
        }
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keyed_limit_never_holds_more_than_its_keys() {
        let buckets = LocalBuckets::new(Gcra::new(1.0, 5), false, 3000);
        for key in 0..50_000u32 {
            assert!(buckets.take(key).0.allowed);
        }
        let held = buckets.len();
        assert!((2900..=3000 + MAX_SHARDS).contains(&held), "{held}");
    }

    #[test]
    fn eviction_prefers_full_buckets() {
        let mut map: HashMap<u64, u64> = HashMap::new();
        map.insert(1, 10); // full at now = 50
        map.insert(2, 100);
        map.insert(3, 200);
        assert_eq!(evict(&mut map, 50), 1);
        assert_eq!(map.len(), 2);
        assert!(!map.contains_key(&1));
        assert_eq!(evict(&mut map, 50), 1);
        assert_eq!(map.keys().copied().collect::<Vec<_>>(), vec![3]);
    }
}
