//! The versioned schema: numbered migrations, applied in order, recorded in `user_version`.

use rusqlite::Connection;

/// Migration `i` brings the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &["CREATE TABLE leases (
         key BLOB PRIMARY KEY NOT NULL,
         holder BLOB,
         fence INTEGER NOT NULL,
         boot_id TEXT NOT NULL,
         expires_ns INTEGER NOT NULL
     ) WITHOUT ROWID;"];

/// The schema version this build writes.
pub(crate) const LATEST: i64 = MIGRATIONS.len() as i64;

/// Brings the database to [`LATEST`]; refuses one written by a newer version.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), String> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| e.to_string())?;
    let version: i64 = tx
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if version > LATEST {
        return Err(format!(
            "the database has schema version {version}, written by a newer lease-sqlite; this \
             version understands up to {LATEST}"
        ));
    }
    if version < 0 {
        return Err(format!(
            "the database has an invalid schema version {version}"
        ));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(sql)
            .map_err(|e| format!("migration to schema version {}: {e}", i + 1))?;
    }
    tx.pragma_update(None, "user_version", LATEST)
        .map_err(|e| e.to_string())?;
    tx.commit().map_err(|e| e.to_string())
}
