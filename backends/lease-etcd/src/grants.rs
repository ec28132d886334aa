//! The grants a store made (or may have made) on its session leases, tracked by key and holder
//! with the end of the lease each holder asked for, and the sweep that deletes those whose
//! holders stopped renewing before a keepalive could stretch them.
//!
//! Keys share a session lease, so the renewals of other keys would keep alive a key whose holder
//! stopped renewing (without a release): the session's keepalive task runs the sweep before each
//! keepalive. The crate docs ("Keys whose holders stop renewing") give the rules it keeps.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use lease_core::{BootClock, Clock, StoreError};
use tracing::debug;

use crate::client::Etcd;
use crate::error::NAME;

/// `(lock key, holder)`: the key of [`Grants::held`].
pub(crate) type Slot = (Vec<u8>, Vec<u8>);

pub(crate) fn slot(lock: &[u8], holder: &[u8]) -> Slot {
    (lock.to_vec(), holder.to_vec())
}

/// A grant covered by one of this store's session leases, or an acquire that may have made one.
///
/// An entry is made *before* the acquire is sent and removed only once it is certain that the
/// key is not (or no longer) this grant on the session lease: a release or renew that etcd
/// answered, or a delete by the sweep that etcd confirmed. So no key this store put on a session
/// lease is ever forgotten while the lease lives, whatever happened to the calls.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    pub(crate) holder: Vec<u8>,
    /// `None` while the acquire has no answer (in flight, or timed out: etcd may still have
    /// applied it); the sweep then reads the key to learn it.
    pub(crate) fence: Option<i64>,
    /// `BootClock` time until which the holder asked for the key (send time of its last
    /// acquire or renew + its lease). A keepalive after this would stretch the key past what
    /// its holder asked for, so the key is deleted instead (see [`Grants::sweep`]).
    pub(crate) valid_until: Duration,
    pub(crate) session: i64,
    /// Set when the sweep starts deleting the grant. From then on it is never extended: a renew
    /// reports the loss, and an acquire by the same holder waits for the delete to be confirmed,
    /// so a delete that lands late can never remove a grant reported after it.
    pub(crate) doomed: bool,
    /// Tells this entry from later ones of the same key.
    pub(crate) generation: u64,
    /// Set while `holder` is queued for the key through this store (queued grants): its waiter
    /// key, which a release may turn into a grant on `session` at any moment.
    pub(crate) waiter: Option<Waiter>,
}

/// A waiter key of this store, and until when its holder wants it (the patience of its last
/// `enqueue`, on this process's boot clock).
#[derive(Debug, Clone)]
pub(crate) struct Waiter {
    pub(crate) key: Vec<u8>,
    pub(crate) live_until: Duration,
}

/// The grants of one store, shared by the store and the keepalive tasks of its sessions.
pub(crate) struct Grants {
    etcd: Etcd,
    /// The store's key prefix: the sweep finds a lock key's fence counter beside it.
    prefix: Vec<u8>,
    /// The grants this store made (or may have made) and still covers with a session lease, by
    /// etcd lock key and holder: several holders may try one key through one store at once, and
    /// each attempt must be tracked until its outcome is known.
    held: Mutex<HashMap<Slot, Held>>,
    /// The last [`Held::generation`] handed out.
    generations: AtomicU64,
}

impl Grants {
    pub(crate) fn new(etcd: Etcd, prefix: Vec<u8>) -> Self {
        Self {
            etcd,
            prefix,
            held: Mutex::new(HashMap::new()),
            generations: AtomicU64::new(0),
        }
    }

    /// The connection the sweep deletes through, which the sessions' keepalives use too.
    pub(crate) fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    pub(crate) fn held(&self) -> MutexGuard<'_, HashMap<Slot, Held>> {
        // Every update is one insert or remove, so a poisoned map is still consistent.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets every grant on the session lease `session`, which lapsed or was revoked: etcd
    /// deletes every key of the lease with it, and a grant sent on it can no longer apply.
    pub(crate) fn drop_session(&self, session: i64) {
        self.held().retain(|_, h| h.session != session);
    }

    /// Deletes the grants of `session` whose holders stopped renewing them (their
    /// `valid_until` passed), so that a keepalive sent for other keys does not keep them alive.
    /// Each delete compares holder, fence and lease, so a newer grant is never touched. A grant
    /// is forgotten only once its delete is confirmed; until then every sweep tries again.
    ///
    /// # Errors
    ///
    /// The first delete that etcd did not confirm: the caller must not send a keepalive then.
    pub(crate) async fn sweep(&self, session: i64) -> Result<(), StoreError> {
        let now = BootClock.now();
        let (stale, impatient) = {
            let mut held = self.held();
            let mut stale = Vec::new();
            let mut impatient = Vec::new();
            for ((lock, _), h) in held.iter_mut().filter(|(_, h)| h.session == session) {
                if h.doomed || h.valid_until <= now {
                    h.doomed = true;
                    stale.push((lock.clone(), h.clone()));
                } else if h.waiter.as_ref().is_some_and(|w| w.live_until <= now) {
                    impatient.push(h.clone());
                }
            }
            (stale, impatient)
        };
        let mut first = None;
        for (lock, h) in stale {
            if let Err(e) = self.delete_abandoned(&lock, &h).await {
                debug!(error = %e, "could not delete a grant whose lease passed; will retry");
                first.get_or_insert(e);
            }
        }
        for h in impatient {
            if let Err(e) = self.delete_impatient(&h).await {
                debug!(error = %e, "could not delete a waiter whose patience ran out; will retry");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Deletes the waiter key of `h`, whose patience ran out: no release can grant it the key
    /// from then on. A grant made before stays tracked, and lapses with its lease.
    async fn delete_impatient(&self, h: &Held) -> Result<(), StoreError> {
        let Some(w) = &h.waiter else { return Ok(()) };
        let txn = Txn::new().and_then([TxnOp::delete(w.key.clone(), None)]);
        self.etcd
            .txn(txn)
            .await
            .map_err(|f| f.into_store("deleting a waiter whose patience ran out"))?;
        let mut held = self.held();
        if let Some(e) = held
            .values_mut()
            .find(|e| e.generation == h.generation && e.waiter.is_some())
        {
            e.waiter = None;
        }
        Ok(())
    }

    /// Deletes the grant `h` of `lock` if it is still on its session lease, and forgets it once
    /// that is certain.
    async fn delete_abandoned(&self, lock: &[u8], h: &Held) -> Result<(), StoreError> {
        let what = "deleting a grant whose lease passed";
        // The counter key sits beside the lock key: same prefix, `f/` for `l/`.
        let Some(counter) = counter_of(&self.prefix, lock) else {
            self.forget(lock, &h.holder, h.generation);
            return Ok(());
        };
        if let (None, Some(w)) = (h.fence, &h.waiter) {
            // A waiter whose grant (if a release made one) lapses: delete that grant and the
            // waiter key in one step, so no release can grant it after this.
            let txn = Txn::new()
                .when([
                    Compare::value(lock.to_vec(), CompareOp::Equal, h.holder.clone()),
                    Compare::lease(lock.to_vec(), CompareOp::Equal, h.session),
                ])
                .and_then([
                    TxnOp::delete(lock.to_vec(), None),
                    TxnOp::delete(w.key.clone(), None),
                ])
                .or_else([TxnOp::delete(w.key.clone(), None)]);
            self.etcd.txn(txn).await.map_err(|f| f.into_store(what))?;
            self.forget(lock, &h.holder, h.generation);
            return Ok(());
        }
        let fence = match h.fence {
            Some(f) => f,
            None => {
                // An acquire without an answer: read what it left. A read that lands late
                // changes nothing, and the delete below names the grant exactly.
                let txn = Txn::new().and_then([
                    TxnOp::get(lock.to_vec(), None),
                    TxnOp::get(counter.clone(), None),
                ]);
                let r = self.etcd.txn(txn).await.map_err(|f| f.into_store(what))?;
                let first = |i: usize| match r.op_responses().get(i) {
                    Some(TxnOpResponse::Get(g)) => g.kvs().first().cloned(),
                    _ => None,
                };
                match (first(0), first(1)) {
                    (Some(l), Some(c)) if l.value() == h.holder && l.lease() == h.session => {
                        c.version()
                    }
                    _ => {
                        self.forget(lock, &h.holder, h.generation);
                        return Ok(());
                    }
                }
            }
        };
        let current = self
            .held()
            .get(&slot(lock, &h.holder))
            .map(|e| e.generation);
        if current != Some(h.generation) {
            // Settled meanwhile (by an acquire of the same holder that deleted it first).
            return Ok(());
        }
        let txn = Txn::new()
            .when([
                Compare::value(lock.to_vec(), CompareOp::Equal, h.holder.clone()),
                Compare::version(counter, CompareOp::Equal, fence),
                Compare::lease(lock.to_vec(), CompareOp::Equal, h.session),
            ])
            .and_then([TxnOp::delete(lock.to_vec(), None)]);
        self.etcd.txn(txn).await.map_err(|f| f.into_store(what))?;
        self.forget(lock, &h.holder, h.generation);
        Ok(())
    }

    /// Removes the entry of `holder` on `lock` if it is still the one of `generation`, unless
    /// the holder is queued through this store: then it stays, as the waiter it was.
    pub(crate) fn forget_unless_queued(&self, lock: &[u8], holder: &[u8], generation: u64) {
        let mut held = self.held();
        let slot = slot(lock, holder);
        if held
            .get(&slot)
            .is_some_and(|e| e.generation == generation && e.waiter.is_none())
        {
            held.remove(&slot);
        }
    }

    /// Removes the entry of `holder` on `lock` if it is still the one of `generation`.
    pub(crate) fn forget(&self, lock: &[u8], holder: &[u8], generation: u64) {
        let mut held = self.held();
        let slot = slot(lock, holder);
        if held.get(&slot).is_some_and(|e| e.generation == generation) {
            held.remove(&slot);
        }
    }

    pub(crate) fn next_generation(&self) -> u64 {
        self.generations.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Records, before the acquire is sent, that `holder` may get `lock` on `session` until
    /// `valid_until`. If the sweep is deleting an earlier grant of the key, that delete is
    /// finished first (it could otherwise land after, and remove, the grant this acquire is
    /// about to report).
    pub(crate) async fn track_acquire(
        &self,
        lock: &[u8],
        holder: &str,
        valid_until: Duration,
        session: i64,
    ) -> Result<u64, StoreError> {
        for _ in 0..3 {
            let doomed = {
                let mut held = self.held();
                let slot = slot(lock, holder.as_bytes());
                match held.get(&slot) {
                    Some(h) if h.doomed => h.clone(),
                    current => {
                        // A queued holder stays queued (its waiter key may still be granted)
                        // until its entry says otherwise.
                        let waiter = current.and_then(|h| h.waiter.clone());
                        let generation = self.next_generation();
                        held.insert(
                            slot,
                            Held {
                                holder: holder.as_bytes().to_vec(),
                                fence: None,
                                valid_until,
                                session,
                                doomed: false,
                                generation,
                                waiter,
                            },
                        );
                        return Ok(generation);
                    }
                }
            };
            self.delete_abandoned(lock, &doomed).await?;
            self.forget(lock, &doomed.holder, doomed.generation);
        }
        Err(StoreError::transient(
            NAME,
            "a grant whose lease passed is still being deleted",
        ))
    }

    /// Records the fence an acquire learnt. `false` when the sweep took the entry: the call
    /// took so long that its lease passed first. The grant then stays tracked as doomed, so the
    /// sweep deletes it whatever it found before.
    pub(crate) fn confirm_acquire(
        &self,
        lock: &[u8],
        holder: &str,
        session: i64,
        valid_until: Duration,
        fence: i64,
    ) -> bool {
        let mut held = self.held();
        let at = slot(lock, holder.as_bytes());
        match held.get_mut(&at) {
            Some(h) if !h.doomed => {
                // Ours, or a concurrent acquire's of the same holder: the same grant either way.
                h.fence = Some(fence);
                h.waiter = None;
                h.session = session;
                h.valid_until = h.valid_until.max(valid_until);
                true
            }
            Some(_) => false,
            None => {
                let generation = self.next_generation();
                held.insert(
                    at,
                    Held {
                        holder: holder.as_bytes().to_vec(),
                        fence: Some(fence),
                        valid_until,
                        session,
                        doomed: true,
                        generation,
                        waiter: None,
                    },
                );
                false
            }
        }
    }
}

impl Grants {
    /// Notes that `holder`, tracked as an acquire or a waiter of generation `generation`, is
    /// now queued under `key` until `live_until`.
    pub(crate) fn mark_waiter(
        &self,
        lock: &[u8],
        holder: &str,
        generation: u64,
        key: Vec<u8>,
        live_until: Duration,
    ) {
        if let Some(h) = self
            .held()
            .get_mut(&slot(lock, holder.as_bytes()))
            .filter(|h| h.generation == generation && !h.doomed)
        {
            h.waiter = Some(Waiter { key, live_until });
        }
    }

    /// Records the fence of a grant a release made to the waiter `holder`, seen by its watch.
    pub(crate) fn learned(&self, lock: &[u8], holder: &str, fence: i64) {
        if let Some(h) = self
            .held()
            .get_mut(&slot(lock, holder.as_bytes()))
            .filter(|h| !h.doomed && h.fence.is_none())
        {
            h.fence = Some(fence);
            h.waiter = None;
        }
    }

    /// Whether `key` is the waiter key of a waiter of this store whose patience ran out.
    pub(crate) fn is_impatient(&self, key: &[u8], now: Duration) -> bool {
        self.held().values().any(|h| {
            h.waiter
                .as_ref()
                .is_some_and(|w| w.key == key && w.live_until <= now)
        })
    }
}

fn counter_of(prefix: &[u8], lock: &[u8]) -> Option<Vec<u8>> {
    let rest = lock.strip_prefix(prefix)?.strip_prefix(b"l/")?;
    let mut k = prefix.to_vec();
    k.extend_from_slice(b"f/");
    k.extend_from_slice(rest);
    Some(k)
}
