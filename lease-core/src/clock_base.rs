//! The two primitives the clocks are built on, below both [`crate::clock`] and the boot-clock
//! timer: reading the boot clock, and waiting for a clock by polling it on tokio's timer.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// A future that a [`Clock`](crate::Clock) returns from
/// [`Clock::sleep_until`](crate::Clock::sleep_until).
pub type Sleep<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Sleeps on tokio's timer in steps of at most 10 ms until `now()` reaches `deadline`.
pub(crate) fn poll_until<'a>(
    now: impl Fn() -> Duration + Send + 'a,
    deadline: Duration,
) -> Sleep<'a> {
    Box::pin(async move {
        loop {
            let t = now();
            if t >= deadline {
                return;
            }
            tokio::time::sleep((deadline - t).min(Duration::from_millis(10))).await;
        }
    })
}

/// `CLOCK_BOOTTIME` (Linux, Android) or `CLOCK_MONOTONIC` (elsewhere).
pub(crate) fn boot_now() -> Duration {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let id = rustix::time::ClockId::Boottime;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let id = rustix::time::ClockId::Monotonic;
    let ts = rustix::time::clock_gettime(id);
    // Both fields are non-negative for these clocks.
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
