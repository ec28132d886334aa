//! Queued grants ([`PostgresStoreBuilder::queued_grants`](crate::PostgresStoreBuilder::queued_grants)):
//! the calls of the schema's functions `lease_acquire`, `lease_release` and `lease_leave`
//! (migration 2, `schema.rs`), and the wait for a grant.
//!
//! Each function is one statement, so one transaction, that locks the key's lease row before
//! it reads or changes the key's queue (`waiters`): every change of a queue happens under that
//! row lock, so a release and the grant to the next waiter are one atomic step. Every call
//! that may find the key free *settles* it first (`lease_settle`): dead entries go, and a free
//! key goes to the oldest live entry, whose grant is announced on the store's channel as
//! `g <fence> <hex key> <hex holder>`, delivered at commit.

use std::time::Duration;

use lease_core::{Enqueued, Fence, LeaseStore, StoreError};
use tokio::sync::broadcast::error::RecvError;
use tokio_postgres::types::Type;

use crate::error::bad_answer;
use crate::notify::{EVERY_KEY, payload_of};
use crate::schema::quote_ident;
use crate::store::{PostgresStore, micros, out_of_fences, to_fence};

/// The statements of a store with queued grants.
pub(crate) struct QueueStatements {
    acquire: String,
    release: String,
    leave: String,
}

impl QueueStatements {
    pub(crate) fn new(schema: &str) -> Self {
        let s = quote_ident(schema);
        let us = "* interval '1 microsecond'";
        Self {
            acquire: format!(
                "SELECT granted, fence FROM {s}.lease_acquire($1, $2, $3 {us}, $4 {us}, $5, $6)"
            ),
            release: format!("SELECT {s}.lease_release($1, $2, $3, $4)"),
            leave: format!("SELECT {s}.lease_leave($1, $2, $3)"),
        }
    }
}

/// How the functions' grant announcements start: `g <fence> <hex key> <hex holder>`.
const GRANT: &str = "g ";

/// What a waiter hears about a key while it waits for its grant.
enum Heard {
    /// The key was granted to this waiter, with this fence.
    Mine(i64),
    /// The key may be free, or the announcements were interrupted: read the row again.
    Look,
}

impl PostgresStore {
    /// `lease_acquire`: granted (with the fence) or not (with the key's current fence); with
    /// `queue`, a caller that is not granted is queued, or its entry refreshed.
    pub(crate) async fn queued_acquire(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
        patience: Duration,
        queue: bool,
    ) -> Result<(bool, Fence), StoreError> {
        let what = || format!("acquire of `{key}`");
        let (k, h) = (key.as_bytes(), holder.as_bytes());
        let (us, patience) = (micros(lease), micros(patience));
        let sql = &self.queue_sql().acquire;
        let before = self.seen().before(key);
        let rows = self
            .query(
                &what,
                sql,
                &[
                    (&k, Type::BYTEA),
                    (&h, Type::BYTEA),
                    (&us, Type::FLOAT8),
                    (&patience, Type::FLOAT8),
                    (&queue, Type::BOOL),
                    (&self.channel(), Type::TEXT),
                ],
            )
            .await
            .map_err(|e| out_of_fences(&what, e))?;
        let row = rows.first().ok_or_else(|| bad_answer(&what(), "no row"))?;
        let bad = |e| bad_answer(&what(), e);
        let granted: bool = row.try_get(0).map_err(bad)?;
        let n: i64 = row.try_get(1).map_err(bad)?;
        if granted {
            self.seen().granted(key, Some(holder), n, before)?;
        } else {
            self.seen().current(key, Some(n), before)?;
        }
        Ok((granted, to_fence(&what, n)?))
    }

    /// `lease_release`: frees the key if `holder` holds it (with `fence`, if given) and grants
    /// it to the next live waiter in the same step.
    pub(crate) async fn queued_release(
        &self,
        key: &str,
        holder: &str,
        fence: Option<i64>,
    ) -> Result<bool, StoreError> {
        let what = || format!("release of `{key}`");
        let (k, h) = (key.as_bytes(), holder.as_bytes());
        let rows = self
            .query(
                &what,
                &self.queue_sql().release,
                &[
                    (&k, Type::BYTEA),
                    (&h, Type::BYTEA),
                    (&fence, Type::INT8),
                    (&self.channel(), Type::TEXT),
                ],
            )
            .await
            .map_err(|e| out_of_fences(&what, e))?;
        one_bool(&what, &rows)
    }

    /// `lease_leave`: the entry goes, and a grant made to `holder` meanwhile is released to
    /// the next waiter.
    pub(crate) async fn queued_leave(&self, key: &str, holder: &str) -> Result<bool, StoreError> {
        let what = || format!("leave_queue of `{key}`");
        let (k, h) = (key.as_bytes(), holder.as_bytes());
        let rows = self
            .query(
                &what,
                &self.queue_sql().leave,
                &[
                    (&k, Type::BYTEA),
                    (&h, Type::BYTEA),
                    (&self.channel(), Type::TEXT),
                ],
            )
            .await
            .map_err(|e| out_of_fences(&what, e))?;
        one_bool(&what, &rows)
    }

    /// [`LeaseStore::enqueue`] of a store with queued grants.
    pub(crate) async fn queued_enqueue(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
        patience: Duration,
    ) -> Result<Enqueued, StoreError> {
        let (granted, fence) = self
            .queued_acquire(lease, key, holder, patience, true)
            .await?;
        Ok(if granted {
            Enqueued::Granted(fence)
        } else {
            Enqueued::Waiting { fence: Some(fence) }
        })
    }

    /// [`LeaseStore::wait_for_grant`] of a store with queued grants: subscribes, reads the
    /// key's row (`holder` has it: its fence; free: `None` at once, the caller's next `enqueue`
    /// settles it), then waits for the announcement of a grant to `holder` (its fence), of the
    /// key's release (read again), the end of the holder's lease (`None`: the next `enqueue`
    /// settles it), or `max_wait`.
    pub(crate) async fn queued_wait_for_grant(
        &self,
        key: &str,
        holder: &str,
        max_wait: Duration,
    ) -> Option<Fence> {
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut heard = self.listener().map(crate::notify::Listener::subscribe);
        let key_hex = payload_of(key);
        let holder_hex = payload_of(holder);
        loop {
            let until = match LeaseStore::inspect(self, key).await {
                Ok(state) if state.holder.as_deref() == Some(holder) => return state.fence,
                Ok(state) => match state.remaining {
                    None => return None,
                    Some(left) => {
                        deadline.min(tokio::time::Instant::now() + left + Duration::from_millis(1))
                    }
                },
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read the key's row while waiting for a grant");
                    deadline
                }
            };
            let Some(heard) = heard.as_mut() else {
                tokio::time::sleep_until(until).await;
                return None;
            };
            let listen = async {
                loop {
                    match heard.recv().await {
                        Ok(m) if &*m == EVERY_KEY || *m == *key_hex => return Heard::Look,
                        Ok(m) => {
                            let Some(rest) = m.strip_prefix(GRANT) else {
                                continue;
                            };
                            let mut parts = rest.splitn(3, ' ');
                            let (Some(fence), Some(k), Some(h)) =
                                (parts.next(), parts.next(), parts.next())
                            else {
                                continue;
                            };
                            if k != key_hex || h != holder_hex {
                                continue;
                            }
                            match fence.parse() {
                                Ok(fence) => return Heard::Mine(fence),
                                Err(_) => return Heard::Look,
                            }
                        }
                        Err(RecvError::Lagged(_)) => return Heard::Look,
                        Err(RecvError::Closed) => std::future::pending::<()>().await,
                    }
                }
            };
            match tokio::time::timeout_at(until, listen).await {
                Ok(Heard::Mine(fence)) => return Fence::from_i64(fence),
                Ok(Heard::Look) if tokio::time::Instant::now() < deadline => {}
                Ok(Heard::Look) | Err(_) => return None,
            }
        }
    }
}

fn one_bool(
    what: &(dyn Fn() -> String + Sync),
    rows: &[tokio_postgres::Row],
) -> Result<bool, StoreError> {
    rows.first()
        .ok_or_else(|| bad_answer(&what(), "no row"))?
        .try_get(0)
        .map_err(|e| bad_answer(&what(), e))
}
