//! The store conformance suite, run against the reference store on every `cargo test`.

use lease_core::MemoryStore;

lease_core::conformance_tests!(async { MemoryStore::new() });
