//! Deliberately broken locks, for the checker's self-test: each reproduces one classic mistake,
//! and a chaos run with it must make `fleet check` report a violation. A checker that cannot fail
//! proves nothing.
//!
//! | name | mistake | what the checker sees |
//! |---|---|---|
//! | `release-any-holder` | release deletes the key without comparing the holder | I4 (a stale release succeeds) |
//! | `fence-per-process` | fences come from a counter in each process, not from the store | I3, I1 |
//! | `no-vacancy-check` | acquire takes a held key without checking that it is free | I6 |
//! | `wall-clock` | the local deadline is measured on a slow wall clock | I5 |
//! | `lifo-queue` | a release hands the key to the newest waiter, not the oldest | I7 |
//! | `barging-queue` | a release frees the key without handing it on, and whoever asks first takes it past the queue | I7 |
//! | `renew-on-timeout` | a renewal that times out or fails in transit counts as done | I5 (under partitions) |
//!
//! `release-any-holder`, `no-vacancy-check`, `lifo-queue` and `barging-queue` edit the SQLite
//! store's tables directly (they need a `sqlite://` store, the queue ones with
//! `?queued_grants=true`); the others work with any store.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use lease_core::{
    BrokenLock, Capabilities, Clock, DynStore, Enqueued, Fence, KeyState, LeaseStore, SharedClock,
    StoreError,
};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

/// Which mistake to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broken {
    /// (a) Release without comparing the holder.
    ReleaseAnyHolder,
    /// (b) A fence that is not persisted: each process counts its own, per key, from 1.
    FencePerProcess,
    /// (c) Acquire without the vacancy check: a held key is taken over (with the next fence).
    NoVacancyCheck,
    /// (d) The lock's local deadline on a wall clock that runs at a quarter of the real rate.
    WallClock,
    /// (e) A queue served last come, first served: a release grants the key to the newest live
    /// waiter (and wakes it, as the real queue wakes the oldest).
    LifoQueue,
    /// (f) A renewal whose answer does not come within a quarter of the lease, or that fails
    /// with a transient error, is taken as done: the lock keeps its lease through a partition.
    RenewOnTimeout,
    /// (g) A queue that newcomers barge past: a release frees the key without granting it to
    /// the oldest waiter, and an `enqueue` that finds the key free takes it, whoever waits.
    BargingQueue,
}

impl Broken {
    /// Every variant, in the order of the table above.
    pub const ALL: [Broken; 7] = [
        Broken::ReleaseAnyHolder,
        Broken::FencePerProcess,
        Broken::NoVacancyCheck,
        Broken::WallClock,
        Broken::LifoQueue,
        Broken::RenewOnTimeout,
        Broken::BargingQueue,
    ];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Broken::ReleaseAnyHolder => "release-any-holder",
            Broken::FencePerProcess => "fence-per-process",
            Broken::NoVacancyCheck => "no-vacancy-check",
            Broken::WallClock => "wall-clock",
            Broken::LifoQueue => "lifo-queue",
            Broken::RenewOnTimeout => "renew-on-timeout",
            Broken::BargingQueue => "barging-queue",
        }
    }

    /// Parses a name from the command line.
    ///
    /// # Errors
    ///
    /// An unknown name, with the list of known ones.
    pub fn parse(name: &str) -> Result<Broken, String> {
        Broken::ALL
            .into_iter()
            .find(|b| b.name() == name)
            .ok_or_else(|| {
                let names: Vec<_> = Broken::ALL.iter().map(|b| b.name()).collect();
                format!("unknown --broken `{name}`: one of {}", names.join(", "))
            })
    }

    /// Whether this variant edits the SQLite tables itself.
    pub fn needs_sqlite(self) -> bool {
        matches!(
            self,
            Broken::ReleaseAnyHolder
                | Broken::NoVacancyCheck
                | Broken::LifoQueue
                | Broken::BargingQueue
        )
    }

    /// Whether this variant needs a store with a waiter queue
    /// ([`Capabilities::queued_grants`]).
    pub fn needs_queue(self) -> bool {
        matches!(self, Broken::LifoQueue | Broken::BargingQueue)
    }

    /// Whether this variant shows only when workers are cut off a store server
    /// (`--chaos partition`): elsewhere renewals do not time out.
    pub fn needs_partition(self) -> bool {
        self == Broken::RenewOnTimeout
    }

    /// The invariants a run with this variant is expected to violate (any of them).
    pub fn expected(self) -> &'static [&'static str] {
        match self {
            Broken::ReleaseAnyHolder => &["I4"],
            Broken::FencePerProcess => &["I3", "I1"],
            Broken::NoVacancyCheck => &["I6"],
            Broken::WallClock => &["I5"],
            Broken::LifoQueue => &["I7"],
            Broken::RenewOnTimeout => &["I5", "I6"],
            Broken::BargingQueue => &["I7"],
        }
    }
}

/// The clock for the `wall-clock` variant: the system's wall clock, slowed down four times, as a
/// wall clock stepped back or slewing would look. A lock measuring its deadline on it believes
/// its lease valid long after the store let it expire.
#[derive(Debug)]
pub struct SlowWallClock {
    origin: SystemTime,
}

impl SlowWallClock {
    /// A shared clock starting now.
    pub fn shared() -> SharedClock {
        Arc::new(SlowWallClock {
            origin: SystemTime::now(),
        })
    }
}

impl Clock for SlowWallClock {
    fn now(&self) -> Duration {
        // Never below the first reading: the trait wants a clock that does not go back, and the
        // mistake shown here is the rate, not a panic.
        SystemTime::now()
            .duration_since(self.origin)
            .unwrap_or_default()
            / 4
            + Duration::from_secs(1)
    }
}

/// The `renew-on-timeout` mistake, a wrapper between the lock and the (recorded) store: a
/// renewal not answered within `patience`, or failed with a transient error, is reported to the
/// lock as done. The history still shows what the store answered (nothing, or the error), so
/// the checker's deadline does not move while the lock's does.
pub struct TrustingRenewals {
    inner: DynStore,
    patience: Duration,
}

impl TrustingRenewals {
    /// Wraps `inner`, trusting a renewal after `patience` without an answer.
    pub fn new(inner: DynStore, patience: Duration) -> Self {
        Self { inner, patience }
    }
}

impl LeaseStore for TrustingRenewals {
    async fn try_lock(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
    ) -> Result<Option<Fence>, StoreError> {
        self.inner.try_lock(lease, key, holder).await
    }

    async fn renew(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
        fence: Fence,
    ) -> Result<bool, StoreError> {
        match tokio::time::timeout(self.patience, self.inner.renew(lease, key, holder, fence)).await
        {
            Ok(Err(e)) if e.is_transient() => Ok(true),
            Ok(answer) => answer,
            Err(_) => Ok(true),
        }
    }

    async fn release(&self, key: &str, holder: &str, fence: Fence) -> Result<bool, StoreError> {
        self.inner.release(key, holder, fence).await
    }

    async fn wait_for_change(&self, key: &str, max_wait: Duration) {
        self.inner.wait_for_change(key, max_wait).await
    }

    async fn enqueue(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
        patience: Duration,
    ) -> Result<Enqueued, StoreError> {
        self.inner.enqueue(lease, key, holder, patience).await
    }

    async fn wait_for_grant(&self, key: &str, holder: &str, max_wait: Duration) -> Option<Fence> {
        self.inner.wait_for_grant(key, holder, max_wait).await
    }

    async fn leave_queue(&self, key: &str, holder: &str) -> Result<bool, StoreError> {
        self.inner.leave_queue(key, holder).await
    }

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

/// A store wrapper that makes one of the store-level mistakes.
pub struct BrokenStore {
    inner: DynStore,
    broken: Broken,
    db: Option<Arc<Mutex<Connection>>>,
    fences: Mutex<HashMap<String, LocalFences>>,
}

#[derive(Default)]
struct LocalFences {
    counter: u64,
    /// (real, local) pairs.
    map: Vec<(u64, u64)>,
}

impl BrokenStore {
    /// Wraps `inner`. `sqlite` is the path of the SQLite store's database for the variants that
    /// edit its table.
    ///
    /// # Errors
    ///
    /// A variant that needs the SQLite table without one, or the database cannot be opened.
    pub fn new(inner: DynStore, broken: Broken, sqlite: Option<&Path>) -> anyhow::Result<Self> {
        let db = if broken.needs_sqlite() {
            let Some(path) = sqlite else {
                anyhow::bail!("--broken {} needs a sqlite:// store", broken.name());
            };
            let conn = Connection::open(path)
                .map_err(|e| anyhow::anyhow!("open {}: {e}", path.display()))?;
            conn.busy_timeout(Duration::from_secs(10))?;
            Some(Arc::new(Mutex::new(conn)))
        } else {
            None
        };
        Ok(BrokenStore {
            inner,
            broken,
            db,
            fences: Mutex::new(HashMap::new()),
        })
    }

    async fn sql<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self
            .db
            .clone()
            .expect("opened for the variants that use it");
        tokio::task::spawn_blocking(move || {
            let mut conn = db.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::permanent("broken", e.to_string()))?
        .map_err(|e| StoreError::transient("broken", e.to_string()))
    }

    /// The `lifo-queue` mistake, made just before a release (or a give-back by `leave_queue`)
    /// that `holder` sends: the key's newest live waiter is moved to the head of its queue, so
    /// the SQLite store's own release, in its next transaction, grants it the key and wakes it.
    /// Only while `holder` holds the key (with `fence`, if given), so a refused release leaves
    /// the queue as it was. A waiter that queues between the two transactions is not the one
    /// served: the queue is still far from first come, first served.
    async fn newest_first(
        &self,
        key: &str,
        holder: &str,
        fence: Option<Fence>,
    ) -> Result<(), StoreError> {
        if self.broken != Broken::LifoQueue {
            return Ok(());
        }
        let (key, holder) = (key.as_bytes().to_vec(), holder.as_bytes().to_vec());
        let fence = fence.map(|f| i64::try_from(f.get()).unwrap_or(i64::MAX));
        // The store's clock: the host's boot clock, whatever this process's time namespace.
        let now = i64::try_from(crate::history::now_ns()).unwrap_or(i64::MAX);
        self.sql(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // `seq` orders every key's queue and is unique across keys: one below the lowest of
            // all is a place ahead of every waiter of this key, taken by no other entry.
            tx.execute(
                "UPDATE waiters SET seq = (SELECT MIN(seq) FROM waiters) - 1
                 WHERE seq = (SELECT MAX(seq) FROM waiters WHERE key = ?1 AND live_until_ns > ?3)
                   AND EXISTS (SELECT 1 FROM leases WHERE key = ?1 AND holder = ?2
                                 AND (?4 IS NULL OR fence = ?4))",
                params![key, holder, now, fence],
            )?;
            tx.commit()
        })
        .await
    }

    /// The `barging-queue` release: the key is freed (if `holder` holds it with `fence`) and
    /// handed to nobody, where the store's release grants it to the oldest live waiter.
    async fn free_without_handing_on(
        &self,
        key: &str,
        holder: &str,
        fence: Fence,
    ) -> Result<bool, StoreError> {
        let (key, holder) = (key.as_bytes().to_vec(), holder.as_bytes().to_vec());
        let fence = i64::try_from(fence.get()).unwrap_or(i64::MAX);
        self.sql(move |conn| {
            Ok(conn.execute(
                "UPDATE leases SET holder = NULL, expires_ns = 0
                 WHERE key = ?1 AND holder = ?2 AND fence = ?3",
                params![key, holder, fence],
            )? == 1)
        })
        .await
    }

    /// Grants `key` to `holder` with the next fence by editing the row: a held key too, unless
    /// `free_only` (then only a released key, or one whose lease is over). `None` if it did not
    /// (or the key has no row yet). The holder's own queue entry, if any, goes with the grant.
    /// `no-vacancy-check` takes any key so; `barging-queue`'s enqueue a free one, past every
    /// live waiter, and when it gets `None` the store queues the caller as usual.
    async fn grant_directly(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
        free_only: bool,
    ) -> Result<Option<Fence>, StoreError> {
        let (key, holder) = (key.as_bytes().to_vec(), holder.as_bytes().to_vec());
        let lease = i64::try_from(lease.as_nanos()).unwrap_or(i64::MAX);
        // The store's clock: the host's boot clock, whatever this process's time namespace.
        let now = i64::try_from(crate::history::now_ns()).unwrap_or(i64::MAX);
        let fence = self
            .sql(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let f: Option<i64> = tx
                    .query_row(
                        "UPDATE leases SET holder = ?2, fence = fence + 1, expires_ns = ?3
                         WHERE key = ?1 AND (NOT ?5 OR holder IS NULL OR expires_ns <= ?4)
                         RETURNING fence",
                        params![key, holder, now.saturating_add(lease), now, free_only],
                        |r| r.get(0),
                    )
                    .optional()?;
                if f.is_some() {
                    tx.execute(
                        "DELETE FROM waiters WHERE key = ?1 AND holder = ?2",
                        params![key, holder],
                    )?;
                }
                tx.commit()?;
                Ok(f)
            })
            .await?;
        Ok(fence.and_then(|f| Fence::new(u64::try_from(f).ok()?)))
    }

    fn local_fence(&self, key: &str, real: u64) -> u64 {
        let mut all = self.fences.lock().unwrap_or_else(|p| p.into_inner());
        let f = all.entry(key.to_owned()).or_default();
        if let Some(&(_, local)) = f.map.iter().find(|(r, _)| *r == real) {
            return local;
        }
        f.counter += 1;
        let local = f.counter;
        f.map.push((real, local));
        local
    }

    fn real_fence(&self, key: &str, local: Fence) -> Fence {
        let all = self.fences.lock().unwrap_or_else(|p| p.into_inner());
        all.get(key)
            .and_then(|f| f.map.iter().find(|(_, l)| *l == local.get()))
            .and_then(|&(r, _)| Fence::new(r))
            .unwrap_or(local)
    }
}

impl LeaseStore for BrokenStore {
    async fn try_lock(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
    ) -> Result<Option<Fence>, StoreError> {
        if lease.is_zero() {
            self.newest_first(key, holder, None).await?;
        }
        let granted = self.inner.try_lock(lease, key, holder).await?;
        match (self.broken, granted) {
            (Broken::FencePerProcess, Some(real)) => {
                Ok(Fence::new(self.local_fence(key, real.get())))
            }
            (Broken::NoVacancyCheck, None) if !lease.is_zero() => {
                // The mistake: take the key from its holder without asking whether it is free.
                self.grant_directly(lease, key, holder, false).await
            }
            (_, g) => Ok(g),
        }
    }

    async fn renew(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
        fence: Fence,
    ) -> Result<bool, StoreError> {
        let fence = match self.broken {
            Broken::FencePerProcess => self.real_fence(key, fence),
            _ => fence,
        };
        self.inner.renew(lease, key, holder, fence).await
    }

    async fn release(&self, key: &str, holder: &str, fence: Fence) -> Result<bool, StoreError> {
        let fence = match self.broken {
            Broken::FencePerProcess => self.real_fence(key, fence),
            _ => fence,
        };
        self.newest_first(key, holder, Some(fence)).await?;
        if self.broken == Broken::BargingQueue {
            return self.free_without_handing_on(key, holder, fence).await;
        }
        let released = self.inner.release(key, holder, fence).await?;
        if released || self.broken != Broken::ReleaseAnyHolder {
            return Ok(released);
        }
        // The mistake: the key is not ours (any more), delete it anyway, like a `DEL` without
        // comparing the holder.
        let key = key.as_bytes().to_vec();
        self.sql(move |conn| {
            Ok(conn.execute("UPDATE leases SET holder = NULL WHERE key = ?1", [key])? == 1)
        })
        .await
    }

    async fn enqueue(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
        patience: Duration,
    ) -> Result<Enqueued, StoreError> {
        if self.broken == Broken::BargingQueue
            && !lease.is_zero()
            && let Some(fence) = self.grant_directly(lease, key, holder, true).await?
        {
            return Ok(Enqueued::Granted(fence));
        }
        self.inner.enqueue(lease, key, holder, patience).await
    }

    async fn wait_for_grant(&self, key: &str, holder: &str, max_wait: Duration) -> Option<Fence> {
        self.inner.wait_for_grant(key, holder, max_wait).await
    }

    async fn leave_queue(&self, key: &str, holder: &str) -> Result<bool, StoreError> {
        // A grant that raced in is given back to the newest waiter too.
        self.newest_first(key, holder, None).await?;
        self.inner.leave_queue(key, holder).await
    }

    async fn wait_for_change(&self, key: &str, max_wait: Duration) {
        self.inner.wait_for_change(key, max_wait).await
    }

    /// Forwarded as they are (with the store's real fences): the mistakes are the lock's calls.
    async fn inspect(&self, key: &str) -> Result<KeyState, StoreError> {
        self.inner.inspect(key).await
    }

    async fn break_lock(&self, key: &str) -> Result<Option<BrokenLock>, StoreError> {
        self.inner.break_lock(key).await
    }

    /// The inner store's, with its waiter queue only for `lifo-queue` and `barging-queue`: the
    /// other mistakes are those of a polling store (their `try_lock` and `release` are what the lock must call).
    fn capabilities(&self) -> Capabilities {
        let caps = self.inner.capabilities();
        caps.with_queued_grants(caps.queued_grants && self.broken.needs_queue())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_listed() {
        for b in Broken::ALL {
            assert_eq!(Broken::parse(b.name()), Ok(b));
        }
        let err = Broken::parse("nope").unwrap_err();
        assert!(err.contains("wall-clock"), "{err}");
    }

    #[tokio::test]
    async fn store_level_mistakes_really_happen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locks.db");
        let real = lease_sqlite::SqliteStore::open(&path).await.unwrap();
        let lease = Duration::from_secs(30);
        let store = |b| BrokenStore::new(DynStore::new(real.clone()), b, Some(&path)).unwrap();

        let a = store(Broken::NoVacancyCheck);
        assert_eq!(
            a.try_lock(lease, "k", "h1").await.unwrap().unwrap().get(),
            1
        );
        // Held by h1, yet h2 gets it, with the next fence.
        assert_eq!(
            a.try_lock(lease, "k", "h2").await.unwrap().unwrap().get(),
            2
        );

        let r = store(Broken::ReleaseAnyHolder);
        // h2 holds it; h1's release with its old fence succeeds anyway.
        assert!(r.release("k", "h1", Fence::new(1).unwrap()).await.unwrap());
        assert_eq!(
            real.try_lock(lease, "k", "h3")
                .await
                .unwrap()
                .unwrap()
                .get(),
            3
        );

        let (p1, p2) = (
            store(Broken::FencePerProcess),
            store(Broken::FencePerProcess),
        );
        let f = p1.try_lock(lease, "j", "h1").await.unwrap().unwrap();
        assert!(p1.release("j", "h1", f).await.unwrap());
        // A second "process" counts from 1 again.
        assert_eq!(p2.try_lock(lease, "j", "h2").await.unwrap(), Some(f));
    }

    /// A SQLite store with its queue, in a temp dir (kept while the first value lives).
    async fn queued_sqlite() -> (
        tempfile::TempDir,
        std::path::PathBuf,
        lease_sqlite::SqliteStore,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locks.db");
        let real = lease_sqlite::SqliteStore::builder(&path)
            .queued_grants(true)
            .open()
            .await
            .unwrap();
        (dir, path, real)
    }

    #[tokio::test]
    async fn the_barging_queue_lets_the_releaser_take_the_key_back_past_its_waiters() {
        let (_dir, path, real) = queued_sqlite().await;
        let barging = BrokenStore::new(
            DynStore::new(real.clone()),
            Broken::BargingQueue,
            Some(&path),
        )
        .unwrap();
        assert!(barging.capabilities().queued_grants);
        let (lease, patience) = (Duration::from_secs(30), Duration::from_secs(30));
        let Enqueued::Granted(f1) = barging.enqueue(lease, "k", "h1", patience).await.unwrap()
        else {
            panic!("a free key is granted");
        };
        let queued = barging.enqueue(lease, "k", "h2", patience).await.unwrap();
        assert!(matches!(queued, Enqueued::Waiting { .. }), "{queued:?}");
        // A refused release (not the holder) changes nothing.
        assert!(!barging.release("k", "h2", f1).await.unwrap());
        assert!(barging.release("k", "h1", f1).await.unwrap());
        // Released to nobody: h2, queued and live, was not granted, and h1 takes the key back.
        assert_eq!(real.inspect("k").await.unwrap().holder, None);
        assert_eq!(
            barging.enqueue(lease, "k", "h1", patience).await.unwrap(),
            Enqueued::Granted(Fence::new(f1.get() + 1).unwrap())
        );
        assert!(matches!(
            real.enqueue(lease, "k", "h2", patience).await.unwrap(),
            Enqueued::Waiting { .. }
        ));
    }

    #[tokio::test]
    async fn the_lifo_queue_hands_the_key_to_the_newest_waiter() {
        let (_dir, path, real) = queued_sqlite().await;
        let lifo =
            BrokenStore::new(DynStore::new(real.clone()), Broken::LifoQueue, Some(&path)).unwrap();
        assert!(lifo.capabilities().queued_grants);
        let (lease, patience, wait) = (
            Duration::from_secs(30),
            Duration::from_secs(30),
            Duration::from_secs(5),
        );
        let Enqueued::Granted(f1) = lifo.enqueue(lease, "k", "h1", patience).await.unwrap() else {
            panic!("a free key is granted");
        };
        for h in ["h2", "h3", "h4"] {
            let queued = lifo.enqueue(lease, "k", h, patience).await.unwrap();
            assert!(
                matches!(queued, Enqueued::Waiting { .. }),
                "{h}: {queued:?}"
            );
        }
        // A refused release (not the holder) leaves the queue alone.
        assert!(!lifo.release("k", "h2", f1).await.unwrap());
        assert!(lifo.release("k", "h1", f1).await.unwrap());
        // The newest waiter was granted the key by the release, and its wait reports it.
        let f4 = lifo.wait_for_grant("k", "h4", wait).await.unwrap();
        assert_eq!(f4.get(), f1.get() + 1);
        // The store itself, released to, serves the oldest.
        assert!(real.release("k", "h4", f4).await.unwrap());
        let f2 = real.wait_for_grant("k", "h2", wait).await.unwrap();
        assert_eq!(f2.get(), f1.get() + 2);
    }
}
