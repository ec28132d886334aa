//! Cross-process lease locks with fencing tokens, over SQLite, Redis, etcd or PostgreSQL: the one dependency
//! an application needs.
//!
//! This crate re-exports the lock and the store contract of [`lease_core`] (everything at the
//! root: [`CrossProcessLock`], [`LockGuard`], [`Fence`], [`LeaseStore`] …), the stores its
//! features enable (as the modules [`sqlite`], [`redis`], [`etcd`], [`postgres`]), and [`open`], which opens
//! the store a URL names:
//!
//! ```
//! use std::time::Duration;
//! use leasehold::{CrossProcessLock, Error};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let url = format!("sqlite://{}", dir.path().join("locks.db").display());
//! // "sqlite:///var/lib/myapp/locks.db", "redis://locks.internal:6379", "etcd://10.0.0.5:2379" …
//! let store = leasehold::open(&url).await?;
//! let lock = CrossProcessLock::builder(store, "nightly-report")
//!     .lease(Duration::from_secs(10))
//!     .build()?;
//! match lock.try_lock_once().await {
//!     Ok(guard) => {
//!         // Pass guard.fence() with every write; the resource rejects lower fences.
//!         guard.release().await?;
//!     }
//!     Err(Error::Busy { .. }) => println!("another process is running it"),
//!     Err(e) => return Err(e.into()),
//! }
//! # Ok(()) }
//! ```
//!
//! # Features
//!
//! | feature | store | URLs |
//! |---|---|---|
//! | `sqlite` (default) | embedded SQLite, one host, SQLite compiled in | `sqlite:///abs/path.db`, `sqlite://rel/path.db`, or a plain path |
//! | `sqlite-system` | the same, linked against the system's `libsqlite3` (use with `default-features = false`) | as `sqlite` |
//! | `redis` | Redis (or Valkey) | `redis://[user:pw@]host[:port][/db]`, `redis+unix:///path.sock`, `unix://…`, `valkey://…` |
//! | `redis-tls` | … over TLS through rustls; the application installs the crypto provider | `rediss://…`, `valkeys://…` |
//! | `redis-tls-ring` | … with ring installed by the store when the application installed none | as `redis-tls` |
//! | `etcd` | etcd v3 (building needs `protoc` and the protobuf includes: Debian's `protobuf-compiler libprotobuf-dev`) | `etcd://[user:pw@]host:port[,host:port…][/prefix]` |
//! | `etcd-tls` | … over TLS | `etcds://…` |
//! | `postgres` | PostgreSQL (10 or later), also through PgBouncer in transaction mode | `postgres://[user:pw@]host[:port]/database[?schema=…]`, `postgresql://…` |
//! | `postgres-tls` | … over TLS through rustls; the application installs the crypto provider | `postgres://…?sslmode=require[&sslrootcert=PATH]` |
//! | `postgres-tls-ring` | … with ring installed by the store when the application installed none | as `postgres-tls` |
//! | `testing` | the store conformance suite and the fault-injecting store ([`testing`]) | |
//!
//! A URL whose store is not built gives [`OpenError::NotBuilt`], naming the feature to enable.
//! Every URL in an error message, a `Debug` string or a log line has its credentials hidden
//! ([`redact::redact_url`]).
//!
//! Each store documents what it guarantees (one host for SQLite; the Redis server's clock and
//! durability; etcd's Raft-durable fences; PostgreSQL's server clock and commit durability):
//! read its module before choosing it.
#![cfg_attr(docsrs, feature(doc_cfg))]

// The README's example compiles as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use lease_core::*;

/// The embedded SQLite store: lease locks between processes on one host ([`lease_sqlite`]).
#[cfg(feature = "sqlite-system")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite-system")))]
pub mod sqlite {
    pub use lease_sqlite::*;
}

/// The Redis store ([`lease_redis`]).
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis {
    pub use lease_redis::*;
}

/// The etcd store ([`lease_etcd`]).
#[cfg(feature = "etcd")]
#[cfg_attr(docsrs, doc(cfg(feature = "etcd")))]
pub mod etcd {
    pub use lease_etcd::*;
}

/// The PostgreSQL store ([`lease_postgres`]).
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres {
    pub use lease_postgres::*;
}

mod open;

pub use open::{OpenError, Scheme, open};
