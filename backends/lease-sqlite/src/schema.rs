//! The versioned schema: numbered migrations, applied in order, recorded in `user_version`.

use std::fmt;

use lease_core::StoreError;
use rusqlite::Connection;

use crate::NAME;
use crate::busy::{self, Busy};

/// Migration `i` brings the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE leases (
         key BLOB PRIMARY KEY NOT NULL,
         holder BLOB,
         fence INTEGER NOT NULL,
         boot_id TEXT NOT NULL,
         expires_ns INTEGER NOT NULL
     ) WITHOUT ROWID;",
    // The queue of waiters per key (see `queue.rs`). `seq` is the queue order: AUTOINCREMENT so
    // that a number is never handed out twice, even after the newest entry was deleted, and so
    // that running out of numbers is an error instead of SQLite picking unused ones at random
    // (which would reorder the queue). One entry per (key, holder); `lease_ns` is the lease the
    // waiter asked for, granted when its turn comes; `live_until_ns` and `boot_id` are on the
    // store's clock, as a lease's expiry is (an entry of another boot is dead). `process`, in
    // both tables, is the liveness id of the store that wrote the row (see `liveness.rs`; NULL
    // in rows of the first schema).
    "ALTER TABLE leases ADD COLUMN process TEXT;
     CREATE TABLE waiters (
         seq INTEGER PRIMARY KEY AUTOINCREMENT,
         key BLOB NOT NULL,
         holder BLOB NOT NULL,
         lease_ns INTEGER NOT NULL,
         live_until_ns INTEGER NOT NULL,
         boot_id TEXT NOT NULL,
         process TEXT,
         UNIQUE (key, holder)
     );
     CREATE INDEX waiters_in_order ON waiters (key, seq);",
    // The waiter's doorbell (see `doorbell`), woken when the entry is granted the key.
    "ALTER TABLE waiters ADD COLUMN wake TEXT;",
];

/// The schema version this build writes.
pub(crate) const LATEST: i64 = MIGRATIONS.len() as i64;

/// Why [`migrate`] did not bring the database to [`LATEST`].
#[derive(Debug)]
pub(crate) enum MigrateError {
    /// Another connection holds a lock the migration needs (busy or locked, from any of its
    /// statements): worth retrying; nothing was changed.
    Busy(rusqlite::Error),
    /// Reading or writing the schema version, or committing, failed.
    Sqlite(rusqlite::Error),
    /// The migration to schema version `to` failed.
    Step { to: i64, source: rusqlite::Error },
    /// The database was written by a newer version, which this one must not touch.
    Newer { found: i64, supported: i64 },
    /// The schema version is negative: no version of lease-sqlite wrote it.
    Invalid { found: i64 },
}

impl MigrateError {
    /// Busy errors are told apart by SQLite's code, whatever the statement.
    fn sqlite(e: rusqlite::Error, or: impl FnOnce(rusqlite::Error) -> Self) -> Self {
        if busy::is_busy(&e) {
            Self::Busy(e)
        } else {
            or(e)
        }
    }

    /// The permanent error of opening the database `db` (as shown to the user), with SQLite's
    /// error as its source where there is one.
    pub(crate) fn for_db(self, db: &str) -> StoreError {
        let err = StoreError::permanent(NAME, format!("{db}: {self}"));
        match self {
            Self::Busy(e) | Self::Sqlite(e) | Self::Step { source: e, .. } => err.with_source(e),
            Self::Newer { .. } | Self::Invalid { .. } => err,
        }
    }
}

impl From<rusqlite::Error> for MigrateError {
    fn from(e: rusqlite::Error) -> Self {
        Self::sqlite(e, Self::Sqlite)
    }
}

impl Busy for MigrateError {
    fn into_busy(self) -> Result<rusqlite::Error, Self> {
        match self {
            Self::Busy(e) => Ok(e),
            other => Err(other),
        }
    }
}

/// Says what failed; SQLite's own error is the [source](std::error::Error::source).
impl fmt::Display for MigrateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Busy(_) => f.write_str("the database is locked by another connection"),
            Self::Sqlite(_) => f.write_str("cannot read or update the schema version"),
            Self::Step { to, .. } => write!(f, "migration to schema version {to}"),
            Self::Newer { found, supported } => write!(
                f,
                "the database has schema version {found}, written by a newer lease-sqlite; this \
                 version understands up to {supported}"
            ),
            Self::Invalid { found } => {
                write!(f, "the database has an invalid schema version {found}")
            }
        }
    }
}

impl std::error::Error for MigrateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Busy(e) | Self::Sqlite(e) | Self::Step { source: e, .. } => Some(e),
            Self::Newer { .. } | Self::Invalid { .. } => None,
        }
    }
}

/// Brings the database to [`LATEST`]; refuses one written by a newer version.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), MigrateError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > LATEST {
        return Err(MigrateError::Newer {
            found: version,
            supported: LATEST,
        });
    }
    if version < 0 {
        return Err(MigrateError::Invalid { found: version });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(sql).map_err(|e| {
            MigrateError::sqlite(e, |source| MigrateError::Step {
                to: i as i64 + 1,
                source,
            })
        })?;
    }
    tx.pragma_update(None, "user_version", LATEST)?;
    tx.commit().map_err(MigrateError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(conn: &Connection) -> i64 {
        conn.pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("user_version")
    }

    fn at_version(v: i64) -> Connection {
        let conn = Connection::open_in_memory().expect("in-memory database");
        conn.pragma_update(None, "user_version", v)
            .expect("set user_version");
        conn
    }

    #[test]
    fn a_new_database_is_brought_to_the_latest_version_once() {
        let mut conn = at_version(0);
        migrate(&mut conn).expect("migrate");
        assert_eq!(version(&conn), LATEST);
        migrate(&mut conn).expect("a second run changes nothing");
        assert_eq!(version(&conn), LATEST);
    }

    /// A database of the first schema (leases only, with a held key) gets the waiters table
    /// and keeps its rows.
    #[test]
    fn a_version_1_database_gets_the_waiters_table_and_keeps_its_leases() {
        let mut conn = at_version(0);
        conn.execute_batch(MIGRATIONS[0]).expect("the first schema");
        conn.pragma_update(None, "user_version", 1_i64)
            .expect("set user_version");
        conn.execute(
            "INSERT INTO leases VALUES (x'6b', x'61', 7, 'boot', 123)",
            [],
        )
        .expect("a lease row");
        migrate(&mut conn).expect("migrate");
        assert_eq!(version(&conn), LATEST);
        let fence: i64 = conn
            .query_row("SELECT fence FROM leases", [], |r| r.get(0))
            .expect("the lease row is kept");
        assert_eq!(fence, 7);
        conn.execute(
            "INSERT INTO waiters (key, holder, lease_ns, live_until_ns, boot_id)
             VALUES (x'6b', x'62', 1, 2, 'boot')",
            [],
        )
        .expect("the waiters table exists");
        let dup = conn.execute(
            "INSERT INTO waiters (key, holder, lease_ns, live_until_ns, boot_id)
             VALUES (x'6b', x'62', 1, 2, 'boot')",
            [],
        );
        assert!(dup.is_err(), "one entry per (key, holder)");
    }

    #[test]
    fn a_version_2_database_gets_the_doorbell_column_and_keeps_its_queue() {
        let mut conn = at_version(0);
        conn.execute_batch(MIGRATIONS[0]).expect("the first schema");
        conn.execute_batch(MIGRATIONS[1])
            .expect("the second schema");
        conn.pragma_update(None, "user_version", 2_i64)
            .expect("set user_version");
        conn.execute(
            "INSERT INTO waiters (key, holder, lease_ns, live_until_ns, boot_id)
             VALUES (x'6b', x'62', 1, 2, 'boot')",
            [],
        )
        .expect("an entry");
        migrate(&mut conn).expect("migrate");
        assert_eq!(version(&conn), LATEST);
        let wake: Option<String> = conn
            .query_row("SELECT wake FROM waiters WHERE holder = x'62'", [], |r| {
                r.get(0)
            })
            .expect("the entry is kept, with the new column");
        assert_eq!(wake, None, "an entry of an older version names no doorbell");
    }

    #[test]
    fn a_newer_schema_is_refused_naming_both_versions() {
        let err = migrate(&mut at_version(LATEST + 98)).expect_err("newer");
        assert!(
            matches!(err, MigrateError::Newer { found, supported }
                if found == LATEST + 98 && supported == LATEST),
            "{err:?}"
        );
        let msg = err.for_db("/var/lib/app/locks.db").to_string();
        assert!(msg.contains("/var/lib/app/locks.db"), "{msg}");
        assert!(
            msg.contains(&format!("schema version {}", LATEST + 98)),
            "{msg}"
        );
        assert!(msg.contains("newer"), "{msg}");
    }

    #[test]
    fn a_negative_schema_version_is_invalid() {
        let err = migrate(&mut at_version(-1)).expect_err("invalid");
        assert!(
            matches!(err, MigrateError::Invalid { found: -1 }),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("invalid schema version -1"),
            "{err}"
        );
    }

    #[test]
    fn a_failed_migration_names_its_version_and_keeps_sqlite_s_error() {
        // Version 0, yet a `leases` table of an application's own is in the way.
        let mut conn = at_version(0);
        conn.execute_batch("CREATE TABLE leases (x)")
            .expect("a table in the way");
        let err = migrate(&mut conn).expect_err("table exists");
        assert!(matches!(err, MigrateError::Step { to: 1, .. }), "{err:?}");
        assert!(err.into_busy().is_err(), "not busy");
        let err = migrate(&mut conn)
            .expect_err("table exists")
            .for_db("locks.db");
        assert_eq!(err.kind(), lease_core::StoreErrorKind::Permanent, "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("locks.db: migration to schema version 1"),
            "{msg}"
        );
        assert!(msg.contains("already exists"), "{msg}");
        assert_eq!(version(&conn), 0, "rolled back");
    }

    #[test]
    fn a_database_locked_by_another_connection_is_busy() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("locks.db");
        let mut conn = Connection::open(&path).expect("open");
        // Fail at once instead of waiting in SQLite's busy handler.
        conn.busy_timeout(std::time::Duration::ZERO)
            .expect("busy timeout");
        let blocker = Connection::open(&path).expect("open a second connection");
        blocker
            .execute_batch("BEGIN IMMEDIATE")
            .expect("take the write lock");
        let err = migrate(&mut conn).expect_err("locked");
        assert!(matches!(err, MigrateError::Busy(_)), "{err:?}");
        let busy = err.into_busy().expect("busy");
        assert!(busy::is_busy(&busy), "{busy}");

        blocker.execute_batch("ROLLBACK").expect("unlock");
        migrate(&mut conn).expect("migrate once the lock is gone");
        assert_eq!(version(&conn), LATEST);
    }
}
