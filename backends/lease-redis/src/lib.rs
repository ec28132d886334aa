//! The Redis store for [lease-core](lease_core). (Crate docs are written below.)
#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
mod error;
mod keys;
mod notify;
mod scripts;
mod store;

pub use config::{DEFAULT_PREFIX, MAX_PREFIX_LEN, RedisStoreBuilder, redact_url};
pub use redis;
pub use store::{MAX_LEASE_MS, MAX_TRACKED_KEYS, RedisStore};

/// The store's name in errors and capabilities.
const NAME: &str = "redis";
