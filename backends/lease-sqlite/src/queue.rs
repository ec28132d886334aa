//! Queued grants: the `waiters` table and the transaction steps that hand a key to the oldest
//! live waiter ([`Enqueued`]'s rules).
//!
//! A waiter's entry is one row of `waiters`, ordered by `seq` (AUTOINCREMENT: never reused),
//! one per (key, holder), with the lease it asked for and a liveness deadline on the store's
//! clock (the host's boot clock plus boot id, as a lease's expiry: an entry of another boot is
//! dead). Every step here runs inside the caller's `BEGIN IMMEDIATE` transaction, so a release
//! and the grant to the next waiter are one atomic step between processes.
//!
//! [`settle`] is the heart of it, run by every call that may find a key free (acquire, enqueue,
//! release, leaving the queue): dead entries of the key are deleted, and if the key is free
//! (released, expired, or of a previous boot) and a live entry is queued, the oldest one is
//! granted the key (fence + 1, the lease it asked for, its entry deleted). So no newcomer
//! overtakes a live waiter, and the key's holder that just released it queues behind them.
//!
//! Every store settles, also one built without
//! [`queued_grants`](crate::SqliteStoreBuilder::queued_grants): such a store makes no entries
//! (its `enqueue` is `try_lock`), but it honours the entries that stores sharing the database
//! made, so a mixed fleet keeps the queue's order and its safety.
//!
//! The grant is made in the database; the transaction notes the granted waiter's doorbell
//! (`waiters.wake`, see [`crate::doorbell`]) and the grant in [`Tx::rung`], rung after the
//! commit. The granted waiter learns the grant from the doorbell's datagram, or from the row (a
//! re-read, or a ring without the grant), and takes the key's wake-up flock in its own store:
//! the store that granted on the waiter's behalf never takes it (see
//! `SqliteStore::wait_for_grant`).

use lease_core::Enqueued;
use rusqlite::{OptionalExtension, params};

use crate::tx::{Row, Tx, TxError};

/// What [`grant_next`] and the grants of the callers say when the fence cannot move.
const CANNOT_GRANT: &str = "the key cannot be granted again";

/// A key's row after [`settle`], and whether it is a live lease.
pub(crate) struct Settled {
    pub(crate) row: Option<Row>,
    /// Decided once per transaction: a second look at the holder's liveness could differ
    /// from the one `settle` acted on (the holder may die in between), and a caller acting on
    /// it would then take a free key past the waiters `settle` did not grant it to.
    pub(crate) held: bool,
}

/// Deletes the key's dead entries; then, if the key is free, grants it to the oldest live
/// entry. Returns the row as it is now (`row` is the one read in this transaction).
pub(crate) fn settle(tx: &Tx<'_>, key: &str, row: Option<Row>) -> Result<Settled, TxError> {
    tx.prepare_cached(
        "DELETE FROM waiters WHERE key = ?1 AND (boot_id <> ?2 OR live_until_ns <= ?3)",
    )?
    .execute(params![key.as_bytes(), tx.boot, tx.now])?;
    if row.as_ref().is_some_and(|r| tx.live(r)) {
        return Ok(Settled { row, held: true });
    }
    Ok(match grant_next(tx, key)? {
        Some(granted) => {
            let fence = tx.next_fence(key, row.map(|r| r.fence), CANNOT_GRANT)?;
            if let Some(bell) = &granted.wake {
                let hash = crate::wake::fnv1a64(key.as_bytes());
                let grant = crate::doorbell::Grant {
                    key: key.as_bytes().into(),
                    holder: granted.holder.as_slice().into(),
                    fence,
                    lease_ns: granted.lease_ns,
                };
                tx.rung.borrow_mut().push((bell.clone(), hash, grant));
            }
            Settled {
                row: Some(granted.write(tx, key, fence)?),
                held: true,
            }
        }
        None => Settled { row, held: false },
    })
}

/// The oldest live entry of a free key, taken out of the queue.
struct Next {
    holder: Vec<u8>,
    lease_ns: i64,
    process: Option<String>,
    /// The waiter's doorbell, rung after the commit.
    wake: Option<String>,
}

impl Next {
    /// Writes the grant to this waiter, with `fence` and the lease it asked for.
    fn write(self, tx: &Tx<'_>, key: &str, fence: i64) -> rusqlite::Result<Row> {
        let expires = tx.now.saturating_add(self.lease_ns);
        tx.write_grant(key, &self.holder, self.process.as_deref(), fence, expires)
    }
}

/// Takes the oldest entry whose store is not known to be gone out of the queue (the clock's
/// dead ones are gone after [`settle`]'s purge; those of a gone store are deleted on the way).
fn grant_next(tx: &Tx<'_>, key: &str) -> Result<Option<Next>, TxError> {
    loop {
        let head = tx
            .prepare_cached(
                "SELECT seq, holder, lease_ns, process, wake FROM waiters WHERE key = ?1
                 ORDER BY seq LIMIT 1",
            )?
            .query_row([key.as_bytes()], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    Next {
                        holder: r.get(1)?,
                        lease_ns: r.get(2)?,
                        process: r.get(3)?,
                        wake: r.get(4)?,
                    },
                ))
            })
            .optional()?;
        let Some((seq, next)) = head else {
            return Ok(None);
        };
        delete_entry(tx, seq)?;
        if !tx.liveness.is_gone(next.process.as_deref()) {
            return Ok(Some(next));
        }
    }
}

fn delete_entry(tx: &Tx<'_>, seq: i64) -> rusqlite::Result<usize> {
    tx.prepare_cached("DELETE FROM waiters WHERE seq = ?1")?
        .execute([seq])
}

/// `try_lock`'s decision for a positive lease, after settling the key: the fence granted or
/// extended, or the key's fence when another holder has it (or a live waiter was granted it
/// just now).
pub(crate) fn acquire(
    tx: &Tx<'_>,
    key: &str,
    holder: &str,
    lease_ns: i64,
) -> Result<Result<i64, i64>, TxError> {
    let Settled { row, held } = settle(tx, key, tx.read_row(key)?)?;
    let holder = holder.as_bytes();
    let expires = tx.now.saturating_add(lease_ns);
    let fence = match row {
        // Its own key, live or expired with nobody queued (else `settle` granted it on): an
        // extension, or a retake with the same fence. It is no longer waiting for the key.
        Some(r) if r.is_of(holder) => {
            leave(tx, key, holder)?;
            r.fence
        }
        Some(r) if held => return Ok(Err(r.fence)),
        // Free, and no live waiter is queued (`settle` would have granted it).
        row => tx.next_fence(key, row.map(|r| r.fence), CANNOT_GRANT)?,
    };
    tx.write_grant(key, holder, tx.liveness.id(), fence, expires)?;
    Ok(Ok(fence))
}

/// [`LeaseStore::enqueue`](lease_core::LeaseStore::enqueue) in a store with queues: acquires
/// as `try_lock` does, else queues `holder` (or refreshes its entry, which keeps its place).
pub(crate) fn enqueue(
    tx: &Tx<'_>,
    key: &str,
    holder: &str,
    lease_ns: i64,
    patience_ns: i64,
) -> Result<Enqueued, TxError> {
    Ok(match acquire(tx, key, holder, lease_ns)? {
        Ok(fence) => Enqueued::Granted(fence_of(fence)?),
        Err(fence) => {
            // A dead entry of this holder was deleted by `settle`: it queues anew, at the back.
            tx.prepare_cached(
                "INSERT INTO waiters (key, holder, lease_ns, live_until_ns, boot_id, process, wake)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (key, holder) DO UPDATE SET lease_ns = ?3, live_until_ns = ?4,
                     process = ?6, wake = ?7",
            )?
            .execute(params![
                key.as_bytes(),
                holder.as_bytes(),
                lease_ns,
                tx.now.saturating_add(patience_ns),
                tx.boot,
                tx.liveness.id(),
                tx.doorbell
            ])?;
            Enqueued::Waiting {
                fence: Some(fence_of(fence)?),
            }
        }
    })
}

/// Releases `key` if `holder` holds it (with `fence`, if given), and grants it to the next live
/// waiter in the same step. Returns whether it released.
pub(crate) fn release(
    tx: &Tx<'_>,
    key: &str,
    holder: &str,
    fence: Option<i64>,
) -> Result<bool, TxError> {
    let n = tx
        .prepare_cached(
            "UPDATE leases SET holder = NULL
             WHERE key = ?1 AND holder = ?2 AND (?3 IS NULL OR fence = ?3)",
        )?
        .execute(params![key.as_bytes(), holder.as_bytes(), fence])?;
    if n == 0 {
        return Ok(false);
    }
    match settle(tx, key, tx.read_row(key)?) {
        // The key's fence is at its maximum: it cannot be granted again, to a waiter or anyone
        // (their next acquire says so), but the release itself must not fail for it.
        Err(TxError::Store(e)) => {
            tracing::debug!(error = %e, "released; the next waiter cannot be granted the key");
        }
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    Ok(true)
}

/// [`LeaseStore::leave_queue`](lease_core::LeaseStore::leave_queue): deletes `holder`'s entry,
/// and gives back a grant made to it meanwhile (to the next waiter, in the same step).
pub(crate) fn leave_queue(tx: &Tx<'_>, key: &str, holder: &str) -> Result<bool, TxError> {
    leave(tx, key, holder.as_bytes())?;
    release(tx, key, holder, None)
}

fn leave(tx: &Tx<'_>, key: &str, holder: &[u8]) -> rusqlite::Result<usize> {
    tx.prepare_cached("DELETE FROM waiters WHERE key = ?1 AND holder = ?2")?
        .execute(params![key.as_bytes(), holder])
}

fn fence_of(n: i64) -> Result<lease_core::Fence, TxError> {
    crate::tx::to_fence(n).map_err(TxError::Store)
}
