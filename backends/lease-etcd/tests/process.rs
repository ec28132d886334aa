//! Holders in other processes, lease-testkit's process suite: a SIGKILLed holder is replaced
//! within lease + 1 s, and a holder paused past its lease learns of the loss when it resumes.

mod common;

use std::time::Duration;

use lease_etcd::EtcdStore;

/// The store at a target `ENDPOINT PREFIX`.
async fn open(target: String) -> EtcdStore {
    let (endpoint, prefix) = target.split_once(' ').expect("ENDPOINT PREFIX");
    common::store_at(endpoint, prefix).await
}

// An etcd lease is whole seconds, at least two.
lease_testkit::process_conformance_tests!(
    lease: Duration::from_secs(2),
    target: common::endpoint().map(|e| format!("{e} {}", common::unique_prefix("process"))),
    open: open,
);
