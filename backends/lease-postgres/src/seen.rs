//! The fences a store has seen per key, to notice a server that lost committed grants (a
//! failover to an asynchronous replica, a restore of an older backup, `fsync = off` and a
//! crash) instead of handing out a fence again in silence.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard};

use lease_core::{StoreError, StoreErrorKind};

use crate::NAME;

/// How many keys' highest fences a store remembers; beyond this, an arbitrary key is forgotten
/// for each new one (its regressions then go unnoticed by this store).
pub const MAX_TRACKED_KEYS: usize = 100_000;

/// The highest fence seen for a key, and a hash of the holder it was granted to (0: none, a
/// break).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fact {
    fence: i64,
    holder: u64,
}

#[derive(Default)]
pub(crate) struct Seen {
    map: Mutex<HashMap<String, Fact>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Seen {
    fn map(&self) -> MutexGuard<'_, HashMap<String, Fact>> {
        // Each update is one insert or remove; a poisoned map is still consistent.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What this store knew of `key` before it sent a request: the answer is compared only
    /// with grants the server had made before it ran the request (answers of concurrent calls
    /// arrive in any order, so a later record could make an older answer look like a
    /// regression).
    pub(crate) fn before(&self, key: &str) -> Option<Fact> {
        self.map().get(key).copied()
    }

    fn holder_hash(&self, holder: Option<&str>) -> u64 {
        holder.map_or(0, |h| self.hasher.hash_one(h) | 1)
    }

    /// A grant of `fence` to `holder` (`None`: a break): fails if it is below what was seen
    /// before, or the same fence for another holder; else records it.
    pub(crate) fn granted(
        &self,
        key: &str,
        holder: Option<&str>,
        fence: i64,
        before: Option<Fact>,
    ) -> Result<(), StoreError> {
        let holder = self.holder_hash(holder);
        if let Some(b) = before {
            if fence < b.fence || (fence == b.fence && (holder != b.holder || holder == 0)) {
                return Err(regressed(key, b.fence, fence));
            }
        }
        let mut map = self.map();
        match map.get_mut(key) {
            // Keep the highest: a concurrent call may have recorded a later grant already.
            Some(f) if f.fence >= fence => {}
            Some(f) => *f = Fact { fence, holder },
            None => {
                if map.len() >= MAX_TRACKED_KEYS {
                    if let Some(k) = map.keys().next().cloned() {
                        map.remove(&k);
                    }
                }
                map.insert(key.to_owned(), Fact { fence, holder });
            }
        }
        Ok(())
    }

    /// The key's fence as an answer reported it (held by another, or free): fails if it is
    /// below what was seen before.
    pub(crate) fn current(
        &self,
        key: &str,
        fence: Option<i64>,
        before: Option<Fact>,
    ) -> Result<(), StoreError> {
        match before {
            Some(b) if fence.unwrap_or(0) < b.fence => {
                Err(regressed(key, b.fence, fence.unwrap_or(0)))
            }
            _ => Ok(()),
        }
    }
}

fn regressed(key: &str, seen: i64, now: i64) -> StoreError {
    StoreError::new(
        StoreErrorKind::FenceRegressed,
        NAME,
        format!(
            "the fence of `{key}` went back from {seen} to {now}: the server lost committed \
             grants (a failover to an asynchronous replica, a restored backup, or a crash with \
             fsync or synchronous_commit off)"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_fences_and_a_repeated_fence_for_another_holder_are_regressions() {
        let seen = Seen::default();
        seen.granted("k", Some("a"), 3, seen.before("k")).unwrap();
        // The same holder again (an extension or retake): fine.
        seen.granted("k", Some("a"), 3, seen.before("k")).unwrap();
        let e = seen
            .granted("k", Some("b"), 3, seen.before("k"))
            .unwrap_err();
        assert_eq!(e.kind(), StoreErrorKind::FenceRegressed);
        assert!(e.to_string().contains("from 3 to 3"), "{e}");
        let e = seen
            .granted("k", Some("b"), 2, seen.before("k"))
            .unwrap_err();
        assert_eq!(e.kind(), StoreErrorKind::FenceRegressed);
        seen.current("k", Some(3), seen.before("k")).unwrap();
        assert!(seen.current("k", Some(1), seen.before("k")).is_err());
        assert!(seen.current("k", None, seen.before("k")).is_err());
        seen.granted("k", Some("b"), 4, seen.before("k")).unwrap();
        // A break's fence is given to nobody: a grant of it is a regression.
        seen.granted("k", None, 5, seen.before("k")).unwrap();
        assert!(seen.granted("k", Some("c"), 5, seen.before("k")).is_err());
        seen.granted("k", Some("c"), 6, seen.before("k")).unwrap();
        // Other keys are apart.
        seen.granted("other", Some("z"), 1, seen.before("other"))
            .unwrap();
    }
}
