//! Opening stores in a worker, the counting wrapper, and the lockers (ours, the ancestor
//! configuration, the peers) behind one interface. What differs per store (the floor, the peers,
//! wire counters) comes from [`backend`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use lease_core::{
    BrokenLock, Capabilities, CrossProcessLock, DynStore, Enqueued, Fence, KeyState, LeaseStore,
    LockGuard, StoreError,
};

use crate::backend::{self, Backend, Floor, PeerHeld, PeerLock, WireCounter};
use crate::proto::{Imp, OpCounts, StoreTarget};

/// A store wrapper that counts every call, so that the harness can report store operations per
/// acquisition and check that a re-entrant acquisition makes none.
#[derive(Clone)]
pub(crate) struct Counting {
    inner: DynStore,
    counts: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    try_lock: AtomicU64,
    renew: AtomicU64,
    release: AtomicU64,
    wait: AtomicU64,
}

impl Counting {
    pub(crate) fn counts(&self) -> OpCounts {
        OpCounts {
            try_lock: self.counts.try_lock.load(Ordering::Relaxed),
            renew: self.counts.renew.load(Ordering::Relaxed),
            release: self.counts.release.load(Ordering::Relaxed),
            wait: self.counts.wait.load(Ordering::Relaxed),
            keepalives: None,
        }
    }
}

impl LeaseStore for Counting {
    async fn try_lock(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
    ) -> Result<Option<Fence>, StoreError> {
        self.counts.try_lock.fetch_add(1, Ordering::Relaxed);
        self.inner.try_lock(lease, key, holder).await
    }
    async fn renew(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
        fence: Fence,
    ) -> Result<bool, StoreError> {
        self.counts.renew.fetch_add(1, Ordering::Relaxed);
        self.inner.renew(lease, key, holder, fence).await
    }
    async fn release(&self, key: &str, holder: &str, fence: Fence) -> Result<bool, StoreError> {
        self.counts.release.fetch_add(1, Ordering::Relaxed);
        self.inner.release(key, holder, fence).await
    }
    async fn wait_for_change(&self, key: &str, max_wait: Duration) {
        self.counts.wait.fetch_add(1, Ordering::Relaxed);
        self.inner.wait_for_change(key, max_wait).await
    }
    /// Counted as an acquire (`try_lock`): it is a waiting call's acquire on a queued store.
    async fn enqueue(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
        patience: Duration,
    ) -> Result<Enqueued, StoreError> {
        self.counts.try_lock.fetch_add(1, Ordering::Relaxed);
        self.inner.enqueue(lease, key, holder, patience).await
    }
    /// Counted as a wait, like `wait_for_change`.
    async fn wait_for_grant(&self, key: &str, holder: &str, max_wait: Duration) -> Option<Fence> {
        self.counts.wait.fetch_add(1, Ordering::Relaxed);
        self.inner.wait_for_grant(key, holder, max_wait).await
    }
    /// Counted as a release: it gives back a grant that raced in, if any.
    async fn leave_queue(&self, key: &str, holder: &str) -> Result<bool, StoreError> {
        self.counts.release.fetch_add(1, Ordering::Relaxed);
        self.inner.leave_queue(key, holder).await
    }
    /// Forwarded, not counted: the lock never makes these calls.
    async fn inspect(&self, key: &str) -> Result<KeyState, StoreError> {
        self.inner.inspect(key).await
    }
    async fn break_lock(&self, key: &str) -> Result<Option<BrokenLock>, StoreError> {
        self.inner.break_lock(key).await
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}

/// Everything a worker opened for one store.
pub(crate) struct Opened {
    pub(crate) target: StoreTarget,
    pub(crate) store: Counting,
    backend: &'static dyn Backend,
    keepalives: Option<WireCounter>,
    floor: Option<Box<dyn Floor>>,
}

impl Opened {
    /// Opens the store, and the floor `floor` names (`Floor` or `FloorFastest`) if any.
    pub(crate) async fn open(target: &StoreTarget, floor: Option<Imp>) -> anyhow::Result<Self> {
        let store = leasehold::open(&target.location).await.with_context(|| {
            format!(
                "opening {} {}",
                target.scheme.name(),
                redact(&target.location)
            )
        })?;
        let backend = backend::of(target.scheme);
        let keepalives = backend.wire_counter(&store);
        let floor = match floor {
            Some(Imp::FloorFastest) => match backend.fastest_floor(&target.location) {
                Some((_, open)) => Some(open.await?),
                None => bail!("{} has no fastest floor", target.scheme.name()),
            },
            Some(_) => Some(backend.floor(&target.location, &store).await?),
            None => None,
        };
        Ok(Self {
            target: target.clone(),
            store: Counting {
                inner: store,
                counts: Arc::default(),
            },
            backend,
            keepalives,
            floor,
        })
    }

    pub(crate) fn counts(&self) -> OpCounts {
        let mut c = self.store.counts();
        c.keepalives = self.keepalives.as_ref().map(|f| f());
        c
    }

    /// One raw store write of the same shape as an acquire.
    pub(crate) async fn floor_op(&self, key: &str) -> anyhow::Result<()> {
        match &self.floor {
            Some(floor) => floor.op(key).await,
            None => bail!("no floor opened"),
        }
    }

    /// A locker for `key` with implementation `imp`.
    pub(crate) async fn locker(
        &self,
        imp: Imp,
        key: &str,
        lease_ms: Option<u64>,
    ) -> anyhow::Result<Locker> {
        Ok(match imp {
            Imp::Ours | Imp::OursBarging => {
                let mut b = CrossProcessLock::builder(self.store.clone(), key)
                    .barging(imp == Imp::OursBarging);
                if let Some(ms) = lease_ms {
                    b = b.lease(Duration::from_millis(ms));
                }
                Locker::Lock(b.build()?)
            }
            Imp::Ancestor => Locker::Lock(ancestor(self.store.clone(), key)?),
            Imp::StoreTryLock => Locker::Raw {
                store: self.store.clone(),
                key: key.to_owned(),
                holder: format!("bench/{}/{}", std::process::id(), rand::random::<u64>()),
                lease: Duration::from_millis(lease_ms.unwrap_or(10_000)),
            },
            Imp::RedisPy => bail!("redis-py runs in a Python process, not in this worker"),
            Imp::EtcdLockRpc | Imp::Rslock | Imp::PgAdvisoryLock
                if self.backend.peers().contains(&imp) =>
            {
                Locker::Peer(
                    self.backend
                        .peer_lock(&self.target.location, key, lease_ms)
                        .await?,
                )
            }
            Imp::EtcdLockRpc | Imp::Rslock | Imp::PgAdvisoryLock => bail!(
                "{} is no peer of the {} store in this build",
                imp.name(),
                self.target.scheme.name()
            ),
            Imp::Floor | Imp::FloorFastest => bail!("the floor is not a lock"),
        })
    }
}

/// The ancestor design, built from our code by configuration: 500 ms lease renewed every
/// 50 ms, unjittered 10 ms → 1 s doubling backoff, polling only, release on the next heartbeat
/// tick (50 ms later).
pub(crate) fn ancestor<S: LeaseStore>(store: S, key: &str) -> anyhow::Result<CrossProcessLock<S>> {
    Ok(CrossProcessLock::builder(store, key)
        .lease(Duration::from_millis(500))
        .renew_every(Duration::from_millis(50))
        .backoff(Duration::from_millis(10), Duration::from_secs(1))
        .jitter(false)
        .wake_on_notifications(false)
        .release_delay(Duration::from_millis(50))
        .build()?)
}

pub(crate) use lease_core::redact::redact_url as redact;

/// One implementation's lock on one key.
#[allow(clippy::large_enum_variant)] // a few per worker
pub(crate) enum Locker {
    Lock(CrossProcessLock<Counting>),
    Raw {
        store: Counting,
        key: String,
        holder: String,
        lease: Duration,
    },
    /// A peer of the store's.
    Peer(Box<dyn PeerLock>),
}

/// A held lock of any implementation.
pub(crate) enum Held {
    Guard(LockGuard<Counting>),
    Raw(Fence),
    Peer(PeerHeld),
}

impl Locker {
    /// Waits for the lock, at most `timeout` if given: `Ok(None)` when it passed.
    pub(crate) async fn acquire(&self, timeout: Option<Duration>) -> anyhow::Result<Option<Held>> {
        match self {
            Locker::Lock(lock) => {
                let r = match timeout {
                    Some(t) => lock.lock_timeout(t).await,
                    None => lock.lock().await,
                };
                match r {
                    Ok(g) => Ok(Some(Held::Guard(g))),
                    Err(lease_core::Error::TimedOut { .. }) => Ok(None),
                    Err(e) => Err(e.into()),
                }
            }
            Locker::Raw {
                store,
                key,
                holder,
                lease,
            } => match store.try_lock(*lease, key, holder).await? {
                Some(f) => Ok(Some(Held::Raw(f))),
                None => bail!("store-try-lock found {key} busy (it only measures free keys)"),
            },
            Locker::Peer(peer) => Ok(peer.acquire(timeout).await?.map(Held::Peer)),
        }
    }

    /// Releases and waits for the store's answer.
    pub(crate) async fn release(&self, held: Held) -> anyhow::Result<()> {
        match (self, held) {
            (Locker::Lock(_), Held::Guard(g)) => Ok(g.release().await?),
            (
                Locker::Raw {
                    store, key, holder, ..
                },
                Held::Raw(fence),
            ) => {
                store.release(key, holder, fence).await?;
                Ok(())
            }
            (Locker::Peer(peer), Held::Peer(held)) => peer.release(held).await,
            _ => bail!("released a lock of another implementation"),
        }
    }
}

impl Held {
    /// For ours: `false` once the lease was lost.
    pub(crate) fn is_held(&self) -> bool {
        match self {
            Held::Guard(g) => g.is_held(),
            _ => true,
        }
    }
}
