//! The fences a store has seen per key, to notice a server that lost committed grants (a
//! failover to an asynchronous replica, a restore of an older backup, `fsync = off` and a
//! crash) instead of handing out a fence again in silence.

use lease_core::seen::{FenceWentBack, SeenFence, SeenFences};
use lease_core::{StoreError, StoreErrorKind};

use crate::NAME;

pub use lease_core::seen::MAX_TRACKED_KEYS;

/// The highest fence seen per key ([`SeenFences`], bounded), with this store's fences (`i64`,
/// never below 1) and its error.
#[derive(Default)]
pub(crate) struct Seen(SeenFences);

/// What was seen of a key before a request was sent.
pub(crate) type Fact = SeenFence;

impl Seen {
    /// What this store knew of `key` before it sent a request: the answer is compared only
    /// with grants the server had made before it ran the request.
    pub(crate) fn before(&self, key: &str) -> Option<Fact> {
        self.0.before(key)
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
        self.0
            .granted(key, holder, as_u64(fence), before)
            .map_err(|e| regressed(key, e))
    }

    /// The key's fence as an answer reported it (held by another, or free): fails if it is
    /// below what was seen before.
    pub(crate) fn current(
        &self,
        key: &str,
        fence: Option<i64>,
        before: Option<Fact>,
    ) -> Result<(), StoreError> {
        self.0
            .current(before, fence.map(as_u64))
            .map_err(|e| regressed(key, e))
    }
}

/// A fence as the shared memory keeps it (the table's are never below 1).
fn as_u64(fence: i64) -> u64 {
    u64::try_from(fence).unwrap_or(0)
}

fn regressed(key: &str, went: FenceWentBack) -> StoreError {
    let (seen, now) = (went.seen, went.now.unwrap_or(0));
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

    /// The rules are [`SeenFences`]'s (tested there); here, that this store's fences and error
    /// go through them.
    #[test]
    fn a_regression_is_this_store_s_error_naming_both_fences() {
        let seen = Seen::default();
        seen.granted("k", Some("a"), 3, seen.before("k")).unwrap();
        let e = seen
            .granted("k", Some("b"), 3, seen.before("k"))
            .unwrap_err();
        assert_eq!(e.kind(), StoreErrorKind::FenceRegressed);
        assert!(e.to_string().contains("from 3 to 3"), "{e}");
        let e = seen.current("k", None, seen.before("k")).unwrap_err();
        assert!(e.to_string().contains("from 3 to 0"), "{e}");
        seen.current("k", Some(3), seen.before("k")).unwrap();
    }
}
