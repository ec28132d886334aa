//! [`MemoryStore`], the reference store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use crate::clock::{SharedClock, TokioClock};
use crate::input::{validate, validate_key};
use crate::{BrokenLock, Capabilities, Fence, KeyState, LeaseStore, StoreError};

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
#[derive(Clone, Debug)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    clock: SharedClock,
    keys: Mutex<HashMap<String, Entry>>,
    changed: Notify,
}

#[derive(Debug)]
struct Entry {
    /// `None` once released; the entry stays so the fence counter survives.
    holder: Option<String>,
    fence: Fence,
    expires: Duration,
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
        Self {
            inner: Arc::new(Inner {
                clock,
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
                drop(keys);
                self.inner.changed.notify_waiters();
            }
            return Ok(None);
        }
        let expires = now.saturating_add(lease);
        match keys.get_mut(key) {
            None => {
                keys.insert(
                    key.to_owned(),
                    Entry {
                        holder: Some(holder.to_owned()),
                        fence: Fence::FIRST,
                        expires,
                    },
                );
                Ok(Some(Fence::FIRST))
            }
            Some(e) if e.holder.as_deref() == Some(holder) => {
                // Same holder, expired or not, and nobody took it in between: extend, same fence.
                e.expires = expires;
                Ok(Some(e.fence))
            }
            Some(e) if e.holder.is_some() && e.expires > now => Ok(None),
            Some(e) => {
                let fence = e.fence.next().ok_or_else(|| {
                    StoreError::permanent(NAME, format!("fence of `{key}` overflowed"))
                })?;
                *e = Entry {
                    holder: Some(holder.to_owned()),
                    fence,
                    expires,
                };
                Ok(Some(fence))
            }
        }
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
        let mut keys = self.keys();
        let released = match keys.get_mut(key) {
            Some(e) if e.holder.as_deref() == Some(holder) && e.fence == fence => {
                e.holder = None;
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
        Capabilities::new(NAME).with_notifications(true)
    }
}
