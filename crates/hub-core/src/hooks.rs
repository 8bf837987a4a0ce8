//! Hook points for a host that embeds the hub (the Node module, the Blocklet shell):
//!
//! - an [`IdentityResolver`] consulted for bearer tokens the hub's own key index does not know
//!   (e.g. Blocklet access keys or login tokens), with its answers cached for a TTL so that a
//!   known identity never reaches the host on the hot path;
//! - a [`UsageObserver`] told of every batch of usage records after it is committed (billing sync).
//!
//! Both are plain trait objects: nothing here knows about napi or HTTP.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::auth::{KeyDigest, Principal, digest};
use crate::error::HubError;
use crate::store::UsageRecord;

/// Resolves tokens the hub does not know itself.
#[async_trait]
pub trait IdentityResolver: Send + Sync + 'static {
    /// `Ok(None)`: the token is not valid (the caller is told 401). `Err`: the resolver failed;
    /// the error is returned to the caller and nothing is cached.
    async fn resolve(&self, token: &str) -> Result<Option<Principal>, HubError>;
}

/// Told of usage records once they are durable.
pub trait UsageObserver: Send + Sync + 'static {
    /// Called on the usage writer's task after each committed batch. Must return quickly (hand
    /// the batch to another thread or queue); it delays the next batch's commit while it runs.
    fn committed(&self, batch: &[UsageRecord]);
}

/// The hooks a host installs when it opens the hub.
#[derive(Clone)]
pub struct Hooks {
    pub identity: Option<Arc<dyn IdentityResolver>>,
    /// How long a resolved identity is trusted without asking the resolver again.
    pub identity_ttl: Duration,
    /// How long a token the resolver rejected is remembered as invalid.
    pub identity_negative_ttl: Duration,
    pub usage: Option<Arc<dyn UsageObserver>>,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            identity: None,
            identity_ttl: Duration::from_secs(60),
            identity_negative_ttl: Duration::from_secs(5),
            usage: None,
        }
    }
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("identity", &self.identity.is_some())
            .field("identity_ttl", &self.identity_ttl)
            .field("identity_negative_ttl", &self.identity_negative_ttl)
            .field("usage", &self.usage.is_some())
            .finish()
    }
}

/// Entries kept at most; past that, expired entries are dropped, and if that is not enough the
/// cache starts over (a flood of distinct bad tokens must not grow memory without bound).
const MAX_ENTRIES: usize = 100_000;

/// A resolver answer (`None`: not valid) and when it expires.
type Entry = (Option<Arc<Principal>>, Instant);

/// TTL cache of resolver answers, keyed by the token's SHA-256 (tokens are not kept).
#[derive(Debug)]
pub(crate) struct IdentityCache {
    ttl: Duration,
    negative_ttl: Duration,
    entries: Mutex<HashMap<KeyDigest, Entry>>,
}

pub(crate) enum Cached {
    Miss,
    Known(Arc<Principal>),
    Invalid,
}

impl IdentityCache {
    pub(crate) fn new(ttl: Duration, negative_ttl: Duration) -> IdentityCache {
        IdentityCache {
            ttl,
            negative_ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn get(&self, token: &str) -> Cached {
        let key = digest(token);
        let mut entries = self.entries.lock();
        match entries.get(&key) {
            Some((_, expires)) if *expires <= Instant::now() => {
                entries.remove(&key);
                Cached::Miss
            }
            Some((Some(p), _)) => Cached::Known(p.clone()),
            Some((None, _)) => Cached::Invalid,
            None => Cached::Miss,
        }
    }

    pub(crate) fn put(&self, token: &str, principal: Option<Arc<Principal>>) {
        let ttl = if principal.is_some() {
            self.ttl
        } else {
            self.negative_ttl
        };
        if ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut entries = self.entries.lock();
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, (_, expires)| *expires > now);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(digest(token), (principal, now + ttl));
    }

    pub(crate) fn clear(&self) {
        self.entries.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    fn p(id: &str) -> Arc<Principal> {
        Arc::new(Principal {
            key_id: id.into(),
            user_id: id.into(),
            role: Role::Member,
            team_id: None,
        })
    }

    #[test]
    fn entries_expire() {
        let c = IdentityCache::new(Duration::from_millis(30), Duration::from_millis(30));
        c.put("a", Some(p("a")));
        c.put("b", None);
        assert!(matches!(c.get("a"), Cached::Known(x) if x.key_id == "a"));
        assert!(matches!(c.get("b"), Cached::Invalid));
        assert!(matches!(c.get("c"), Cached::Miss));
        std::thread::sleep(Duration::from_millis(40));
        assert!(matches!(c.get("a"), Cached::Miss));
        assert!(matches!(c.get("b"), Cached::Miss));
    }

    #[test]
    fn zero_ttl_caches_nothing() {
        let c = IdentityCache::new(Duration::from_secs(60), Duration::ZERO);
        c.put("b", None);
        assert!(matches!(c.get("b"), Cached::Miss));
    }
}
