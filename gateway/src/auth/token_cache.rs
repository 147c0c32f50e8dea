//! Tokens verified lately, with their claims, until they expire: the signature of a token a
//! client sends again is not checked again. Keyed by the whole token (compared byte for byte,
//! not by a hash alone), and by the generation of the keys that verified it, so a key rotation
//! makes every token be checked against the new keys. Bounded: when full, it is emptied.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use super::Claims;

/// The most tokens kept per route.
const CAPACITY: usize = 4096;

/// One verified token.
struct Verified {
    claims: Arc<Claims>,
    /// Seconds since the epoch after which it is no longer valid (`exp` plus the leeway).
    until: u64,
    generation: usize,
}

/// A route's verified tokens.
#[derive(Default)]
pub(super) struct TokenCache {
    tokens: Mutex<HashMap<Box<str>, Verified>>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl TokenCache {
    /// The claims of `token` when it was verified with keys of `generation` and has not
    /// expired since.
    pub(super) fn get(&self, token: &str, generation: usize) -> Option<Arc<Claims>> {
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let verified = tokens.get(token)?;
        (verified.generation == generation && now() < verified.until)
            .then(|| Arc::clone(&verified.claims))
    }

    /// Keeps `token`, verified with keys of `generation`, until `until`.
    pub(super) fn insert(&self, token: &str, claims: &Arc<Claims>, until: u64, generation: usize) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if tokens.len() >= CAPACITY {
            let now = now();
            tokens.retain(|_, verified| verified.until > now);
            if tokens.len() >= CAPACITY {
                tokens.clear();
            }
        }
        tokens.insert(
            token.into(),
            Verified {
                claims: Arc::clone(claims),
                until,
                generation,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_tokens_until_they_expire_or_the_keys_change() {
        let cache = TokenCache::default();
        let claims = Arc::new(Claims::new());
        cache.insert("a", &claims, now() + 60, 1);
        cache.insert("b", &claims, now() - 1, 1);
        assert!(cache.get("a", 1).is_some());
        assert!(cache.get("a", 2).is_none(), "other keys");
        assert!(cache.get("b", 1).is_none(), "expired");
        assert!(cache.get("c", 1).is_none());
        for i in 0..CAPACITY + 10 {
            cache.insert(&format!("t{i}"), &claims, now() + 60, 1);
        }
        assert!(cache.tokens.lock().unwrap().len() <= CAPACITY);
    }
}
