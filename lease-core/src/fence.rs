//! Fencing tokens and the in-memory fence gate.

use std::fmt;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};

/// A fencing token: a number that strictly increases each time a key changes holder.
///
/// Pass it along with every write to a protected resource; the resource rejects any write whose
/// fence is lower than the highest it has seen ([`FenceGate`], or the SQL/Lua/etcd recipes in the
/// crate docs). This keeps the resource safe even when two processes both believe they hold the
/// lease (one of them paused past its lease, or its write delayed in the network).
///
/// The first grant of a key has fence 1. A fence never goes back for a key, not even after
/// release; how long that holds across store restarts is the store's
/// [`Capabilities::durable_fences`](crate::Capabilities::durable_fences).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fence(NonZeroU64);

impl Fence {
    /// The fence of the first grant of a key.
    pub const FIRST: Fence = Fence(NonZeroU64::MIN);

    /// A fence from its numeric value; `None` for 0, which is never a fence.
    pub const fn new(value: u64) -> Option<Fence> {
        match NonZeroU64::new(value) {
            Some(v) => Some(Fence(v)),
            None => None,
        }
    }

    /// The numeric value (at least 1).
    pub const fn get(self) -> u64 {
        self.0.get()
    }

    /// The fence as the `i64` SQL databases and etcd store; `None` above `i64::MAX`. A store
    /// never hands out such a fence, so a renew or release carrying one matches nothing (answer
    /// `false`); saturating it to `i64::MAX` instead could match a real fence.
    pub const fn to_i64(self) -> Option<i64> {
        let v = self.0.get();
        if v > i64::MAX as u64 {
            None
        } else {
            Some(v as i64)
        }
    }

    /// A fence read back from an `i64` column or field; `None` for zero or a negative value
    /// (which a store reports as a corrupt record).
    pub const fn from_i64(value: i64) -> Option<Fence> {
        if value <= 0 {
            None
        } else {
            Fence::new(value as u64)
        }
    }

    /// The fence after this one; `None` on overflow (which a store reports as an error).
    pub const fn next(self) -> Option<Fence> {
        match self.0.checked_add(1) {
            Some(v) => Some(Fence(v)),
            None => None,
        }
    }
}

impl fmt::Display for Fence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<Fence> for u64 {
    fn from(f: Fence) -> u64 {
        f.get()
    }
}

/// A write carried a fence lower than one the resource has already accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stale fence {offered}: a write with fence {highest} was already accepted")]
pub struct StaleFence {
    /// The fence the rejected write carried.
    pub offered: Fence,
    /// The highest fence the gate had accepted.
    pub highest: Fence,
}

/// "Highest fence seen, reject lower" for a resource that lives in memory.
///
/// Put one in front of each protected resource (or each key's resource) and call
/// [`FenceGate::check`] with the guard's fence as part of every write. Equal fences pass: the same
/// holder may write many times under one grant.
///
/// For a resource in a database, do the same comparison inside the write itself (the crate docs
/// show the SQL), so that check and write are one atomic step.
#[derive(Debug, Default)]
pub struct FenceGate {
    highest: AtomicU64,
}

impl FenceGate {
    /// A gate that has seen no fence yet.
    pub const fn new() -> Self {
        Self {
            highest: AtomicU64::new(0),
        }
    }

    /// Accepts `fence` if it is at least the highest fence accepted so far, and records it.
    ///
    /// # Errors
    ///
    /// [`StaleFence`] when a higher fence was accepted before: the caller's lease was superseded
    /// and the write must not happen.
    pub fn check(&self, fence: Fence) -> Result<(), StaleFence> {
        let offered = fence.get();
        // fetch_max makes check-and-record one atomic step: two racing writers cannot both pass
        // with the lower one recorded last.
        let previous = self.highest.fetch_max(offered, Ordering::AcqRel);
        match Fence::new(previous) {
            Some(highest) if previous > offered => Err(StaleFence {
                offered: fence,
                highest,
            }),
            _ => Ok(()),
        }
    }

    /// The highest fence accepted so far, if any.
    pub fn highest(&self) -> Option<Fence> {
        Fence::new(self.highest.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn i64_conversions_refuse_what_does_not_fit() {
        let max = Fence::new(i64::MAX as u64).unwrap();
        assert_eq!(max.to_i64(), Some(i64::MAX));
        assert_eq!(max.next().unwrap().to_i64(), None);
        assert_eq!(Fence::new(u64::MAX).unwrap().to_i64(), None);
        assert_eq!(Fence::from_i64(i64::MAX), Some(max));
        assert_eq!(Fence::from_i64(1), Some(Fence::FIRST));
        assert_eq!(Fence::from_i64(0), None);
        assert_eq!(Fence::from_i64(-5), None);
    }

    #[test]
    fn gate_rejects_lower_accepts_equal_and_higher() {
        let gate = FenceGate::new();
        let f = |n| Fence::new(n).unwrap();
        assert_eq!(gate.highest(), None);
        gate.check(f(3)).unwrap();
        gate.check(f(3)).unwrap();
        let err = gate.check(f(2)).unwrap_err();
        assert_eq!(err.offered, f(2));
        assert_eq!(err.highest, f(3));
        gate.check(f(7)).unwrap();
        assert_eq!(gate.highest(), Some(f(7)));
        assert!(gate.check(f(6)).is_err());
    }

    #[test]
    fn fence_zero_is_not_a_fence() {
        assert_eq!(Fence::new(0), None);
        assert_eq!(Fence::FIRST.get(), 1);
        assert_eq!(Fence::new(u64::MAX).unwrap().next(), None);
    }
}
