//! A worker's memory of tokens it has verified, so that a client reconnecting with the same token (a
//! reconnect storm after a network blip or a failover) costs a hash look-up, not a signature check (4 µs for
//! HS256, about 330 µs for RS256 with the pure-Rust backend).
//!
//! Entries are keyed by a 128-bit keyed hash of the token's exact bytes (two SipHash-1-3 with random keys per
//! worker), so an entry is about 40 bytes whatever the token's size, and forging a token that collides with a
//! cached one would mean breaking a keyed 128-bit hash. An entry holds what verification produced (the
//! interned grants, the expiry, the subject's hash) and is used only while the token is unexpired. Rotating
//! keys clears the cache: a token verified by a key that is gone is verified again.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use super::grants::Grants;

/// What a cached verification produced.
#[derive(Debug, Clone)]
pub struct CachedVerification {
    /// The interned grants.
    pub grants: Arc<Grants>,
    /// `exp` plus leeway, Unix seconds.
    pub expires: u64,
    /// The subject's hash.
    pub subject: u32,
}

/// Recently verified tokens, bounded to `capacity` entries (0 turns the cache off).
#[derive(Debug)]
pub struct TokenCache {
    map: HashMap<u128, CachedVerification>,
    capacity: usize,
    keys: (RandomState, RandomState),
}

impl TokenCache {
    /// A cache of at most `capacity` tokens.
    pub fn new(capacity: usize) -> Self {
        TokenCache { map: HashMap::new(), capacity, keys: (RandomState::new(), RandomState::new()) }
    }

    /// The cached verification of `token`, if it is cached and unexpired at `unix`.
    pub fn get(&self, token: &[u8], unix: u64) -> Option<&CachedVerification> {
        if self.capacity == 0 {
            return None;
        }
        self.map.get(&self.key(token)).filter(|c| unix < c.expires)
    }

    /// Remembers a successful verification. When full, expired entries go first, and if none had expired,
    /// everything goes (the cache refills from the next verifications).
    pub fn insert(&mut self, token: &[u8], entry: CachedVerification, unix: u64) {
        if self.capacity == 0 {
            return;
        }
        if self.map.len() >= self.capacity {
            self.map.retain(|_, c| unix < c.expires);
            if self.map.len() >= self.capacity {
                self.map.clear();
            }
        }
        let key = self.key(token);
        self.map.insert(key, entry);
    }

    /// Forgets everything (keys rotated).
    pub fn clear(&mut self) {
        self.map.clear();
    }

    /// Tokens held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn key(&self, token: &[u8]) -> u128 {
        let a = self.keys.0.hash_one(token);
        let b = self.keys.1.hash_one(token);
        (u128::from(a) << 64) | u128::from(b)
    }
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache::new(DEFAULT_CAPACITY)
    }
}

/// Default `auth.token_cache`: tokens remembered per worker.
pub const DEFAULT_CAPACITY: usize = 65_536;
