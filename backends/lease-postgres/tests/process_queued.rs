//! The process suite (a SIGKILLed holder is replaced within lease + 1 s, a holder paused past its
//! lease learns of the loss on resume) with queued grants: the waiter is queued in the
//! server, and the holder's expiry hands it the key.

mod common;

use std::time::Duration;

use lease_postgres::PostgresStore;

/// The store at a target URL (which names the case's schema and turns the queue on).
async fn open(target: String) -> PostgresStore {
    PostgresStore::connect(&target)
        .await
        .expect("connect to the test PostgreSQL")
}

lease_testkit::process_conformance_tests!(
    lease: Duration::from_secs(1),
    target: common::url().map(|url| {
        common::with_schema(&url, &common::unique_schema("process-queued")) + "&queued_grants=true"
    }),
    open: open,
);
