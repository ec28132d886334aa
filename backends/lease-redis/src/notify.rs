//! Release announcements: one pub/sub subscription per store, fanned out to waiters by key.
//!
//! The release script publishes the released user key on the store's release channel. One task
//! per store holds the subscription (a dedicated connection: a subscribed connection can do
//! nothing else) and wakes the waiters registered for that key. Waiters register in a map from
//! key to a shared [`Notify`], counted so the entry goes away with its last waiter.
//!
//! Announcements are hints. A message lost while the subscription reconnects, or an expiry
//! (which Redis does not announce here), costs the waiter its `max_wait`, never its liveness.
//! After each (re)subscription every waiter is woken once, since messages may have been missed.
//!
//! A release can also land between a refused `try_lock` and the following `wait_for_change`
//! (the caller has not registered yet). So `try_lock` marks its key as *watched* before it sends
//! the script, a message for a watched key flags it, and `wait_for_change` returns at once if
//! its key was flagged since. The flag is consumed by one wait; the watched set is a bounded
//! hint (cleared whole when it grows past [`MAX_WATCHED`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use lease_core::StoreError;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::error::classify;

/// The subscription task and the waiter map; the task stops when this is dropped.
#[derive(Debug)]
pub(crate) struct Notifier {
    waiters: Arc<Waiters>,
    task: JoinHandle<()>,
}

/// How many keys refused `try_lock` may mark as watched before the set is cleared.
const MAX_WATCHED: usize = 10_000;

#[derive(Debug, Default)]
struct Waiters {
    by_key: Mutex<HashMap<Box<[u8]>, Slot>>,
    /// Keys of refused (or in-flight) `try_lock` calls; `true` once a release was announced.
    watched: Mutex<HashMap<Box<[u8]>, bool>>,
}

#[derive(Debug)]
struct Slot {
    notify: Arc<Notify>,
    waiters: usize,
}

impl Waiters {
    fn map(&self) -> MutexGuard<'_, HashMap<Box<[u8]>, Slot>> {
        // Every update under this lock is a single insert, remove or counter change, so a
        // poisoned map is still consistent.
        self.by_key.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn watched(&self) -> MutexGuard<'_, HashMap<Box<[u8]>, bool>> {
        // Single inserts and removals only: a poisoned set is still consistent.
        self.watched.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake(&self, key: &[u8]) {
        if let Some(released) = self.watched().get_mut(key) {
            *released = true;
        }
        if let Some(slot) = self.map().get(key) {
            slot.notify.notify_waiters();
        }
    }

    fn wake_all(&self) {
        for released in self.watched().values_mut() {
            *released = true;
        }
        for slot in self.map().values() {
            slot.notify.notify_waiters();
        }
    }
}

/// Removes a waiter's registration when its wait ends or is cancelled.
struct Registration<'a> {
    waiters: &'a Waiters,
    key: &'a [u8],
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut map = self.waiters.map();
        if let Some(slot) = map.get_mut(self.key) {
            slot.waiters -= 1;
            if slot.waiters == 0 {
                map.remove(self.key);
            }
        }
    }
}

impl Notifier {
    /// Subscribes to `channel` (so that refused credentials or a missing channel permission show
    /// at connect time) and starts the task that keeps the subscription.
    pub(crate) async fn start(
        client: redis::Client,
        channel: Vec<u8>,
        connect_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let first = subscribe(&client, &channel, connect_timeout).await?;
        let waiters = Arc::new(Waiters::default());
        let task = tokio::spawn(keep_subscribed(
            waiters.clone(),
            client,
            channel,
            connect_timeout,
            first,
        ));
        Ok(Self { waiters, task })
    }

    /// Marks `key` as watched: a release announced from now on is remembered for the next
    /// [`wait`](Self::wait) on it. Called before a `try_lock` is sent.
    pub(crate) fn watch(&self, key: &str) {
        let mut watched = self.waiters.watched();
        if watched.len() >= MAX_WATCHED && !watched.contains_key(key.as_bytes()) {
            watched.clear();
        }
        watched.insert(key.as_bytes().into(), false);
    }

    /// Forgets `key` (its `try_lock` was granted).
    pub(crate) fn unwatch(&self, key: &str) {
        self.waiters.watched().remove(key.as_bytes());
    }

    /// Waits until `key` is announced released, or `max_wait`; returns at once if a release was
    /// announced since the last refused `try_lock` of `key`.
    pub(crate) async fn wait(&self, key: &str, max_wait: Duration) {
        let key = key.as_bytes();
        let notify = {
            let mut map = self.waiters.map();
            let slot = map.entry(key.into()).or_insert_with(|| Slot {
                notify: Arc::new(Notify::new()),
                waiters: 0,
            });
            slot.waiters += 1;
            slot.notify.clone()
        };
        let _registration = Registration {
            waiters: &self.waiters,
            key,
        };
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // Registered first, checked second: a release between the two still wakes the wait.
        if self.waiters.watched().remove(key) == Some(true) {
            return;
        }
        let _ = tokio::time::timeout(max_wait, notified).await;
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn subscribe(
    client: &redis::Client,
    channel: &[u8],
    timeout: Duration,
) -> Result<redis::aio::PubSubStream, StoreError> {
    const WHAT: &str = "subscribing to release announcements";
    let attempt = async {
        let mut pubsub = client
            .get_async_pubsub()
            .await
            .map_err(|e| classify(WHAT, e))?;
        pubsub
            .subscribe(channel)
            .await
            .map_err(|e| classify(WHAT, e))?;
        Ok(pubsub.into_on_message())
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::transient(
            crate::NAME,
            format!("{WHAT}: no answer within {timeout:?}"),
        )),
    }
}

async fn keep_subscribed(
    waiters: Arc<Waiters>,
    client: redis::Client,
    channel: Vec<u8>,
    connect_timeout: Duration,
    first: redis::aio::PubSubStream,
) {
    let mut stream = Some(first);
    let mut pause = Duration::from_millis(50);
    loop {
        let mut messages = match stream.take() {
            Some(s) => s,
            None => match subscribe(&client, &channel, connect_timeout).await {
                Ok(s) => {
                    debug!("release announcements subscribed again");
                    pause = Duration::from_millis(50);
                    // Releases announced while unsubscribed were missed: let every waiter retry.
                    waiters.wake_all();
                    s
                }
                Err(e) => {
                    debug!(error = %e, "release announcements unavailable, retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                    continue;
                }
            },
        };
        while let Some(msg) = messages.next().await {
            waiters.wake(msg.get_payload_bytes());
        }
        warn!("release announcements connection lost; waiters poll until it is back");
        waiters.wake_all();
    }
}
