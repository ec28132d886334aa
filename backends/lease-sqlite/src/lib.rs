//! The embedded SQLite store for [lease-core](lease_core): lease locks between processes on
//! **one host**, with nothing to install (SQLite is compiled in).
//!
//! ```
//! use std::time::Duration;
//! use lease_core::CrossProcessLock;
//! use lease_sqlite::SqliteStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let store = SqliteStore::open(dir.path().join("locks.db")).await?;
//! let lock = CrossProcessLock::builder(store, "jobs/42").lease(Duration::from_secs(5)).build()?;
//! let guard = lock.lock_timeout(Duration::from_secs(10)).await?;
//! println!("fence {}", guard.fence());
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! # The protocol
//!
//! One table row per key holds the holder (NULL once released), the fence, and the expiry. The
//! row is never deleted, so the fence counter survives releases. Every operation is one
//! `BEGIN IMMEDIATE` transaction, so check and set are atomic between processes:
//!
//! - *acquire*: no row → insert with fence 1. Row of this holder → extend, same fence (also a
//!   retake of its own expired lease: nobody took it in between). Row of another holder, unexpired
//!   → refuse. Otherwise (released, expired, or from a previous boot) → fence + 1, this holder.
//! - *renew*: extend only if holder and fence match and the lease is from this boot.
//! - *release*: clear the holder if holder and fence match.
//!
//! **Expiry** is measured on the host's `CLOCK_BOOTTIME` (nanoseconds since boot, counting
//! suspend) and stored with the host's boot id: a wall-clock step changes nothing, and a lease
//! written before a reboot counts as expired. That is why the store is for one host only: another
//! host's boot clock means nothing here. WAL mode also needs shared memory between the processes,
//! which network filesystems do not provide; the store refuses NFS, SMB/CIFS, 9p, Ceph and other
//! network or cluster filesystems, and network FUSE mounts such as sshfs, where `statfs` and
//! `/proc/self/mountinfo` identify them.
//!
//! **Durability**: with [`Durability::Full`] (the default) every grant commits with
//! `synchronous=FULL`, so a committed grant survives a power loss and fences never repeat;
//! renewals and releases commit with `NORMAL`, since losing them to a host crash is harmless (the
//! reboot expires every lease anyway). [`Durability::Normal`] is faster, but a power loss may lose
//! the last grants and **reissue a fence**.
//!
//! **Contention**: SQLite's own busy handler is kept short (5 ms) and the store retries busy
//! transactions itself with jittered sleeps until a budget (2 s by default), after which the call
//! fails with a transient error (a renewal retries it until the lease's deadline).
//!
//! **Wake-ups**: a store that grants a key holds an exclusive `flock(2)` on a per-key file in
//! `<db>.wake/` (named by a 64-bit FNV-1a hash of the key) until the key is released through it,
//! its renewal fails, or its process dies. [`wait_for_change`](lease_core::LeaseStore::wait_for_change)
//! reads the key's row: free → it returns at once; held → it blocks on a thread of its own on a
//! shared `flock` of that file, and returns when the holder lets go, when the lease runs out, or
//! after `max_wait`, whichever is first. So a waiter in another process takes a released key
//! within about a millisecond instead of a poll interval. Wake-ups are hints; the lock always
//! re-runs `try_lock`.
//!
//! **Faults**: a database file deleted or replaced under a running store is detected before the
//! next operation (its device and inode changed) and reported as a permanent error, so every
//! holder's renewal fails and its guards report the loss; nothing is granted from the new file
//! through this store (it cannot know which fences the old file handed out).
//!
//! All SQLite calls run on tokio's blocking threads, never on the async workers; wake-up waits
//! block plain threads of their own.

mod fscheck;
mod hostclock;
mod schema;
mod store;
mod wake;

pub use rusqlite;
pub use store::{Durability, SqliteStore, SqliteStoreBuilder};

/// The store's name in errors and capabilities.
const NAME: &str = "sqlite";
