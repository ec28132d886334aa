//! The fences a store client has seen per key, for stores that can notice a server that lost
//! committed grants (a failover to an asynchronous replica, a restored backup, a crash with
//! fsync off) instead of handing out a fence again in silence.
//!
//! The memory is bounded, and keeps the keys used most recently: it holds two generations of at
//! most half of [`MAX_TRACKED_KEYS`] keys each, every grant (and renewal) moves its key into the
//! young one, and when the young one is full it becomes the old one and the old one is dropped.
//! A process that uses a key now and then keeps its memory of it; one that moves through an
//! unbounded number of keys (a job per key) stays at a bounded size instead of growing by a map
//! entry per key for its whole life, which a long-running worker cannot afford. A key forgotten
//! this way loses its check: a regression of it goes unnoticed by this store, as it would by a
//! process that started after the loss (the fenced resource still refuses a repeated fence).

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard};

/// How many keys' highest fences a [`SeenFences`] remembers at most (the ones granted most
/// recently); about 100 bytes each.
pub const MAX_TRACKED_KEYS: usize = 4096;

/// What a store has seen of one key: the highest fence granted, and to whom (hashed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeenFence {
    /// The highest fence seen granted for the key.
    pub fence: u64,
    /// A hash of its holder; 0 for a fence given to nobody (a break).
    holder: u64,
}

/// A fence that went back: `seen` was granted before, the server now answers `now` (`None`: it
/// has no fence for the key at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FenceWentBack {
    /// The highest fence this store saw for the key.
    pub seen: u64,
    /// What the server answered now.
    pub now: Option<u64>,
}

/// The highest fence seen per key, in bounded memory; see the [module docs](self).
///
/// Use it in two steps per call: [`before`](Self::before) as the request is sent, then
/// [`granted`](Self::granted) or [`current`](Self::current) with the answer. Answers of
/// concurrent calls arrive in any order, so an answer is compared only with what was seen before
/// its request was sent: the server had made those grants before it ran the request, and it
/// cannot answer lower unless it lost them.
#[derive(Debug)]
pub struct SeenFences {
    generations: Mutex<Generations>,
    hasher: RandomState,
    half: usize,
}

#[derive(Debug, Default)]
struct Generations {
    young: HashMap<String, SeenFence>,
    old: HashMap<String, SeenFence>,
}

impl Default for SeenFences {
    fn default() -> Self {
        Self::with_capacity(MAX_TRACKED_KEYS)
    }
}

impl SeenFences {
    /// Remembers at most `keys` keys (at least 2).
    pub fn with_capacity(keys: usize) -> Self {
        Self {
            generations: Mutex::default(),
            hasher: RandomState::new(),
            half: (keys / 2).max(1),
        }
    }

    fn generations(&self) -> MutexGuard<'_, Generations> {
        // Every update under the lock leaves both maps consistent: a poisoned one is usable.
        self.generations.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What was seen of `key` so far; take it before the request is sent.
    pub fn before(&self, key: &str) -> Option<SeenFence> {
        let g = self.generations();
        g.young.get(key).or_else(|| g.old.get(key)).copied()
    }

    /// A grant (or renewal) of `fence` to `holder` (`None`: a break, which gives the fence to
    /// nobody). Fails if it is below what was seen before the request, or the same fence for
    /// another holder (or for anyone after a break); otherwise remembers it.
    ///
    /// # Errors
    ///
    /// [`FenceWentBack`] with what was seen and the fence answered.
    pub fn granted(
        &self,
        key: &str,
        holder: Option<&str>,
        fence: u64,
        before: Option<SeenFence>,
    ) -> Result<(), FenceWentBack> {
        let holder = holder.map_or(0, |h| self.hasher.hash_one(h) | 1);
        if let Some(b) = before {
            if fence < b.fence || (fence == b.fence && (holder != b.holder || holder == 0)) {
                return Err(FenceWentBack {
                    seen: b.fence,
                    now: Some(fence),
                });
            }
        }
        let now = SeenFence { fence, holder };
        let mut g = self.generations();
        // Keep the highest: a concurrent call may have recorded a later grant already.
        let kept = match g.young.get(key).or_else(|| g.old.get(key)) {
            Some(s) if s.fence >= fence => *s,
            _ => now,
        };
        if let Some(s) = g.young.get_mut(key) {
            *s = kept;
            return Ok(());
        }
        g.old.remove(key);
        if g.young.len() >= self.half {
            g.old = std::mem::take(&mut g.young);
        }
        g.young.insert(key.to_owned(), kept);
        Ok(())
    }

    /// The key's fence as an answer reported it without a grant (held by another, free, or
    /// `None`: no fence at all): fails if it is below what was seen before the request.
    ///
    /// # Errors
    ///
    /// [`FenceWentBack`] with what was seen and the fence answered.
    pub fn current(
        &self,
        before: Option<SeenFence>,
        now: Option<u64>,
    ) -> Result<(), FenceWentBack> {
        match before {
            Some(b) if now.unwrap_or(0) < b.fence => Err(FenceWentBack { seen: b.fence, now }),
            _ => Ok(()),
        }
    }

    /// How many keys are remembered.
    pub fn len(&self) -> usize {
        let g = self.generations();
        g.young.len() + g.old.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_fences_and_a_repeated_fence_for_another_holder_went_back() {
        let seen = SeenFences::default();
        seen.granted("k", Some("a"), 3, seen.before("k")).unwrap();
        // The same holder again (a renewal or a retake): fine.
        seen.granted("k", Some("a"), 3, seen.before("k")).unwrap();
        let back = FenceWentBack {
            seen: 3,
            now: Some(3),
        };
        assert_eq!(seen.granted("k", Some("b"), 3, seen.before("k")), Err(back));
        assert!(seen.granted("k", Some("b"), 2, seen.before("k")).is_err());
        seen.current(seen.before("k"), Some(3)).unwrap();
        assert!(seen.current(seen.before("k"), Some(1)).is_err());
        assert_eq!(
            seen.current(seen.before("k"), None),
            Err(FenceWentBack { seen: 3, now: None })
        );
        seen.granted("k", Some("b"), 4, seen.before("k")).unwrap();
        // A break's fence is given to nobody: a grant of it went back.
        seen.granted("k", None, 5, seen.before("k")).unwrap();
        assert!(seen.granted("k", Some("c"), 5, seen.before("k")).is_err());
        seen.granted("k", Some("c"), 6, seen.before("k")).unwrap();
        // Other keys are apart.
        seen.granted("other", Some("z"), 1, seen.before("other"))
            .unwrap();
        // A later grant recorded first is kept over an older answer arriving after it.
        let stale = seen.before("k");
        seen.granted("k", Some("d"), 8, seen.before("k")).unwrap();
        seen.granted("k", Some("c"), 7, stale).unwrap();
        assert_eq!(seen.before("k").map(|s| s.fence), Some(8));
    }

    /// A worker that takes a new key for every job keeps a bounded memory, and a key it keeps
    /// renewing is never forgotten however many others pass.
    #[test]
    fn memory_is_bounded_and_keeps_the_keys_in_use() {
        let seen = SeenFences::with_capacity(100);
        for job in 0..10_000 {
            let key = format!("job/{job}");
            seen.granted(&key, Some("w"), 1, seen.before(&key)).unwrap();
            seen.granted("held", Some("w"), 1, seen.before("held"))
                .unwrap();
            assert!(seen.len() <= 100, "{} keys after {job} jobs", seen.len());
        }
        assert!(seen.before("held").is_some());
        assert!(seen.before("job/9999").is_some());
        assert!(seen.before("job/0").is_none());
        // A forgotten key's regression goes unnoticed: it is as new.
        seen.granted("job/0", Some("x"), 1, seen.before("job/0"))
            .unwrap();
    }
}
