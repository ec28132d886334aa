//! Shared by the test binaries: stores on the binary's one redis-server.
#![allow(dead_code)] // each test binary uses a different part of this module

use lease_redis::RedisStore;
use lease_testkit::RedisServer;

/// The shared server's URL; `None` (test skipped) when redis-server is not installed and `CI` is
/// unset.
pub(crate) fn url() -> Option<String> {
    RedisServer::shared().map(RedisServer::url)
}

/// A prefix no other test of this run uses.
pub(crate) fn unique_prefix(name: &str) -> String {
    lease_testkit::unique_prefix(name, ':')
}

/// A store on `url` under `prefix`.
pub(crate) async fn store_at(url: &str, prefix: &str) -> RedisStore {
    RedisStore::builder(url)
        .prefix(prefix)
        .connect()
        .await
        .expect("connect to the test redis-server")
}

/// A fresh store on `url`, with its own prefix.
pub(crate) async fn store_on(url: &str, name: &str) -> RedisStore {
    store_at(url, &unique_prefix(name)).await
}

/// A fresh store for the conformance suite (which picks its own unique keys).
pub(crate) async fn conformance_store() -> RedisStore {
    let url = url().expect("the redis conformance suite needs `redis-server` installed");
    store_on(&url, "conformance").await
}

/// Retries `op` while it fails transiently (the connection coming back after a restart or a
/// failover), for at most 15 s.
pub(crate) async fn settled<T, F, Fut>(mut op: F) -> Result<T, lease_core::StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, lease_core::StoreError>>,
{
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        match op().await {
            Err(e) if e.is_transient() && std::time::Instant::now() < give_up => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}
