//! Shared by the test binaries: one redis-server per test binary, and stores on it.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use lease_redis::RedisStore;
use lease_testkit::{RedisOptions, RedisServer};

/// One redis-server shared by every test of a binary (each test uses its own prefix).
pub(crate) static REDIS: LazyLock<Option<RedisServer>> =
    LazyLock::new(|| RedisServer::start(RedisOptions::default()));

/// The shared server's URL; `None` (test skipped) when redis-server is not installed and `CI` is
/// unset.
pub(crate) fn url() -> Option<String> {
    REDIS.as_ref().map(RedisServer::url)
}

/// A prefix no other test of this run uses.
pub(crate) fn unique_prefix(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "test:{name}:{}-{}:",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh store on `url`, with its own prefix.
pub(crate) async fn store_on(url: &str, name: &str) -> RedisStore {
    RedisStore::builder(url)
        .prefix(unique_prefix(name))
        .connect()
        .await
        .expect("connect to the test redis-server")
}

/// A fresh store for the conformance suite (which picks its own unique keys).
pub(crate) async fn conformance_store() -> RedisStore {
    let url = url().expect("the redis conformance suite needs `redis-server` installed");
    store_on(&url, "conformance").await
}
