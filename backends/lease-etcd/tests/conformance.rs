//! The lease-core store conformance suite against a real etcd.

mod common;

lease_core::conformance_tests!(common::conformance_store());
