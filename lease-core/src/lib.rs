//! Cross-process lease locks with fencing tokens.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backoff;
mod clock;
mod error;
mod fence;
mod guard;
mod holder;
mod lock;
mod memory;
pub mod metrics;
mod state;
mod store;
mod sync;
#[cfg(feature = "testing")]
pub mod testing;

pub use clock::{BootClock, Clock, SharedClock, TokioClock};
pub use error::{Error, StoreError, StoreErrorKind};
pub use fence::{Fence, FenceGate, StaleFence};
pub use guard::LockGuard;
pub use lock::{CrossProcessLock, DEFAULT_LEASE, LockBuilder};
pub use memory::MemoryStore;
pub use store::{Capabilities, DynLeaseStore, DynStore, LeaseStore, MAX_KEY_LEN, validate};
