//! Tokens revoked by logout. A logout in the tutorial only asked the browser to forget the cookie,
//! so a copied token kept working until it expired; here the token's `jti` is refused until then.

use std::collections::HashMap;
use std::sync::Mutex;

use common::token::now;

/// Where revocations live. The in-memory store serves one gateway; a shared store behind the same
/// trait can serve several replicas.
pub trait RevocationStore: Send + Sync + std::fmt::Debug {
    /// Refuses the token with this `jti` until `until` (seconds since the epoch).
    fn revoke(&self, jti: &str, until: u64);
    /// Whether the token with this `jti`, issued at `iat`, has been revoked.
    fn is_revoked(&self, jti: &str, iat: u64) -> bool;
}

/// Bounded by `capacity` entries. Entries whose token has expired are purged first. If the store is
/// still full, it fails closed: every token issued up to now is refused, so that making room never
/// brings a revoked token back to life. Everybody has to log in again, which is logged.
#[derive(Debug)]
pub struct InMemoryRevocations {
    capacity: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    expiries: HashMap<String, u64>,
    /// Tokens issued at or before this instant are refused wholesale.
    issued_before_is_revoked: Option<u64>,
}

impl InMemoryRevocations {
    pub const DEFAULT_CAPACITY: usize = 100_000;

    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.state().expiries.len()
    }
}

impl RevocationStore for InMemoryRevocations {
    fn revoke(&self, jti: &str, until: u64) {
        let now = now();
        let mut state = self.state();
        if state.expiries.len() >= self.capacity {
            state.expiries.retain(|_, expiry| *expiry > now);
        }
        if state.expiries.len() >= self.capacity {
            log::warn!(
                "revocation store full ({} entries): every session issued until now must log in again",
                self.capacity
            );
            state.expiries.clear();
            state.issued_before_is_revoked = Some(now);
            return;
        }
        state.expiries.insert(jti.to_owned(), until);
    }

    fn is_revoked(&self, jti: &str, iat: u64) -> bool {
        let state = self.state();
        state
            .issued_before_is_revoked
            .is_some_and(|cutoff| iat <= cutoff)
            || state.expiries.get(jti).is_some_and(|until| *until >= now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revoked_token_stays_revoked_until_its_expiry() {
        let store = InMemoryRevocations::new(10);
        store.revoke("a", now() + 60);
        assert!(store.is_revoked("a", now()));
        assert!(!store.is_revoked("b", now()));
        store.revoke("old", now() - 1);
        assert!(!store.is_revoked("old", now()));
    }

    #[test]
    fn expired_entries_make_room() {
        let store = InMemoryRevocations::new(2);
        store.revoke("old1", now() - 1);
        store.revoke("old2", now() - 1);
        store.revoke("new", now() + 60);
        assert_eq!(store.len(), 1);
        assert!(store.is_revoked("new", now()));
    }

    #[test]
    fn a_full_store_fails_closed() {
        let store = InMemoryRevocations::new(2);
        let issued = now() - 10;
        store.revoke("a", now() + 60);
        store.revoke("b", now() + 60);
        store.revoke("c", now() + 60);
        assert_eq!(store.len(), 0);
        for jti in ["a", "b", "c", "never-revoked"] {
            assert!(store.is_revoked(jti, issued), "{jti}");
        }
        assert!(!store.is_revoked("fresh", now() + 1));
    }
}
