//! The lease-core store conformance suite against a real redis-server.

mod common;

lease_core::conformance_tests!(common::conformance_store());
