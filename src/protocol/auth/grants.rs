//! What a token allows: the topics it may subscribe and publish to, as patterns from its claims.
//!
//! A pattern is an exact topic name, or a prefix followed by a trailing `*` (`user.42.*` matches
//! `user.42.inbox`; `*` alone matches every topic). A `*` anywhere else is an ordinary character, which no
//! valid topic contains, so such a pattern matches nothing.
//!
//! Grants are interned per worker: connections whose tokens carry the same patterns share one `Arc<Grants>`,
//! whoever their subjects are, so a connection pays one pointer for its permissions, however long the lists.
//! (The subject is not part of the grants: a connection keeps only a 32-bit hash of it, for refreshes.)

use std::collections::HashSet;
use std::sync::Arc;

/// One topic pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern(Box<str>);

impl Pattern {
    /// A pattern from its claim text.
    pub fn new(text: &str) -> Self {
        Pattern(text.into())
    }

    /// Whether `topic` matches.
    pub fn matches(&self, topic: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => topic.starts_with(prefix),
            None => &*self.0 == topic,
        }
    }
}

/// The permissions of one verified token.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Grants {
    subscribe: Box<[Pattern]>,
    publish: Box<[Pattern]>,
}

impl Grants {
    /// Grants from claim lists.
    pub fn new(subscribe: &[String], publish: &[String]) -> Self {
        Grants {
            subscribe: subscribe.iter().map(|p| Pattern::new(p)).collect(),
            publish: publish.iter().map(|p| Pattern::new(p)).collect(),
        }
    }

    /// Whether the token may subscribe to `topic`.
    pub fn may_subscribe(&self, topic: &str) -> bool {
        self.subscribe.iter().any(|p| p.matches(topic))
    }

    /// Whether the token may publish to `topic`.
    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish.iter().any(|p| p.matches(topic))
    }
}

/// A worker's interned grants. Entries no connection holds any more are swept when the set doubles.
#[derive(Debug)]
pub struct Interner {
    set: HashSet<Arc<Grants>>,
    sweep_at: usize,
}

impl Default for Interner {
    fn default() -> Self {
        Interner { set: HashSet::new(), sweep_at: Self::MIN_SWEEP }
    }
}

impl Interner {
    const MIN_SWEEP: usize = 1024;

    /// The shared copy of `grants`.
    pub fn intern(&mut self, grants: Grants) -> Arc<Grants> {
        if let Some(shared) = self.set.get(&grants) {
            return shared.clone();
        }
        if self.set.len() >= self.sweep_at {
            self.set.retain(|g| Arc::strong_count(g) > 1);
            self.sweep_at = (self.set.len() * 2).max(Self::MIN_SWEEP);
        }
        let shared = Arc::new(grants);
        self.set.insert(shared.clone());
        shared
    }

    /// Distinct grants currently held (including any not yet swept).
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Whether nothing is interned.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}
