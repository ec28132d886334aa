//! Cross-process lease locks with fencing tokens.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod clock;
mod error;
mod fence;
mod memory;
mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use clock::{BootClock, Clock, SharedClock, TokioClock};
pub use error::{Error, StoreError, StoreErrorKind};
pub use fence::{Fence, FenceGate, StaleFence};
pub use memory::MemoryStore;
pub use store::{Capabilities, DynLeaseStore, DynStore, LeaseStore, MAX_KEY_LEN, validate};
