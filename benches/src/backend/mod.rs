//! What the bench measures differently on each store, one module per store: the raw floor
//! operation, the store's version, the peer a user would pick instead of us, how long a waiter
//! takes to park, and the wire operations the counting wrapper cannot see. The rest of the bench
//! is the same for every store in [`Scheme::ALL`]; a store without a module here is measured
//! with [`Plain`]'s stand-ins, so a store that leasehold opens is one the bench measures.

use std::any::Any;
use std::time::Duration;

use anyhow::bail;
use futures::future::BoxFuture;
use lease_core::{DynStore, LeaseStore};
use leasehold::Scheme;

use crate::proto::{Imp, Job};

/// The URL option of our stores that turns their waiter queue on.
pub(crate) const QUEUED_GRANTS: &str = "queued_grants=true";

#[cfg(feature = "etcd")]
mod etcd;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;
mod sqlite;

/// The future of a store's code, boxed since it sits behind `dyn`; `Send`, since with
/// `--in-task` a worker runs its scenario in a spawned task.
pub(crate) type Fut<'a, T> = BoxFuture<'a, anyhow::Result<T>>;

/// A count of wire operations, read when the worker reports.
pub(crate) type WireCounter = Box<dyn Fn() -> u64 + Send + Sync>;

/// One store's measurement code.
pub(crate) trait Backend: Sync {
    /// The floor operation, as the floor record's `operation` names it.
    fn floor_operation(&self) -> &'static str;

    /// Opens the raw store round trip of the same shape as an acquire, for the store at
    /// `location`, which `store` is opened on.
    fn floor<'a>(&'a self, location: &'a str, store: &'a DynStore) -> Fut<'a, Box<dyn Floor>>;

    /// The same round trip as [`floor`](Backend::floor) the fastest way a client can make it,
    /// if that is another way (what the operation is, and the floor): ratios are then taken to
    /// it, the physical floor.
    fn fastest_floor<'a>(
        &'a self,
        location: &'a str,
    ) -> Option<(&'static str, Fut<'a, Box<dyn Floor>>)> {
        let _ = location;
        None
    }

    /// The store's version, e.g. `Redis 7.2.4`.
    fn version<'a>(&'a self, location: &'a str) -> Fut<'a, String>;

    /// The peers a user would pick instead of us for this store, that the bench has.
    fn peers(&self) -> &'static [Imp] {
        &[]
    }

    /// What a [`peer`](Backend::peers) is in this build and on this machine, e.g. `rslock
    /// 0.7.0`, asked by the harness before it measures: an error says why the peer cannot run
    /// here (a missing interpreter or package), and the harness then leaves it out.
    fn peer_version(&self, peer: Imp) -> anyhow::Result<String> {
        Ok(peer.name().to_owned())
    }

    /// The process that runs `job` for a peer that is not this binary's worker (a peer in
    /// another language), speaking the same protocol; `None` for this binary's own worker.
    fn peer_process(&self, job: &Job) -> Option<anyhow::Result<tokio::process::Command>> {
        let _ = job;
        None
    }

    /// A [`peer`](Backend::peers)'s lock on `key`; `lease_ms` overrides its lease.
    fn peer_lock<'a>(
        &'a self,
        location: &'a str,
        key: &'a str,
        lease_ms: Option<u64>,
    ) -> Fut<'a, Box<dyn PeerLock>> {
        let _ = (location, key, lease_ms);
        Box::pin(async { bail!("the bench has no peer for this store") })
    }

    /// The URL query options that turn the store's waiter queue on ([`QUEUED_GRANTS`], and
    /// what the queue is measured with), if the store has one. The harness adds them to the
    /// location of a store it sets up itself (throwaway server or temp database), so that `ours`
    /// runs queued and `ours-barging` beside it; a URL given with `--store` is measured as
    /// written.
    fn queued_grants_options(&self) -> &'static [&'static str] {
        &[]
    }

    /// The lease of our lock in the crash scenario (ms): long enough to be a lease, short
    /// enough that a takeover which waits for it is measured in seconds.
    fn crash_lease_ms(&self) -> u64 {
        2000
    }

    /// How long a waiter takes to park once its first `try_lock` was refused (it then waits for
    /// a change), before a handoff round may start.
    fn settle(&self) -> Duration {
        Duration::from_millis(2)
    }

    /// The store's count of wire operations the counting wrapper cannot see (etcd's keepalives).
    fn wire_counter(&self, store: &DynStore) -> Option<WireCounter> {
        let _ = store;
        None
    }
}

/// The raw floor operation, opened.
pub(crate) trait Floor: Send + Sync {
    /// One round trip on `key`.
    fn op<'a>(&'a self, key: &'a str) -> Fut<'a, ()>;
}

/// A peer's lock on one key.
pub(crate) trait PeerLock: Send + Sync {
    /// Waits for the lock, at most `timeout` if given: `Ok(None)` when it passed.
    fn acquire(&self, timeout: Option<Duration>) -> Fut<'_, Option<PeerHeld>>;
    /// Releases what [`acquire`](PeerLock::acquire) gave, and waits for the answer.
    fn release(&self, held: PeerHeld) -> Fut<'_, ()>;
}

/// A held peer lock, of the type its [`PeerLock`] knows.
// Only the peers of the redis and etcd features make and read one.
#[cfg_attr(
    not(any(feature = "redis", feature = "etcd", feature = "postgres")),
    allow(dead_code)
)]
pub(crate) struct PeerHeld(pub(crate) Box<dyn Any + Send>);

impl PeerHeld {
    /// The held lock as the `T` it was made of.
    #[cfg_attr(
        not(any(feature = "redis", feature = "etcd", feature = "postgres")),
        allow(dead_code)
    )]
    pub(crate) fn downcast<T: 'static>(self) -> anyhow::Result<T> {
        match self.0.downcast() {
            Ok(held) => Ok(*held),
            Err(_) => bail!("released a lock of another implementation"),
        }
    }
}

/// The measurement code of `scheme`'s store.
pub(crate) fn of(scheme: Scheme) -> &'static dyn Backend {
    match scheme {
        Scheme::Sqlite => &sqlite::Sqlite,
        #[cfg(feature = "redis")]
        Scheme::Redis => &redis::Redis,
        #[cfg(feature = "etcd")]
        Scheme::Etcd => &etcd::Etcd,
        #[cfg(feature = "postgres")]
        Scheme::Postgres => &postgres::Postgres,
        // A store without measurement code of its own, or one this build leaves out (which the
        // harness refuses before it measures).
        _ => &Plain,
    }
}

/// The stand-ins for a store without measurement code of its own: the floor is the store's own
/// `try_lock` (one atomic round trip, the shape of an acquire, without the lock around it), and
/// the version is unknown.
struct Plain;

impl Backend for Plain {
    fn floor_operation(&self) -> &'static str {
        "the store's own try_lock"
    }

    fn floor<'a>(&'a self, _location: &'a str, store: &'a DynStore) -> Fut<'a, Box<dyn Floor>> {
        let store = store.clone();
        Box::pin(async move { Ok(Box::new(TryLockFloor(store)) as Box<dyn Floor>) })
    }

    fn version<'a>(&'a self, _location: &'a str) -> Fut<'a, String> {
        Box::pin(async { bail!("the bench has no version probe for this store") })
    }
}

/// [`Plain`]'s floor.
struct TryLockFloor(DynStore);

impl Floor for TryLockFloor {
    fn op<'a>(&'a self, key: &'a str) -> Fut<'a, ()> {
        Box::pin(async move {
            let holder = format!("bench-floor/{}", std::process::id());
            self.0
                .try_lock(
                    Duration::from_secs(10),
                    &format!("bench-floor/{key}"),
                    &holder,
                )
                .await?;
            Ok(())
        })
    }
}
