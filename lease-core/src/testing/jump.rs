//! [`JumpClock`]: tokio's paused clock plus jumps, to model a suspend.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

use crate::clock::{Clock, Sleep};

/// A clock that follows tokio's (paused) time and can also [`jump`](JumpClock::jump) ahead
/// while tokio's time stands still: what a suspended machine sees on resume, where
/// `CLOCK_BOOTTIME` has counted the suspend and `CLOCK_MONOTONIC` (tokio's timers) has not.
///
/// Give it to the lock ([`LockBuilder::clock`](crate::LockBuilder::clock)) and to the store
/// ([`MemoryStore::with_clock`](crate::MemoryStore::with_clock)), so both see the jump, as the
/// store's server does when the whole host sleeps. Its
/// [`sleep_until`](Clock::sleep_until) wakes on a jump past the deadline without tokio's time
/// moving, as the boot-clock timer does on resume.
#[derive(Debug)]
pub struct JumpClock {
    origin: tokio::time::Instant,
    offset: Mutex<Duration>,
    jumped: Notify,
}

impl JumpClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        Self {
            origin: tokio::time::Instant::now(),
            offset: Mutex::new(Duration::ZERO),
            jumped: Notify::new(),
        }
    }

    /// Moves this clock `by` ahead at once; tokio's time does not move.
    pub fn jump(&self, by: Duration) {
        *self.offset.lock().unwrap_or_else(|e| e.into_inner()) += by;
        self.jumped.notify_waiters();
    }
}

impl Default for JumpClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for JumpClock {
    fn now(&self) -> Duration {
        let offset = *self.offset.lock().unwrap_or_else(|e| e.into_inner());
        tokio::time::Instant::now().duration_since(self.origin) + offset
    }

    fn sleep_until(&self, deadline: Duration) -> Sleep<'_> {
        Box::pin(async move {
            loop {
                let jumped = self.jumped.notified();
                tokio::pin!(jumped);
                jumped.as_mut().enable();
                let now = self.now();
                if now >= deadline {
                    return;
                }
                tokio::select! {
                    () = tokio::time::sleep(deadline - now) => {}
                    () = jumped => {}
                }
            }
        })
    }
}
