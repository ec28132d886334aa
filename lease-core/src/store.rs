//! The store contract ([`LeaseStore`]), its declared [`Capabilities`], input validation shared by
//! every backend, and the run-time-chosen store ([`DynStore`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::{Fence, StoreError};

/// The longest key or holder, in bytes, that every store accepts.
pub const MAX_KEY_LEN: usize = 1024;

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
/// Keys and holders are arbitrary strings of 1 to [`MAX_KEY_LEN`] bytes (see [`validate`]); they
/// are passed as bound parameters, never spliced into a query, and no key collides with another.
///
/// # Errors
///
/// Every method returns a classified [`StoreError`]: transient errors are retried by the lock's
/// renewal loop until the lease's local deadline, anything else ends the lease at once.
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

    /// What this store can do, declared up front rather than discovered by failure.
    fn capabilities(&self) -> Capabilities;
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

    /// The lease the store actually grants for a requested `lease`: at least
    /// [`min_lease`](Self::min_lease), rounded up to the [granularity](Self::lease_granularity).
    pub fn effective_lease(&self, lease: Duration) -> Duration {
        let lease = lease.max(self.min_lease);
        let g = self.lease_granularity.as_nanos().max(1);
        let n = lease.as_nanos().div_ceil(g) * g;
        Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX))
    }
}

/// Checks a key and a holder against the contract's input rules: each is 1 to [`MAX_KEY_LEN`]
/// bytes. Any byte is allowed otherwise, including `/`, `{`, `}`, `:`, `%`, quotes, NUL and
/// non-ASCII characters.
///
/// # Errors
///
/// [`StoreErrorKind::InvalidInput`](crate::StoreErrorKind::InvalidInput) naming what is wrong.
pub fn validate(store: &'static str, key: &str, holder: &str) -> Result<(), StoreError> {
    validate_one(store, "key", key)?;
    validate_one(store, "holder", holder)
}

fn validate_one(store: &'static str, what: &str, value: &str) -> Result<(), StoreError> {
    if value.is_empty() {
        return Err(StoreError::invalid_input(store, format!("{what} is empty")));
    }
    if value.len() > MAX_KEY_LEN {
        return Err(StoreError::invalid_input(
            store,
            format!(
                "{what} is {} bytes long, the limit is {MAX_KEY_LEN}",
                value.len()
            ),
        ));
    }
    Ok(())
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

    /// Wraps a store that is already shared.
    pub fn from_arc(store: Arc<dyn DynLeaseStore>) -> Self {
        Self(store)
    }

    /// The concrete store behind this one, if it is an `S`: for the store's own methods (its
    /// statistics, an operator's `break_lock`) on a store opened from a URL. Looks through
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
    fn capabilities(&self) -> Capabilities {
        S::capabilities(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn validate_names_what_is_wrong() {
        let e = validate("t", "", "h").unwrap_err();
        assert!(e.to_string().contains("key is empty"), "{e}");
        let long = "k".repeat(MAX_KEY_LEN + 1);
        let e = validate("t", "k", &long).unwrap_err();
        assert!(e.to_string().contains("holder is 1025 bytes"), "{e}");
        validate("t", &"k".repeat(MAX_KEY_LEN), "\0{}:%\"' é").unwrap();
    }
}
