//! [`MemoryStore`], the reference store.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use crate::clock::{SharedClock, TokioClock};
use crate::input::{validate, validate_key};
use crate::{BrokenLock, Capabilities, Enqueued, Fence, KeyState, LeaseStore, StoreError};

const NAME: &str = "memory";

/// The reference store: the contract of [`LeaseStore`] implemented in the plainest way, in this
/// process's memory.
///
/// Use it in tests, and for locks between tasks of one process that want the lease semantics
/// (fences, loss signals). It is not shared between processes. Clones share one map.
///
/// Expiry follows the store's [`Clock`](crate::Clock), tokio's clock by default, so tests with
/// tokio's paused time are deterministic. A release (or a
/// [`break_lock`](LeaseStore::break_lock)) wakes every
/// [`wait_for_change`](LeaseStore::wait_for_change) caller at once.
///
/// [`MemoryStore::queued`] builds one with a queue of waiters per key
/// ([`Capabilities::queued_grants`]): the reference implementation of [`Enqueued`]'s rules.
#[derive(Clone, Debug)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    clock: SharedClock,
    /// Whether this store keeps waiter queues ([`Capabilities::queued_grants`]).
    queued: bool,
    keys: Mutex<HashMap<String, Entry>>,
    changed: Notify,
}

#[derive(Debug)]
struct Entry {
    /// `None` once released; the entry stays so the fence counter survives.
    holder: Option<String>,
    fence: Fence,
    expires: Duration,
    /// Waiters in the order they first queued (queued stores only).
    queue: VecDeque<Waiter>,
}

#[derive(Debug)]
struct Waiter {
    holder: String,
    /// The lease it asked for, granted when its turn comes.
    lease: Duration,
    /// Skipped once the store's clock reaches this.
    live_until: Duration,
}

impl Entry {
    fn new(holder: &str, fence: Fence, expires: Duration) -> Self {
        Self {
            holder: Some(holder.to_owned()),
            fence,
            expires,
            queue: VecDeque::new(),
        }
    }

    /// Whether a holder's lease is live.
    fn held(&self, now: Duration) -> bool {
        self.holder.is_some() && self.expires > now
    }

    /// If the key is free (released or expired), grants it to the oldest live waiter, dropping
    /// dead ones on the way. Returns the holder it granted to.
    fn grant_next(&mut self, key: &str, now: Duration) -> Result<Option<String>, StoreError> {
        if self.held(now) {
            return Ok(None);
        }
        while let Some(w) = self.queue.pop_front() {
            if w.live_until <= now {
                continue;
            }
            self.fence = next_fence(self.fence, key)?;
            self.holder = Some(w.holder.clone());
            self.expires = now.saturating_add(w.lease);
            return Ok(Some(w.holder));
        }
        Ok(None)
    }
}

fn next_fence(fence: Fence, key: &str) -> Result<Fence, StoreError> {
    fence
        .next()
        .ok_or_else(|| StoreError::permanent(NAME, format!("fence of `{key}` overflowed")))
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store on tokio's clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(TokioClock::new()))
    }

    /// An empty store whose expiry follows `clock`.
    pub fn with_clock(clock: SharedClock) -> Self {
        Self::build(clock, false)
    }

    /// An empty store with a queue of waiters per key, on `clock` (tokio's if `None`): a release
    /// hands the key to the oldest live waiter ([`Enqueued`]).
    pub fn queued(clock: Option<SharedClock>) -> Self {
        Self::build(clock.unwrap_or_else(|| Arc::new(TokioClock::new())), true)
    }

    fn build(clock: SharedClock, queued: bool) -> Self {
        Self {
            inner: Arc::new(Inner {
                clock,
                queued,
                keys: Mutex::new(HashMap::new()),
                changed: Notify::new(),
            }),
        }
    }

    fn keys(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding this lock cannot leave an entry half-written (each update is a
        // plain assignment), so a poisoned map is still consistent.
        self.inner.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current unexpired holder of `key`, if any. For tests and diagnostics.
    pub fn holder(&self, key: &str) -> Option<String> {
        let now = self.inner.clock.now();
        let keys = self.keys();
        let e = keys.get(key)?;
        e.holder.clone().filter(|_| e.expires > now)
    }

    /// The last fence handed out for `key`, if any.
    pub fn fence(&self, key: &str) -> Option<Fence> {
        self.keys().get(key).map(|e| e.fence)
    }

    /// Makes `key`'s lease expire now, as if its holder had stopped renewing long ago. For fault
    /// tests.
    pub fn expire(&self, key: &str) {
        let now = self.inner.clock.now();
        if let Some(e) = self.keys().get_mut(key) {
            e.expires = now;
        }
        self.inner.changed.notify_waiters();
    }

    /// The live waiters queued on `key`, oldest first. For tests and diagnostics.
    pub fn waiters(&self, key: &str) -> Vec<String> {
        let now = self.inner.clock.now();
        self.keys().get(key).map_or_else(Vec::new, |e| {
            e.queue
                .iter()
                .filter(|w| w.live_until > now)
                .map(|w| w.holder.clone())
                .collect()
        })
    }

    /// `try_lock`'s decision, under the map's lock: the fence granted or extended, or `None`;
    /// and whether a waiter was granted the key on the way (an expiry noticed here).
    fn acquire(
        &self,
        keys: &mut HashMap<String, Entry>,
        lease: Duration,
        key: &str,
        holder: &str,
        now: Duration,
    ) -> Result<(Option<Fence>, bool), StoreError> {
        let expires = now.saturating_add(lease);
        let Some(e) = keys.get_mut(key) else {
            keys.insert(key.to_owned(), Entry::new(holder, Fence::FIRST, expires));
            return Ok((Some(Fence::FIRST), false));
        };
        // An expired key with live waiters goes to the oldest of them, not to this caller
        // (unless this caller is that waiter).
        let woke = self.settle(e, key, now)?;
        let got = if e.holder.as_deref() == Some(holder) {
            // Same holder, expired or not, and nobody took it in between: extend, same fence.
            e.expires = expires;
            e.queue.retain(|w| w.holder != holder);
            Some(e.fence)
        } else if e.held(now) {
            None
        } else {
            // Free, and (in a queued store, after `settle`) no live waiter is queued.
            e.fence = next_fence(e.fence, key)?;
            e.holder = Some(holder.to_owned());
            e.expires = expires;
            Some(e.fence)
        };
        Ok((got, woke))
    }

    /// In a queued store, hands a free key to its oldest live waiter (see [`Entry::grant_next`]);
    /// returns whether it did. A no-op in a store without queues.
    fn settle(&self, e: &mut Entry, key: &str, now: Duration) -> Result<bool, StoreError> {
        Ok(self.inner.queued && e.grant_next(key, now)?.is_some())
    }
}

impl LeaseStore for MemoryStore {
    async fn try_lock(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
    ) -> Result<Option<Fence>, StoreError> {
        validate(NAME, key, holder)?;
        let now = self.inner.clock.now();
        let mut keys = self.keys();
        if lease.is_zero() {
            if let Some(e) = keys
                .get_mut(key)
                .filter(|e| e.holder.as_deref() == Some(holder))
            {
                e.holder = None;
                self.settle(e, key, now)?;
                drop(keys);
                self.inner.changed.notify_waiters();
            }
            return Ok(None);
        }
        let (got, woke) = self.acquire(&mut keys, lease, key, holder, now)?;
        drop(keys);
        if woke {
            self.inner.changed.notify_waiters();
        }
        Ok(got)
    }

    async fn renew(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
        fence: Fence,
    ) -> Result<bool, StoreError> {
        validate(NAME, key, holder)?;
        let now = self.inner.clock.now();
        let mut keys = self.keys();
        match keys.get_mut(key) {
            // Only a live lease is extended: once it has lapsed, only an acquisition retakes it.
            Some(e)
                if e.holder.as_deref() == Some(holder) && e.fence == fence && e.expires > now =>
            {
                e.expires = now.saturating_add(lease);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release(&self, key: &str, holder: &str, fence: Fence) -> Result<bool, StoreError> {
        validate(NAME, key, holder)?;
        let now = self.inner.clock.now();
        let mut keys = self.keys();
        let released = match keys.get_mut(key) {
            Some(e) if e.holder.as_deref() == Some(holder) && e.fence == fence => {
                e.holder = None;
                self.settle(e, key, now)?;
                true
            }
            _ => false,
        };
        drop(keys);
        if released {
            self.inner.changed.notify_waiters();
        }
        Ok(released)
    }

    async fn wait_for_change(&self, _key: &str, max_wait: Duration) {
        let _ = tokio::time::timeout(max_wait, self.inner.changed.notified()).await;
    }

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
        let now = self.inner.clock.now();
        let mut keys = self.keys();
        let (got, woke) = self.acquire(&mut keys, lease, key, holder, now)?;
        let answer = match got {
            Some(fence) => Enqueued::Granted(fence),
            None => {
                let e = keys.get_mut(key).expect("a refused key has an entry");
                let live_until = now.saturating_add(patience);
                match e.queue.iter_mut().find(|w| w.holder == holder) {
                    Some(w) => {
                        w.lease = lease;
                        w.live_until = live_until;
                    }
                    None => e.queue.push_back(Waiter {
                        holder: holder.to_owned(),
                        lease,
                        live_until,
                    }),
                }
                Enqueued::Waiting {
                    fence: Some(e.fence),
                }
            }
        };
        drop(keys);
        if woke {
            self.inner.changed.notify_waiters();
        }
        Ok(answer)
    }

    async fn wait_for_grant(&self, key: &str, holder: &str, max_wait: Duration) -> Option<Fence> {
        let wait = async {
            loop {
                let changed = self.inner.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                let now = self.inner.clock.now();
                if let Some(e) = self.keys().get(key)
                    && e.held(now)
                    && e.holder.as_deref() == Some(holder)
                {
                    return Some(e.fence);
                }
                changed.await;
            }
        };
        tokio::time::timeout(max_wait, wait).await.ok().flatten()
    }

    async fn leave_queue(&self, key: &str, holder: &str) -> Result<bool, StoreError> {
        validate(NAME, key, holder)?;
        let now = self.inner.clock.now();
        let mut keys = self.keys();
        let Some(e) = keys.get_mut(key) else {
            return Ok(false);
        };
        e.queue.retain(|w| w.holder != holder);
        let gave_back = e.holder.as_deref() == Some(holder);
        if gave_back {
            e.holder = None;
            self.settle(e, key, now)?;
        }
        drop(keys);
        if gave_back {
            self.inner.changed.notify_waiters();
        }
        Ok(gave_back)
    }

    async fn inspect(&self, key: &str) -> Result<KeyState, StoreError> {
        validate_key(NAME, key)?;
        let now = self.inner.clock.now();
        let keys = self.keys();
        Ok(match keys.get(key) {
            None => KeyState::free(None),
            Some(Entry {
                holder: Some(holder),
                fence,
                expires,
                ..
            }) if *expires > now => KeyState::held(holder.clone(), *fence, *expires - now),
            Some(e) => KeyState::free(Some(e.fence)),
        })
    }

    async fn break_lock(&self, key: &str) -> Result<Option<BrokenLock>, StoreError> {
        validate_key(NAME, key)?;
        let now = self.inner.clock.now();
        let mut keys = self.keys();
        let Some(e) = keys.get_mut(key) else {
            return Ok(None);
        };
        let fence = e
            .fence
            .next()
            .ok_or_else(|| StoreError::permanent(NAME, format!("fence of `{key}` overflowed")))?;
        let was_live = e.holder.is_some() && e.expires > now;
        // The fence raised and the holder gone in one step under the map's lock: the old
        // holder's renew and release no longer match, and the next grant is fence + 1.
        let previous_holder = e.holder.take();
        e.fence = fence;
        e.expires = now;
        drop(keys);
        self.inner.changed.notify_waiters();
        Ok(Some(BrokenLock::new(fence, previous_holder, was_live)))
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(NAME)
            .with_notifications(true)
            .with_queued_grants(self.inner.queued)
    }
}
