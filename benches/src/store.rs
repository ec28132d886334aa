//! Opening stores in a worker, the counting wrapper, the raw floor operation, and the lockers
//! (ours, the ancestor configuration, the peers) behind one interface.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use lease_core::{
    BrokenLock, Capabilities, CrossProcessLock, DynStore, Fence, KeyState, LeaseStore, LockGuard,
    StoreError,
};

use crate::proto::{Imp, OpCounts, StoreKind, StoreTarget};

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
    #[cfg_attr(not(any(feature = "redis", feature = "etcd")), allow(dead_code))]
    pub(crate) target: StoreTarget,
    pub(crate) store: Counting,
    keepalives: Option<KeepaliveCounter>,
    floor: Floor,
}

impl Opened {
    pub(crate) async fn open(target: &StoreTarget, with_floor: bool) -> anyhow::Result<Self> {
        let store = leasehold::open(&target.location).await.with_context(|| {
            format!(
                "opening {} {}",
                target.kind.name(),
                redact(&target.location)
            )
        })?;
        let keepalives = keepalive_counter(&store);
        let floor = if with_floor {
            Floor::open(target).await?
        } else {
            Floor::None
        };
        Ok(Self {
            target: target.clone(),
            store: Counting {
                inner: store,
                counts: Arc::default(),
            },
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
        self.floor.op(key).await
    }

    /// A locker for `key` with implementation `imp`.
    pub(crate) async fn locker(
        &self,
        imp: Imp,
        key: &str,
        lease_ms: Option<u64>,
    ) -> anyhow::Result<Locker> {
        Ok(match imp {
            Imp::Ours => {
                let mut b = CrossProcessLock::builder(self.store.clone(), key);
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
            Imp::EtcdLockRpc => self.etcd_rpc(key, lease_ms).await?,
            Imp::Rslock => self.rslock(key, lease_ms)?,
            Imp::Floor => bail!("the floor is not a lock"),
        })
    }

    #[cfg(feature = "etcd")]
    async fn etcd_rpc(&self, key: &str, lease_ms: Option<u64>) -> anyhow::Result<Locker> {
        let (endpoints, _) = etcd_endpoints(&self.target.location)?;
        let mut client = etcd_client::Client::connect(endpoints, None)
            .await
            .context("connecting to etcd for the Lock RPC")?;
        let ttl = i64::try_from(lease_ms.unwrap_or(10_000).div_ceil(1000).max(2))?;
        let lease = client.lease_grant(ttl, None).await?.id();
        let (mut keeper, mut stream) = client.lease_keep_alive(lease).await?;
        let every = Duration::from_secs(u64::try_from(ttl)? / 3).max(Duration::from_millis(500));
        let keepalive = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if keeper.keep_alive().await.is_err() {
                    return;
                }
                if stream.message().await.is_err() {
                    return;
                }
            }
        });
        Ok(Locker::EtcdRpc {
            client,
            name: format!("bench-rpc/{key}").into_bytes(),
            lease,
            _keepalive: AbortOnDrop(keepalive),
        })
    }

    #[cfg(not(feature = "etcd"))]
    async fn etcd_rpc(&self, _key: &str, _lease_ms: Option<u64>) -> anyhow::Result<Locker> {
        bail!("etcd's Lock RPC needs the `etcd` feature")
    }

    #[cfg(feature = "redis")]
    fn rslock(&self, key: &str, lease_ms: Option<u64>) -> anyhow::Result<Locker> {
        let lm = rslock::LockManager::new(vec![self.target.location.clone()]);
        Ok(Locker::Rslock {
            lm,
            resource: format!("bench-rslock:{key}").into_bytes(),
            ttl: Duration::from_millis(lease_ms.unwrap_or(10_000)),
        })
    }

    #[cfg(not(feature = "redis"))]
    fn rslock(&self, _key: &str, _lease_ms: Option<u64>) -> anyhow::Result<Locker> {
        bail!("rslock needs the `redis` feature")
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

type KeepaliveCounter = Box<dyn Fn() -> u64 + Send + Sync>;

/// The etcd store's count of keepalives sent, for the report.
#[cfg(feature = "etcd")]
fn keepalive_counter(store: &DynStore) -> Option<KeepaliveCounter> {
    let etcd = store.downcast_ref::<lease_etcd::EtcdStore>()?.clone();
    Some(Box::new(move || etcd.keepalives_sent()))
}

#[cfg(not(feature = "etcd"))]
fn keepalive_counter(_store: &DynStore) -> Option<KeepaliveCounter> {
    None
}

/// `etcd://host:port[,host:port][/prefix]` → endpoints and prefix.
#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
pub(crate) fn etcd_endpoints(url: &str) -> anyhow::Result<(Vec<String>, String)> {
    let rest = url
        .strip_prefix("etcd://")
        .with_context(|| format!("`{url}` is not an etcd:// URL"))?;
    let (hosts, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if hosts.contains('@') {
        bail!("the harness's etcd peers take no credentials in the URL");
    }
    let endpoints: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| format!("http://{h}"))
        .collect();
    if endpoints.is_empty() {
        bail!("`{url}` names no etcd host");
    }
    Ok((endpoints, prefix.to_owned()))
}

pub(crate) use lease_core::redact::redact_url as redact;

/// The raw store operation of the same shape as an acquire.
#[allow(clippy::large_enum_variant)] // one per worker
enum Floor {
    None,
    /// One `BEGIN IMMEDIATE` transaction writing one row, `synchronous=FULL` on WAL, on a
    /// blocking thread (as the store runs its transactions).
    Sqlite(Arc<std::sync::Mutex<rusqlite::Connection>>),
    /// One EVALSHA of a one-line `SET` script on a multiplexed connection.
    #[cfg(feature = "redis")]
    Redis(
        lease_redis::redis::aio::ConnectionManager,
        lease_redis::redis::Script,
    ),
    /// One put.
    #[cfg(feature = "etcd")]
    Etcd(etcd_client::Client),
}

impl Floor {
    async fn open(target: &StoreTarget) -> anyhow::Result<Self> {
        match target.kind {
            StoreKind::Sqlite => {
                let path = std::path::Path::new(&target.location).with_extension("floor.db");
                let conn = tokio::task::spawn_blocking(move || -> rusqlite::Result<_> {
                    let conn = rusqlite::Connection::open(&path)?;
                    conn.busy_timeout(Duration::from_secs(5))?;
                    let _: String =
                        conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
                    conn.pragma_update(None, "synchronous", "FULL")?;
                    conn.execute_batch(
                        "CREATE TABLE IF NOT EXISTS floor (k BLOB PRIMARY KEY NOT NULL, v INTEGER \
                         NOT NULL) WITHOUT ROWID;",
                    )?;
                    Ok(conn)
                })
                .await?
                .context("opening the sqlite floor database")?;
                Ok(Floor::Sqlite(Arc::new(std::sync::Mutex::new(conn))))
            }
            #[cfg(feature = "redis")]
            StoreKind::Redis => {
                use lease_redis::redis;
                let client = redis::Client::open(target.location.as_str())?;
                let conn = redis::aio::ConnectionManager::new(client).await?;
                let script = redis::Script::new("return redis.call('SET', KEYS[1], ARGV[1])");
                Ok(Floor::Redis(conn, script))
            }
            #[cfg(feature = "etcd")]
            StoreKind::Etcd => {
                let (endpoints, _) = etcd_endpoints(&target.location)?;
                Ok(Floor::Etcd(
                    etcd_client::Client::connect(endpoints, None).await?,
                ))
            }
            #[allow(unreachable_patterns)]
            other => bail!("the {} floor needs its cargo feature", other.name()),
        }
    }

    async fn op(&self, key: &str) -> anyhow::Result<()> {
        match self {
            Floor::None => bail!("no floor opened"),
            Floor::Sqlite(conn) => {
                let conn = conn.clone();
                let key = key.as_bytes().to_vec();
                tokio::task::spawn_blocking(move || -> rusqlite::Result<()> {
                    let mut conn = conn.lock().unwrap_or_else(|e| e.into_inner());
                    let tx =
                        conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                    tx.execute(
                        "INSERT INTO floor (k, v) VALUES (?1, 1) ON CONFLICT(k) DO UPDATE SET v = \
                         v + 1",
                        [&key],
                    )?;
                    tx.commit()
                })
                .await??;
                Ok(())
            }
            #[cfg(feature = "redis")]
            Floor::Redis(conn, script) => {
                let mut conn = conn.clone();
                let _: () = script
                    .key(format!("bench-floor:{key}"))
                    .arg(1)
                    .invoke_async(&mut conn)
                    .await?;
                Ok(())
            }
            #[cfg(feature = "etcd")]
            Floor::Etcd(client) => {
                let mut client = client.clone();
                client.put(format!("bench-floor/{key}"), "1", None).await?;
                Ok(())
            }
        }
    }
}

/// Aborts a background task when dropped.
#[cfg(feature = "etcd")]
pub(crate) struct AbortOnDrop(#[allow(dead_code)] pub(crate) tokio::task::JoinHandle<()>);

#[cfg(feature = "etcd")]
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

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
    #[cfg(feature = "etcd")]
    EtcdRpc {
        client: etcd_client::Client,
        name: Vec<u8>,
        lease: i64,
        _keepalive: AbortOnDrop,
    },
    #[cfg(feature = "redis")]
    Rslock {
        lm: rslock::LockManager,
        resource: Vec<u8>,
        ttl: Duration,
    },
}

/// A held lock of any implementation.
pub(crate) enum Held {
    Guard(LockGuard<Counting>),
    Raw(Fence),
    #[cfg(feature = "etcd")]
    Etcd(Vec<u8>),
    #[cfg(feature = "redis")]
    Rslock(rslock::Lock),
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
            #[cfg(feature = "etcd")]
            Locker::EtcdRpc {
                client,
                name,
                lease,
                ..
            } => {
                let mut client = client.clone();
                let opts = etcd_client::LockOptions::new().with_lease(*lease);
                let fut = client.lock(name.clone(), Some(opts));
                let resp = match timeout {
                    Some(t) => match tokio::time::timeout(t, fut).await {
                        Ok(r) => r?,
                        Err(_) => return Ok(None),
                    },
                    None => fut.await?,
                };
                Ok(Some(Held::Etcd(resp.key().to_vec())))
            }
            #[cfg(feature = "redis")]
            Locker::Rslock { lm, resource, ttl } => {
                let fut = lm.acquire_no_guard(resource, *ttl);
                let lock = match timeout {
                    Some(t) => match tokio::time::timeout(t, fut).await {
                        Ok(r) => r.map_err(|e| anyhow::anyhow!("rslock: {e:?}"))?,
                        Err(_) => return Ok(None),
                    },
                    None => fut.await.map_err(|e| anyhow::anyhow!("rslock: {e:?}"))?,
                };
                Ok(Some(Held::Rslock(lock)))
            }
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
            #[cfg(feature = "etcd")]
            (Locker::EtcdRpc { client, .. }, Held::Etcd(k)) => {
                client.clone().unlock(k).await?;
                Ok(())
            }
            #[cfg(feature = "redis")]
            (Locker::Rslock { lm, .. }, Held::Rslock(l)) => {
                lm.unlock(&l).await;
                Ok(())
            }
            #[allow(unreachable_patterns)]
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

/// The store's version: `sqlite_version()`, Redis `INFO server`, etcd's status.
pub(crate) async fn store_version(target: &StoreTarget) -> anyhow::Result<String> {
    match target.kind {
        StoreKind::Sqlite => Ok(format!("SQLite {}", rusqlite::version())),
        #[cfg(feature = "redis")]
        StoreKind::Redis => {
            use lease_redis::redis;
            let client = redis::Client::open(target.location.as_str())?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            let info: String = redis::cmd("INFO")
                .arg("server")
                .query_async(&mut conn)
                .await?;
            let v = info
                .lines()
                .find_map(|l| l.strip_prefix("redis_version:"))
                .unwrap_or("unknown");
            Ok(format!("Redis {}", v.trim()))
        }
        #[cfg(feature = "etcd")]
        StoreKind::Etcd => {
            let (endpoints, _) = etcd_endpoints(&target.location)?;
            let mut client = etcd_client::Client::connect(endpoints, None).await?;
            Ok(format!("etcd {}", client.status().await?.version()))
        }
        #[allow(unreachable_patterns)]
        other => bail!("the {} store needs its cargo feature", other.name()),
    }
}
