//! Clocks for local deadlines.
//!
//! A holder's local deadline is measured on its own host's clock only, from the moment it *sent*
//! its last successful acquire or renew, and is never compared with another process's clock. In
//! production that clock is [`BootClock`] (`CLOCK_BOOTTIME` on Linux): it keeps counting while the
//! machine is suspended, so a laptop that sleeps through its lease wakes up with the lease already
//! lost, and a wall-clock step changes nothing. Tests use [`TokioClock`], which follows tokio's
//! paused time.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

/// A monotonic clock: `now` never goes back. Only differences between readings mean anything.
pub trait Clock: Send + Sync + Debug + 'static {
    /// The time since an arbitrary fixed origin.
    fn now(&self) -> Duration;
}

/// A shared clock.
pub type SharedClock = Arc<dyn Clock>;

/// The host's suspend-aware monotonic clock: `CLOCK_BOOTTIME` on Linux and Android,
/// `CLOCK_MONOTONIC` elsewhere.
#[derive(Debug, Default, Clone, Copy)]
pub struct BootClock;

impl Clock for BootClock {
    fn now(&self) -> Duration {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let id = rustix::time::ClockId::Boottime;
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let id = rustix::time::ClockId::Monotonic;
        let ts = rustix::time::clock_gettime(id);
        // Both fields are non-negative for these clocks.
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }
}

/// tokio's clock (`tokio::time::Instant`): with `start_paused` tests it advances only when the
/// runtime auto-advances or the test calls `tokio::time::advance`, which makes timing tests
/// deterministic. It does not count suspended time; use [`BootClock`] in production.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        Self {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Duration {
        tokio::time::Instant::now().duration_since(self.origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_clock_is_monotonic() {
        let a = BootClock.now();
        let b = BootClock.now();
        assert!(b >= a);
        assert!(a > Duration::ZERO);
    }
}
