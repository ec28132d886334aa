//! One etcd lease per store and TTL (the *session*), covering every key the store grants with
//! that TTL, kept alive by one keepalive stream.
//!
//! # Invariants
//!
//! - Every key granted through a session is attached to its etcd lease, so the key lives at
//!   least until *send time of the session's last successful keepalive + TTL* (the server sets
//!   the lease's expiry when it handles the keepalive, after we sent it; a leader change only
//!   extends leases).
//! - `fresh_from` is that send time (or the grant's). A caller that needs its key held until
//!   `t + lease` needs `fresh_from >= t - (TTL - lease)`; [`Session::ensure_fresh`] sends a
//!   keepalive only when that does not hold yet.
//! - One keepalive is in flight at a time (the stream mutex). Callers that queue behind it
//!   re-check `fresh_from` when they get the stream: a keepalive sent after they arrived serves
//!   all of them, so keepalives grow with round trips, not with held keys.
//! - A keepalive answer with TTL ≤ 0 (or "lease not found") marks the session lost for good:
//!   its keys are gone or going, every later renew of them returns `false`, and the store
//!   grants new keys on a new session.

use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use etcd_client::{LeaseKeepAliveStream, LeaseKeeper};
use lease_core::{BootClock, Clock, StoreError};
use tracing::{debug, warn};

use crate::NAME;
use crate::error::{is_lease_not_found, map};
use crate::store::Inner;

pub(crate) struct Session {
    pub(crate) id: i64,
    /// The TTL etcd granted.
    pub(crate) ttl: Duration,
    state: Mutex<State>,
    stream: tokio::sync::Mutex<Option<(LeaseKeeper, LeaseKeepAliveStream)>>,
}

struct State {
    /// `BootClock` send time of the last keepalive (or the grant) etcd confirmed.
    fresh_from: Duration,
    lost: bool,
}

impl Session {
    pub(crate) fn new(id: i64, ttl: Duration, granted_at: Duration) -> Self {
        Self {
            id,
            ttl,
            state: Mutex::new(State {
                fresh_from: granted_at,
                lost: false,
            }),
            stream: tokio::sync::Mutex::new(None),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Each update is a plain assignment: a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.state().lost
    }

    pub(crate) fn mark_lost(&self) {
        let mut s = self.state();
        if !s.lost {
            warn!(lease_id = self.id, "etcd session lease lapsed");
        }
        s.lost = true;
    }

    /// See [`EtcdStore::session_cover`](crate::EtcdStore::session_cover).
    pub(crate) fn cover(&self) -> Option<Duration> {
        let s = self.state();
        if s.lost {
            return None;
        }
        (s.fresh_from + self.ttl).checked_sub(BootClock.now())
    }

    /// `Some(alive)` when no keepalive is needed to know the answer for `need`.
    fn settled(&self, need: Duration) -> Option<bool> {
        let s = self.state();
        if s.lost {
            Some(false)
        } else if s.fresh_from >= need {
            Some(true)
        } else {
            None
        }
    }

    /// Makes sure a keepalive sent at or after `need` (a `BootClock` time) has been confirmed.
    /// `Ok(false)` when the lease is gone.
    ///
    /// # Errors
    ///
    /// A transient error when etcd did not answer within the request timeout (after reopening
    /// the keepalive stream a few times).
    pub(crate) async fn ensure_fresh(
        &self,
        inner: &Inner,
        need: Duration,
    ) -> Result<bool, StoreError> {
        if let Some(alive) = self.settled(need) {
            return Ok(alive);
        }
        let mut slot = self.stream.lock().await;
        let give_up = tokio::time::Instant::now() + inner.request_timeout;
        let mut last_error = None;
        while tokio::time::Instant::now() < give_up {
            if let Some(alive) = self.settled(need) {
                return Ok(alive);
            }
            inner.sweep(self.id).await;
            let sent = BootClock.now();
            let left = give_up.saturating_duration_since(tokio::time::Instant::now());
            let answer = tokio::time::timeout(left, keep_alive(&mut slot, inner, self.id)).await;
            match answer {
                Ok(Ok(ttl)) if ttl > 0 => {
                    let mut s = self.state();
                    s.fresh_from = s.fresh_from.max(sent);
                    return Ok(!s.lost);
                }
                Ok(Ok(_)) => {
                    *slot = None;
                    self.mark_lost();
                    return Ok(false);
                }
                Ok(Err(e)) if is_lease_not_found(&e) => {
                    *slot = None;
                    self.mark_lost();
                    return Ok(false);
                }
                Ok(Err(e)) => {
                    // A broken stream (member killed, leader lost, token expired): reopen it,
                    // likely on another member.
                    debug!(lease_id = self.id, error = %e, "keepalive failed; reopening the stream");
                    *slot = None;
                    last_error = Some(e);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(_) => {
                    // A late answer would be read as the next request's: drop the stream.
                    *slot = None;
                    return Err(StoreError::transient(
                        NAME,
                        format!(
                            "keepalive of the session lease got no answer within {:?}",
                            inner.request_timeout
                        ),
                    ));
                }
            }
        }
        Err(match last_error {
            Some(e) => map("keepalive of the session lease", e),
            None => StoreError::transient(NAME, "keepalive of the session lease failed"),
        })
    }
}

/// Sends one keepalive on the session's stream, opening the stream if needed, and returns the
/// TTL etcd answered with.
async fn keep_alive(
    slot: &mut Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    inner: &Inner,
    id: i64,
) -> Result<i64, etcd_client::Error> {
    inner.keepalives.fetch_add(1, Ordering::Relaxed);
    if let Some((keeper, stream)) = slot.as_mut() {
        keeper.keep_alive().await?;
        return match stream.message().await? {
            Some(answer) => Ok(answer.ttl()),
            None => Err(etcd_client::Error::LeaseKeepAliveError(
                "keepalive stream closed".into(),
            )),
        };
    }
    // Opening the stream sends the first keepalive and waits for its answer (a TTL ≤ 0 answer
    // comes back as a "lease not found" error).
    let mut client = inner.client.clone();
    let (keeper, stream) = client.lease_keep_alive(id).await?;
    *slot = Some((keeper, stream));
    Ok(1)
}
