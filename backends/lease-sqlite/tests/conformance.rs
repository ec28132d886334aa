//! The lease-core conformance suite on a fresh temp database per case: once with the default
//! store, once with queued grants and process liveness ([`queued_grants`], [`process_liveness`]).
//!
//! [`queued_grants`]: lease_sqlite::SqliteStoreBuilder::queued_grants
//! [`process_liveness`]: lease_sqlite::SqliteStoreBuilder::process_liveness

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

mod queued {
    use lease_sqlite::SqliteStore;

    async fn store() -> SqliteStore {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.keep().join("locks.db");
        SqliteStore::builder(path)
            .queued_grants(true)
            .process_liveness(true)
            .open()
            .await
            .expect("open a fresh database")
    }

    lease_core::conformance_tests!(store());
}
