//! The lease-core conformance suite on a fresh temp database per case.

use lease_sqlite::SqliteStore;

async fn store() -> SqliteStore {
    let dir = tempfile::tempdir().expect("temp dir");
    // Keep the directory for the whole test process: the store outlives this function.
    let path = dir.keep().join("locks.db");
    SqliteStore::open(path)
        .await
        .expect("open a fresh database")
}

lease_core::conformance_tests!(store());
