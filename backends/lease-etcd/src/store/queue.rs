//! Queued grants ([`EtcdStoreBuilder::queued_grants`](crate::EtcdStoreBuilder::queued_grants)):
//! a waiter key per queued holder on its session lease, and the release that hands the key to
//! the oldest one in the same transaction. The [crate docs](crate) ("Queued grants") give the
//! protocol.

use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, KeyValue, PutOptions, SortOrder, SortTarget, Txn,
    TxnOp, TxnOpResponse, TxnResponse, WatchOptions,
};
use lease_core::{BootClock, Clock, Enqueued, Fence, StoreError};
use tracing::debug;

use super::{EtcdStore, to_fence};
use crate::client::Failure;
use crate::error::NAME;
use crate::grants::slot;

/// How many times a call starts over when the queue changed under it (a waiter left or its
/// session lapsed between the read of the head and the transaction).
const ROUNDS: usize = 16;

/// What a transaction's `Else` branch read: the lock key, the fence counter and the oldest
/// waiter, at the transaction's revision.
struct View {
    lock: Option<KeyValue>,
    counter: Option<KeyValue>,
    head: Option<KeyValue>,
}

impl View {
    /// Reads the `Get` answers at `at..at + 3` of `r`.
    fn of(r: &TxnResponse, at: usize, what: &str) -> Result<Self, StoreError> {
        let get = |i: usize| match r.op_responses().get(at + i) {
            Some(TxnOpResponse::Get(g)) => Ok(g.kvs().first().cloned()),
            _ => Err(StoreError::permanent(
                NAME,
                format!("{what}: unexpected reply"),
            )),
        };
        Ok(Self {
            lock: get(0)?,
            counter: get(1)?,
            head: get(2)?,
        })
    }

    /// The key's latest fence (the counter's version), if it was ever granted.
    fn fence(&self) -> Option<i64> {
        self.counter.as_ref().map(KeyValue::version)
    }

    fn held_by(&self, holder: &str) -> bool {
        self.lock
            .as_ref()
            .is_some_and(|l| l.value() == holder.as_bytes())
    }
}

/// The end of the range of keys that start with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// `If` no waiter key is queued under `queue` (a range compare: etcd compares an empty range
/// as one key with create revision 0).
fn queue_empty(queue: &[u8]) -> Compare {
    Compare::create_revision(queue.to_vec(), CompareOp::Equal, 0).with_range(prefix_end(queue))
}

/// Reads the oldest waiter key under `queue` (lowest create revision).
fn head_op(queue: &[u8]) -> TxnOp {
    TxnOp::get(
        queue.to_vec(),
        Some(
            GetOptions::new()
                .with_range(prefix_end(queue))
                .with_sort(SortTarget::Create, SortOrder::Ascend)
                .with_limit(1),
        ),
    )
}

/// The outcome of a handover attempt ([`EtcdStore::hand_over`]).
enum Handed {
    /// The head got the key with this fence; the next head then.
    Granted(i64, Option<KeyValue>),
    /// The compares failed: what the store holds now.
    Failed(View),
    /// The head's session lease is gone (its waiter key with it, or about to be).
    LeaseGone,
}

impl EtcdStore {
    /// The holders queued for `key` (stores with
    /// [`queued_grants`](crate::EtcdStoreBuilder::queued_grants)), oldest first: the values of
    /// its waiter keys by create revision. Entries whose session lease is gone are gone with
    /// it. For tests and diagnostics.
    ///
    /// # Errors
    ///
    /// An invalid key, or a failed read.
    pub async fn waiters(&self, key: &str) -> Result<Vec<String>, StoreError> {
        lease_core::input::validate_key(NAME, key)?;
        let queue = self.queue_prefix(key);
        let got = self
            .etcd()
            .call(|mut c| {
                let queue = queue.clone();
                async move {
                    c.get(
                        queue.clone(),
                        Some(
                            GetOptions::new()
                                .with_range(prefix_end(&queue))
                                .with_sort(SortTarget::Create, SortOrder::Ascend),
                        ),
                    )
                    .await
                }
            })
            .await
            .map_err(|f| f.into_store("reading a queue"))?;
        Ok(got
            .kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
            .collect())
    }

    /// `<prefix>q/<len>/<key>/`: the waiter keys of `key` start with this. The key's length in
    /// front keeps the queues of keys that are prefixes of one another apart.
    pub(super) fn queue_prefix(&self, key: &str) -> Vec<u8> {
        let mut q = self.inner.prefix.clone();
        q.extend_from_slice(format!("q/{}/", key.len()).as_bytes());
        q.extend_from_slice(key.as_bytes());
        q.push(b'/');
        q
    }

    /// `<queue prefix><session lease id, 16 hex digits>/<holder>`: one per holder and session.
    fn waiter_key(&self, key: &str, lease_id: i64, holder: &str) -> Vec<u8> {
        let mut w = self.queue_prefix(key);
        w.extend_from_slice(format!("{lease_id:016x}/").as_bytes());
        w.extend_from_slice(holder.as_bytes());
        w
    }

    /// The reads every `Else` branch of this module makes, in [`View`]'s order.
    fn view_ops(&self, key: &str) -> [TxnOp; 3] {
        [
            TxnOp::get(self.lock_key(key), None),
            TxnOp::get(self.fence_key(key), None),
            head_op(&self.queue_prefix(key)),
        ]
    }

    /// One transaction: if `when` holds and `head` is still queued, grant the key to `head`'s
    /// holder on `head`'s lease (fence + 1) and delete its waiter key.
    async fn hand_over(
        &self,
        key: &str,
        mut when: Vec<Compare>,
        head: &KeyValue,
        what: &str,
    ) -> Result<Handed, StoreError> {
        when.push(Compare::create_revision(
            head.key().to_vec(),
            CompareOp::Equal,
            head.create_revision(),
        ));
        let txn = Txn::new()
            .when(when)
            .and_then([
                TxnOp::put(
                    self.fence_key(key),
                    head.value().to_vec(),
                    Some(PutOptions::new().with_prev_key()),
                ),
                TxnOp::put(
                    self.lock_key(key),
                    head.value().to_vec(),
                    Some(PutOptions::new().with_lease(head.lease())),
                ),
                TxnOp::delete(head.key().to_vec(), None),
                // Reads in a transaction see its own writes: this is the next head.
                head_op(&self.queue_prefix(key)),
            ])
            .or_else(self.view_ops(key));
        let r = match self.etcd().txn(txn).await {
            Ok(r) => r,
            Err(f) if f.is_lease_not_found() => return Ok(Handed::LeaseGone),
            Err(f) => return Err(f.into_store(what)),
        };
        if !r.succeeded() {
            return Ok(Handed::Failed(View::of(&r, 0, what)?));
        }
        let prev = match r.op_responses().first() {
            Some(TxnOpResponse::Put(p)) => p.prev_key().map_or(0, KeyValue::version),
            _ => {
                return Err(StoreError::permanent(
                    NAME,
                    format!("{what}: unexpected reply"),
                ));
            }
        };
        debug!(
            key,
            fence = prev + 1,
            lease_id = head.lease(),
            "handed over"
        );
        let next = match r.op_responses().get(3) {
            Some(TxnOpResponse::Get(g)) => g.kvs().first().cloned(),
            _ => None,
        };
        Ok(Handed::Granted(prev + 1, next))
    }

    /// Deletes the waiter key `head` if it is still that entry: it is skipped (its session
    /// lease is gone, or it is a waiter of this store whose patience ran out).
    async fn skip(&self, head: &KeyValue, what: &str) -> Result<(), StoreError> {
        let txn = Txn::new()
            .when([Compare::create_revision(
                head.key().to_vec(),
                CompareOp::Equal,
                head.create_revision(),
            )])
            .and_then([TxnOp::delete(head.key().to_vec(), None)]);
        self.etcd().txn(txn).await.map_err(|f| f.into_store(what))?;
        Ok(())
    }

    /// Whether `head` is a waiter this store knows to be past its patience.
    fn impatient(&self, head: &KeyValue) -> bool {
        self.grants().is_impatient(head.key(), BootClock.now())
    }

    /// Release in a queued store: `If` holder and fence match, hand the key to the oldest
    /// waiter (or, with an empty queue, delete the lock key), in one transaction.
    pub(super) async fn release_queued(
        &self,
        key: &str,
        holder: &str,
        fence: i64,
    ) -> Result<bool, StoreError> {
        let what = format!("release of `{}`", key.escape_debug());
        let (lock, counter) = (self.lock_key(key), self.fence_key(key));
        let queue = self.queue_prefix(key);
        let own = || {
            vec![
                Compare::value(lock.clone(), CompareOp::Equal, holder),
                Compare::version(counter.clone(), CompareOp::Equal, fence),
            ]
        };
        // The head as last seen by this grant (at its handover or renewal), else from a
        // member-local read: a stale one only costs a failed compare.
        let mut head = match self.take_head(&lock, fence) {
            Some(head) => head,
            None => self.read_head_local(&queue, &what).await?,
        };
        let untrack = || {
            let mut held = self.grants().held();
            let at = slot(&lock, holder.as_bytes());
            if held.get(&at).is_some_and(|h| h.fence == Some(fence)) {
                held.remove(&at);
            }
        };
        for _ in 0..ROUNDS {
            let view = match head.take() {
                Some(h) if self.impatient(&h) => {
                    self.skip(&h, &what).await?;
                    None
                }
                Some(h) => match self.hand_over(key, own(), &h, &what).await? {
                    Handed::Granted(..) => {
                        untrack();
                        return Ok(true);
                    }
                    Handed::Failed(view) => Some(view),
                    Handed::LeaseGone => {
                        self.skip(&h, &what).await?;
                        None
                    }
                },
                None => {
                    let mut when = own();
                    when.push(queue_empty(&queue));
                    let txn = Txn::new()
                        .when(when)
                        .and_then([TxnOp::delete(lock.clone(), None)])
                        .or_else(self.view_ops(key));
                    let r = self
                        .etcd()
                        .txn(txn)
                        .await
                        .map_err(|f| f.into_store(&what))?;
                    if r.succeeded() {
                        untrack();
                        return Ok(true);
                    }
                    Some(View::of(&r, 0, &what)?)
                }
            };
            match view {
                Some(v) if !v.held_by(holder) || v.fence() != Some(fence) => {
                    untrack();
                    return Ok(false);
                }
                Some(v) => head = v.head,
                None => head = self.read_head(key, &what).await?,
            }
        }
        Err(StoreError::transient(
            NAME,
            format!("{what}: the queue kept changing"),
        ))
    }

    /// The oldest waiter under `queue`, by a member-local (serializable) read.
    async fn read_head_local(
        &self,
        queue: &[u8],
        what: &str,
    ) -> Result<Option<KeyValue>, StoreError> {
        let got = self
            .etcd()
            .call(|mut c| {
                let queue = queue.to_vec();
                async move {
                    let end = prefix_end(&queue);
                    c.get(
                        queue,
                        Some(
                            GetOptions::new()
                                .with_range(end)
                                .with_sort(SortTarget::Create, SortOrder::Ascend)
                                .with_limit(1)
                                .with_serializable(),
                        ),
                    )
                    .await
                }
            })
            .await
            .map_err(|f| f.into_store(what))?;
        Ok(got.kvs().first().cloned())
    }

    /// Notes the head of `lock`'s queue as the grant with `fence` last saw it, for its release.
    pub(super) fn remember_head(&self, lock: &[u8], fence: i64, head: Option<KeyValue>) {
        let mut heads = self.inner.heads.lock().unwrap_or_else(|e| e.into_inner());
        heads.insert(lock.to_vec(), (fence, head));
    }

    /// The head remembered for the grant of `lock` with `fence` (`Some(None)`: an empty queue).
    fn take_head(&self, lock: &[u8], fence: i64) -> Option<Option<KeyValue>> {
        let mut heads = self.inner.heads.lock().unwrap_or_else(|e| e.into_inner());
        match heads.remove(lock) {
            Some((f, head)) if f == fence => Some(head),
            _ => None,
        }
    }

    /// A renewal's reads: the lock key, and in a queued store the head of its queue (for the
    /// release, [`remember_head`](Self::remember_head)).
    pub(super) fn renew_ops(&self, key: &str) -> Vec<TxnOp> {
        let mut ops = vec![TxnOp::get(self.lock_key(key), None)];
        if self.inner.queued {
            ops.push(head_op(&self.queue_prefix(key)));
        }
        ops
    }

    /// Remembers the head a successful renewal ([`renew_ops`](Self::renew_ops)) read.
    pub(super) fn remember_renewed_head(&self, lock: &[u8], fence: i64, r: &TxnResponse) {
        if let Some(TxnOpResponse::Get(g)) = r.op_responses().get(1) {
            self.remember_head(lock, fence, g.kvs().first().cloned());
        }
    }

    /// The oldest waiter of `key`, by a linearizable read.
    async fn read_head(&self, key: &str, what: &str) -> Result<Option<KeyValue>, StoreError> {
        let txn = Txn::new().and_then([head_op(&self.queue_prefix(key))]);
        let r = self.etcd().txn(txn).await.map_err(|f| f.into_store(what))?;
        Ok(match r.op_responses().first() {
            Some(TxnOpResponse::Get(g)) => g.kvs().first().cloned(),
            _ => None,
        })
    }

    /// A zero-lease `try_lock` in a queued store: releases (with handover) whatever grant
    /// `holder` has.
    pub(super) async fn release_any_queued(
        &self,
        key: &str,
        holder: &str,
    ) -> Result<bool, StoreError> {
        let what = format!("release of `{}`", key.escape_debug());
        let txn = Txn::new().and_then(self.view_ops(key));
        let r = self
            .etcd()
            .txn(txn)
            .await
            .map_err(|f| f.into_store(&what))?;
        let view = View::of(&r, 0, &what)?;
        match view.fence() {
            Some(f) if view.held_by(holder) => self.release_queued(key, holder, f).await,
            _ => Ok(false),
        }
    }

    /// `try_lock` (`patience` `None`) and `enqueue` in a queued store. One transaction: `If`
    /// the lock key is vacant and the queue empty, grant as a plain acquire does; `Else` (for
    /// `enqueue`) put the waiter key, and read the lock key, the counter and the head. A vacant
    /// key with waiters is then handed to the head (which may be this holder); a key held by
    /// this holder is extended as by a plain acquire.
    pub(super) async fn acquire_queued(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
        patience: Option<Duration>,
    ) -> Result<Enqueued, StoreError> {
        let what = format!("acquire of `{}`", key.escape_debug());
        let (lock, counter) = (self.lock_key(key), self.fence_key(key));
        let queue = self.queue_prefix(key);
        let call = BootClock.now();
        for _ in 0..ROUNDS {
            let session = self.session(lease).await?;
            let need = call.saturating_sub(session.ttl.saturating_sub(lease));
            let waiter = self.waiter_key(key, session.id, holder);
            let mut otherwise = Vec::new();
            if patience.is_some() {
                otherwise.push(TxnOp::put(
                    waiter.clone(),
                    holder,
                    Some(PutOptions::new().with_lease(session.id).with_prev_key()),
                ));
            }
            otherwise.extend(self.view_ops(key));
            let txn = Txn::new()
                .when([
                    Compare::create_revision(lock.clone(), CompareOp::Equal, 0),
                    queue_empty(&queue),
                ])
                .and_then([
                    TxnOp::put(
                        counter.clone(),
                        holder,
                        Some(PutOptions::new().with_prev_key()),
                    ),
                    TxnOp::put(
                        lock.clone(),
                        holder,
                        Some(PutOptions::new().with_lease(session.id)),
                    ),
                ])
                .or_else(otherwise);
            let generation = self
                .track_acquire(&lock, holder, call + lease, session.id, &what)
                .await?;
            if let Some(p) = patience {
                self.grants()
                    .mark_waiter(&lock, holder, generation, waiter.clone(), call + p);
            }
            let (res, fresh) = tokio::join!(self.etcd().txn(txn), session.ensure_fresh(need));
            let res = match res {
                Err(f) if f.is_lease_not_found() => {
                    session.mark_lost();
                    continue;
                }
                Err(f) => return Err(f.into_store(&what)),
                Ok(r) => r,
            };
            let fence = if res.succeeded() {
                match res.op_responses().first() {
                    Some(TxnOpResponse::Put(p)) => {
                        let f = p.prev_key().map_or(0, KeyValue::version) + 1;
                        self.remember_head(&lock, f, None);
                        f
                    }
                    _ => {
                        return Err(StoreError::permanent(
                            NAME,
                            format!("{what}: unexpected reply"),
                        ));
                    }
                }
            } else {
                let view = View::of(&res, usize::from(patience.is_some()), &what)?;
                match self
                    .settle_view(key, holder, &session, &waiter, generation, view, &what)
                    .await?
                {
                    Settled::Mine(f) => f,
                    Settled::Waiting(f) => {
                        if patience.is_none() {
                            self.grants().forget_unless_queued(
                                &lock,
                                holder.as_bytes(),
                                generation,
                            );
                        }
                        match fresh {
                            Ok(false) => continue,
                            Err(e) if patience.is_some() => return Err(e),
                            _ => {}
                        }
                        return Ok(Enqueued::Waiting {
                            fence: f.map(|f| to_fence(key, f)).transpose()?,
                        });
                    }
                    Settled::Again => continue,
                }
            };
            match self.finish_grant(key, holder, &session, call + lease, fence, fresh, &what)? {
                Some(f) => return Ok(Enqueued::Granted(f)),
                None => continue,
            }
        }
        Err(StoreError::transient(
            NAME,
            format!("{what}: the key or its queue kept changing"),
        ))
    }

    /// What an acquire's `Else` branch found, acted on: the holder's own grant extended (moved
    /// onto `session` if it is on another lease), a vacant key handed to the head of its
    /// queue, or a key held by another.
    #[allow(clippy::too_many_arguments)]
    async fn settle_view(
        &self,
        key: &str,
        holder: &str,
        session: &crate::session::Session,
        waiter: &[u8],
        generation: u64,
        view: View,
        what: &str,
    ) -> Result<Settled, StoreError> {
        let lock = self.lock_key(key);
        if let Some(l) = view.lock.as_ref().filter(|_| view.held_by(holder)) {
            let Some(fence) = view.fence() else {
                return Err(StoreError::new(
                    lease_core::StoreErrorKind::FenceRegressed,
                    NAME,
                    format!(
                        "the fence counter of `{}` is gone while the key is held (deleted by hand?)",
                        key.escape_debug()
                    ),
                ));
            };
            // Re-entry through the queue: the waiter key just put is not needed.
            self.skip_own(waiter, what).await?;
            if !self
                .regrant_here(key, holder, fence, l.lease(), session, generation, what)
                .await?
            {
                return Ok(Settled::Again);
            }
            return Ok(Settled::Mine(fence));
        }
        if view.lock.is_some() {
            return Ok(Settled::Waiting(view.fence()));
        }
        // Vacant with waiters (else the `If` branch had granted it): the head's turn.
        let Some(head) = view.head else {
            return Ok(Settled::Again);
        };
        if self.impatient(&head) {
            self.skip(&head, what).await?;
            return Ok(Settled::Again);
        }
        let vacant = vec![Compare::create_revision(lock.clone(), CompareOp::Equal, 0)];
        match self.hand_over(key, vacant, &head, what).await? {
            Handed::Granted(f, next) if head.key() == waiter => {
                self.remember_head(&lock, f, next);
                Ok(Settled::Mine(f))
            }
            Handed::Granted(f, _) => {
                // To another waiter: its store learns it by its watch.
                Ok(Settled::Waiting(Some(f)))
            }
            Handed::Failed(_) => Ok(Settled::Again),
            Handed::LeaseGone => {
                self.skip(&head, what).await?;
                Ok(Settled::Again)
            }
        }
    }

    /// Deletes this store's own waiter key `waiter`.
    async fn skip_own(&self, waiter: &[u8], what: &str) -> Result<(), StoreError> {
        let txn = Txn::new().and_then([TxnOp::delete(waiter.to_vec(), None)]);
        self.etcd().txn(txn).await.map_err(|f| f.into_store(what))?;
        Ok(())
    }

    /// `wait_for_grant` in a queued store: reads the lock key, and unless it is `holder`'s
    /// already, watches it from the revision read. A put of the lock key with `holder` as its
    /// value is the grant; its fence is the counter's version at that revision. A delete (the
    /// holder's lease expired, or a plain store released) returns `None`: the caller's next
    /// `enqueue` hands the key to the head of the queue.
    pub(super) async fn wait_for_grant_queued(
        &self,
        key: &str,
        holder: &str,
        max_wait: Duration,
    ) -> Option<Fence> {
        let watch = async {
            loop {
                match self.watch_grant(key, holder).await {
                    Ok(got) => return got,
                    Err(f) => {
                        let e = f.into_store("watching for a grant");
                        debug!(error = %e, "grant watch failed; watching again");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        };
        let fence = tokio::time::timeout(max_wait, watch).await.ok().flatten()?;
        let (lock, f) = (self.lock_key(key), fence.to_i64()?);
        self.grants().learned(&lock, holder, f);
        // The next head, for this grant's release, read off the handover's path.
        let (store, queue) = (self.clone(), self.queue_prefix(key));
        tokio::spawn(async move {
            if let Ok(head) = store.read_head_local(&queue, "reading the queue").await {
                store.remember_head(&lock, f, head);
            }
        });
        Some(fence)
    }

    async fn watch_grant(&self, key: &str, holder: &str) -> Result<Option<Fence>, Failure> {
        let (lock, counter) = (self.lock_key(key), self.fence_key(key));
        let txn = Txn::new().and_then([
            TxnOp::get(lock.clone(), None),
            TxnOp::get(counter.clone(), None),
        ]);
        let r = self.etcd().txn(txn).await?;
        let kv = |i: usize| match r.op_responses().get(i) {
            Some(TxnOpResponse::Get(g)) => g.kvs().first().cloned(),
            _ => None,
        };
        if let (Some(l), Some(c)) = (kv(0), kv(1))
            && l.value() == holder.as_bytes()
        {
            return Ok(Fence::from_i64(c.version()));
        }
        // Two watches on one stream, from the revision read: the counter (a grant puts it with
        // the new holder as its value, so its event carries holder and fence) and the lock key
        // (a delete: vacant).
        let from = r.header().map_or(0, |h| h.revision()) + 1;
        let mut c = self.etcd().client().clone();
        let mut stream = c
            .watch(
                counter.clone(),
                Some(WatchOptions::new().with_start_revision(from)),
            )
            .await
            .map_err(Failure::Etcd)?;
        stream
            .watch(
                lock.clone(),
                Some(WatchOptions::new().with_start_revision(from)),
            )
            .await
            .map_err(Failure::Etcd)?;
        while let Some(msg) = stream.message().await.map_err(Failure::Etcd)? {
            if msg.canceled() {
                return Ok(None);
            }
            for ev in msg.events() {
                let Some(kv) = ev.kv() else { continue };
                match ev.event_type() {
                    EventType::Put if kv.key() == counter && kv.value() == holder.as_bytes() => {
                        return Ok(Fence::from_i64(kv.version()));
                    }
                    EventType::Delete if kv.key() == lock => return Ok(None),
                    _ => {}
                }
            }
        }
        Err(Failure::Etcd(etcd_client::Error::WatchError(
            "watch stream ended".into(),
        )))
    }

    /// `leave_queue` in a queued store: one transaction deletes `holder`'s waiter keys (one per
    /// session lease of this store) and, if the lock key is `holder`'s, reads the fence; that
    /// grant is then released with handover.
    pub(super) async fn leave_queue_queued(
        &self,
        key: &str,
        holder: &str,
    ) -> Result<bool, StoreError> {
        let what = format!("leaving the queue of `{}`", key.escape_debug());
        let (lock, counter) = (self.lock_key(key), self.fence_key(key));
        let mut waiters: Vec<Vec<u8>> = self
            .inner
            .sessions
            .lock()
            .await
            .values()
            .map(|s| self.waiter_key(key, s.id, holder))
            .collect();
        if let Some(w) = self
            .grants()
            .held()
            .get(&slot(&lock, holder.as_bytes()))
            .and_then(|h| h.waiter.as_ref())
        {
            waiters.push(w.key.clone());
        }
        waiters.sort();
        waiters.dedup();
        let deletes: Vec<TxnOp> = waiters
            .into_iter()
            .map(|w| TxnOp::delete(w, None))
            .collect();
        let mut then = vec![TxnOp::get(counter, None)];
        then.extend(deletes.iter().cloned());
        let txn = Txn::new()
            .when([Compare::value(lock.clone(), CompareOp::Equal, holder)])
            .and_then(then)
            .or_else(deletes);
        let r = self
            .etcd()
            .txn(txn)
            .await
            .map_err(|f| f.into_store(&what))?;
        if !r.succeeded() {
            let mut held = self.grants().held();
            let at = slot(&lock, holder.as_bytes());
            if held.get(&at).is_some_and(|h| h.fence.is_none()) {
                held.remove(&at);
            }
            return Ok(false);
        }
        let fence = match r.op_responses().first() {
            Some(TxnOpResponse::Get(g)) => g.kvs().first().map(KeyValue::version),
            _ => None,
        };
        match fence {
            Some(f) => self.release_queued(key, holder, f).await,
            None => Ok(false),
        }
    }
}

/// What [`EtcdStore::settle_view`] decided.
enum Settled {
    /// The holder has the key with this fence.
    Mine(i64),
    /// Another holder has it; the key's latest fence.
    Waiting(Option<i64>),
    /// The store changed under the call: start over.
    Again,
}
