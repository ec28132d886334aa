//! Holders in other processes, lease-testkit's process suite: a SIGKILLed holder is replaced
//! within lease + 1 s, and a holder paused past its lease learns of the loss when it resumes.

mod common;

use std::time::Duration;

use lease_postgres::PostgresStore;

/// The store at a target URL (which names the case's schema).
async fn open(target: String) -> PostgresStore {
    PostgresStore::connect(&target)
        .await
        .expect("connect to the test PostgreSQL")
}

lease_testkit::process_conformance_tests!(
    lease: Duration::from_secs(1),
    target: common::url().map(|url| {
        common::with_schema(&url, &common::unique_schema("process")) + "&queued_grants=false"
    }),
    open: open,
);
