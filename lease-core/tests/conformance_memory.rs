//! The store conformance suite, run against the reference store on every `cargo test`: once
//! without waiter queues, once with them ([`MemoryStore::queued`]).

use lease_core::MemoryStore;

lease_core::conformance_tests!(async { MemoryStore::new() });

mod queued {
    use lease_core::MemoryStore;

    lease_core::conformance_tests!(async { MemoryStore::queued(None) });
}
