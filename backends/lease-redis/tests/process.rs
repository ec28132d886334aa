//! Holders in other processes, lease-testkit's process suite: a SIGKILLed holder is replaced
//! within lease + 1 s, and a holder paused past its lease learns of the loss when it resumes.

mod common;

use std::time::Duration;

use lease_redis::RedisStore;

/// The store at a target `URL PREFIX`.
async fn open(target: String) -> RedisStore {
    let (url, prefix) = target.split_once(' ').expect("URL PREFIX");
    common::store_at(url, prefix).await
}

lease_testkit::process_conformance_tests!(
    lease: Duration::from_secs(1),
    target: common::url().map(|url| format!("{url} {}", common::unique_prefix("process"))),
    open: open,
);
