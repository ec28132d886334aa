//! [`EtcdStore`]: the transactions on one key, and the per-process session leases.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse,
    TxnResponse,
};
use lease_core::input::{validate, validate_key};
use lease_core::{
    BootClock, BrokenLock, Capabilities, Clock, Enqueued, Fence, KeyState, LeaseStore, StoreError,
};
use tracing::debug;

use crate::client::{Etcd, Failure};
use crate::config::EtcdStoreBuilder;
use crate::error::NAME;
use crate::grants::{Grants, Held, slot};
use crate::session::Session;

mod queue;

/// A [`LeaseStore`] in etcd; see the [crate docs](crate) for the protocol.
///
/// Cheap to clone: clones share one connection and one set of session leases.
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

struct Inner {
    etcd: Etcd,
    prefix: Vec<u8>,
    endpoints: Vec<String>,
    /// Whether the store authenticates (shown in `Debug` as such, without the name).
    has_user: bool,
    /// The live session lease per requested TTL in whole seconds.
    sessions: tokio::sync::Mutex<HashMap<i64, Arc<Session>>>,
    /// The grants this store made (or may have made), and their sweep. Shared with the sessions'
    /// keepalive tasks, which sweep before each keepalive.
    grants: Arc<Grants>,
    /// Keepalive requests sent, for [`EtcdStore::keepalives_sent`]; counted by the sessions.
    keepalives: Arc<AtomicU64>,
    /// Whether this store keeps waiter queues ([`EtcdStoreBuilder::queued_grants`]).
    queued: bool,
    /// Queued grants: the head of each held key's queue as its grant last saw it (lock key →
    /// fence, head), so a release can hand over without reading the queue first.
    heads: std::sync::Mutex<HashMap<Vec<u8>, KnownHead>>,
}

/// A grant's fence and the head of its key's queue as that grant last saw it.
type KnownHead = (i64, Option<KeyValue>);

/// What the acquire transaction found.
enum Found {
    /// The key was vacant and is now granted with this fence.
    Granted(i64),
    /// The key exists.
    Held {
        holder: Vec<u8>,
        lease: i64,
        fence: i64,
    },
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.inner.endpoints)
            .field("prefix", &String::from_utf8_lossy(&self.inner.prefix))
            // Not even the user name: a token passed as `etcd://TOKEN@host` is one.
            .field("user", &self.inner.has_user.then_some("***"))
            .finish_non_exhaustive()
    }
}

fn ttl_secs(lease: Duration) -> i64 {
    let secs = lease.as_nanos().div_ceil(1_000_000_000).max(1);
    i64::try_from(secs).unwrap_or(i64::MAX)
}

fn to_fence(key: &str, v: i64) -> Result<Fence, StoreError> {
    Fence::from_i64(v).ok_or_else(|| {
        StoreError::new(
            lease_core::StoreErrorKind::FenceRegressed,
            NAME,
            format!(
                "fence counter of `{}` holds no valid fence ({v})",
                key.escape_debug()
            ),
        )
    })
}

impl EtcdStoreBuilder {
    /// Connects and checks that the cluster answers.
    ///
    /// # Errors
    ///
    /// Invalid settings (no endpoints, a bad endpoint, a zero timeout) are
    /// [`InvalidInput`](lease_core::StoreErrorKind::InvalidInput); refused credentials are
    /// permanent; an unreachable cluster is a transient error naming the endpoints, returned
    /// within about `connect_timeout + request_timeout`.
    pub async fn connect(self) -> Result<EtcdStore, StoreError> {
        EtcdStore::connect_with(self).await
    }
}

impl EtcdStore {
    /// A builder for a store on these endpoints (`host:port`, or `http(s)://host:port`).
    pub fn builder<I, S>(endpoints: I) -> EtcdStoreBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        EtcdStoreBuilder::new(endpoints)
    }

    /// Connects with the settings of an `etcd://` URL; see [`EtcdStoreBuilder::from_url`].
    ///
    /// # Errors
    ///
    /// As [`EtcdStoreBuilder::from_url`] and [`EtcdStoreBuilder::connect`].
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        EtcdStoreBuilder::from_url(url)?.connect().await
    }

    async fn connect_with(b: EtcdStoreBuilder) -> Result<Self, StoreError> {
        b.validate()?;
        let etcd = Etcd::connect(&b).await?;
        Ok(EtcdStore {
            inner: Arc::new(Inner {
                grants: Arc::new(Grants::new(etcd.clone(), b.prefix.clone())),
                etcd,
                prefix: b.prefix,
                endpoints: b.endpoints,
                has_user: b.user.is_some(),
                sessions: tokio::sync::Mutex::new(HashMap::new()),
                queued: b.queued_grants,
                heads: std::sync::Mutex::new(HashMap::new()),
                keepalives: Arc::new(AtomicU64::new(0)),
            }),
        })
    }

    /// The underlying etcd client, for requests of your own (for example fenced writes).
    pub fn client(&self) -> &Client {
        self.etcd().client()
    }

    /// The etcd key that holds the lock `key`: its value is the holder, its lease is the
    /// holder's session lease.
    pub fn lock_key(&self, key: &str) -> Vec<u8> {
        self.inner.key(b"l/", key)
    }

    /// The etcd key whose `version` is the fence of `key`'s current (or last) grant. It is never
    /// deleted, so fences never go back; deleting it by hand restarts the key's fences at 1.
    pub fn fence_key(&self, key: &str) -> Vec<u8> {
        self.inner.key(b"f/", key)
    }

    /// How many lease keepalives this store has sent. Renewals of many keys share keepalives,
    /// so this grows with time and round trips, not with the number of held keys; for
    /// diagnostics and tests.
    pub fn keepalives_sent(&self) -> u64 {
        self.inner.keepalives.load(Ordering::Relaxed)
    }

    /// How much longer, from now, this store knows the session lease that covers grants with
    /// `lease` to live on the server: the send time of the last keepalive (or of the grant) that
    /// etcd confirmed with an answer of its own, plus the lease's TTL, minus now. `None` when no
    /// live session exists for that TTL. For diagnostics and tests: a renew returns `true` only
    /// while this covers its call time + `lease`.
    pub async fn session_cover(&self, lease: Duration) -> Option<Duration> {
        let session = self
            .inner
            .sessions
            .lock()
            .await
            .get(&ttl_secs(lease))
            .cloned()?;
        session.cover()
    }

    /// Revokes this store's session leases: every key it holds is released at once. Use it on
    /// shutdown; grants after it start new sessions.
    ///
    /// # Errors
    ///
    /// The first failed revoke; the others are still attempted.
    pub async fn revoke_sessions(&self) -> Result<(), StoreError> {
        let sessions: Vec<_> = self.inner.sessions.lock().await.drain().collect();
        let mut first = Ok(());
        for (_, s) in sessions {
            s.mark_lost();
            let id = s.id;
            let r = self
                .etcd()
                .call(|mut c| async move { c.lease_revoke(id).await })
                .await;
            if let Err(f) = r {
                if first.is_ok() && !f.is_lease_not_found() {
                    first = Err(f.into_store("revoking a session lease"));
                }
            }
        }
        self.grants().held().clear();
        first
    }

    async fn session(&self, lease: Duration) -> Result<Arc<Session>, StoreError> {
        let secs = ttl_secs(lease);
        let mut sessions = self.inner.sessions.lock().await;
        if let Some(s) = sessions.get(&secs) {
            if !s.is_lost() {
                return Ok(s.clone());
            }
        }
        let sent = BootClock.now();
        let what = format!("granting a {secs} s etcd lease");
        let resp = self
            .etcd()
            .call(|mut c| async move { c.lease_grant(secs, None).await })
            .await
            .map_err(|f| f.into_store(&what))?;
        if resp.ttl() < secs {
            let id = resp.id();
            let _ = self
                .etcd()
                .call(|mut c| async move { c.lease_revoke(id).await })
                .await;
            return Err(StoreError::permanent(
                NAME,
                format!(
                    "etcd granted a {} s lease where {secs} s was asked for: the lock's deadline \
                     would outlive the key",
                    resp.ttl()
                ),
            ));
        }
        // A larger TTL than asked (the server's minimum) only makes the key outlive the lock's
        // own deadline, which is safe; renewals account for it.
        let session = Arc::new(Session::new(
            resp.id(),
            Duration::from_secs(resp.ttl().unsigned_abs()),
            sent,
            Arc::downgrade(&self.inner.grants),
            self.inner.keepalives.clone(),
        ));
        debug!(
            lease_id = session.id,
            ttl = resp.ttl(),
            "new etcd session lease"
        );
        sessions.insert(secs, session.clone());
        Ok(session)
    }

    async fn live_session(&self, id: i64) -> bool {
        self.inner
            .sessions
            .lock()
            .await
            .values()
            .any(|s| s.id == id && !s.is_lost())
    }

    /// Deletes `key` if `holder` holds it under any fence (a zero-lease `try_lock`).
    async fn release_any(&self, key: &str, holder: &str) -> Result<bool, StoreError> {
        let lock = self.lock_key(key);
        let txn = Txn::new()
            .when([Compare::value(lock.clone(), CompareOp::Equal, holder)])
            .and_then([TxnOp::delete(lock.clone(), None)]);
        let r = self
            .etcd()
            .txn(txn)
            .await
            .map_err(|f| f.into_store(&format!("release of `{}`", key.escape_debug())))?;
        if r.succeeded() {
            self.grants().held().remove(&slot(&lock, holder.as_bytes()));
        }
        Ok(r.succeeded())
    }

    fn found(key: &str, r: &TxnResponse) -> Result<Found, StoreError> {
        let ops = r.op_responses();
        if r.succeeded() {
            let prev = match ops.first() {
                Some(TxnOpResponse::Put(p)) => p.prev_key().map_or(0, |kv| kv.version()),
                _ => return Err(StoreError::permanent(NAME, "unexpected acquire reply")),
            };
            return Ok(Found::Granted(prev + 1));
        }
        let (lock, counter) = match (ops.first(), ops.get(1)) {
            (Some(TxnOpResponse::Get(l)), Some(TxnOpResponse::Get(c))) => {
                (l.kvs().first().cloned(), c.kvs().first().cloned())
            }
            _ => return Err(StoreError::permanent(NAME, "unexpected acquire reply")),
        };
        let Some(lock) = lock else {
            return Err(StoreError::permanent(NAME, "unexpected acquire reply"));
        };
        let Some(counter) = counter else {
            return Err(StoreError::new(
                lease_core::StoreErrorKind::FenceRegressed,
                NAME,
                format!(
                    "the fence counter of `{}` is gone while the key is held (deleted by hand?)",
                    key.escape_debug()
                ),
            ));
        };
        Ok(Found::Held {
            holder: lock.value().to_vec(),
            lease: lock.lease(),
            fence: counter.version(),
        })
    }

    /// Moves `holder`'s grant of `lock` (with `fence`) onto `lease_id`. `Ok(false)` when the
    /// grant is not there any more.
    async fn move_grant(
        &self,
        lock: &[u8],
        counter: &[u8],
        holder: &str,
        fence: i64,
        lease_id: i64,
    ) -> Result<bool, Failure> {
        let txn = Txn::new()
            .when([
                Compare::value(lock.to_vec(), CompareOp::Equal, holder),
                Compare::version(counter.to_vec(), CompareOp::Equal, fence),
            ])
            .and_then([TxnOp::put(
                lock.to_vec(),
                holder,
                Some(PutOptions::new().with_lease(lease_id)),
            )]);
        Ok(self.etcd().txn(txn).await?.succeeded())
    }

    /// A grant of `holder`'s own (with `fence`) found on lease `on`: moved onto `session` if
    /// that is another lease. `false`: it is gone, or `session` lapsed (start over).
    #[allow(clippy::too_many_arguments)]
    async fn regrant_here(
        &self,
        key: &str,
        holder: &str,
        fence: i64,
        on: i64,
        session: &Session,
        generation: u64,
        what: &str,
    ) -> Result<bool, StoreError> {
        if on == session.id {
            return Ok(true);
        }
        let (lock, counter) = (self.lock_key(key), self.fence_key(key));
        match self
            .move_grant(&lock, &counter, holder, fence, session.id)
            .await
        {
            Ok(true) => Ok(true),
            Ok(false) => {
                self.grants().forget(&lock, holder.as_bytes(), generation);
                Ok(false)
            }
            Err(f) if f.is_lease_not_found() => {
                session.mark_lost();
                Ok(false)
            }
            Err(f) => Err(f.into_store(what)),
        }
    }

    /// Tracks an acquire before it is sent ([`Grants::track_acquire`]): if the answer is lost,
    /// etcd may still apply it, and the sweep must then find the key.
    async fn track_acquire(
        &self,
        lock: &[u8],
        holder: &str,
        valid_until: Duration,
        session: i64,
        what: &str,
    ) -> Result<u64, StoreError> {
        self.grants()
            .track_acquire(lock, holder, valid_until, session)
            .await
            .map_err(|e| StoreError::new(e.kind(), NAME, format!("{what}: {}", e.message())))
    }

    /// The end of every grant: records its fence for the sweep (it stays tracked even if the
    /// keepalive failed: should the caller never come back for it, the sweep deletes it once its
    /// lease has passed), then answers once the keepalive beside it (`fresh`) confirmed that the
    /// session covers the lease. `Ok(None)`: the session lapsed under the grant; retry on a new
    /// one.
    #[allow(clippy::too_many_arguments)]
    fn finish_grant(
        &self,
        key: &str,
        holder: &str,
        session: &Session,
        valid_until: Duration,
        fence: i64,
        fresh: Result<bool, StoreError>,
        what: &str,
    ) -> Result<Option<Fence>, StoreError> {
        let lock = self.lock_key(key);
        if !self
            .grants()
            .confirm_acquire(&lock, holder, session.id, valid_until, fence)
        {
            return Err(StoreError::transient(
                NAME,
                format!("{what}: the answer came after the lease had passed"),
            ));
        }
        match fresh {
            Ok(true) => {
                debug!(key, fence, lease_id = session.id, "granted");
                Ok(Some(to_fence(key, fence)?))
            }
            Ok(false) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn etcd(&self) -> &Etcd {
        &self.inner.etcd
    }

    fn grants(&self) -> &Grants {
        &self.inner.grants
    }
}

impl Inner {
    fn key(&self, kind: &[u8], key: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + kind.len() + key.len());
        k.extend_from_slice(&self.prefix);
        k.extend_from_slice(kind);
        k.extend_from_slice(key.as_bytes());
        k
    }
}

/// The time left on a lock key's lease from etcd's `LeaseTimeToLive` answer: etcd reports whole
/// seconds rounded down (the lease expires in under TTL + 1 s), so this is TTL + 1 s, at most the
/// granted TTL: never below the truth, and at most one second above it. `None` when the lease has
/// expired (TTL < 0: etcd is deleting its keys).
fn time_left(ttl: i64, granted_ttl: i64) -> Option<Duration> {
    let ttl = u64::try_from(ttl).ok()?;
    let granted = u64::try_from(granted_ttl).unwrap_or(0).max(1);
    Some(Duration::from_secs((ttl + 1).min(granted)))
}

/// The counter's fence, or `None` when there is no counter: then the key must not exist either
/// (the counter is put before the first grant and never deleted).
fn counter_fence(
    key: &str,
    lock: Option<&KeyValue>,
    counter: Option<&KeyValue>,
) -> Result<Option<Fence>, StoreError> {
    match (lock, counter) {
        (_, Some(c)) => to_fence(key, c.version()).map(Some),
        (None, None) => Ok(None),
        (Some(_), None) => Err(StoreError::new(
            lease_core::StoreErrorKind::FenceRegressed,
            NAME,
            format!(
                "the fence counter of `{}` is gone while the key is held (deleted by hand?)",
                key.escape_debug()
            ),
        )),
    }
}

impl LeaseStore for EtcdStore {
    async fn try_lock(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
    ) -> Result<Option<Fence>, StoreError> {
        validate(NAME, key, holder)?;
        if lease.is_zero() {
            if self.inner.queued {
                self.release_any_queued(key, holder).await?;
            } else {
                self.release_any(key, holder).await?;
            }
            return Ok(None);
        }
        if self.inner.queued {
            return Ok(match self.acquire_queued(lease, key, holder, None).await? {
                Enqueued::Granted(f) => Some(f),
                _ => None,
            });
        }
        let what = format!("acquire of `{}`", key.escape_debug());
        let (lock, counter) = (self.lock_key(key), self.fence_key(key));
        let call = BootClock.now();
        for _ in 0..3 {
            let session = self.session(lease).await?;
            // The key lives until the session lease's expiry, which is at least the send time of
            // its last keepalive + its TTL; that must reach now + lease.
            let need = call.saturating_sub(session.ttl.saturating_sub(lease));
            let txn = Txn::new()
                .when([Compare::create_revision(lock.clone(), CompareOp::Equal, 0)])
                .and_then([
                    TxnOp::put(counter.clone(), "", Some(PutOptions::new().with_prev_key())),
                    TxnOp::put(
                        lock.clone(),
                        holder,
                        Some(PutOptions::new().with_lease(session.id)),
                    ),
                ])
                .or_else([
                    TxnOp::get(lock.clone(), None),
                    TxnOp::get(counter.clone(), None),
                ]);
            // Tracked before it is sent: if the answer is lost, etcd may still apply it, and
            // the sweep must then find the key (and delete it once its lease has passed).
            let generation = self
                .track_acquire(&lock, holder, call + lease, session.id, &what)
                .await?;
            // The keepalive runs beside the transaction, so an acquire costs one round trip.
            let (res, fresh) = tokio::join!(self.etcd().txn(txn), session.ensure_fresh(need));
            let res = match res {
                Err(f) if f.is_lease_not_found() => {
                    session.mark_lost();
                    continue;
                }
                // Outcome unknown: the entry stays, as a grant that may exist.
                Err(f) => return Err(f.into_store(&what)),
                Ok(r) => r,
            };
            let fence = match Self::found(key, &res)? {
                Found::Granted(f) => f,
                Found::Held {
                    holder: h,
                    lease: on,
                    fence,
                } if h == holder.as_bytes() => {
                    // Our grant on another lease (another TTL, or a lapsed session whose keys
                    // etcd has not deleted yet): a re-grant moves it onto this one.
                    if !self
                        .regrant_here(key, holder, fence, on, &session, generation, &what)
                        .await?
                    {
                        continue;
                    }
                    fence
                }
                Found::Held { .. } => {
                    self.grants().forget(&lock, holder.as_bytes(), generation);
                    return Ok(None);
                }
            };
            match self.finish_grant(key, holder, &session, call + lease, fence, fresh, &what)? {
                Some(f) => return Ok(Some(f)),
                // The session lapsed under the grant: retry on a new one.
                None => continue,
            }
        }
        Err(StoreError::transient(
            NAME,
            format!("{what}: the session lease lapsed three times in a row"),
        ))
    }

    async fn renew(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
        fence: Fence,
    ) -> Result<bool, StoreError> {
        validate(NAME, key, holder)?;
        let what = format!("renewal of `{}`", key.escape_debug());
        let (lock, counter) = (self.lock_key(key), self.fence_key(key));
        // Above i64::MAX: never handed out, so it matches no lease.
        let Some(f) = fence.to_i64() else {
            return Ok(false);
        };
        let call = BootClock.now();
        // A renew extends a live lease only. Once the grant's lease has passed, the key belongs
        // to the sweep (which deletes it before the next keepalive), even if etcd still has it:
        // the holder must acquire again.
        let tracked = {
            let held = self.grants().held();
            match held.get(&slot(&lock, holder.as_bytes())) {
                Some(h) if h.fence == Some(f) => {
                    if h.doomed || h.valid_until <= call {
                        debug!(key, fence = f, "renew after the lease passed: lost");
                        return Ok(false);
                    }
                    Some(h.generation)
                }
                _ => None,
            }
        };
        let session = self.session(lease).await?;
        let need = call.saturating_sub(session.ttl.saturating_sub(lease));
        let txn = Txn::new()
            .when([
                Compare::value(lock.clone(), CompareOp::Equal, holder),
                Compare::version(counter.clone(), CompareOp::Equal, f),
            ])
            .and_then(self.renew_ops(key));
        let (res, fresh) = tokio::join!(self.etcd().txn(txn), session.ensure_fresh(need));
        let untrack = || {
            let mut held = self.grants().held();
            let slot = slot(&lock, holder.as_bytes());
            if held.get(&slot).is_some_and(|h| h.fence == Some(f)) {
                held.remove(&slot);
            }
        };
        let res = res.map_err(|e| e.into_store(&what))?;
        let on = match res.op_responses().first() {
            Some(TxnOpResponse::Get(g)) if res.succeeded() => g.kvs().first().map(|kv| kv.lease()),
            _ => None,
        };
        if self.inner.queued && res.succeeded() {
            self.remember_renewed_head(&lock, f, &res);
        }
        let Some(on) = on else {
            untrack();
            return Ok(false);
        };
        if on != session.id {
            // The grant is on another lease of ours (another TTL): move it. A lapsed lease is
            // a loss even if etcd has not deleted its keys yet.
            if !self.live_session(on).await {
                untrack();
                return Ok(false);
            }
            match self
                .move_grant(&lock, &counter, holder, f, session.id)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    untrack();
                    return Ok(false);
                }
                Err(e) if e.is_lease_not_found() => {
                    session.mark_lost();
                    untrack();
                    return Ok(false);
                }
                Err(e) => return Err(e.into_store(&what)),
            }
        }
        match fresh {
            Ok(true) => {
                // Extend the tracked grant, unless the sweep took it meanwhile (its lease passed
                // while this renew was in flight, and its delete may land after our read).
                let mut held = self.grants().held();
                let at = slot(&lock, holder.as_bytes());
                let current = held.get_mut(&at);
                match (current, tracked) {
                    (Some(h), Some(g)) if h.generation == g && !h.doomed => {
                        h.valid_until = h.valid_until.max(call + lease);
                        h.session = session.id;
                        Ok(true)
                    }
                    (Some(h), None) if !h.doomed && h.fence.is_none() => {
                        // A concurrent acquire of the same holder, still without its answer:
                        // it records the fence; the key must not be swept before our lease ends.
                        h.valid_until = h.valid_until.max(call + lease);
                        Ok(true)
                    }
                    (None, None) => {
                        // Not tracked (the entry was cleared while the key stayed ours): track
                        // it, so the sweep covers it.
                        let generation = self.grants().next_generation();
                        held.insert(
                            at,
                            Held {
                                holder: holder.as_bytes().to_vec(),
                                fence: Some(f),
                                valid_until: call + lease,
                                session: session.id,
                                doomed: false,
                                generation,
                                waiter: None,
                            },
                        );
                        Ok(true)
                    }
                    // Swept, released or re-acquired meanwhile: this grant may be gone.
                    _ => {
                        debug!(key, fence = f, "grant taken during the renew: lost");
                        Ok(false)
                    }
                }
            }
            Ok(false) => {
                untrack();
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    async fn release(&self, key: &str, holder: &str, fence: Fence) -> Result<bool, StoreError> {
        validate(NAME, key, holder)?;
        let (lock, counter) = (self.lock_key(key), self.fence_key(key));
        // Above i64::MAX: never handed out, so it matches no lease.
        let Some(f) = fence.to_i64() else {
            return Ok(false);
        };
        if self.inner.queued {
            return self.release_queued(key, holder, f).await;
        }
        let txn = Txn::new()
            .when([
                Compare::value(lock.clone(), CompareOp::Equal, holder),
                Compare::version(counter, CompareOp::Equal, f),
            ])
            .and_then([TxnOp::delete(lock.clone(), None)]);
        let r = self
            .etcd()
            .txn(txn)
            .await
            .map_err(|e| e.into_store(&format!("release of `{}`", key.escape_debug())))?;
        let mut held = self.grants().held();
        let slot = slot(&lock, holder.as_bytes());
        if held.get(&slot).is_some_and(|h| h.fence == Some(f)) {
            held.remove(&slot);
        }
        Ok(r.succeeded())
    }

    async fn wait_for_change(&self, key: &str, max_wait: Duration) {
        if validate(NAME, key, "-").is_err() {
            return;
        }
        let lock = self.lock_key(key);
        let watch = async {
            loop {
                match self.etcd().watch_for_change(lock.clone()).await {
                    Ok(()) => return,
                    Err(e) => {
                        // A dead member, a lost leader, an expired token: watch again (likely
                        // on another member) at a modest pace, so a broken watch costs a little
                        // latency, never a busy loop.
                        debug!(error = %e, "watch failed; watching again");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        };
        let _ = tokio::time::timeout(max_wait, watch).await;
    }

    /// See the [crate docs](crate) ("Queued grants"); without queued grants, `try_lock`.
    async fn enqueue(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
        patience: Duration,
    ) -> Result<Enqueued, StoreError> {
        validate(NAME, key, holder)?;
        if !self.inner.queued || lease.is_zero() {
            return Ok(Enqueued::from_try_lock(
                self.try_lock(lease, key, holder).await?,
            ));
        }
        self.acquire_queued(lease, key, holder, Some(patience))
            .await
    }

    /// See the [crate docs](crate) ("Queued grants"); without queued grants,
    /// [`wait_for_change`](LeaseStore::wait_for_change), then `None`.
    async fn wait_for_grant(&self, key: &str, holder: &str, max_wait: Duration) -> Option<Fence> {
        if !self.inner.queued {
            self.wait_for_change(key, max_wait).await;
            return None;
        }
        if validate(NAME, key, holder).is_err() {
            return None;
        }
        self.wait_for_grant_queued(key, holder, max_wait).await
    }

    /// See the [crate docs](crate) ("Queued grants"); without queued grants, `false`.
    async fn leave_queue(&self, key: &str, holder: &str) -> Result<bool, StoreError> {
        validate(NAME, key, holder)?;
        if !self.inner.queued {
            return Ok(false);
        }
        self.leave_queue_queued(key, holder).await
    }

    /// Reads the lock key and the fence counter in one read-only transaction (one revision),
    /// then the time left on the lock key's etcd lease (`LeaseTimeToLive`, in etcd's whole
    /// seconds; see below). The key is held while the lock key exists and its lease has not
    /// expired: exactly when an acquisition would be refused. The fence is the counter's
    /// version, also while the key is free.
    ///
    /// The time left is that of the session lease the key is attached to, which etcd renews for
    /// all the keys of the holder's store: how long etcd keeps the key if no keepalive comes.
    /// etcd reports it rounded down to whole seconds; this reports the next whole second (capped
    /// at the lease's granted TTL), so it is at most one second above the truth and never zero
    /// for a held key. The second request may see the lease a little later than the first saw
    /// the key; a lease that expired in between shows the key free.
    async fn inspect(&self, key: &str) -> Result<KeyState, StoreError> {
        validate_key(NAME, key)?;
        let what = format!("inspect of `{}`", key.escape_debug());
        let (lock, counter) = (self.lock_key(key), self.fence_key(key));
        let txn = Txn::new().and_then([TxnOp::get(lock, None), TxnOp::get(counter, None)]);
        let r = self
            .etcd()
            .txn(txn)
            .await
            .map_err(|f| f.into_store(&what))?;
        let got = |i: usize| match r.op_responses().get(i) {
            Some(TxnOpResponse::Get(g)) => Ok(g.kvs().first().cloned()),
            _ => Err(StoreError::permanent(
                NAME,
                format!("{what}: unexpected reply"),
            )),
        };
        let (lock, counter) = (got(0)?, got(1)?);
        let Some(fence) = counter_fence(key, lock.as_ref(), counter.as_ref())? else {
            return Ok(KeyState::free(None));
        };
        let Some(lock) = lock else {
            return Ok(KeyState::free(Some(fence)));
        };
        let holder = String::from_utf8_lossy(lock.value()).into_owned();
        let lease = lock.lease();
        if lease == 0 {
            // Not written by this store (its grants are always on a session lease): a key
            // without a lease never expires.
            return Ok(KeyState::held(holder, fence, Duration::MAX));
        }
        let ttl = self
            .etcd()
            .call(|mut c| async move { c.lease_time_to_live(lease, None).await })
            .await;
        match ttl {
            Ok(t) => Ok(match time_left(t.ttl(), t.granted_ttl()) {
                Some(left) => KeyState::held(holder, fence, left),
                None => KeyState::free(Some(fence)),
            }),
            Err(f) if f.is_lease_not_found() => Ok(KeyState::free(Some(fence))),
            Err(f) => Err(f.into_store(&what)),
        }
    }

    /// One transaction: `If Version(counter) > 0 Then Delete(lock) (returning it), Put(counter)
    /// (returning its previous version)`. Deleting the lock key frees the key (and wakes its
    /// watchers, as a release does); the put raises the counter's version, which is the fence,
    /// by one: that version is the break's fence, handed to nobody, and the next grant's put
    /// makes it one higher again. A key whose counter does not exist was never granted: nothing
    /// is written and the answer is `None`.
    ///
    /// The old holder's renew and release compare the lock key's value (the holder) and the
    /// counter's version (the fence), so both fail, whichever store and session they run on: a
    /// renew answers `false` and forgets the grant, and no keepalive of its session can bring
    /// a deleted key back. A store whose grant was broken also stops tracking it for its sweep
    /// as soon as the holder's renew or release fails (or its lease passes, when the sweep's
    /// compared delete finds nothing to delete).
    ///
    /// `was_live` says whether etcd still had the lock key, i.e. its session lease had not been
    /// revoked yet (etcd deletes the keys of an expired lease up to about half a second late).
    async fn break_lock(&self, key: &str) -> Result<Option<BrokenLock>, StoreError> {
        validate_key(NAME, key)?;
        let what = format!("break of `{}`", key.escape_debug());
        let (lock, counter) = (self.lock_key(key), self.fence_key(key));
        let txn = Txn::new()
            .when([Compare::version(counter.clone(), CompareOp::Greater, 0)])
            .and_then([
                TxnOp::delete(lock, Some(DeleteOptions::new().with_prev_key())),
                TxnOp::put(counter, "", Some(PutOptions::new().with_prev_key())),
            ]);
        let r = self
            .etcd()
            .txn(txn)
            .await
            .map_err(|f| f.into_store(&what))?;
        if !r.succeeded() {
            return Ok(None);
        }
        let unexpected = || StoreError::permanent(NAME, format!("{what}: unexpected reply"));
        let (previous, prev_version) = match r.op_responses().as_slice() {
            [TxnOpResponse::Delete(d), TxnOpResponse::Put(p)] => (
                d.prev_kvs().first().cloned(),
                p.prev_key().map(KeyValue::version).ok_or_else(unexpected)?,
            ),
            _ => return Err(unexpected()),
        };
        let fence = to_fence(key, prev_version.saturating_add(1))?;
        debug!(
            key,
            fence = fence.get(),
            was_live = previous.is_some(),
            "lock broken"
        );
        Ok(Some(BrokenLock::new(
            fence,
            previous
                .as_ref()
                .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
            previous.is_some(),
        )))
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(NAME)
            .with_leases(Duration::from_secs(1), Duration::from_secs(2))
            .with_notifications(true)
            .with_durable_fences(true)
            .with_stable_retake(false)
            .with_batched_renewals(true)
            .with_queued_grants(self.inner.queued)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_left_rounds_etcds_whole_seconds_up_within_the_granted_ttl() {
        let s = Duration::from_secs;
        // Just kept alive: etcd says 1 (1.99 s left) of 2.
        assert_eq!(time_left(1, 2), Some(s(2)));
        assert_eq!(time_left(2, 2), Some(s(2)));
        // The last second: never zero for a held key.
        assert_eq!(time_left(0, 2), Some(s(1)));
        assert_eq!(time_left(29, 30), Some(s(30)));
        // Expired: etcd is deleting the keys.
        assert_eq!(time_left(-1, 2), None);
        assert_eq!(time_left(0, 0), Some(s(1)));
    }
}
