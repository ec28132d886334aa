//! SQLite: the floor is one `BEGIN IMMEDIATE` transaction writing one row, `synchronous=FULL`
//! on WAL, on a blocking thread (as the store runs its transactions), in a database beside the
//! store's. The harness's own database has the waiter queue and process liveness
//! (`?queued_grants=true&process_liveness=true`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use lease_core::DynStore;
use leasehold::sqlite::SqliteStore;

use super::{Backend, Floor, Fut, QUEUED_GRANTS};

pub(super) struct Sqlite;

impl Backend for Sqlite {
    fn floor_operation(&self) -> &'static str {
        "BEGIN IMMEDIATE write, synchronous=FULL, WAL"
    }

    /// With the queue, process liveness: a SIGKILLed holder's key passes to the next waiter as
    /// soon as its process is gone, not at the end of its lease (the crash scenario's goal).
    fn queued_grants_options(&self) -> &'static [&'static str] {
        &[QUEUED_GRANTS, "process_liveness=true"]
    }

    /// The default lease: with process liveness a takeover does not wait for it.
    fn crash_lease_ms(&self) -> u64 {
        10_000
    }

    fn floor<'a>(&'a self, _location: &'a str, store: &'a DynStore) -> Fut<'a, Box<dyn Floor>> {
        Box::pin(async move {
            let store = store
                .downcast_ref::<SqliteStore>()
                .context("the sqlite floor needs the SQLite store")?;
            let path = store.path().with_extension("floor.db");
            let conn = tokio::task::spawn_blocking(move || -> rusqlite::Result<_> {
                let conn = rusqlite::Connection::open(&path)?;
                conn.busy_timeout(Duration::from_secs(5))?;
                let _: String =
                    conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
                conn.pragma_update(None, "synchronous", "FULL")?;
                conn.execute_batch(
                    "CREATE TABLE IF NOT EXISTS floor (k BLOB PRIMARY KEY NOT NULL, v INTEGER NOT \
                     NULL) WITHOUT ROWID;",
                )?;
                Ok(conn)
            })
            .await?
            .context("opening the sqlite floor database")?;
            Ok(Box::new(Transaction(Arc::new(Mutex::new(conn)))) as Box<dyn Floor>)
        })
    }

    fn version<'a>(&'a self, _location: &'a str) -> Fut<'a, String> {
        Box::pin(async { Ok(format!("SQLite {}", rusqlite::version())) })
    }
}

/// The floor's connection.
struct Transaction(Arc<Mutex<rusqlite::Connection>>);

impl Floor for Transaction {
    fn op<'a>(&'a self, key: &'a str) -> Fut<'a, ()> {
        Box::pin(async move {
            let conn = self.0.clone();
            let key = key.as_bytes().to_vec();
            tokio::task::spawn_blocking(move || -> rusqlite::Result<()> {
                let mut conn = conn.lock().unwrap_or_else(|e| e.into_inner());
                let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                tx.execute(
                    "INSERT INTO floor (k, v) VALUES (?1, 1) ON CONFLICT(k) DO UPDATE SET v = v + 1",
                    [&key],
                )?;
                tx.commit()
            })
            .await??;
            Ok(())
        })
    }
}
