//! Announcements: one pub/sub subscription per store, fanned out to its waiters.
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
//!
//! # Grants (stores with queued grants)
//!
//! The same subscription also listens on the store's own grant channel, on which a release (or
//! any call that hands a free key to the oldest waiter) publishes `<fence>:<waiter id>` for
//! the waiter it granted ([`crate::keys::waiter_id`]: the user key and the holder). The same
//! trick keeps a grant from being missed between a `Waiting` answer and the wait: `enqueue`
//! marks its (key, holder) as watched before it sends the script, a grant message for a watched
//! waiter is kept (its fence), and [`Notifier::wait_grant`] returns that fence at once. A grant
//! message for nobody watching is dropped (the waiter's next `enqueue` reads the grant from the
//! record). After a resubscription every watched waiter is told that messages may have been
//! lost, and its wait returns `None` at once; a grant waiter also wakes, with `None`, when its
//! key is announced free on the release channel (a break, or a release by a store without a
//! queue), so that its next `enqueue` takes the key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use lease_core::StoreError;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::error::classify;
use crate::keys::{parse_grant, waiter_id};

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
    /// Queued waiters of this store, by waiter id (key and holder).
    grants: Mutex<HashMap<Box<[u8]>, GrantSlot>>,
    /// The store's grant channel, if it has queued grants.
    grant_channel: Option<Vec<u8>>,
}

/// One queued waiter (key, holder) of this store.
#[derive(Debug, Default)]
struct GrantSlot {
    notify: Arc<Notify>,
    /// `wait_grant` calls in progress.
    waiters: usize,
    /// Between an `enqueue` being sent and the grant it waits for (or the waiter leaving):
    /// announcements are kept for the next wait even while nobody waits.
    watched: bool,
    /// The highest fence announced for this waiter since it was watched.
    fence: Option<u64>,
    /// The subscription was lost since it was watched: messages may have been missed.
    missed: bool,
}

/// What a watched grant waiter learnt since it was watched.
enum News {
    Granted(u64),
    Missed,
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

    fn grants(&self) -> MutexGuard<'_, HashMap<Box<[u8]>, GrantSlot>> {
        // Each update is a field change, insert or removal: a poisoned map is still consistent.
        self.grants.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake_all(&self) {
        for released in self.watched().values_mut() {
            *released = true;
        }
        for slot in self.map().values() {
            slot.notify.notify_waiters();
        }
        for slot in self.grants().values_mut() {
            slot.missed = true;
            slot.notify.notify_waiters();
        }
    }

    /// A grant message arrived: keeps its fence for its waiter if watched or waiting.
    fn granted(&self, message: &[u8]) {
        let Some((fence, id)) = parse_grant(message) else {
            return;
        };
        if let Some(slot) = self.grants().get_mut(id) {
            if slot.watched || slot.waiters > 0 {
                slot.fence = Some(slot.fence.map_or(fence, |f| f.max(fence)));
                slot.notify.notify_waiters();
            }
        }
    }

    /// Takes what waiter `id` learnt since it was watched. A grant ends the watch: its entry
    /// left the store's queue with it.
    fn news(&self, id: &[u8]) -> Option<News> {
        let mut grants = self.grants();
        let slot = grants.get_mut(id)?;
        if let Some(fence) = slot.fence.take() {
            slot.watched = false;
            slot.missed = false;
            return Some(News::Granted(fence));
        }
        std::mem::take(&mut slot.missed).then_some(News::Missed)
    }

    /// Registers one waiter for releases of `key`; the registration ends when dropped.
    fn register<'a>(&'a self, key: &'a [u8]) -> (Arc<Notify>, Registration<'a>) {
        let mut map = self.map();
        let slot = map.entry(key.into()).or_insert_with(|| Slot {
            notify: Arc::new(Notify::new()),
            waiters: 0,
        });
        slot.waiters += 1;
        let notify = slot.notify.clone();
        (notify, Registration { waiters: self, key })
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

/// Removes a grant waiter's registration when its wait ends or is cancelled.
struct GrantRegistration<'a> {
    waiters: &'a Waiters,
    id: &'a [u8],
}

impl Drop for GrantRegistration<'_> {
    fn drop(&mut self) {
        let mut grants = self.waiters.grants();
        if let Some(slot) = grants.get_mut(self.id) {
            slot.waiters -= 1;
            if slot.waiters == 0 && !slot.watched {
                grants.remove(self.id);
            }
        }
    }
}

impl Notifier {
    /// Subscribes to the release `channel`, and to `grant_channel` for a store with queued
    /// grants (so that refused credentials or a missing channel permission show at connect
    /// time), and starts the task that keeps the subscription.
    pub(crate) async fn start(
        client: redis::Client,
        channel: Vec<u8>,
        grant_channel: Option<Vec<u8>>,
        connect_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let channels: Vec<Vec<u8>> = std::iter::once(channel)
            .chain(grant_channel.clone())
            .collect();
        let first = subscribe(&client, &channels, connect_timeout).await?;
        let waiters = Arc::new(Waiters {
            grant_channel,
            ..Waiters::default()
        });
        let task = tokio::spawn(keep_subscribed(
            waiters.clone(),
            client,
            channels,
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
        let (notify, _registration) = self.waiters.register(key);
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // Registered first, checked second: a release between the two still wakes the wait.
        if self.waiters.watched().remove(key) == Some(true) {
            return;
        }
        let _ = tokio::time::timeout(max_wait, notified).await;
    }

    /// Marks `holder`, about to be queued on `key`, as watched: a grant announced from now on
    /// is kept for its next [`wait_grant`](Self::wait_grant). Called before an `enqueue` is
    /// sent; forgets what an earlier watch learnt (the answer to this `enqueue` supersedes it).
    pub(crate) fn watch_grant(&self, key: &str, holder: &str) {
        let id = waiter_id(key.as_bytes(), holder.as_bytes());
        let mut grants = self.waiters.grants();
        if grants.len() >= MAX_WATCHED && !grants.contains_key(id.as_slice()) {
            // A bounded hint: forget the watches nobody waits on (their waiters' next
            // `enqueue` reads any grant from the record).
            grants.retain(|_, slot| slot.waiters > 0);
        }
        let slot = grants.entry(id.into()).or_default();
        slot.watched = true;
        slot.fence = None;
        slot.missed = false;
    }

    /// Forgets the watch of `holder` on `key` (granted, or no longer waiting).
    pub(crate) fn unwatch_grant(&self, key: &str, holder: &str) {
        let id = waiter_id(key.as_bytes(), holder.as_bytes());
        let mut grants = self.waiters.grants();
        if let Some(slot) = grants.get_mut(id.as_slice()) {
            slot.watched = false;
            slot.fence = None;
            if slot.waiters == 0 {
                grants.remove(id.as_slice());
            }
        }
    }

    /// Waits until a grant of `key` to `holder` is announced (its fence), or `key` is announced
    /// free, or `max_wait` (both `None`). Returns at once with a grant announced since the
    /// watch of the last `enqueue`, or with `None` if messages may have been lost since.
    pub(crate) async fn wait_grant(
        &self,
        key: &str,
        holder: &str,
        max_wait: Duration,
    ) -> Option<u64> {
        let id = waiter_id(key.as_bytes(), holder.as_bytes());
        let notify = {
            let mut grants = self.waiters.grants();
            let slot = grants.entry(id.as_slice().into()).or_default();
            slot.waiters += 1;
            slot.notify.clone()
        };
        let _registration = GrantRegistration {
            waiters: &self.waiters,
            id: &id,
        };
        let (released, _released_registration) = self.waiters.register(key.as_bytes());
        let granted = notify.notified();
        let released = released.notified();
        tokio::pin!(granted, released);
        granted.as_mut().enable();
        released.as_mut().enable();
        // Registered first, checked second: a grant between the two still wakes the wait.
        let news = match self.waiters.news(&id) {
            Some(news) => Some(news),
            None => {
                let _ = tokio::time::timeout(max_wait, async {
                    tokio::select! {
                        () = granted => {}
                        () = released => {}
                    }
                })
                .await;
                self.waiters.news(&id)
            }
        };
        match news {
            Some(News::Granted(fence)) => Some(fence),
            Some(News::Missed) | None => None,
        }
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn subscribe(
    client: &redis::Client,
    channels: &[Vec<u8>],
    timeout: Duration,
) -> Result<redis::aio::PubSubStream, StoreError> {
    const WHAT: &str = "subscribing to release announcements";
    let attempt = async {
        let mut pubsub = client
            .get_async_pubsub()
            .await
            .map_err(|e| classify(WHAT, e))?;
        pubsub
            .subscribe(channels)
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
    channels: Vec<Vec<u8>>,
    connect_timeout: Duration,
    first: redis::aio::PubSubStream,
) {
    let mut stream = Some(first);
    let mut pause = Duration::from_millis(50);
    loop {
        let mut messages = match stream.take() {
            Some(s) => s,
            None => match subscribe(&client, &channels, connect_timeout).await {
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
            let on_grants = waiters
                .grant_channel
                .as_deref()
                .is_some_and(|c| msg.get_channel::<Vec<u8>>().is_ok_and(|m| m == c));
            if on_grants {
                waiters.granted(msg.get_payload_bytes());
            } else {
                waiters.wake(msg.get_payload_bytes());
            }
        }
        warn!("release announcements connection lost; waiters poll until it is back");
        waiters.wake_all();
    }
}
