//! Synchronisation primitives behind a shim, so the holder-count state machine can be model
//! checked with loom (`RUSTFLAGS="--cfg lease_loom"`, see the `loom_tests` module of `state.rs`
//! and `scripts/test.sh`). The cfg is not plain `loom` because tokio reserves that one for itself.

#[cfg(lease_loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};
#[cfg(not(lease_loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};
