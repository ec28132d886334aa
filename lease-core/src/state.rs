//! The per-process holder state of one lock: which lease this process holds, how many guards share
//! it, and the hand-over between guards, the heartbeat and the release path.
//!
//! # Invariants
//!
//! - At most one lease is *current* (`held`). Each installed lease gets a new `generation`; a guard
//!   remembers the generation it was issued for, and every transition names the generation it
//!   acts on, so a stale guard or a stale heartbeat can never touch a newer lease.
//! - `count` is the number of live guards of the current lease. The guard whose drop takes it to
//!   zero, and only that one, receives the lease back to release it; a loss takes the lease away
//!   first, after which no guard receives it. Each lease therefore ends exactly once: released or
//!   lost.
//! - The re-entrant fast path ([`HolderState::enter`]) hands out a guard only while the lease is
//!   current and its local deadline has not passed; a lease past its deadline is ended as lost
//!   right there instead.
//! - Every lease is taken under a holder *nonce*; the holder string the store sees is derived
//!   from it. `pending_releases` counts releases sent under the current nonce and not yet
//!   answered. A new acquisition waits for it to reach zero, so a release can never delete a
//!   grant made after it. A release whose outcome stays unknown (an error, a panic, a dropped
//!   call, or a wait for it that ran out of time) *retires* the nonce: later leases are taken
//!   under a new holder string, which that release, should it still land, cannot match. A
//!   nonce only grows.
//!
//! All of this is plain data under one mutex; the caller performs the side effects (cancel the
//! loss token, stop the heartbeat, send the release) with the payload a transition returns. That
//! keeps the state machine small enough for loom to check exhaustively.

use std::time::Duration;

use crate::Fence;
use crate::sync::{Mutex, MutexGuard};

/// The holder state of one lock, generic over the payload a lease carries (the loss token and the
/// heartbeat handle in production; `()` under loom).
#[derive(Debug)]
pub(crate) struct HolderState<P> {
    inner: Mutex<Inner<P>>,
}

#[derive(Debug)]
struct Inner<P> {
    generation: u64,
    held: Option<Held<P>>,
    /// The fence the next grant has if nobody else held the key meanwhile (for `is_dirty`).
    expected_fence: Option<Fence>,
    /// The holder nonce new leases are taken under.
    nonce: u64,
    /// Releases sent under `nonce` and not yet answered.
    pending_releases: usize,
}

#[derive(Debug)]
struct Held<P> {
    generation: u64,
    fence: Fence,
    deadline: Duration,
    count: usize,
    dirty: bool,
    /// The holder nonce this lease was taken under.
    nonce: u64,
    payload: P,
}

/// What a guard needs to know about the lease it was issued for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    pub(crate) generation: u64,
    pub(crate) fence: Fence,
    pub(crate) dirty: bool,
}

/// The outcome of the fast path.
#[derive(Debug)]
pub(crate) enum Enter<P> {
    /// A further guard of the current lease.
    Entered(Ticket),
    /// The current lease had passed its deadline and is now lost; the payload is handed back so
    /// the caller can signal the loss.
    Expired(P),
    /// No lease is held.
    Vacant,
}

impl<P: Clone> HolderState<P> {
    pub(crate) fn new() -> Self {
        Self {
            inner: Mutex::new(Inner {
                generation: 0,
                held: None,
                expected_fence: None,
                nonce: 0,
                pending_releases: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<P>> {
        // Every transition below leaves the state consistent before it can panic, so a poisoned
        // mutex still holds consistent state.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The re-entrant fast path: one more guard of the current lease if it is valid at `now`.
    pub(crate) fn enter(&self, now: Duration) -> Enter<P> {
        let mut st = self.lock();
        match &mut st.held {
            Some(h) if now < h.deadline => {
                h.count += 1;
                Enter::Entered(Ticket {
                    generation: h.generation,
                    fence: h.fence,
                    dirty: h.dirty,
                })
            }
            Some(_) => {
                let h = st.held.take().expect("matched Some");
                st.expected_fence = Some(h.fence);
                Enter::Expired(h.payload)
            }
            None => Enter::Vacant,
        }
    }

    /// Installs a lease just granted by the store under holder nonce `nonce`, with one guard.
    /// Returns the ticket and, if a previous lease was still current (it cannot be valid: callers
    /// take the fast path first), that lease's payload, now lost.
    pub(crate) fn install(
        &self,
        fence: Fence,
        deadline: Duration,
        nonce: u64,
        payload: P,
    ) -> (Ticket, Option<P>) {
        let mut st = self.lock();
        let previous = st.held.take().map(|h| {
            st.expected_fence = Some(h.fence);
            h.payload
        });
        let dirty = match st.expected_fence {
            Some(expected) => fence != expected,
            None => fence != Fence::FIRST,
        };
        st.generation += 1;
        let generation = st.generation;
        st.held = Some(Held {
            generation,
            fence,
            deadline,
            count: 1,
            dirty,
            nonce,
            payload,
        });
        (
            Ticket {
                generation,
                fence,
                dirty,
            },
            previous,
        )
    }

    /// One more guard of lease `generation` (a guard clone). `false` if that lease has ended;
    /// the clone then belongs to an ended lease and counts for nothing.
    pub(crate) fn clone_guard(&self, generation: u64) -> bool {
        let mut st = self.lock();
        match &mut st.held {
            Some(h) if h.generation == generation => {
                h.count += 1;
                true
            }
            _ => false,
        }
    }

    /// A guard of lease `generation` is gone. Returns the fence, the holder nonce and the payload
    /// when it was the last one: the lease has ended and the caller must release it, and a
    /// release is now pending (see [`HolderState::release_done`]).
    pub(crate) fn drop_guard(&self, generation: u64) -> Option<(Fence, u64, P)> {
        let mut st = self.lock();
        match &mut st.held {
            Some(h) if h.generation == generation => {
                h.count -= 1;
                if h.count > 0 {
                    return None;
                }
                let h = st.held.take().expect("matched Some");
                st.expected_fence = h.fence.next();
                // A lease taken under an already retired nonce cannot collide with the next one.
                if h.nonce == st.nonce {
                    st.pending_releases += 1;
                }
                Some((h.fence, h.nonce, h.payload))
            }
            _ => None,
        }
    }

    /// A release of a lease taken under `nonce`, sent after [`HolderState::drop_guard`], has
    /// ended: `certain` if the store answered, `false` if its outcome is unknown (it may still be
    /// applied later), which retires the nonce.
    pub(crate) fn release_done(&self, nonce: u64, certain: bool) {
        let mut st = self.lock();
        if nonce != st.nonce {
            return; // retired meanwhile: no longer counted
        }
        st.pending_releases -= 1;
        if !certain {
            st.nonce += 1;
            st.pending_releases = 0;
        }
    }

    /// A release of a grant never installed (it arrived past its deadline), taken under `nonce`,
    /// is about to be sent: count it as pending like a release after `drop_guard`.
    pub(crate) fn begin_release(&self, nonce: u64) {
        let mut st = self.lock();
        if nonce == st.nonce {
            st.pending_releases += 1;
        }
    }

    /// Releases sent under the current nonce and not yet answered.
    pub(crate) fn pending_releases(&self) -> usize {
        self.lock().pending_releases
    }

    /// The holder nonce the next lease is taken under.
    pub(crate) fn nonce(&self) -> u64 {
        self.lock().nonce
    }

    /// Stops using holder nonce `nonce` (if it is still current) because a call made under it
    /// has an unknown outcome; releases pending under it no longer hold up new acquisitions.
    pub(crate) fn retire(&self, nonce: u64) {
        let mut st = self.lock();
        if nonce == st.nonce {
            st.nonce += 1;
            st.pending_releases = 0;
        }
    }

    /// Ends lease `generation` as lost. Returns its payload if it was still current, so the loss
    /// is signalled exactly once.
    pub(crate) fn lose(&self, generation: u64) -> Option<P> {
        let mut st = self.lock();
        match &st.held {
            Some(h) if h.generation == generation => {
                let h = st.held.take().expect("matched Some");
                st.expected_fence = Some(h.fence);
                Some(h.payload)
            }
            _ => None,
        }
    }

    /// Moves lease `generation`'s deadline after a successful renewal. `false` if the lease has
    /// ended meanwhile (the heartbeat then stops).
    pub(crate) fn renewed(&self, generation: u64, deadline: Duration) -> bool {
        let mut st = self.lock();
        match &mut st.held {
            Some(h) if h.generation == generation => {
                h.deadline = h.deadline.max(deadline);
                true
            }
            _ => false,
        }
    }

    /// The local deadline of lease `generation`, if it is still current.
    pub(crate) fn deadline(&self, generation: u64) -> Option<Duration> {
        match &self.lock().held {
            Some(h) if h.generation == generation => Some(h.deadline),
            _ => None,
        }
    }

    /// The number of live guards of the current lease (0 when none is held).
    pub(crate) fn guards(&self) -> usize {
        self.lock().held.as_ref().map_or(0, |h| h.count)
    }

    /// The payload of lease `generation`, if it is still current.
    pub(crate) fn payload(&self, generation: u64) -> Option<P> {
        match &self.lock().held {
            Some(h) if h.generation == generation => Some(h.payload.clone()),
            _ => None,
        }
    }
}

#[cfg(all(test, not(lease_loom)))]
mod tests {
    use super::*;

    fn f(n: u64) -> Fence {
        Fence::new(n).unwrap()
    }
    const LATER: Duration = Duration::from_secs(10);

    #[test]
    fn last_guard_releases_exactly_once() {
        let st = HolderState::<()>::new();
        let (t, prev) = st.install(f(1), LATER, 0, ());
        assert!(prev.is_none());
        assert!(matches!(st.enter(Duration::ZERO), Enter::Entered(_)));
        assert!(st.clone_guard(t.generation));
        assert_eq!(st.guards(), 3);
        assert!(st.drop_guard(t.generation).is_none());
        assert!(st.drop_guard(t.generation).is_none());
        assert_eq!(st.drop_guard(t.generation).map(|(f, _, _)| f), Some(f(1)));
        assert_eq!(st.pending_releases(), 1);
        assert!(
            st.lose(t.generation).is_none(),
            "a released lease cannot also be lost"
        );
    }

    #[test]
    fn lost_lease_is_not_reentered_and_not_released() {
        let st = HolderState::<()>::new();
        let (t, _) = st.install(f(1), LATER, 0, ());
        assert!(st.lose(t.generation).is_some());
        assert!(st.lose(t.generation).is_none(), "a loss is signalled once");
        assert!(matches!(st.enter(Duration::ZERO), Enter::Vacant));
        assert!(st.drop_guard(t.generation).is_none());
        assert_eq!(st.pending_releases(), 0);
    }

    #[test]
    fn expired_lease_is_lost_on_the_fast_path() {
        let st = HolderState::<()>::new();
        let (t, _) = st.install(f(1), Duration::from_secs(1), 0, ());
        assert!(matches!(
            st.enter(Duration::from_millis(999)),
            Enter::Entered(_)
        ));
        assert!(matches!(
            st.enter(Duration::from_secs(1)),
            Enter::Expired(())
        ));
        assert!(st.deadline(t.generation).is_none());
    }

    #[test]
    fn an_uncertain_release_retires_the_nonce() {
        let st = HolderState::<()>::new();
        let (t, _) = st.install(f(1), LATER, st.nonce(), ());
        assert!(st.drop_guard(t.generation).is_some());
        assert_eq!(st.pending_releases(), 1);
        st.release_done(0, false);
        assert_eq!(st.nonce(), 1, "an unknown outcome retires the nonce");
        assert_eq!(
            st.pending_releases(),
            0,
            "and no longer holds up acquisitions"
        );
        let (t, _) = st.install(f(1), LATER, st.nonce(), ());
        assert!(st.drop_guard(t.generation).is_some());
        st.retire(0);
        st.release_done(0, true);
        assert_eq!(
            (st.nonce(), st.pending_releases()),
            (1, 1),
            "a retired nonce's calls change nothing"
        );
        st.release_done(1, true);
        assert_eq!((st.nonce(), st.pending_releases()), (1, 0));
        // A lease taken under a nonce retired while it was held: its release is not counted.
        let (t, _) = st.install(f(2), LATER, st.nonce(), ());
        st.retire(1);
        assert!(st.drop_guard(t.generation).is_some());
        assert_eq!(st.pending_releases(), 0);
    }

    #[test]
    fn dirty_when_someone_else_held_the_key_between() {
        let st = HolderState::<()>::new();
        let (t, _) = st.install(f(1), LATER, 0, ());
        assert!(!t.dirty, "first grant of a fresh key");
        st.drop_guard(t.generation);
        st.release_done(0, true);
        let (t, _) = st.install(f(2), LATER, 0, ());
        assert!(!t.dirty, "released at 1, retaken at 2: nobody between");
        st.drop_guard(t.generation);
        let (t, _) = st.install(f(5), LATER, 0, ());
        assert!(t.dirty, "released at 2, retaken at 5: others held it");
        st.lose(t.generation);
        let (t, _) = st.install(f(5), LATER, 0, ());
        assert!(!t.dirty, "lost at 5, retaken at 5: nobody between");
        let st = HolderState::<()>::new();
        assert!(
            st.install(f(3), LATER, 0, ()).0.dirty,
            "a key others held before"
        );
    }
}

/// Model checks of the hand-over between guards, the heartbeat's loss and the release path:
/// `RUSTFLAGS="--cfg lease_loom" cargo test -p lease-core --lib --release loom`.
#[cfg(all(test, lease_loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    const LATER: Duration = Duration::from_secs(10);

    fn fence() -> Fence {
        Fence::FIRST
    }

    /// Two guards dropped on two threads while the heartbeat declares a loss: the lease ends
    /// exactly once, by release or by loss, never both, and the count never underflows.
    #[test]
    fn drops_and_loss_end_the_lease_exactly_once() {
        loom::model(|| {
            let st = Arc::new(HolderState::<()>::new());
            let (t, _) = st.install(fence(), LATER, 0, ());
            assert!(st.clone_guard(t.generation));
            let drops: Vec<_> = (0..2)
                .map(|_| {
                    let st = st.clone();
                    thread::spawn(move || st.drop_guard(t.generation).is_some())
                })
                .collect();
            let lost = st.lose(t.generation).is_some();
            let released = drops
                .into_iter()
                .map(|h| h.join().unwrap())
                .filter(|r| *r)
                .count();
            assert_eq!(
                usize::from(lost) + released,
                1,
                "lost={lost} released={released}"
            );
            assert_eq!(st.guards(), 0);
            assert_eq!(st.pending_releases(), released);
        });
    }

    /// A re-entrant acquisition racing with a loss: either it gets a guard before the loss (and
    /// the loss then reaches that guard) or it finds nothing held; never a guard of a lost lease.
    #[test]
    fn reentry_never_outlives_a_loss() {
        loom::model(|| {
            let st = Arc::new(HolderState::<()>::new());
            let (t, _) = st.install(fence(), LATER, 0, ());
            let enter = {
                let st = st.clone();
                thread::spawn(move || match st.enter(Duration::ZERO) {
                    Enter::Entered(ticket) => Some(ticket),
                    _ => None,
                })
            };
            let lost = st.lose(t.generation).is_some();
            let entered = enter.join().unwrap();
            assert!(
                lost,
                "the loss must end the lease whatever the interleaving"
            );
            if let Some(ticket) = entered {
                // A guard taken before the loss belongs to the lost lease: it has no deadline
                // any more (so it reports the lease as not held) and counts no guard.
                assert_eq!(ticket.generation, t.generation);
                assert_eq!(st.deadline(ticket.generation), None);
                assert!(!st.clone_guard(ticket.generation));
            }
            assert_eq!(st.guards(), 0);
            assert!(matches!(st.enter(Duration::ZERO), Enter::Vacant));
        });
    }

    /// The last guard dropping while another task re-enters: either the re-entry comes first
    /// (the lease stays, held by the new guard, and nothing is released) or the drop does (the
    /// lease is released and the re-entry finds it vacant, so it goes to the store).
    #[test]
    fn last_drop_racing_reentry_releases_only_an_unheld_lease() {
        loom::model(|| {
            let st = Arc::new(HolderState::<()>::new());
            let (t, _) = st.install(fence(), LATER, 0, ());
            let enter = {
                let st = st.clone();
                thread::spawn(move || matches!(st.enter(Duration::ZERO), Enter::Entered(_)))
            };
            let released = st.drop_guard(t.generation).is_some();
            let entered = enter.join().unwrap();
            assert!(released != entered, "released={released} entered={entered}");
            assert_eq!(st.guards(), usize::from(entered));
            if entered {
                assert!(
                    st.drop_guard(t.generation).is_some(),
                    "the new guard releases later"
                );
            }
            assert_eq!(st.pending_releases(), 1);
        });
    }
}
