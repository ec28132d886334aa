//! The life of one lease in this process, from grant to release or loss: what the lock holds per
//! key ([`Inner`]: the store, the settings, the holder state), the heartbeat that renews the
//! lease and waits for its local deadline, the loss signal, and the release call that must run
//! to its end.
//!
//! The lock ([`crate::lock`]) starts a lease here ([`start`]) and hands out guards
//! ([`crate::guard`]), which end it here ([`release_call`]). This file depends on neither.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, debug_span, warn};

use crate::backoff::Backoff;
use crate::clock::SharedClock;
use crate::holder::{self, HolderId};
use crate::state::{HolderState, Ticket};
use crate::{Fence, LeaseStore, StoreError, metrics};

/// What a lease carries besides its fence: the holder string it was granted to, the loss signal
/// and the heartbeat's stop signal.
#[derive(Debug, Clone)]
pub(crate) struct Payload {
    /// The holder string of this lease (see [`HolderId::for_nonce`]).
    pub(crate) holder: Arc<str>,
    pub(crate) lost: CancellationToken,
    pub(crate) stop: CancellationToken,
    pub(crate) runtime: tokio::runtime::Handle,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    pub(crate) lease: Duration,
    pub(crate) renew_every: Duration,
    pub(crate) margin: Duration,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) jitter: bool,
    pub(crate) notifications: bool,
    pub(crate) release_delay: Duration,
    /// Renewals on a grid shared by every lock with this renew interval (see
    /// [`Capabilities::batched_renewals`](crate::Capabilities::batched_renewals)).
    pub(crate) aligned_renewals: bool,
    /// Waiting calls queue in the store ([`LeaseStore::enqueue`]) rather than poll `try_lock`.
    pub(crate) queued: bool,
    /// How long a queue entry stays live without a refresh (see [`LeaseStore::enqueue`]).
    pub(crate) patience: Duration,
}

/// This process's place in the store's queue for the key: how many waiting calls share it, and
/// the holder nonce it was made under (`None`: not queued, as far as this process knows).
#[derive(Debug, Default)]
pub(crate) struct QueueState {
    waiting: usize,
    queued: Option<u64>,
}

pub(crate) struct Inner<S> {
    pub(crate) store: S,
    pub(crate) key: String,
    pub(crate) holder: HolderId,
    pub(crate) registered: bool,
    pub(crate) config: Config,
    pub(crate) clock: SharedClock,
    pub(crate) state: HolderState<Payload>,
    /// Woken whenever this process's lease on the key is acquired, released or lost, so that
    /// waiters in this process retry at once instead of each polling the store.
    pub(crate) changed: Notify,
    /// Single flight: at most one store acquisition of this key per process at a time.
    pub(crate) acquiring: Arc<tokio::sync::Mutex<()>>,
    /// This process's entry in the store's queue (queued stores only).
    pub(crate) queue: std::sync::Mutex<QueueState>,
    pub(crate) store_name: &'static str,
}

impl<S> Drop for Inner<S> {
    fn drop(&mut self) {
        if self.registered {
            holder::unregister(&self.key, &self.holder.full);
        }
    }
}

impl<S> Inner<S> {
    fn queue(&self) -> std::sync::MutexGuard<'_, QueueState> {
        // Plain counters, each update one assignment: a poisoned lock is still consistent.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes that an `enqueue` under holder nonce `nonce` is being sent, so this process may
    /// have an entry in the store's queue.
    pub(crate) fn queued_under(&self, nonce: u64) {
        self.queue().queued = Some(nonce);
    }

    /// No waiting call of this process is on the key, and it has no entry in the store's queue
    /// that a queue exit has yet to take out.
    pub(crate) fn queue_idle(&self) -> bool {
        let q = self.queue();
        q.waiting == 0 && q.queued.is_none()
    }
}

/// One waiting call of this process on a queued key, for as long as it waits. When the last
/// one stops waiting without the lease (it timed out, failed, or was dropped), the process's
/// entry is taken out of the store's queue, and a grant that raced in is released to the next
/// waiter ([`LeaseStore::leave_queue`]), in a task of its own.
pub(crate) struct Waiting<S: LeaseStore> {
    inner: Arc<Inner<S>>,
}

impl<S: LeaseStore> Waiting<S> {
    pub(crate) fn new(inner: &Arc<Inner<S>>) -> Self {
        inner.queue().waiting += 1;
        Self {
            inner: inner.clone(),
        }
    }
}

impl<S: LeaseStore> Drop for Waiting<S> {
    fn drop(&mut self) {
        let last_queued = {
            let mut q = self.inner.queue();
            q.waiting -= 1;
            q.waiting == 0 && q.queued.is_some()
        };
        if last_queued && let Ok(runtime) = tokio::runtime::Handle::try_current() {
            // Without a runtime the entry lapses by its patience, a grant to it by its lease.
            drop(runtime.spawn(leave_queue(self.inner.clone())));
        }
    }
}

/// Takes this process's entry out of the store's queue, unless a waiting call or a lease of
/// this process needs it by the time the single-flight permit is had. Counted as a pending
/// release under the entry's nonce, as it may release a grant: a later acquisition under that
/// holder waits for it to land first.
async fn leave_queue<S: LeaseStore>(inner: Arc<Inner<S>>) {
    let permit = inner.acquiring.clone().lock_owned().await;
    let nonce = {
        let mut q = inner.queue();
        if q.waiting > 0 {
            return; // a new waiting call queued meanwhile: it keeps the entry
        }
        match q.queued.take() {
            Some(nonce) => nonce,
            None => return, // a grant took the entry meanwhile
        }
    };
    inner.state.begin_release(nonce);
    drop(permit);
    let holder = inner.holder.for_nonce(nonce);
    let mut done = ReleaseDone {
        inner: inner.clone(),
        nonce,
        certain: false,
    };
    let result = inner
        .store
        .leave_queue(&inner.key, &holder)
        .instrument(debug_span!("lease.leave_queue", key = %inner.key))
        .await;
    match &result {
        Ok(true) => debug!("left the queue; a grant that raced in was passed on"),
        Ok(false) => debug!("left the queue"),
        Err(e) => warn!(error = %e, "leaving the queue failed; the entry lapses by itself"),
    }
    done.certain = result.is_ok();
}

/// Starts the lease granted as `fence` under holder nonce `nonce`: installs it with its local
/// `deadline` (a lease it supersedes ends as lost), starts its heartbeat, and wakes this
/// process's waiters. Returns the ticket of the first guard.
pub(crate) fn start<S: LeaseStore>(
    inner: &Arc<Inner<S>>,
    fence: Fence,
    deadline: Duration,
    nonce: u64,
    holder: Arc<str>,
) -> Ticket {
    let payload = Payload {
        holder,
        lost: CancellationToken::new(),
        stop: CancellationToken::new(),
        runtime: tokio::runtime::Handle::current(),
    };
    // A grant by `enqueue` took this process's entry out of the store's queue.
    inner.queue().queued = None;
    let (ticket, previous) = inner.state.install(fence, deadline, nonce, payload.clone());
    if let Some(previous) = previous {
        signal_loss(inner, &previous, "superseded by a new grant");
    }
    debug!(key = %inner.key, fence = fence.get(), dirty = ticket.dirty, "lease acquired");
    tokio::spawn(heartbeat(inner.clone(), ticket, payload));
    inner.changed.notify_waiters();
    ticket
}

/// Ends a lease as lost: fires every guard's loss signal (once) and stops the heartbeat.
pub(crate) fn signal_loss<S>(inner: &Inner<S>, payload: &Payload, reason: &'static str) {
    warn!(key = %inner.key, holder = %inner.holder.label, reason, "lease lost");
    metrics::lost(inner.store_name, reason);
    payload.stop.cancel();
    payload.lost.cancel();
    inner.changed.notify_waiters();
}

/// When the next renewal is due: `renew_every` from now, or, with `aligned`, the last multiple
/// of `renew_every` on the lock's clock before that. Every lock of the process with the same
/// interval shares those instants (the clock counts from boot), so the renewals of many keys
/// leave together and the store can batch them. Only the first renewal after a grant comes
/// early (anywhere in the first interval, never later); the next ones are one interval apart.
fn next_renewal<S>(inner: &Inner<S>, renew_every: Duration, aligned: bool) -> Instant {
    let due = Instant::now() + renew_every;
    if !aligned {
        return due;
    }
    let grid = renew_every.as_nanos().max(1);
    let at = (inner.clock.now() + renew_every).as_nanos();
    let early = u64::try_from(at % grid).unwrap_or(0);
    due - Duration::from_nanos(early)
}

/// Renews lease `ticket` every `renew_every` until it is released or lost.
///
/// The local deadline is *send time of the last successful renewal + lease − margin* on the
/// lock's clock, and it is waited for on that clock ([`Clock::sleep_until`](crate::Clock)), not
/// on tokio's timer, which stops during a suspend. Transient store errors are retried with a
/// short jittered backoff until that deadline; a permanent error, a refusal, an answer arriving
/// after the deadline, or the deadline itself ends the lease as lost.
async fn heartbeat<S: LeaseStore>(inner: Arc<Inner<S>>, ticket: Ticket, payload: Payload) {
    let Config {
        lease,
        renew_every,
        margin,
        aligned_renewals,
        ..
    } = inner.config;
    let fence: Fence = ticket.fence;
    let mut next_renew = next_renewal(&inner, renew_every, aligned_renewals);
    let new_retry = || {
        let b = Backoff::new(
            (renew_every / 16).max(Duration::from_millis(1)),
            (renew_every / 2).max(Duration::from_millis(1)),
        );
        if inner.config.jitter {
            b
        } else {
            b.without_jitter()
        }
    };
    let mut retry = new_retry();
    let span = debug_span!("lease.heartbeat", key = %inner.key, fence = fence.get());
    let lose = |reason| {
        if let Some(p) = inner.state.lose(ticket.generation) {
            signal_loss(&inner, &p, reason);
        }
    };
    // If this task ends any other way than by release or loss (the store panicked in `renew`,
    // the runtime shut down), nobody renews the lease any more: it is lost.
    let _lose_on_exit = LoseOnDrop {
        inner: &inner,
        generation: ticket.generation,
    };
    async {
        loop {
            let Some(deadline) = inner.state.deadline(ticket.generation) else {
                return; // released or lost
            };
            if inner.clock.now() >= deadline {
                return lose("local deadline passed");
            }
            // Biased, in this order: a stop wins over a due deadline, which wins over a due
            // renewal (and the order is the same on every run, which the simulation relies on).
            tokio::select! {
                biased;
                () = payload.stop.cancelled() => return,
                () = inner.clock.sleep_until(deadline) => continue, // lost at the loop's top
                () = tokio::time::sleep_until(next_renew) => {}
            }
            let sent = inner.clock.now();
            if sent >= deadline {
                return lose("local deadline passed");
            }
            let renew = inner.store.renew(lease, &inner.key, &payload.holder, fence);
            let result = tokio::select! {
                biased;
                () = payload.stop.cancelled() => return,
                () = inner.clock.sleep_until(deadline) => {
                    return lose("renewal did not answer before the local deadline");
                }
                r = renew => r,
            };
            match result {
                // An answer that comes at or after the deadline extends nothing: the lease may
                // have lapsed in the store before the renewal reached it.
                Ok(true) if inner.clock.now() >= deadline => {
                    return lose("renewal answered after the local deadline");
                }
                Ok(true) => {
                    let new_deadline = sent + lease - margin;
                    metrics::renewed(inner.store_name, deadline.saturating_sub(inner.clock.now()));
                    if !inner.state.renewed(ticket.generation, new_deadline) {
                        return;
                    }
                    retry = new_retry();
                    next_renew = next_renewal(&inner, renew_every, aligned_renewals);
                    debug!(
                        left = ?new_deadline.saturating_sub(inner.clock.now()),
                        "lease renewed"
                    );
                }
                Ok(false) => return lose("store names another holder"),
                Err(e) if e.is_transient() => {
                    metrics::renew_failed(inner.store_name);
                    debug!(error = %e, "renewal failed, retrying before the deadline");
                    next_renew = Instant::now() + retry.next_delay();
                }
                Err(e) => {
                    metrics::renew_failed(inner.store_name);
                    warn!(error = %e, "renewal failed permanently");
                    return lose("renewal failed permanently");
                }
            }
        }
    }
    .instrument(span)
    .await
}

/// Ends a lease as lost when the heartbeat task ends without having ended it (a panic, a runtime
/// shut down); a no-op after a release or a loss, since each lease ends once.
struct LoseOnDrop<'a, S> {
    inner: &'a Inner<S>,
    generation: u64,
}

impl<S> Drop for LoseOnDrop<'_, S> {
    fn drop(&mut self) {
        if let Some(p) = self.inner.state.lose(self.generation) {
            signal_loss(self.inner, &p, "heartbeat ended unexpectedly");
        }
    }
}

/// The release of a lease taken under holder nonce `nonce` as `holder`, which must run to its
/// end (spawned, or [`detachable`]); the caller has stopped the heartbeat and counted the release
/// as pending (`drop_guard`, `begin_release`). The pending release is accounted for when the call
/// ends in any way: answered, failed, panicked, or dropped unfinished (see [`ReleaseDone`]).
pub(crate) fn release_call<S: LeaseStore>(
    inner: Arc<Inner<S>>,
    fence: Fence,
    nonce: u64,
    holder: &Arc<str>,
) -> impl Future<Output = Result<bool, StoreError>> + Send + use<S> {
    let holder = holder.clone();
    let span = debug_span!("lease.release", key = %inner.key, fence = fence.get());
    // Made before the future, so that a future dropped before its first poll accounts too.
    let mut done = ReleaseDone {
        inner: inner.clone(),
        nonce,
        certain: false,
    };
    async move {
        if !inner.config.release_delay.is_zero() {
            tokio::time::sleep(inner.config.release_delay).await;
        }
        let result = inner.store.release(&inner.key, &holder, fence).await;
        match &result {
            Ok(true) => debug!("lease released"),
            Ok(false) => debug!("lease was no longer held at release"),
            Err(e) => warn!(error = %e, "release failed; the lease lapses at its end"),
        }
        done.certain = result.is_ok();
        drop(done);
        result
    }
    .instrument(span)
}

/// Accounts for a release when its call ends, however it ends. Only an answer from the store is
/// certain; an error, a panic in the store, or the call dropped unfinished (its runtime shut
/// down) leaves the release possibly still in flight, to be applied late, so the holder nonce is
/// retired and later leases use a holder string it cannot match.
struct ReleaseDone<S> {
    inner: Arc<Inner<S>>,
    nonce: u64,
    certain: bool,
}

impl<S> Drop for ReleaseDone<S> {
    fn drop(&mut self) {
        if !self.certain {
            crate::metrics::uncertain_release(self.inner.store_name);
        }
        self.inner.state.release_done(self.nonce, self.certain);
        self.inner.changed.notify_waiters();
    }
}
