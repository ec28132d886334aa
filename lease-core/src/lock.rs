//! [`CrossProcessLock`]: the per-process lock on one key, and its builder.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{Instrument, debug, debug_span, warn};

use crate::backoff::Backoff;
use crate::clock::{BootClock, SharedClock};
use crate::detach::detachable;
use crate::guard::LockGuard;
use crate::holder::{self, HolderId};
use crate::input::validate;
use crate::lease::{self, Config, Inner, signal_loss};
use crate::state::{Enter, HolderState};
use crate::{Enqueued, Error, Fence, LeaseStore, StoreError, metrics};

/// A lease lock on one key, shared by every process that uses the same store and key.
///
/// Use it to make sure that only one process at a time runs some critical section (claims a job,
/// writes a data directory, acts as leader), including processes on other hosts when the store
/// is shared. Build one per key with [`CrossProcessLock::builder`]; clones are cheap and share
/// the same holder, so clone it to tasks rather than building another.
///
/// Acquiring returns a [`LockGuard`]. While any guard lives, a heartbeat renews the lease every
/// `renew_every`. Acquiring again in the same process while the lease is valid is re-entrant: it
/// returns another guard without a store call. Dropping the last guard releases the lease at once.
///
/// A lease can be lost: the process pauses past its deadline, the store becomes unreachable, or
/// the store names another holder. Every guard then reports it ([`LockGuard::lost`],
/// [`LockGuard::is_held`]), exactly once and no later than the local deadline, and the lock never
/// hands out a guard for that lease again. Writes to shared resources must carry
/// [`LockGuard::fence`] and be checked by the resource (see [`FenceGate`](crate::FenceGate)).
pub struct CrossProcessLock<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for CrossProcessLock<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<S> std::fmt::Debug for CrossProcessLock<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrossProcessLock")
            .field("store", &self.inner.store_name)
            .field("key", &self.inner.key)
            .field("holder", &self.inner.holder)
            .field("lease", &self.inner.config.lease)
            .finish()
    }
}

/// Builds a [`CrossProcessLock`]; see each setter for its default.
#[derive(Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct LockBuilder<S> {
    store: S,
    key: String,
    holder: Option<String>,
    label: Option<String>,
    lease: Duration,
    renew_every: Option<Duration>,
    margin: Option<Duration>,
    backoff: (Duration, Duration),
    jitter: bool,
    notifications: bool,
    release_delay: Duration,
    barging: bool,
    clock: Option<SharedClock>,
}

/// The default lease.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

impl<S: LeaseStore> LockBuilder<S> {
    /// The lease length (default 10 s). Rounded up to what the store can grant
    /// ([`Capabilities::effective_lease`](crate::Capabilities::effective_lease)). A shorter lease
    /// hands a dead holder's key over sooner and costs more renewals.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How often the heartbeat renews a held lease (default a third of the lease). Must leave
    /// room for a few renewals before the local deadline.
    pub fn renew_every(mut self, every: Duration) -> Self {
        self.renew_every = Some(every);
        self
    }

    /// How long before the lease's end, as this process measures it, the lease counts as lost
    /// (default a tenth of the lease). It covers the drift between this host's clock and the
    /// store's, and the time to stop work after the loss signal.
    pub fn safety_margin(mut self, margin: Duration) -> Self {
        self.margin = Some(margin);
        self
    }

    /// Bounds of the waiting calls' jittered exponential backoff (default 2 ms to 250 ms). The
    /// upper bound also bounds each wait for a store notification, so a missed notification
    /// costs at most `max` of latency.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff = (min, max);
        self
    }

    /// Whether waiting calls and the heartbeat's retries jitter their backoff (default `true`).
    /// Turning it off makes waiters that started together poll together; it exists to reproduce
    /// older designs in benchmarks, and to make simulated runs repeat exactly (feature
    /// `comparison`).
    #[cfg(feature = "comparison")]
    #[cfg_attr(docsrs, doc(cfg(feature = "comparison")))]
    pub fn jitter(mut self, yes: bool) -> Self {
        self.jitter = yes;
        self
    }

    /// Whether waiting calls wake early on store notifications and on releases and grants
    /// within this process (default `true`). Without, they only poll on their backoff schedule;
    /// this exists to reproduce older designs in benchmarks (feature `comparison`).
    #[cfg(feature = "comparison")]
    #[cfg_attr(docsrs, doc(cfg(feature = "comparison")))]
    pub fn wake_on_notifications(mut self, yes: bool) -> Self {
        self.notifications = yes;
        self
    }

    /// Holds every release back by this long before sending it (default zero: at once). A
    /// non-zero delay only reproduces older designs that released on the next heartbeat tick,
    /// for benchmarks (feature `comparison`); it slows every handoff by that much.
    #[cfg(feature = "comparison")]
    #[cfg_attr(docsrs, doc(cfg(feature = "comparison")))]
    pub fn release_delay(mut self, delay: Duration) -> Self {
        self.release_delay = delay;
        self
    }

    /// Whether waiting calls poll the key instead of queueing for it (default `false`).
    ///
    /// With a store that keeps waiter queues ([`Capabilities::queued_grants`]), a waiting call
    /// queues once and a release hands the key to the oldest live waiter, so waiters are served
    /// in order and a handoff costs the release's store write. In barging mode the lock instead
    /// retries [`try_lock`](LeaseStore::try_lock) on its backoff schedule, woken by
    /// notifications, and whoever asks first after a release wins (a store with queues still
    /// lets no newcomer overtake a live queued waiter). A store without queues always works this
    /// way.
    ///
    /// [`Capabilities::queued_grants`]: crate::Capabilities::queued_grants
    pub fn barging(mut self, yes: bool) -> Self {
        self.barging = yes;
        self
    }

    /// The readable part of the holder id (default `lease`): the holder is
    /// `host/pid/label#<128 random bits>`, and logs show only `host/pid/label`.
    pub fn holder_label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// A stable holder id instead of a random one (at most 1,000 bytes).
    ///
    /// A process restarted with the same holder retakes its own lease at once if it has not
    /// expired, with the same fence, instead of waiting for it to lapse. That is only safe if
    /// two live processes can never use the same holder: the store cannot tell them apart.
    /// Within one process, building a second lock object for the same key and holder fails
    /// (clone the first one instead).
    ///
    /// After a store call whose outcome is unknown (a release that failed or did not answer),
    /// the lock takes its later leases as `holder~N`, so that call cannot touch them should the
    /// store apply it late; a restarted process then cannot retake such a lease early.
    pub fn holder(mut self, holder: impl Into<String>) -> Self {
        self.holder = Some(holder.into());
        self
    }

    /// The clock for local deadlines (default [`BootClock`], `CLOCK_BOOTTIME`). Tests with
    /// tokio's paused time use [`TokioClock`](crate::TokioClock).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Checks the settings and builds the lock. Makes no store call.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the bad setting: an empty or over-long key or holder, a zero
    /// lease, a renew interval or safety margin that leaves no time to renew, bad backoff
    /// bounds, or a stable holder already used for this key by another lock object in this
    /// process.
    pub fn build(self) -> Result<CrossProcessLock<S>, Error> {
        let caps = self.store.capabilities();
        if self.lease.is_zero() {
            return Err(Error::Config("the lease must be longer than zero".into()));
        }
        let lease = caps.effective_lease(self.lease);
        let renew_every = self.renew_every.unwrap_or(lease / 3);
        let margin = self.margin.unwrap_or(lease / 10);
        if margin >= lease {
            return Err(Error::Config(format!(
                "safety margin {margin:?} must be shorter than the lease {lease:?}"
            )));
        }
        if renew_every.is_zero() || renew_every >= lease - margin {
            return Err(Error::Config(format!(
                "renew interval {renew_every:?} must be above zero and shorter than the lease \
                 {lease:?} minus the safety margin {margin:?}"
            )));
        }
        let (backoff_min, backoff_max) = self.backoff;
        if backoff_min.is_zero() || backoff_min > backoff_max {
            return Err(Error::Config(format!(
                "backoff bounds {backoff_min:?}..{backoff_max:?} must satisfy 0 < min <= max"
            )));
        }
        let (holder, registered) = match self.holder {
            Some(h) => (HolderId::stable(h), true),
            None => {
                let label = self.label.unwrap_or_else(|| "lease".to_owned());
                (HolderId::random(&label), false)
            }
        };
        // The longest holder string the lock can send: with the largest nonce suffix.
        validate(caps.name, &self.key, &holder.for_nonce(u64::MAX))
            .map_err(|e| Error::Config(e.to_string()))?;
        if registered && !holder::register(&self.key, &holder.full) {
            return Err(Error::Config(format!(
                "holder `{}` is already used for key `{}` by another lock object in this \
                 process; clone that lock instead (clones share the lease)",
                holder.label, self.key
            )));
        }
        Ok(CrossProcessLock {
            inner: Arc::new(Inner {
                store: self.store,
                key: self.key,
                holder,
                registered,
                config: Config {
                    lease,
                    renew_every,
                    margin,
                    backoff_min,
                    backoff_max,
                    jitter: self.jitter,
                    notifications: self.notifications,
                    release_delay: self.release_delay,
                    aligned_renewals: caps.batched_renewals,
                    queued: caps.queued_grants && !self.barging,
                    // Waiters refresh their entry at every poll, at most `backoff_max` apart.
                    patience: (backoff_max * 4).max(Duration::from_secs(1)),
                },
                clock: self.clock.unwrap_or_else(|| Arc::new(BootClock)),
                state: HolderState::new(),
                changed: Notify::new(),
                acquiring: Arc::new(tokio::sync::Mutex::new(())),
                queue: std::sync::Mutex::new(lease::QueueState::default()),
                store_name: caps.name,
            }),
        })
    }
}

impl<S: LeaseStore> CrossProcessLock<S> {
    /// A builder for a lock on `key` in `store`. To share one store between many locks, pass an
    /// `Arc<Store>` (which implements [`LeaseStore`]).
    pub fn builder(store: S, key: impl Into<String>) -> LockBuilder<S> {
        LockBuilder {
            store,
            key: key.into(),
            holder: None,
            label: None,
            lease: DEFAULT_LEASE,
            renew_every: None,
            margin: None,
            backoff: (Duration::from_millis(2), Duration::from_millis(250)),
            jitter: true,
            notifications: true,
            release_delay: Duration::ZERO,
            barging: false,
            clock: None,
        }
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.inner.key
    }

    /// The readable part of the holder id (never the random part).
    pub fn holder_label(&self) -> &str {
        &self.inner.holder.label
    }

    /// The lease as granted by the store (the configured one, rounded up to the store's
    /// granularity).
    pub fn lease(&self) -> Duration {
        self.inner.config.lease
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// The number of live guards of the lease this process holds (0 if none).
    pub fn guards(&self) -> usize {
        self.inner.state.guards()
    }

    /// Tries once: a guard if the lease is free or already held by this process, else
    /// [`Error::Busy`].
    ///
    /// # Errors
    ///
    /// [`Error::Busy`] if another holder has the key; [`Error::Store`] if the store failed, or
    /// did not answer within the lease minus the safety margin (a grant that arrives that late
    /// would already be past its deadline, so it is released instead of handed out).
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: if the future is dropped while the store call is in flight, the call
    /// completes in the background and a lease it granted is released at once.
    pub async fn try_lock_once(&self) -> Result<LockGuard<S>, Error> {
        match self.acquire_once(None, false).await? {
            Attempt::Granted(g) => Ok(g),
            Attempt::Busy | Attempt::Queued(..) => Err(Error::Busy {
                key: self.inner.key.clone(),
            }),
            // Only an attempt with a call deadline times out; none was given.
            Attempt::TimedOut => Err(Error::TimedOut {
                key: self.inner.key.clone(),
                waited: Duration::ZERO,
            }),
        }
    }

    /// Waits until the lease is acquired, however long that takes.
    ///
    /// Waiting retries with jittered exponential backoff and wakes early when the store
    /// notifies a release or another task of this process releases or acquires the key.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] for a permanent store error, or for transient ones that went on for a
    /// whole lease (shorter store trouble is retried like a busy key).
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping the future leaves no guard count, task or store key behind.
    pub async fn lock(&self) -> Result<LockGuard<S>, Error> {
        self.wait(None).await
    }

    /// Waits at most `timeout` for the lease.
    ///
    /// # Errors
    ///
    /// [`Error::TimedOut`] when `timeout` passes first while the key is busy;
    /// [`Error::Store`] for a permanent store error, or for a transient one still failing when
    /// `timeout` passes (transient errors are retried until then).
    ///
    /// # Cancel safety
    ///
    /// As [`CrossProcessLock::lock`].
    pub async fn lock_timeout(&self, timeout: Duration) -> Result<LockGuard<S>, Error> {
        self.wait(Some(timeout)).await
    }

    /// Acquires the lease, runs `work` with a guard, and releases the lease afterwards.
    ///
    /// If the lease is lost while `work` runs, `work` is dropped at its next await point and
    /// the call returns [`Error::Lost`]; work that must not be interrupted half-way should
    /// fence its writes instead.
    ///
    /// # Errors
    ///
    /// As [`CrossProcessLock::lock`], plus [`Error::Lost`].
    pub async fn with_lock<F, Fut, T>(&self, work: F) -> Result<T, Error>
    where
        F: FnOnce(LockGuard<S>) -> Fut,
        Fut: Future<Output = T>,
    {
        let guard = self.lock().await?;
        let lost = guard.loss_token();
        let out = tokio::select! {
            biased;
            () = lost.cancelled() => None,
            out = work(guard.clone()) => Some(out),
        };
        match out {
            Some(out) if guard.is_held() => {
                guard.release().await?;
                Ok(out)
            }
            _ => Err(Error::Lost {
                key: self.inner.key.clone(),
            }),
        }
    }

    /// Waits until the store calls this process still has in flight for the key in tasks of
    /// their own have been answered, or `within` has passed; returns whether they all were.
    ///
    /// Those calls are the release of a dropped last guard, the removal of this process's queue
    /// entry after its last waiting call gave up (timed out, or was dropped), and the release
    /// of a grant that raced in meanwhile. They run as tasks on the runtime, so a program that
    /// is about to end, and with it its runtime, calls this first: otherwise they may never
    /// reach the store, and a queue entry left behind can be granted the key after the
    /// process is gone, which then stays held until that lease lapses. A lease still held by a
    /// live guard is not released by this; release the guards first.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: it only waits.
    pub async fn settle(&self, within: Duration) -> bool {
        let until = Instant::now() + within;
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            // A store acquisition still running on its own holds the single-flight permit (its
            // grant, with the caller gone, is released when it lands), and a queue exit takes
            // the permit before it counts itself as a pending release.
            let idle = match self.inner.acquiring.try_lock() {
                Ok(_permit) => self.inner.queue_idle() && self.inner.state.pending_releases() == 0,
                Err(_) => false,
            };
            if idle {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            // Not every end of such a call wakes `changed` (an acquisition that got nothing),
            // so look again after a short pause as well.
            let next = until.min(Instant::now() + Duration::from_millis(10));
            let _ = tokio::time::timeout_at(next, changed).await;
        }
    }

    async fn wait(&self, timeout: Option<Duration>) -> Result<LockGuard<S>, Error> {
        let started = Instant::now();
        let deadline = timeout.map(|t| started + t);
        let config = self.inner.config;
        let mut backoff = Backoff::new(config.backoff_min, config.backoff_max);
        if !config.jitter {
            backoff = backoff.without_jitter();
        }
        let span =
            debug_span!("lease.wait", key = %self.inner.key, holder = %self.inner.holder.label);
        // While this call waits in a queued store, it counts as one of this process's waiters on
        // the key; the last one to give up without the lease takes the process's entry out of
        // the store's queue.
        let _waiting = config.queued.then(|| lease::Waiting::new(&self.inner));
        async {
            let mut failing_since: Option<Instant> = None;
            loop {
                // Register for in-process wake-ups before trying, so a release between the try
                // and the wait is not missed.
                let changed = self.inner.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                let mut store_failed = false;
                let mut queued_as = None;
                match self.acquire_once(deadline, config.queued).await {
                    Ok(Attempt::Granted(guard)) => {
                        metrics::wait(self.inner.store_name, started.elapsed());
                        return Ok(guard);
                    }
                    Ok(Attempt::Busy) => failing_since = None,
                    Ok(Attempt::Queued(place)) => {
                        failing_since = None;
                        queued_as = Some(place);
                    }
                    Ok(Attempt::TimedOut) => {
                        return Err(Error::TimedOut {
                            key: self.inner.key.clone(),
                            waited: started.elapsed(),
                        });
                    }
                    Err(Error::Store(e)) if e.is_transient() => {
                        // A store in trouble (a leader election, a reconnect) is waited out like
                        // a busy key, until the call's deadline; without one, until it has
                        // failed for a whole lease, so an unreachable store is an error, not a
                        // hang.
                        let since = *failing_since.get_or_insert_with(Instant::now);
                        let give_up = match deadline {
                            Some(d) => Instant::now() >= d,
                            None => since.elapsed() >= config.lease,
                        };
                        if give_up {
                            return Err(Error::Store(e));
                        }
                        debug!(error = %e, "store error while waiting; retrying");
                        store_failed = true;
                    }
                    Err(e) => return Err(e),
                }
                // Queued, the store hands the key over and wakes this waiter: the pause only
                // bounds how long a lost wake-up goes unnoticed and how often the entry is
                // refreshed, so it is the longest one. Growing pauses from `backoff_min` would
                // refresh the entry with a store write every few milliseconds, which under
                // contention holds up the very releases that hand the key over.
                let mut pause = if queued_as.is_some() && config.notifications {
                    config.backoff_max
                } else {
                    backoff.next_delay()
                };
                if let Some(deadline) = deadline {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(Error::TimedOut {
                            key: self.inner.key.clone(),
                            waited: now - started,
                        });
                    }
                    pause = pause.min(deadline - now);
                }
                if let Some(place) = queued_as.filter(|_| config.notifications) {
                    // Queued: the store hands the key over on release. This waits for that,
                    // takes the grant the store reports if it can vouch for its deadline
                    // (otherwise the next attempt confirms it with the store), and refreshes
                    // the entry at least every `backoff_max`.
                    let granted = tokio::select! {
                        biased;
                        f = self.inner.store.wait_for_grant(&self.inner.key, &place.holder, pause) => f,
                        () = &mut changed => None,
                    };
                    if let Some(fence) = granted
                        && let Some(guard) = self.adopt(&place, fence, deadline).await
                    {
                        metrics::wait(self.inner.store_name, started.elapsed());
                        return Ok(guard);
                    }
                } else if config.notifications && !store_failed {
                    tokio::select! {
                        biased;
                        () = self.inner.store.wait_for_change(&self.inner.key, pause) => {}
                        () = &mut changed => {}
                    }
                } else {
                    tokio::time::sleep(pause).await;
                }
            }
        }
        .instrument(span)
        .await
    }

    /// One attempt: the fast path, else one store call.
    ///
    /// Every wait in it (for the single-flight permit, for a pending release, for the store's
    /// answer) ends by `call_deadline` ([`Attempt::TimedOut`]) and by the attempt's own limit of
    /// lease − margin (a transient error): a grant answered later than that would be past its
    /// local deadline on arrival anyway.
    ///
    /// With `queue`, the store call is [`LeaseStore::enqueue`] (a waiting call of a queued
    /// store), otherwise [`LeaseStore::try_lock`].
    async fn acquire_once(
        &self,
        call_deadline: Option<Instant>,
        queue: bool,
    ) -> Result<Attempt<S>, Error> {
        if let Some(guard) = self.enter() {
            return Ok(Attempt::Granted(guard));
        }
        let config = self.inner.config;
        let own_limit = Instant::now() + (config.lease - config.margin);
        let limit = call_deadline.map_or(own_limit, |d| d.min(own_limit));
        let ran_out = || {
            if call_deadline.is_some_and(|d| d <= own_limit) {
                Ok(Attempt::TimedOut)
            } else {
                Err(Error::Store(StoreError::transient(
                    self.inner.store_name,
                    format!(
                        "no answer for `{}` within the lease minus the safety margin ({:?})",
                        self.inner.key,
                        config.lease - config.margin
                    ),
                )))
            }
        };
        let Ok(permit) =
            tokio::time::timeout_at(limit, self.inner.acquiring.clone().lock_owned()).await
        else {
            return ran_out();
        };
        // Another task of this process may have acquired the lease while this one waited for
        // the permit: share its lease instead of asking the store again.
        if let Some(guard) = self.enter() {
            return Ok(Attempt::Granted(guard));
        }
        // A release still in flight must land before a new grant under the same holder, or it
        // would delete it. If it does not land in time its outcome is unknown: retire the
        // holder nonce, so the next grant is under a holder that release cannot match.
        let pending = async {
            loop {
                let changed = self.inner.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if self.inner.state.pending_releases() == 0 {
                    return;
                }
                changed.await;
            }
        };
        if tokio::time::timeout_at(limit, pending).await.is_err() {
            self.inner.state.retire(self.inner.state.nonce());
            return ran_out();
        }
        // The store call holds the permit and finishes even if the caller is dropped mid-call
        // or gives up at its limit, so no grant is left that nobody tracks: it installs the
        // lease and, with the caller gone, drops the guard, which releases the lease at once
        // (or, answered past its deadline, releases it without installing it). It runs in the
        // caller's task and moves to its own only on such a drop.
        let inner = self.inner.clone();
        let call = detachable(async move {
            let _permit = permit;
            acquire_from_store(inner, queue).await
        });
        match tokio::time::timeout_at(limit, call).await {
            Ok(Ok(Ok(attempt))) => Ok(attempt),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(e)) => Err(Error::Store(StoreError::permanent(
                self.inner.store_name,
                format!("acquire {e}"),
            ))),
            Err(_elapsed) => ran_out(),
        }
    }

    /// Takes a grant the store reported to this waiter ([`LeaseStore::wait_for_grant`]) without
    /// another store call, when its local deadline is known: the store answered `Waiting` to
    /// the enqueue sent at `place.sent`, with the key at `place.fence`, so a grant with a larger
    /// fence was made after that, with this waiter's lease, and lasts at least until
    /// `place.sent + lease`. Returns `None` (the caller confirms with the store) when that
    /// leaves less than a renewal interval, or the grant cannot be matched to this wait: no
    /// fence was reported, the holder nonce changed, or a release without a fence (which could
    /// end this grant) is still in flight.
    async fn adopt(
        &self,
        place: &Place,
        fence: Fence,
        call_deadline: Option<Instant>,
    ) -> Option<LockGuard<S>> {
        let config = self.inner.config;
        if place.fence.is_none_or(|seen| fence <= seen) {
            return None;
        }
        let deadline = place.sent + config.lease - config.margin;
        let fresh = || self.inner.clock.now() + config.renew_every < deadline;
        if !fresh() {
            return None;
        }
        let limit = Instant::now() + config.renew_every;
        let limit = call_deadline.map_or(limit, |d| d.min(limit));
        let permit = tokio::time::timeout_at(limit, self.inner.acquiring.clone().lock_owned())
            .await
            .ok()?;
        if let Some(guard) = self.enter() {
            return Some(guard);
        }
        if self.inner.state.nonce() != place.nonce
            || self.inner.state.pending_releases() > 0
            || !fresh()
        {
            return None;
        }
        metrics::acquired(self.inner.store_name, Duration::ZERO);
        let ticket = lease::start(
            &self.inner,
            fence,
            deadline,
            place.nonce,
            place.holder.clone(),
        );
        drop(permit);
        Some(LockGuard::new(self.inner.clone(), ticket))
    }

    /// The re-entrant fast path.
    fn enter(&self) -> Option<LockGuard<S>> {
        match self.inner.state.enter(self.inner.clock.now()) {
            Enter::Entered(ticket) => {
                metrics::reentrant(self.inner.store_name);
                Some(LockGuard::new(self.inner.clone(), ticket))
            }
            Enter::Expired(payload) => {
                signal_loss(&self.inner, &payload, "local deadline passed");
                None
            }
            Enter::Vacant => None,
        }
    }
}

/// The outcome of one acquisition attempt.
enum Attempt<S: LeaseStore> {
    Granted(LockGuard<S>),
    /// Another holder has the key.
    Busy,
    /// Another holder has the key, and this process is queued for it.
    Queued(Place),
    /// The call's deadline passed first.
    TimedOut,
}

/// This process's place in a key's queue, from the store's last `Waiting` answer.
struct Place {
    /// The holder string it is queued under, and the holder nonce of that string.
    holder: Arc<str>,
    nonce: u64,
    /// The key's fence in that answer.
    fence: Option<Fence>,
    /// When the enqueue was sent, on the lock's clock.
    sent: Duration,
}

async fn acquire_from_store<S: LeaseStore>(
    inner: Arc<Inner<S>>,
    queue: bool,
) -> Result<Attempt<S>, Error> {
    let Config { lease, margin, .. } = inner.config;
    let nonce = inner.state.nonce();
    let holder = inner.holder.for_nonce(nonce);
    let sent = inner.clock.now();
    // The deadline counts from the send time: the store started the lease no earlier.
    let deadline = sent + lease - margin;
    let started = Instant::now();
    let span = debug_span!("lease.acquire", key = %inner.key, holder = %inner.holder.label);
    let result = if queue {
        // Counted as queued before the call: should its answer be lost, the entry it may have
        // made is still taken out when this process stops waiting.
        inner.queued_under(nonce);
        let patience = inner.config.patience;
        match inner
            .store
            .enqueue(lease, &inner.key, &holder, patience)
            .instrument(span)
            .await
        {
            Ok(Enqueued::Granted(fence)) => Ok(Some(fence)),
            Ok(Enqueued::Waiting { fence }) => {
                metrics::contended(inner.store_name);
                return Ok(Attempt::Queued(Place {
                    holder,
                    nonce,
                    fence,
                    sent,
                }));
            }
            Err(e) => Err(e),
        }
    } else {
        inner
            .store
            .try_lock(lease, &inner.key, &holder)
            .instrument(span)
            .await
    };
    match result {
        Ok(Some(fence)) => {
            let now = inner.clock.now();
            if now >= deadline {
                // A late grant is no grant: by now the store may have let the lease lapse and
                // granted the key to someone else. Give it back and report.
                metrics::late_grant(inner.store_name);
                warn!(key = %inner.key, late = ?(now - deadline), "grant answered after its local deadline; released");
                // In its own task, like every release: one that hangs must not hold the
                // single-flight permit (found by the simulation).
                inner.state.begin_release(nonce);
                tokio::spawn(lease::release_call(inner.clone(), fence, nonce, &holder));
                return Err(Error::Store(StoreError::transient(
                    inner.store_name,
                    format!(
                        "the grant of `{}` arrived {:?} after its local deadline (the store took \
                         {:?} to answer, the lease minus the safety margin is {:?}); released",
                        inner.key,
                        now - deadline,
                        now - sent,
                        lease - margin
                    ),
                )));
            }
            metrics::acquired(inner.store_name, started.elapsed());
            let ticket = lease::start(&inner, fence, deadline, nonce, holder);
            Ok(Attempt::Granted(LockGuard::new(inner, ticket)))
        }
        Ok(None) => {
            metrics::contended(inner.store_name);
            Ok(Attempt::Busy)
        }
        Err(e) => {
            // The store may have granted the key before the reply was lost. Nothing in this
            // process holds it (the permit is held and the fast path failed), so a zero-lease
            // try_lock, which releases only this holder's grant, leaves nothing behind. If that
            // fails too, its outcome is unknown and it might land after a later grant to this
            // holder: retire the nonce.
            if e.is_transient()
                && inner
                    .store
                    .try_lock(Duration::ZERO, &inner.key, &holder)
                    .await
                    .is_err()
            {
                inner.state.retire(nonce);
            }
            Err(Error::Store(e))
        }
    }
}
