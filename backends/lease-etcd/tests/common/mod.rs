//! Shared by the test binaries: one etcd per test binary, and stores on it.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use lease_etcd::EtcdStore;
use lease_testkit::{EtcdOptions, EtcdServer};

/// One single-node etcd shared by every test of a binary (each test uses its own prefix).
pub(crate) static ETCD: LazyLock<Option<EtcdServer>> =
    LazyLock::new(|| EtcdServer::start(EtcdOptions::default()));

/// The shared server's endpoint; `None` (test skipped) when etcd is not installed and `CI` is
/// unset.
pub(crate) fn endpoint() -> Option<String> {
    ETCD.as_ref().map(EtcdServer::endpoint)
}

/// A prefix no other test of this run uses.
pub(crate) fn unique_prefix(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "test/{name}/{}-{}/",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh store on the shared server, with its own prefix.
pub(crate) async fn store_on(endpoint: &str, name: &str) -> EtcdStore {
    EtcdStore::builder([endpoint])
        .prefix(unique_prefix(name))
        .connect()
        .await
        .expect("connect to the test etcd")
}

/// A fresh store for the conformance suite (which picks its own unique keys).
pub(crate) async fn conformance_store() -> EtcdStore {
    let endpoint = endpoint().expect("the etcd conformance suite needs `etcd` installed");
    store_on(&endpoint, "conformance").await
}
