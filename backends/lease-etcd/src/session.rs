//! One etcd lease per store and TTL (the *session*), covering every key the store grants with
//! that TTL, kept alive by one keepalive stream that one task of the session owns.
//!
//! # Invariants
//!
//! - Every key granted through a session is attached to its etcd lease, so the key lives at
//!   least until *send time of the session's last confirmed keepalive + TTL* (the server sets
//!   the lease's expiry when it handles the keepalive, after we sent it; a leader change only
//!   extends leases).
//! - `fresh_from` is that send time (or the grant's). A caller that needs its key held until
//!   `t + lease` needs `fresh_from >= t - (TTL - lease)`; [`Session::ensure_fresh`] asks for a
//!   keepalive only when that does not hold yet.
//! - **Each answer is matched to its own keepalive.** The keepalive stream answers in order and
//!   its answers carry no request id, so only the session's task ever sends or reads on it, and
//!   it has at most one keepalive in flight: the next answer on the stream is that keepalive's,
//!   and `fresh_from` becomes *its* send time. Callers only send a request to the task and await
//!   the reply on a channel of their own; a caller dropped mid-wait (the lock's heartbeat drops
//!   its renew on stop) leaves nothing behind on the stream, and the answer it would have read
//!   still updates `fresh_from` with the send time it belongs to. A keepalive without an answer
//!   within the request timeout drops the stream (its late answer cannot be read as another's).
//! - Requests that arrive while a keepalive is in flight are served by it when it was sent at or
//!   after what they need, otherwise by the next one, sent as soon as the answer is in: the
//!   keepalive rate grows with round trips, not with held keys.
//! - Before each keepalive the task has the store delete the grants of this session whose
//!   holders stopped renewing ([`Grants::sweep`]); if a delete cannot be confirmed, no keepalive
//!   is sent, so a keepalive never stretches a key its holder gave up on.
//! - A keepalive answer with TTL ≤ 0 (or "lease not found") marks the session lost for good:
//!   its keys are gone or going, every later renew of them returns `false`, and the store
//!   grants new keys on a new session.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use etcd_client::{Client, LeaseKeepAliveStream, LeaseKeeper};
use lease_core::{BootClock, Clock, StoreError};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::error::{NAME, is_lease_not_found, map, timed_out};
use crate::grants::Grants;

pub(crate) struct Session {
    pub(crate) id: i64,
    /// The TTL etcd granted.
    pub(crate) ttl: Duration,
    state: Arc<Mutex<State>>,
    /// The store's grants (swept before each keepalive); the store owns them.
    grants: Weak<Grants>,
    /// The store's count of keepalives sent.
    keepalives: Arc<AtomicU64>,
    /// The way to the keepalive task; a new task is started when there is none or it ended (its
    /// runtime shut down).
    task: Mutex<Option<mpsc::UnboundedSender<Request>>>,
}

struct State {
    /// `BootClock` send time of the last keepalive (or the grant) etcd confirmed.
    fresh_from: Duration,
    lost: bool,
}

fn lock_state(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // Each update is a plain assignment: a poisoned state is still consistent.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// A caller's wish: a keepalive sent at or after `need` confirmed (or the news that the lease is
/// gone), answered on `reply` by `give_up` at the latest.
struct Request {
    need: Duration,
    give_up: Instant,
    reply: oneshot::Sender<Result<bool, StoreError>>,
}

impl Session {
    pub(crate) fn new(
        id: i64,
        ttl: Duration,
        granted_at: Duration,
        grants: Weak<Grants>,
        keepalives: Arc<AtomicU64>,
    ) -> Self {
        Self {
            id,
            ttl,
            state: Arc::new(Mutex::new(State {
                fresh_from: granted_at,
                lost: false,
            })),
            grants,
            keepalives,
            task: Mutex::new(None),
        }
    }

    pub(crate) fn is_lost(&self) -> bool {
        lock_state(&self.state).lost
    }

    pub(crate) fn mark_lost(&self) {
        mark_lost(self.id, &self.state, &self.grants);
    }

    /// See [`EtcdStore::session_cover`](crate::EtcdStore::session_cover).
    pub(crate) fn cover(&self) -> Option<Duration> {
        let s = lock_state(&self.state);
        if s.lost {
            return None;
        }
        (s.fresh_from + self.ttl).checked_sub(BootClock.now())
    }

    /// `Some(alive)` when no keepalive is needed to know the answer for `need`.
    fn settled(&self, need: Duration) -> Option<bool> {
        settled(&self.state, need)
    }

    fn sender(&self, grants: &Grants) -> mpsc::UnboundedSender<Request> {
        let mut task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = task.as_ref().filter(|tx| !tx.is_closed()) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let keeper = Keeper {
            id: self.id,
            state: self.state.clone(),
            grants: self.grants.clone(),
            keepalives: self.keepalives.clone(),
            client: grants.etcd().client().clone(),
            request_timeout: grants.etcd().request_timeout(),
            stream: None,
            waiting: Vec::new(),
            in_flight: None,
            last_error: None,
        };
        tokio::spawn(keeper.run(rx));
        *task = Some(tx.clone());
        tx
    }

    /// Makes sure a keepalive sent at or after `need` (a `BootClock` time) has been confirmed.
    /// `Ok(false)` when the lease is gone. Cancel-safe: the keepalive belongs to the session's
    /// task, which reads its answer whether or not this caller is still waiting.
    ///
    /// # Errors
    ///
    /// A transient error when etcd did not answer within the request timeout (after reopening
    /// the keepalive stream as often as that allows), or an abandoned grant of the session
    /// could not be deleted before the keepalive.
    pub(crate) async fn ensure_fresh(&self, need: Duration) -> Result<bool, StoreError> {
        if let Some(alive) = self.settled(need) {
            return Ok(alive);
        }
        let Some(grants) = self.grants.upgrade() else {
            return Err(StoreError::transient(NAME, "the etcd store was dropped"));
        };
        let timeout = grants.etcd().request_timeout();
        let give_up = Instant::now() + timeout;
        let (reply, answer) = oneshot::channel();
        let request = Request {
            need,
            give_up,
            reply,
        };
        if self.sender(&grants).send(request).is_err() {
            return Err(StoreError::transient(
                NAME,
                "the keepalive task of the session lease ended",
            ));
        }
        drop(grants);
        match tokio::time::timeout_at(give_up, answer).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(StoreError::transient(
                NAME,
                "the keepalive task of the session lease ended (its runtime shut down?)",
            )),
            Err(_) => Err(timed_out("keepalive of the session lease", timeout)),
        }
    }
}

fn settled(state: &Mutex<State>, need: Duration) -> Option<bool> {
    let s = lock_state(state);
    if s.lost {
        Some(false)
    } else if s.fresh_from >= need {
        Some(true)
    } else {
        None
    }
}

fn mark_lost(id: i64, state: &Mutex<State>, grants: &Weak<Grants>) {
    {
        let mut s = lock_state(state);
        if !s.lost {
            warn!(lease_id = id, "etcd session lease lapsed");
        }
        s.lost = true;
    }
    // etcd deletes every key of the lease with it, and a grant sent on it can no longer apply.
    if let Some(grants) = grants.upgrade() {
        grants.drop_session(id);
    }
}

/// A copy of `e` for each of several waiters (`StoreError` is not `Clone`).
fn share(e: &StoreError) -> StoreError {
    let message = match std::error::Error::source(e) {
        Some(source) => format!("{}: {source}", e.message()),
        None => e.message().to_owned(),
    };
    StoreError::new(e.kind(), e.store(), message)
}

/// The keepalive in flight and the requests it serves.
struct InFlight {
    sent: Duration,
    deadline: Instant,
    waiters: Vec<Request>,
}

/// The session's task: the only sender and reader on the keepalive stream.
struct Keeper {
    id: i64,
    state: Arc<Mutex<State>>,
    /// Weak: the task must not keep the store alive; it ends when the session is dropped.
    grants: Weak<Grants>,
    keepalives: Arc<AtomicU64>,
    client: Client,
    request_timeout: Duration,
    stream: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    /// Requests that need a keepalive sent after the one in flight.
    waiting: Vec<Request>,
    in_flight: Option<InFlight>,
    last_error: Option<StoreError>,
}

impl Keeper {
    async fn run(mut self, mut requests: mpsc::UnboundedReceiver<Request>) {
        loop {
            self.settle();
            if self.in_flight.is_none() && !self.waiting.is_empty() {
                self.send().await;
                continue;
            }
            let deadline = self.in_flight.as_ref().map(|f| f.deadline);
            let give_up = self.waiting.iter().map(|r| r.give_up).min();
            let stream = self.stream.as_mut().map(|(_, s)| s);
            tokio::select! {
                request = requests.recv() => match request {
                    Some(r) => self.accept(r),
                    // The session is gone.
                    None => return,
                },
                answer = next_answer(stream), if deadline.is_some() => self.answered(answer),
                () = sleep_until(deadline) => self.unanswered(),
                () = sleep_until(give_up) => {}
            }
        }
    }

    /// Replies to the waiting requests that need no keepalive any more, or gave up.
    fn settle(&mut self) {
        let now = Instant::now();
        let mut keep = Vec::new();
        for r in std::mem::take(&mut self.waiting) {
            if r.reply.is_closed() {
                continue;
            }
            let reply = if let Some(alive) = settled(&self.state, r.need) {
                Ok(alive)
            } else if now >= r.give_up {
                Err(self.last_error.as_ref().map_or_else(
                    || StoreError::transient(NAME, "keepalive of the session lease failed"),
                    share,
                ))
            } else {
                keep.push(r);
                continue;
            };
            let _ = r.reply.send(reply);
        }
        self.waiting = keep;
    }

    fn accept(&mut self, r: Request) {
        match &mut self.in_flight {
            Some(f) if f.sent >= r.need => f.waiters.push(r),
            _ => self.waiting.push(r),
        }
    }

    fn confirm(&mut self, sent: Duration) {
        let mut s = lock_state(&self.state);
        s.fresh_from = s.fresh_from.max(sent);
    }

    fn lost(&mut self, waiters: Vec<Request>) {
        self.stream = None;
        mark_lost(self.id, &self.state, &self.grants);
        for w in waiters {
            let _ = w.reply.send(Ok(false));
        }
    }

    fn fail(&mut self, waiters: Vec<Request>, e: &StoreError) {
        for w in waiters {
            let _ = w.reply.send(Err(share(e)));
        }
    }

    /// Sweeps, then sends one keepalive for every waiting request.
    async fn send(&mut self) {
        let Some(grants) = self.grants.upgrade() else {
            let e = StoreError::transient(NAME, "the etcd store was dropped");
            let waiters = std::mem::take(&mut self.waiting);
            self.fail(waiters, &e);
            return;
        };
        if let Err(e) = grants.sweep(self.id).await {
            // No keepalive while a key whose lease passed may still be on the session lease.
            debug!(lease_id = self.id, error = %e, "keepalive held back: abandoned grant not deleted");
            let waiters = std::mem::take(&mut self.waiting);
            self.fail(waiters, &e);
            return;
        }
        self.keepalives.fetch_add(1, Ordering::Relaxed);
        drop(grants);
        let sent = BootClock.now();
        let waiters = std::mem::take(&mut self.waiting);
        if let Some((keeper, _)) = self.stream.as_mut() {
            match keeper.keep_alive().await {
                Ok(()) => {
                    self.in_flight = Some(InFlight {
                        sent,
                        deadline: Instant::now() + self.request_timeout,
                        waiters,
                    });
                }
                Err(e) => self.broken(waiters, e).await,
            }
            return;
        }
        // Opening the stream sends the first keepalive and waits for its answer (a TTL ≤ 0
        // answer comes back as a "lease not found" error). Dropping this future on timeout drops
        // the half-open stream with it.
        let mut client = self.client.clone();
        let opened =
            tokio::time::timeout(self.request_timeout, client.lease_keep_alive(self.id)).await;
        match opened {
            Ok(Ok(stream)) => {
                self.stream = Some(stream);
                self.confirm(sent);
                for w in waiters {
                    let _ = w.reply.send(Ok(true));
                }
            }
            Ok(Err(e)) if is_lease_not_found(&e) => self.lost(waiters),
            Ok(Err(e)) => self.broken(waiters, e).await,
            Err(_) => {
                let e = timed_out("keepalive of the session lease", self.request_timeout);
                self.fail(waiters, &e);
            }
        }
    }

    /// A broken stream (member killed, leader lost, token expired): the waiters try again on a
    /// new stream, likely on another member, until they give up.
    async fn broken(&mut self, waiters: Vec<Request>, e: etcd_client::Error) {
        debug!(lease_id = self.id, error = %e, "keepalive failed; reopening the stream");
        self.stream = None;
        self.last_error = Some(map("keepalive of the session lease", e));
        self.waiting.extend(waiters);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    fn answered(&mut self, answer: Result<Option<i64>, etcd_client::Error>) {
        let Some(flight) = self.in_flight.take() else {
            return;
        };
        match answer {
            Ok(Some(ttl)) if ttl > 0 => {
                self.confirm(flight.sent);
                for w in flight.waiters {
                    let _ = w.reply.send(Ok(true));
                }
            }
            Ok(Some(_)) => self.lost(flight.waiters),
            Err(e) if is_lease_not_found(&e) => self.lost(flight.waiters),
            Ok(None) => {
                let e = etcd_client::Error::LeaseKeepAliveError("keepalive stream closed".into());
                self.broken_now(flight.waiters, e);
            }
            Err(e) => self.broken_now(flight.waiters, e),
        }
    }

    fn broken_now(&mut self, waiters: Vec<Request>, e: etcd_client::Error) {
        debug!(lease_id = self.id, error = %e, "keepalive stream broke; reopening it");
        self.stream = None;
        self.last_error = Some(map("keepalive of the session lease", e));
        // Sent again on a new stream by the next turn of the loop.
        self.waiting.extend(waiters);
    }

    /// The keepalive in flight got no answer within the request timeout: drop the stream, so
    /// that its late answer can never be read as another keepalive's.
    fn unanswered(&mut self) {
        let Some(flight) = self.in_flight.take() else {
            return;
        };
        self.stream = None;
        let e = timed_out("keepalive of the session lease", self.request_timeout);
        self.fail(flight.waiters, &e);
        self.last_error = Some(e);
    }
}

async fn next_answer(
    stream: Option<&mut LeaseKeepAliveStream>,
) -> Result<Option<i64>, etcd_client::Error> {
    match stream {
        Some(s) => Ok(s.message().await?.map(|a| a.ttl())),
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
