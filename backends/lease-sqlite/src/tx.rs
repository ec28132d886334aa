//! One store transaction as the operations see it ([`Tx`]), why an attempt failed
//! ([`TxError`]), and the `leases` row ([`Row`]) with the steps on it that every operation
//! shares: read it, move its fence, write a grant.

use std::ops::Deref;

use lease_core::StoreError;
use rusqlite::{OptionalExtension, params};

use crate::NAME;
use crate::busy::Busy;
use crate::liveness::Liveness;

/// An open `BEGIN IMMEDIATE` transaction, with the store's clock reading and boot id taken for
/// it. Derefs to the SQLite transaction.
pub(crate) struct Tx<'c> {
    pub(crate) tx: rusqlite::Transaction<'c>,
    /// Now on the host's boot clock, in nanoseconds.
    pub(crate) now: i64,
    /// This boot's id: rows of another boot are expired.
    pub(crate) boot: &'c str,
    /// Whether the commit will be as durable as a grant needs (see [`Tx::next_fence`]).
    pub(crate) durable: bool,
    /// Tells whether the store that wrote a row is gone.
    pub(crate) liveness: &'c Liveness,
    /// This store's doorbell, named in the queue entries it writes.
    pub(crate) doorbell: Option<&'c str>,
    /// The doorbells of the waiters this transaction granted a key to, with the key's hash and
    /// the grant: rung after the commit.
    pub(crate) rung: std::cell::RefCell<Vec<(String, u64, crate::doorbell::Grant)>>,
}

impl<'c> Deref for Tx<'c> {
    type Target = rusqlite::Transaction<'c>;

    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl Tx<'_> {
    /// The fence of the key's next grant: 1 for a key without a row, else the row's fence + 1.
    ///
    /// Every step that moves a fence takes it from here, so here is where a transaction that
    /// was begun for a commit that is not durable enough (a release with
    /// [`Durability::Full`](crate::Durability::Full), which commits with `synchronous=NORMAL`
    /// unless it grants) asks to be run again as a durable one: a fence handed out must not be
    /// lost to a power loss and handed out again.
    ///
    /// A fence repeated would let a stale holder's writes through: out of fences is an error
    /// (the transaction rolls back), never a repeat; `then` says what that means for the caller.
    pub(crate) fn next_fence(
        &self,
        key: &str,
        current: Option<i64>,
        then: &str,
    ) -> Result<i64, TxError> {
        if !self.durable {
            return Err(TxError::NeedsDurableCommit);
        }
        let Some(current) = current else {
            return Ok(1);
        };
        current.checked_add(1).ok_or_else(|| {
            TxError::Store(StoreError::permanent(
                NAME,
                format!(
                    "the fence of `{key}` is at its maximum ({current}) and cannot increase; \
                     {then}"
                ),
            ))
        })
    }

    /// Writes `holder`'s grant of `key`: its fence, expiry on this boot's clock, and the
    /// liveness id of its store (`process`).
    pub(crate) fn write_grant(
        &self,
        key: &str,
        holder: &[u8],
        process: Option<&str>,
        fence: i64,
        expires_ns: i64,
    ) -> rusqlite::Result<Row> {
        self.prepare_cached(
            "INSERT INTO leases (key, holder, fence, boot_id, expires_ns, process)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (key) DO UPDATE SET holder = ?2, fence = ?3, boot_id = ?4,
                 expires_ns = ?5, process = ?6",
        )?
        .execute(params![
            key.as_bytes(),
            holder,
            fence,
            self.boot,
            expires_ns,
            process
        ])?;
        Ok(Row {
            holder: Some(holder.to_vec()),
            fence,
            boot_id: self.boot.to_owned(),
            expires_ns,
            process: process.map(str::to_owned),
        })
    }

    /// The key's row.
    pub(crate) fn read_row(&self, key: &str) -> rusqlite::Result<Option<Row>> {
        self.prepare_cached(SELECT_ROW)?
            .query_row([key.as_bytes()], row_of)
            .optional()
    }

    /// Whether `row` is a live lease now: by the clock, and its store not known to be gone.
    pub(crate) fn live(&self, row: &Row) -> bool {
        row.live(self.now, self.boot) && !self.liveness.is_gone(row.process.as_deref())
    }
}

/// Selects a key's `leases` row as [`row_of`] reads it.
pub(crate) const SELECT_ROW: &str =
    "SELECT holder, fence, boot_id, expires_ns, process FROM leases WHERE key = ?1";

/// Why one transaction attempt failed: SQLite (busy is retried), the store's own verdict
/// (rolls back, not retried), or a step that needs a more durable commit (rolls back, and the
/// attempt is made again at once as a durable one).
pub(crate) enum TxError {
    Sql(rusqlite::Error),
    Store(StoreError),
    NeedsDurableCommit,
}

impl From<rusqlite::Error> for TxError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sql(e)
    }
}

impl Busy for TxError {
    fn into_busy(self) -> Result<rusqlite::Error, Self> {
        match self {
            Self::Sql(e) => e.into_busy().map_err(Self::Sql),
            other => Err(other),
        }
    }
}

/// A `leases` row.
pub(crate) struct Row {
    /// `None` once released.
    pub(crate) holder: Option<Vec<u8>>,
    pub(crate) fence: i64,
    pub(crate) boot_id: String,
    pub(crate) expires_ns: i64,
    /// The liveness id of the store that wrote the grant (`None` in rows of the first schema).
    pub(crate) process: Option<String>,
}

impl Row {
    /// Whether a holder's lease is live at `now` on the clock of boot `boot`: a lease of
    /// another boot has expired, whatever its expiry says. The clock only; see [`Tx::live`].
    pub(crate) fn live(&self, now: i64, boot: &str) -> bool {
        self.holder.is_some() && self.boot_id == boot && self.expires_ns > now
    }

    /// Whether the row names `holder` (live or not).
    pub(crate) fn is_of(&self, holder: &[u8]) -> bool {
        self.holder.as_deref() == Some(holder)
    }
}

/// A `leases` row selected as `holder, fence, boot_id, expires_ns, process` ([`SELECT_ROW`]).
pub(crate) fn row_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        holder: r.get(0)?,
        fence: r.get(1)?,
        boot_id: r.get(2)?,
        expires_ns: r.get(3)?,
        process: r.get(4)?,
    })
}

/// A fence as stored, back as a [`Fence`](lease_core::Fence); a value no grant can have written
/// is an error.
pub(crate) fn to_fence(n: i64) -> Result<lease_core::Fence, StoreError> {
    lease_core::Fence::from_i64(n).ok_or_else(|| {
        StoreError::new(
            lease_core::StoreErrorKind::FenceRegressed,
            NAME,
            format!("invalid fence {n} in the database"),
        )
    })
}
