//! The store contract ([`LeaseStore`]), its declared [`Capabilities`], what the optional operator
//! operations report ([`KeyState`], [`BrokenLock`]), input validation shared by every backend, and
//! the run-time-chosen store ([`DynStore`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::input::validate_key;
use crate::{Fence, StoreError};

/// The contract every store implements; one conformance suite
/// ([`testing`](crate::testing), feature `testing`) checks it for each backend.
///
/// # Contract
///
/// `try_lock(lease, key, holder)`:
///
/// - The key is vacant, released, or its lease expired while another holder had it: grant it to
///   `holder` with fence = the key's previous fence + 1 (the first grant of a key gets 1), and
///   return `Some(fence)`.
/// - The key is held by the same `holder`: extend it to *now + lease* and return the same fence.
///   This also covers a retry after a lost reply (acquire is idempotent) and a holder that retakes
///   its own expired lease before anyone else took it: the fence changes exactly when the holder
///   changes, or after a release.
/// - The key is held by another holder and unexpired: `Ok(None)`, never an error.
/// - `lease == 0` releases the key if `holder` holds it and returns `None`.
///
/// A release ends the tenure: the next grant, to any holder, gets a larger fence. A release never
/// forgets the fence counter, so fences never go back for a key.
///
/// Every check-and-set is atomic in the store (one script, one transaction), never a read followed
/// by a blind write. Expiry is decided by one clock (the store server's, or for an embedded store
/// the host's suspend-aware monotonic clock), never by comparing the clocks of two processes.
/// Keys and holders are arbitrary strings of 1 to [`MAX_KEY_LEN`](crate::MAX_KEY_LEN) bytes
/// (see [`input::validate`](crate::input::validate)); they are passed as bound parameters, never
/// spliced into a query, and no key collides with another.
///
/// # Errors
///
/// Every method returns a classified [`StoreError`]: transient errors are retried by the lock's
/// renewal loop until the lease's local deadline, anything else ends the lease at once.
///
/// [`writing_a_store`](crate::writing_a_store) takes a store author through all of it.
pub trait LeaseStore: Send + Sync + 'static {
    /// Grants, extends, or refuses `key` for `holder`; see the trait docs for the exact contract.
    fn try_lock(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
    ) -> impl Future<Output = Result<Option<Fence>, StoreError>> + Send;

    /// Extends the lease of `holder` on `key` to *now + lease* only if `holder` still holds it
    /// with `fence`. Returns `true` when extended; `false` when another holder has the key, it was
    /// released, or its fence differs. A renew never grants a key.
    ///
    /// The default goes through [`try_lock`](Self::try_lock) and, should that grant the key afresh
    /// under a new fence, releases it again; stores override it with one compare-and-extend.
    fn renew(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
        fence: Fence,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        async move {
            match self.try_lock(lease, key, holder).await? {
                Some(f) if f == fence => Ok(true),
                Some(other) => {
                    self.release(key, holder, other).await?;
                    Ok(false)
                }
                None => Ok(false),
            }
        }
    }

    /// Releases `key` if `holder` holds it with `fence`. Returns `true` if this call released it,
    /// `false` if it was not held so (already released, expired and taken, never held).
    fn release(
        &self,
        key: &str,
        holder: &str,
        fence: Fence,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Waits until `key` may have changed (for example it was released), or at most `max_wait`.
    ///
    /// Only a hint: the caller always re-runs [`try_lock`](Self::try_lock) afterwards, and
    /// `max_wait` bounds every wait, so a missed notification costs latency, never liveness. The
    /// default sleeps `max_wait`; stores that can notify (declared in
    /// [`Capabilities::notifications`]) return early.
    fn wait_for_change(&self, key: &str, max_wait: Duration) -> impl Future<Output = ()> + Send {
        let _ = key;
        tokio::time::sleep(max_wait)
    }

    /// What the store's own record says about `key` now: the live holder, its fence and the
    /// time left on its lease, or that the key is free.
    ///
    /// Read-only: it writes nothing, takes no lease, wakes nobody, and the lock never calls it.
    /// The answer may be stale the moment it returns (the lease may be released, expire or be
    /// taken right after the store answered), so it is for operators, dashboards and tests; it
    /// never entitles anyone to write. Only a grant does that, with its fence checked by the
    /// resource.
    ///
    /// The key is *held* ([`KeyState::held`]) while a holder's lease is live by the store's
    /// own clock (the server's, or for an embedded store the host's boot clock); `remaining` is
    /// measured on that clock, in the store's own resolution (etcd reports whole seconds). It is
    /// *free* ([`KeyState::free`]) otherwise: never granted (fence `None`), released, expired,
    /// or broken (fence = the last fence the store handed out, by a grant or by
    /// [`break_lock`](Self::break_lock)). The conformance suite checks both.
    ///
    /// The key is validated first, as by every operation ([`input::validate_key`](crate::input::validate_key)). The default then
    /// answers [`StoreErrorKind::Unsupported`](crate::StoreErrorKind::Unsupported) naming the
    /// store; every store of this workspace implements it.
    ///
    /// # Errors
    ///
    /// [`InvalidInput`](crate::StoreErrorKind::InvalidInput) for an empty or over-long key,
    /// [`Unsupported`](crate::StoreErrorKind::Unsupported) from a store without it, otherwise
    /// classified as for the other calls.
    fn inspect(&self, key: &str) -> impl Future<Output = Result<KeyState, StoreError>> + Send {
        std::future::ready(unsupported(self.capabilities().name, key, "inspect"))
    }

    /// Takes `key` away from whoever holds it, **for operators**: frees the key and raises its
    /// fence past every fence the store has handed out, in one atomic step of the store, and
    /// wakes waiters as a release does. Returns what was broken ([`BrokenLock`]), or `None` if the
    /// key was never granted (there is nothing to break, and nothing is written).
    ///
    /// After a break:
    ///
    /// - the old holder's [`renew`](Self::renew) returns `false` (a break is never undone, so its
    ///   lock reports the loss at its next heartbeat), and its [`release`](Self::release) returns
    ///   `false` and changes nothing;
    /// - the next grant of the key, to anyone (the old holder too), has a fence larger than
    ///   [`BrokenLock::fence`];
    /// - [`BrokenLock::fence`] itself is handed to no holder. Give it to the protected resource
    ///   as its new minimum (for a [`FenceGate`](crate::FenceGate), [`check`](crate::FenceGate::check)
    ///   it once) and the old holder's writes are refused at once, even those it sends before it
    ///   notices the loss.
    ///
    /// Breaking a free key (released or expired) raises its fence too, and every repeated break
    /// raises it again. A holder that is only slow, not stuck, loses its lease this way while it
    /// may still be working: that is what its fenced writes are for.
    ///
    /// The lock never calls this; it is for operator tools and tests. The key is validated first
    /// ([`input::validate_key`](crate::input::validate_key)); the default then answers
    /// [`StoreErrorKind::Unsupported`](crate::StoreErrorKind::Unsupported) naming the store. Every
    /// store of this workspace implements it.
    ///
    /// # Errors
    ///
    /// As [`inspect`](Self::inspect). A call that failed with a transient error may still have
    /// been applied (check with [`inspect`](Self::inspect)); breaking again only raises the fence
    /// once more.
    fn break_lock(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<BrokenLock>, StoreError>> + Send {
        std::future::ready(unsupported(self.capabilities().name, key, "break_lock"))
    }

    /// Acquires `key` for `holder` in order: grants it as [`try_lock`](Self::try_lock) would
    /// when no live waiter is queued ahead of `holder`, otherwise queues `holder` behind them
    /// and answers [`Enqueued::Waiting`]. For stores with
    /// [`Capabilities::queued_grants`]; see [`Enqueued`] for the queue's rules.
    ///
    /// The entry stays live until *now + `patience`* by the store's clock; calling `enqueue`
    /// again refreshes it (and is how a waiter polls). A `holder` already queued keeps its
    /// place. Once a release (or an expiry noticed by any call) grants the key to `holder`,
    /// the next `enqueue` by `holder` answers [`Enqueued::Granted`] with that fence and extends
    /// the lease to *now + lease*, like a retake of its own grant.
    ///
    /// The default, for stores without a queue, is [`try_lock`](Self::try_lock): granted, or
    /// waiting with the fence unknown.
    fn enqueue(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
        patience: Duration,
    ) -> impl Future<Output = Result<Enqueued, StoreError>> + Send {
        let _ = patience;
        async move {
            Ok(Enqueued::from_try_lock(
                self.try_lock(lease, key, holder).await?,
            ))
        }
    }

    /// Waits until `holder`, queued on `key` by [`enqueue`](Self::enqueue), may have been granted
    /// the key, or at most `max_wait`. `Some(fence)`: the store granted `holder` the key with
    /// `fence` (read from its record, or carried by a message the granting call sent); a store
    /// that cannot tell answers `None` and returns early on any change.
    ///
    /// The lock takes a `Some(fence)` as its grant only when `fence` is larger than the one
    /// [`Enqueued::Waiting`] last reported (see there); otherwise, and after `None`, it confirms
    /// with [`enqueue`](Self::enqueue). So a `Some` must never name a fence the store did not
    /// grant to `holder`. May be dropped at any await. The default is
    /// [`wait_for_change`](Self::wait_for_change), then `None`.
    fn wait_for_grant(
        &self,
        key: &str,
        holder: &str,
        max_wait: Duration,
    ) -> impl Future<Output = Option<Fence>> + Send {
        let _ = holder;
        async move {
            self.wait_for_change(key, max_wait).await;
            None
        }
    }

    /// Takes `holder` out of `key`'s queue, in one atomic step of the store: its entry is
    /// removed, and if the key was granted to `holder` in the meantime (by a release or an
    /// expiry), that grant is released to the next waiter. Returns `true` when it gave a grant
    /// back. For a waiter that gives up; like [`release`](Self::release) it is driven to its end.
    ///
    /// The default (no queue) answers `false`: a store without a queue never grants a waiter.
    fn leave_queue(
        &self,
        key: &str,
        holder: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let _ = holder;
        std::future::ready(validate_key(self.capabilities().name, key).map(|()| false))
    }

    /// What this store can do, declared up front rather than discovered by failure.
    fn capabilities(&self) -> Capabilities;
}

/// The default body of the optional operations: the key is validated, then refused.
fn unsupported<T>(store: &'static str, key: &str, op: &str) -> Result<T, StoreError> {
    validate_key(store, key)?;
    Err(StoreError::unsupported(
        store,
        format!("`{op}` is not implemented by this store"),
    ))
}

/// What [`LeaseStore::enqueue`] did.
///
/// # The queue (stores with [`Capabilities::queued_grants`])
///
/// - One entry per holder and key, in the order of their first `enqueue`; a holder already
///   queued keeps its place when it calls again (which refreshes its entry).
/// - An entry whose patience ran out (not refreshed in time, by the store's clock) is skipped
///   and dropped: a dead waiter costs nothing.
/// - A release (by [`release`](LeaseStore::release), a zero-lease
///   [`try_lock`](LeaseStore::try_lock) or [`leave_queue`](LeaseStore::leave_queue)) grants the
///   key, in the same atomic step, to the oldest live entry: fence + 1, a fresh lease of the
///   length that waiter asked for, its entry removed. A key whose lease expired is granted the
///   same way by the next call that finds it so. A grant to a waiter that died meanwhile lapses
///   with its lease and goes to the next one.
/// - No barging: while a live entry is queued, [`try_lock`](LeaseStore::try_lock) and
///   [`enqueue`](LeaseStore::enqueue) grant the key to nobody else (a newcomer is refused or
///   queued behind it), including to the holder that just released it.
/// - Fences strictly increase in grant order, across grants by a caller, by release and by
///   expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Enqueued {
    /// `holder` has the key with this fence (granted now, granted by a release while it was
    /// queued, or already its own); its lease now runs to *now + lease*.
    Granted(Fence),
    /// Another holder has the key, or live waiters are ahead: `holder` is queued.
    Waiting {
        /// The key's fence when the store answered (`None`: never granted, or the store does
        /// not say). A grant to this waiter, later, has a larger one.
        ///
        /// It must be the key's latest fence at that moment, never a lower one: the lock takes
        /// a grant reported by [`wait_for_grant`](LeaseStore::wait_for_grant) without asking
        /// the store again only when its fence is larger than this, which proves the grant
        /// was made after this answer. A store that cannot tell answers `None`.
        fence: Option<Fence>,
    },
}

impl Enqueued {
    /// What `enqueue` answers where there is no queue (a store without one, or a zero lease):
    /// [`try_lock`](LeaseStore::try_lock)'s answer, granted or waiting with the fence unknown.
    pub fn from_try_lock(answer: Option<Fence>) -> Self {
        answer.map_or(Enqueued::Waiting { fence: None }, Enqueued::Granted)
    }
}

/// What a store's record says about a key, from [`LeaseStore::inspect`].
///
/// `Debug` shows a holder by its readable part only ([`holder_label`](Self::holder_label)), so
/// that the random part of a holder id, which works as the holder's capability, does not end up
/// in logs; the field itself has the full string.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyState {
    /// The full holder string of the live lease; `None` when the key is free (never granted,
    /// released, expired or broken).
    pub holder: Option<String>,
    /// The live lease's fence. When the key is free: the last fence the store handed out (by a
    /// grant or a [`break_lock`](LeaseStore::break_lock)), or `None` if the store has never
    /// granted the key (or cannot tell; the conformance suite expects every store to tell).
    pub fence: Option<Fence>,
    /// The time left on the live lease, by the store's own clock; `None` when the key is free.
    pub remaining: Option<Duration>,
}

impl KeyState {
    /// A free key whose last fence handed out was `fence` (`None`: never granted).
    pub fn free(fence: Option<Fence>) -> Self {
        Self {
            holder: None,
            fence,
            remaining: None,
        }
    }

    /// A key held by `holder` with `fence`, its lease ending `remaining` from now.
    pub fn held(holder: impl Into<String>, fence: Fence, remaining: Duration) -> Self {
        Self {
            holder: Some(holder.into()),
            fence: Some(fence),
            remaining: Some(remaining),
        }
    }

    /// Whether a holder's lease is live.
    pub fn is_held(&self) -> bool {
        self.holder.is_some()
    }

    /// The readable part of the holder, safe to show in logs: for a holder id the lock made
    /// (`host/pid/name#<32 hex digits>`, possibly followed by `~N`), `host/pid/name`; for any
    /// other holder string with a `#`, the part before the first `#`; otherwise the whole
    /// string (a stable holder chosen by the user, shown as the lock shows it). `None` when the
    /// key is free.
    pub fn holder_label(&self) -> Option<&str> {
        self.holder.as_deref().map(holder_label)
    }
}

impl std::fmt::Debug for KeyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyState")
            .field("holder", &self.holder.as_deref().map(ShownHolder))
            .field("fence", &self.fence)
            .field("remaining", &self.remaining)
            .finish()
    }
}

/// What [`LeaseStore::break_lock`] did.
///
/// `Debug` shows the previous holder by its readable part only, as for [`KeyState`].
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BrokenLock {
    /// The key's fence after the break, given to no holder: every earlier grant had a lower
    /// one, every later grant gets a higher one.
    pub fence: Fence,
    /// The holder named in the store's record before the break (for some stores also one whose
    /// lease had expired but whom nobody had replaced yet); `None` if the key was free.
    pub previous_holder: Option<String>,
    /// Whether that holder's lease was live by the store's clock.
    pub was_live: bool,
}

impl BrokenLock {
    /// What a break reports: the raised `fence`, the `previous_holder`, and whether its lease
    /// `was_live`.
    pub fn new(fence: Fence, previous_holder: Option<String>, was_live: bool) -> Self {
        Self {
            fence,
            previous_holder,
            was_live,
        }
    }
}

impl std::fmt::Debug for BrokenLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokenLock")
            .field("fence", &self.fence)
            .field(
                "previous_holder",
                &self.previous_holder.as_deref().map(ShownHolder),
            )
            .field("was_live", &self.was_live)
            .finish()
    }
}

/// A holder string in `Debug` output: its label, and `#…` where the rest was left out.
struct ShownHolder<'a>(&'a str);

impl std::fmt::Debug for ShownHolder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let label = holder_label(self.0);
        if label.len() == self.0.len() {
            write!(f, "{label:?}")
        } else {
            write!(f, "\"{}#…\"", label.escape_debug())
        }
    }
}

/// See [`KeyState::holder_label`].
fn holder_label(holder: &str) -> &str {
    fn is_random_part(s: &str) -> bool {
        let (hex, nonce) = s.split_once('~').unwrap_or((s, "1"));
        hex.len() == 32
            && hex.bytes().all(|b| b.is_ascii_hexdigit())
            && !nonce.is_empty()
            && nonce.bytes().all(|b| b.is_ascii_digit())
    }
    match holder.rsplit_once('#') {
        Some((label, rest)) if is_random_part(rest) => label,
        Some(_) => holder.split_once('#').map_or(holder, |(label, _)| label),
        None => holder,
    }
}

/// What a store declares about itself. Construct with [`Capabilities::new`] and the `with_*`
/// methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// The store's name for logs and errors, e.g. `"sqlite"`.
    pub name: &'static str,
    /// Leases are rounded up to a multiple of this (etcd: one second).
    pub lease_granularity: Duration,
    /// The shortest lease the store grants (etcd: two seconds with default server settings).
    pub min_lease: Duration,
    /// Whether [`LeaseStore::wait_for_change`] returns early on a release.
    pub notifications: bool,
    /// Whether fences keep increasing across a restart of the store.
    pub durable_fences: bool,
    /// Whether a holder that retakes its own expired lease, before anyone else took the key, keeps
    /// its fence. True for most stores; false where the fence is tied to the key's existence
    /// (etcd's `create_revision`), in which case the retake gets a larger fence, which is also
    /// safe.
    pub stable_retake: bool,
    /// Whether renewals sent at the same moment cost the store less than the same renewals
    /// spread out (Redis pipelines them on one connection, etcd serves them with one keepalive).
    /// The lock then puts the heartbeats of all its keys with the same renew interval on common
    /// instants, so they go out together (the first renewal after a grant comes early, anywhere
    /// in the first interval; the later ones keep the interval).
    pub batched_renewals: bool,
    /// Whether the store keeps a queue of waiters per key and a release hands the key to the
    /// oldest live one ([`LeaseStore::enqueue`], [`Enqueued`]). The lock's waiting calls then
    /// queue instead of polling [`try_lock`](LeaseStore::try_lock), unless built in barging
    /// mode.
    pub queued_grants: bool,
}

impl Capabilities {
    /// Millisecond leases of any length, no notifications, fences not durable.
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            lease_granularity: Duration::from_millis(1),
            min_lease: Duration::from_millis(1),
            notifications: false,
            durable_fences: false,
            stable_retake: true,
            batched_renewals: false,
            queued_grants: false,
        }
    }

    /// Sets [`Capabilities::lease_granularity`] and [`Capabilities::min_lease`].
    pub const fn with_leases(mut self, granularity: Duration, min_lease: Duration) -> Self {
        self.lease_granularity = granularity;
        self.min_lease = min_lease;
        self
    }

    /// Sets [`Capabilities::notifications`].
    pub const fn with_notifications(mut self, yes: bool) -> Self {
        self.notifications = yes;
        self
    }

    /// Sets [`Capabilities::durable_fences`].
    pub const fn with_durable_fences(mut self, yes: bool) -> Self {
        self.durable_fences = yes;
        self
    }

    /// Sets [`Capabilities::stable_retake`].
    pub const fn with_stable_retake(mut self, yes: bool) -> Self {
        self.stable_retake = yes;
        self
    }

    /// Sets [`Capabilities::batched_renewals`].
    pub const fn with_batched_renewals(mut self, yes: bool) -> Self {
        self.batched_renewals = yes;
        self
    }

    /// Sets [`Capabilities::queued_grants`].
    pub const fn with_queued_grants(mut self, yes: bool) -> Self {
        self.queued_grants = yes;
        self
    }

    /// The lease the store actually grants for a requested `lease`: at least
    /// [`min_lease`](Self::min_lease), rounded up to the [granularity](Self::lease_granularity).
    pub fn effective_lease(&self, lease: Duration) -> Duration {
        let lease = lease.max(self.min_lease);
        let g = self.lease_granularity.as_nanos().max(1);
        let n = lease.as_nanos().div_ceil(g) * g;
        Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX))
    }
}

/// The dyn-compatible form of [`LeaseStore`], implemented for every store, so that a store can be
/// chosen at run time (for example from a URL). Wrap it in [`DynStore`] to use it with a lock.
#[async_trait::async_trait]
pub trait DynLeaseStore: Send + Sync + 'static {
    /// See [`LeaseStore::try_lock`].
    async fn try_lock(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
    ) -> Result<Option<Fence>, StoreError>;
    /// See [`LeaseStore::renew`].
    async fn renew(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
        fence: Fence,
    ) -> Result<bool, StoreError>;
    /// See [`LeaseStore::release`].
    async fn release(&self, key: &str, holder: &str, fence: Fence) -> Result<bool, StoreError>;
    /// See [`LeaseStore::wait_for_change`].
    async fn wait_for_change(&self, key: &str, max_wait: Duration);
    /// See [`LeaseStore::enqueue`].
    async fn enqueue(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
        patience: Duration,
    ) -> Result<Enqueued, StoreError>;
    /// See [`LeaseStore::wait_for_grant`].
    async fn wait_for_grant(&self, key: &str, holder: &str, max_wait: Duration) -> Option<Fence>;
    /// See [`LeaseStore::leave_queue`].
    async fn leave_queue(&self, key: &str, holder: &str) -> Result<bool, StoreError>;
    /// See [`LeaseStore::inspect`].
    async fn inspect(&self, key: &str) -> Result<KeyState, StoreError>;
    /// See [`LeaseStore::break_lock`].
    async fn break_lock(&self, key: &str) -> Result<Option<BrokenLock>, StoreError>;
    /// See [`LeaseStore::capabilities`].
    fn capabilities(&self) -> Capabilities;
    /// The concrete store, for [`DynStore::downcast_ref`].
    fn as_any(&self) -> &dyn std::any::Any;
}

#[async_trait::async_trait]
impl<S: LeaseStore> DynLeaseStore for S {
    async fn try_lock(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
    ) -> Result<Option<Fence>, StoreError> {
        LeaseStore::try_lock(self, lease, key, holder).await
    }
    async fn renew(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
        fence: Fence,
    ) -> Result<bool, StoreError> {
        LeaseStore::renew(self, lease, key, holder, fence).await
    }
    async fn release(&self, key: &str, holder: &str, fence: Fence) -> Result<bool, StoreError> {
        LeaseStore::release(self, key, holder, fence).await
    }
    async fn wait_for_change(&self, key: &str, max_wait: Duration) {
        LeaseStore::wait_for_change(self, key, max_wait).await
    }
    async fn enqueue(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
        patience: Duration,
    ) -> Result<Enqueued, StoreError> {
        LeaseStore::enqueue(self, lease, key, holder, patience).await
    }
    async fn wait_for_grant(&self, key: &str, holder: &str, max_wait: Duration) -> Option<Fence> {
        LeaseStore::wait_for_grant(self, key, holder, max_wait).await
    }
    async fn leave_queue(&self, key: &str, holder: &str) -> Result<bool, StoreError> {
        LeaseStore::leave_queue(self, key, holder).await
    }
    async fn inspect(&self, key: &str) -> Result<KeyState, StoreError> {
        LeaseStore::inspect(self, key).await
    }
    async fn break_lock(&self, key: &str) -> Result<Option<BrokenLock>, StoreError> {
        LeaseStore::break_lock(self, key).await
    }
    fn capabilities(&self) -> Capabilities {
        LeaseStore::capabilities(self)
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// A store chosen at run time: any [`LeaseStore`] behind an `Arc<dyn DynLeaseStore>`.
///
/// Costs one allocation per call (the boxed future); use the concrete store type where it is known
/// at compile time.
#[derive(Clone)]
pub struct DynStore(Arc<dyn DynLeaseStore>);

impl DynStore {
    /// Wraps a concrete store.
    pub fn new(store: impl LeaseStore) -> Self {
        Self(Arc::new(store))
    }

    /// The concrete store behind this one, if it is an `S`: for the store's own methods (its
    /// statistics, its client for fenced writes) on a store opened from a URL. Looks through
    /// [`DynStore`]s wrapped in one another.
    pub fn downcast_ref<S: LeaseStore>(&self) -> Option<&S> {
        let any = self.0.as_any();
        any.downcast_ref::<S>().or_else(|| {
            any.downcast_ref::<DynStore>()
                .and_then(DynStore::downcast_ref::<S>)
        })
    }
}

impl std::fmt::Debug for DynStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("DynStore")
            .field(&self.0.capabilities().name)
            .finish()
    }
}

impl LeaseStore for DynStore {
    async fn try_lock(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
    ) -> Result<Option<Fence>, StoreError> {
        self.0.try_lock(lease, key, holder).await
    }
    async fn renew(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
        fence: Fence,
    ) -> Result<bool, StoreError> {
        self.0.renew(lease, key, holder, fence).await
    }
    async fn release(&self, key: &str, holder: &str, fence: Fence) -> Result<bool, StoreError> {
        self.0.release(key, holder, fence).await
    }
    async fn wait_for_change(&self, key: &str, max_wait: Duration) {
        self.0.wait_for_change(key, max_wait).await
    }
    async fn inspect(&self, key: &str) -> Result<KeyState, StoreError> {
        self.0.inspect(key).await
    }
    async fn break_lock(&self, key: &str) -> Result<Option<BrokenLock>, StoreError> {
        self.0.break_lock(key).await
    }
    async fn enqueue(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
        patience: Duration,
    ) -> Result<Enqueued, StoreError> {
        self.0.enqueue(lease, key, holder, patience).await
    }
    async fn wait_for_grant(&self, key: &str, holder: &str, max_wait: Duration) -> Option<Fence> {
        self.0.wait_for_grant(key, holder, max_wait).await
    }
    async fn leave_queue(&self, key: &str, holder: &str) -> Result<bool, StoreError> {
        self.0.leave_queue(key, holder).await
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
}

impl<S: LeaseStore> LeaseStore for Arc<S> {
    async fn try_lock(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
    ) -> Result<Option<Fence>, StoreError> {
        S::try_lock(self, lease, key, holder).await
    }
    async fn renew(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
        fence: Fence,
    ) -> Result<bool, StoreError> {
        S::renew(self, lease, key, holder, fence).await
    }
    async fn release(&self, key: &str, holder: &str, fence: Fence) -> Result<bool, StoreError> {
        S::release(self, key, holder, fence).await
    }
    async fn wait_for_change(&self, key: &str, max_wait: Duration) {
        S::wait_for_change(self, key, max_wait).await
    }
    async fn inspect(&self, key: &str) -> Result<KeyState, StoreError> {
        S::inspect(self, key).await
    }
    async fn break_lock(&self, key: &str) -> Result<Option<BrokenLock>, StoreError> {
        S::break_lock(self, key).await
    }
    async fn enqueue(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
        patience: Duration,
    ) -> Result<Enqueued, StoreError> {
        S::enqueue(self, lease, key, holder, patience).await
    }
    async fn wait_for_grant(&self, key: &str, holder: &str, max_wait: Duration) -> Option<Fence> {
        S::wait_for_grant(self, key, holder, max_wait).await
    }
    async fn leave_queue(&self, key: &str, holder: &str) -> Result<bool, StoreError> {
        S::leave_queue(self, key, holder).await
    }
    fn capabilities(&self) -> Capabilities {
        S::capabilities(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MAX_KEY_LEN;

    #[test]
    fn effective_lease_rounds_up_to_granularity_and_minimum() {
        let caps =
            Capabilities::new("t").with_leases(Duration::from_secs(1), Duration::from_secs(2));
        assert_eq!(
            caps.effective_lease(Duration::from_millis(10)),
            Duration::from_secs(2)
        );
        assert_eq!(
            caps.effective_lease(Duration::from_millis(2500)),
            Duration::from_secs(3)
        );
        assert_eq!(
            caps.effective_lease(Duration::from_secs(5)),
            Duration::from_secs(5)
        );
        let fine = Capabilities::new("t");
        assert_eq!(
            fine.effective_lease(Duration::from_micros(1500)),
            Duration::from_millis(2)
        );
    }

    #[test]
    fn holder_labels_hide_the_random_part() {
        let hex = "0123456789abcdef0123456789ABCDEF";
        let label = |h: &str| holder_label(h).to_owned();
        assert_eq!(label(&format!("host/7/job#{hex}")), "host/7/job");
        assert_eq!(label(&format!("host/7/job#{hex}~12")), "host/7/job");
        // A name with a `#` in it: the random part is the last one.
        assert_eq!(label(&format!("host/7/a#b#{hex}~1")), "host/7/a#b");
        // Anything else after a `#` is left out too; a holder without one is shown whole.
        assert_eq!(label("worker#secret"), "worker");
        assert_eq!(label("a#b#c"), "a");
        assert_eq!(label(&format!("x#{hex}~")), "x");
        assert_eq!(label("stable-worker~3"), "stable-worker~3");
        assert_eq!(label(""), "");
        let state = KeyState::held(format!("host/7/job#{hex}"), Fence::FIRST, Duration::ZERO);
        assert_eq!(state.holder_label(), Some("host/7/job"));
        assert_eq!(KeyState::free(None).holder_label(), None);
    }

    #[test]
    fn debug_output_shows_holders_by_their_label_only() {
        let secret = "0123456789abcdef0123456789abcdef";
        let state = KeyState::held(format!("h/1/j#{secret}"), Fence::FIRST, Duration::ZERO);
        let shown = format!("{state:?}");
        assert!(!shown.contains(secret), "{shown}");
        assert!(shown.contains(r#""h/1/j#…""#), "{shown}");
        let broken = BrokenLock::new(Fence::FIRST, Some(format!("h/1/j#{secret}~2")), true);
        let shown = format!("{broken:?}");
        assert!(!shown.contains(secret), "{shown}");
        assert!(shown.contains("was_live: true"), "{shown}");
        let plain = format!(
            "{:?}",
            KeyState::held("alice", Fence::FIRST, Duration::ZERO)
        );
        assert!(plain.contains(r#"Some("alice")"#), "{plain}");
    }

    /// A store with only the required methods.
    struct Minimal;

    impl LeaseStore for Minimal {
        async fn try_lock(
            &self,
            _: Duration,
            _: &str,
            _: &str,
        ) -> Result<Option<Fence>, StoreError> {
            Ok(None)
        }
        async fn release(&self, _: &str, _: &str, _: Fence) -> Result<bool, StoreError> {
            Ok(false)
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::new("minimal")
        }
    }

    #[tokio::test]
    async fn optional_operations_default_to_unsupported_after_validating_the_key() {
        use crate::StoreErrorKind;
        for store in [DynStore::new(Minimal), DynStore::new(Arc::new(Minimal))] {
            let e = LeaseStore::inspect(&store, "k").await.unwrap_err();
            assert_eq!(e.kind(), StoreErrorKind::Unsupported);
            assert!(!e.is_transient());
            assert_eq!(e.store(), "minimal");
            assert!(e.to_string().contains("`inspect`"), "{e}");
            assert!(e.to_string().contains("unsupported"), "{e}");
            let e = LeaseStore::break_lock(&store, "k").await.unwrap_err();
            assert_eq!(e.kind(), StoreErrorKind::Unsupported);
            assert!(e.to_string().contains("`break_lock`"), "{e}");
            let e = LeaseStore::inspect(&store, "").await.unwrap_err();
            assert_eq!(e.kind(), StoreErrorKind::InvalidInput, "{e}");
            let e = LeaseStore::break_lock(&store, &"k".repeat(MAX_KEY_LEN + 1))
                .await
                .unwrap_err();
            assert_eq!(e.kind(), StoreErrorKind::InvalidInput, "{e}");
        }
    }

    /// Every wrapper of this crate forwards the optional operations to the store it wraps
    /// instead of answering "unsupported".
    #[tokio::test]
    async fn wrappers_forward_inspect_and_break() {
        let memory = crate::MemoryStore::new();
        let lease = Duration::from_secs(30);
        let f = LeaseStore::try_lock(&memory, lease, "k", "alice")
            .await
            .unwrap()
            .unwrap();
        let mut wrapped = vec![
            DynStore::new(memory.clone()),
            DynStore::new(Arc::new(memory.clone())),
            DynStore::new(DynStore::new(memory.clone())),
        ];
        #[cfg(feature = "testing")]
        wrapped.push(DynStore::new(crate::testing::FaultStore::new(
            memory.clone(),
        )));
        let mut last = f;
        for store in wrapped {
            let state = LeaseStore::inspect(&store, "k").await.unwrap();
            assert_eq!(state.fence, Some(last));
            let broken = LeaseStore::break_lock(&store, "k").await.unwrap().unwrap();
            assert!(broken.fence > last);
            assert_eq!(memory.fence("k"), Some(broken.fence));
            last = broken.fence;
        }
    }
}
