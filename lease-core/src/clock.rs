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

pub use crate::clock_base::Sleep;
use crate::clock_base::{boot_now, poll_until};

/// A monotonic clock: `now` never goes back. Only differences between readings mean anything.
pub trait Clock: Send + Sync + Debug + 'static {
    /// The time since an arbitrary fixed origin.
    fn now(&self) -> Duration;

    /// Resolves once [`now`](Clock::now) reads `deadline` or later.
    ///
    /// The lock waits for local deadlines with this, not with tokio's timer: tokio's timer
    /// follows `CLOCK_MONOTONIC`, which stops during a suspend, so a deadline on a clock that
    /// counts the suspend would be noticed late. The default re-reads `now` at least every
    /// 10 ms on tokio's timer; clocks that can wake exactly override it.
    fn sleep_until(&self, deadline: Duration) -> Sleep<'_> {
        poll_until(move || self.now(), deadline)
    }
}

/// A shared clock.
pub type SharedClock = Arc<dyn Clock>;

/// The host's suspend-aware monotonic clock: `CLOCK_BOOTTIME` on Linux and Android,
/// `CLOCK_MONOTONIC` elsewhere.
#[derive(Debug, Default, Clone, Copy)]
pub struct BootClock;

impl Clock for BootClock {
    fn now(&self) -> Duration {
        boot_now()
    }

    /// A `timerfd` on `CLOCK_BOOTTIME` (one for the whole process), which fires as soon as the
    /// machine resumes past the deadline.
    fn sleep_until(&self, deadline: Duration) -> Sleep<'_> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        return crate::boot_timer::sleep_until(deadline);
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        return poll_until(boot_now, deadline);
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

    fn sleep_until(&self, deadline: Duration) -> Sleep<'_> {
        Box::pin(tokio::time::sleep_until(self.origin + deadline))
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
