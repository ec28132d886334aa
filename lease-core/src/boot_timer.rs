//! A process-wide timer on `CLOCK_BOOTTIME`, so that deadlines on the boot clock fire on time
//! even across a suspend.
//!
//! tokio's timers run on `CLOCK_MONOTONIC`, which stops while the machine is suspended: a lease
//! whose deadline passed during a 60 s suspend would be reported lost only when a tokio timer
//! next fired, up to a renew interval after the resume. A `timerfd` on `CLOCK_BOOTTIME` with an
//! absolute expiry fires as soon as the machine resumes past it.
//!
//! One timer serves every sleeper of the process: a thread blocks in `read` on one timerfd armed
//! for the earliest registered deadline, and wakes the sleepers whose deadline has passed. One fd
//! and one thread for any number of leases (a timerfd per lease would run 10,000 held keys into
//! the process's file descriptor limit), and no periodic wake-ups (sleeps capped well below the
//! safety margin would cost every held key several wake-ups per second). Re-arming from another
//! thread while the timer thread is blocked is fine: `read` returns when the new expiry passes.
//!
//! No crate does this: `tokio-timerfd` and `timerfd` give one fd per timer, on tokio's I/O driver
//! (per runtime; the deadline watcher must work for locks used from several runtimes).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use rustix::fd::OwnedFd;
use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
    timerfd_settime,
};

struct Timer {
    fd: OwnedFd,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    sleepers: BTreeMap<(Duration, u64), Waker>,
    /// The expiry the timerfd is armed for, if any.
    armed: Option<Duration>,
}

/// The process's timer, started on first use; `None` where no timerfd can be made (the caller
/// then falls back to polling on tokio's timer).
fn timer() -> Option<&'static Timer> {
    static TIMER: OnceLock<Option<&'static Timer>> = OnceLock::new();
    *TIMER.get_or_init(|| {
        let fd = timerfd_create(TimerfdClockId::Boottime, TimerfdFlags::CLOEXEC).ok()?;
        let timer: &'static Timer = Box::leak(Box::new(Timer {
            fd,
            state: Mutex::new(State::default()),
        }));
        std::thread::Builder::new()
            .name("lease-boot-timer".into())
            .spawn(move || timer.run())
            .ok()?;
        Some(timer)
    })
}

fn now() -> Duration {
    crate::clock_base::boot_now()
}

impl Timer {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update below is complete before anything can panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&self) {
        let mut buf = [0u8; 8];
        loop {
            // Blocks until the armed expiry passes (a disarmed timer blocks until it is armed
            // and expires). An error here is not expected; pause rather than spin on it.
            if rustix::io::read(&self.fd, &mut buf).is_err() {
                std::thread::sleep(Duration::from_millis(10));
            }
            let mut st = self.lock();
            st.armed = None;
            let now = now();
            while let Some(entry) = st.sleepers.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                entry.remove().wake();
            }
            let first = st.sleepers.first_key_value().map(|((d, _), _)| *d);
            if let Some(at) = first {
                self.arm(&mut st, at);
            }
        }
    }

    /// Arms the timerfd for `at` unless it is armed for an earlier time already.
    fn arm(&self, st: &mut State, at: Duration) {
        if st.armed.is_some_and(|armed| armed <= at) {
            return;
        }
        // A zero expiry would disarm the timer; the boot clock is never at zero anyway.
        let at = at.max(Duration::from_nanos(1));
        let spec = Itimerspec {
            it_interval: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: Timespec {
                tv_sec: i64::try_from(at.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(at.subsec_nanos()),
            },
        };
        if timerfd_settime(&self.fd, TimerfdTimerFlags::ABSTIME, &spec).is_ok() {
            st.armed = Some(at);
        }
    }
}

/// Sleeps until the boot clock reads `deadline` or later.
pub(crate) fn sleep_until(deadline: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    match timer() {
        Some(timer) => Box::pin(BootSleep {
            timer,
            deadline,
            id: None,
        }),
        None => crate::clock_base::poll_until(crate::clock_base::boot_now, deadline),
    }
}

struct BootSleep {
    timer: &'static Timer,
    deadline: Duration,
    id: Option<u64>,
}

impl Future for BootSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let mut st = this.timer.lock();
        if now() >= this.deadline {
            if let Some(id) = this.id.take() {
                st.sleepers.remove(&(this.deadline, id));
            }
            return Poll::Ready(());
        }
        let id = *this.id.get_or_insert_with(|| {
            st.next_id += 1;
            st.next_id
        });
        st.sleepers.insert((this.deadline, id), cx.waker().clone());
        this.timer.arm(&mut st, this.deadline);
        Poll::Pending
    }
}

impl Drop for BootSleep {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.timer.lock().sleepers.remove(&(self.deadline, id));
        }
    }
}

#[cfg(all(test, not(lease_loom)))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wakes_at_the_deadline_in_order_of_deadlines() {
        let start = now();
        let late = tokio::spawn(sleep_until(start + Duration::from_millis(80)));
        let early = sleep_until(start + Duration::from_millis(20));
        early.await;
        let woke = now() - start;
        assert!(woke >= Duration::from_millis(20), "woke early: {woke:?}");
        assert!(
            !late.is_finished(),
            "the later sleeper woke with the earlier one"
        );
        late.await.unwrap();
        assert!(now() - start >= Duration::from_millis(80));
    }

    #[tokio::test]
    async fn a_past_deadline_is_ready_at_once_and_dropped_sleepers_are_forgotten() {
        sleep_until(now() - Duration::from_millis(1)).await;
        for _ in 0..100 {
            let s = tokio::time::timeout(
                Duration::from_millis(1),
                sleep_until(now() + Duration::from_secs(3600)),
            );
            assert!(s.await.is_err());
        }
        let t = timer().expect("timerfd on Linux");
        let far = now() + Duration::from_secs(3000);
        let left = t.lock().sleepers.keys().filter(|(d, _)| *d > far).count();
        assert_eq!(left, 0, "dropped sleepers stay registered");
    }
}
