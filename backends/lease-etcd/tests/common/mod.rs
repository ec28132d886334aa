//! Shared by the test binaries: stores on the binary's one etcd.
#![allow(dead_code, unused_imports)] // each test binary uses a different part of this module

use lease_etcd::EtcdStore;
use lease_testkit::EtcdServer;

pub(crate) use lease_testkit::HoldingProxy;

/// The shared server's endpoint; `None` (test skipped) when etcd is not installed and `CI` is
/// unset.
pub(crate) fn endpoint() -> Option<String> {
    EtcdServer::shared().map(EtcdServer::endpoint)
}

/// A prefix no other test of this run uses.
pub(crate) fn unique_prefix(name: &str) -> String {
    lease_testkit::unique_prefix(name, '/')
}

/// A store on `endpoint` under `prefix`.
pub(crate) async fn store_at(endpoint: &str, prefix: &str) -> EtcdStore {
    EtcdStore::builder([endpoint])
        .prefix(prefix)
        .connect()
        .await
        .expect("connect to the test etcd")
}

/// A fresh store on the shared server, with its own prefix.
pub(crate) async fn store_on(endpoint: &str, name: &str) -> EtcdStore {
    store_at(endpoint, &unique_prefix(name)).await
}

/// A fresh store for the conformance suite (which picks its own unique keys).
pub(crate) async fn conformance_store() -> EtcdStore {
    let endpoint = endpoint().expect("the etcd conformance suite needs `etcd` installed");
    store_on(&endpoint, "conformance").await
}

/// A store with queued grants on `endpoint` under `prefix`.
pub(crate) async fn queued_store_at(endpoint: &str, prefix: &str) -> EtcdStore {
    EtcdStore::builder([endpoint])
        .prefix(prefix)
        .queued_grants(true)
        .connect()
        .await
        .expect("connect to the test etcd")
}

/// A fresh store with queued grants for the conformance suite.
pub(crate) async fn queued_conformance_store() -> EtcdStore {
    let endpoint = endpoint().expect("the etcd conformance suite needs `etcd` installed");
    queued_store_at(&endpoint, &unique_prefix("conformance-queued")).await
}
