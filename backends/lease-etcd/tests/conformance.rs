//! The lease-core store conformance suite against a real etcd: once with the default store,
//! once with queued grants ([`EtcdStoreBuilder::queued_grants`]).
//!
//! [`EtcdStoreBuilder::queued_grants`]: lease_etcd::EtcdStoreBuilder::queued_grants

mod common;

lease_core::conformance_tests!(common::conformance_store());

mod queued {
    use super::common;

    lease_core::conformance_tests!(common::queued_conformance_store());
}
