//! Cross-process lease locks with fencing tokens, over pluggable stores.
//!
//! Several processes, on one host or many, must not run the same critical section at once: a job
//! claimed twice, two writers on one data directory, two leaders. This crate gives each process a
//! **lease** on a named key in a shared store. The lease is renewed by a heartbeat while held,
//! lapses by itself when the holder dies, and is released at once when the holder is done.
//!
//! ```
//! use std::time::Duration;
//! use lease_core::{CrossProcessLock, FenceGate, MemoryStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), lease_core::Error> {
//! // Any store works the same way; the memory store is shared only inside this process.
//! let lock = CrossProcessLock::builder(MemoryStore::new(), "jobs/42")
//!     .lease(Duration::from_secs(5))
//!     .build()?;
//! let resource = FenceGate::new(); // stands in for a resource that checks fences
//!
//! let guard = lock.lock_timeout(Duration::from_secs(30)).await?;
//! // Every write to the protected resource carries the fence; stale holders are rejected.
//! resource.check(guard.fence()).expect("no newer holder has written");
//! assert!(guard.is_held());
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! # What a lease promises, and what it cannot
//!
//! A lease alone can never promise mutual exclusion: a holder can be paused (GC, `SIGSTOP`, a
//! laptop suspend, a slow disk) past its lease, or its last write can be delayed in the network.
//! So the contract is three things:
//!
//! 1. **Grant**: at most one holder is granted a key at a time, as far as the store can tell.
//! 2. **Fence**: every grant carries a [`Fence`] that strictly increases per key. A resource that
//!    rejects writes with a fence lower than the highest it has seen ([`FenceGate`], or the same
//!    comparison inside a database write) stays safe even when two processes believe they hold
//!    the lock.
//! 3. **Loss signal**: a holder is told ([`LockGuard::lost`], [`LockGuard::is_held`]), before its
//!    lease can have expired in the store, that it may no longer hold it; its work can then stop.
//!
//! Without fenced writes, the lock is an *efficiency* lock: it stops duplicate work almost always,
//! but a paused holder can still write after its lease ended. With fenced writes it is a
//! *correctness* lock, as far as the store's fences are durable
//! ([`Capabilities::durable_fences`]).
//!
//! # The protocol
//!
//! A [`CrossProcessLock`] is built per key. Its holder id is `host/pid/label` plus 128 random
//! bits, so two lock objects never share a holder by accident; logs show only the readable part.
//!
//! *Acquire* calls the store's [`LeaseStore::try_lock`] once, which atomically grants a vacant or
//! expired key (fence + 1), extends the caller's own grant (same fence), or refuses. Waiting calls
//! ([`CrossProcessLock::lock`], [`CrossProcessLock::lock_timeout`]) repeat it with capped,
//! jittered exponential backoff, each call with its own backoff state and an exact deadline, and
//! wake early when the store reports a release ([`LeaseStore::wait_for_change`]) or when another
//! task of this process releases or acquires the key. Tasks of one process waiting on one key
//! share a single store call at a time and share its grant. Every wait inside an attempt (for
//! that shared call, for a release still in flight, for the store's answer) ends by the call's
//! deadline, and by lease − margin in any case; a store that never answers makes
//! [`CrossProcessLock::try_lock_once`] fail with a transient error after that long.
//!
//! *Queued waiting*: with a store that keeps a queue of waiters per key
//! ([`Capabilities::queued_grants`]), a waiting call queues instead ([`LeaseStore::enqueue`],
//! one entry per lock object, shared by its tasks), and a release hands the key to the oldest
//! live waiter in the same atomic step of the store. A newcomer, including the process that just
//! released, does not take the key while a live waiter is queued. Waiters refresh their entry
//! at every poll; an entry not refreshed within its patience is skipped. A waiter that gives
//! up leaves the queue, and passes on a grant that raced in. The store's record stays the
//! truth: a waiter takes a grant the store reports to it ([`LeaseStore::wait_for_grant`])
//! without another call only when its fence is newer than the key's fence at the waiter's last
//! enqueue, which then bounds the grant's start (its local deadline counts from that enqueue's
//! send time), and only with a renewal interval to spare; otherwise it confirms with the store.
//! [`LockBuilder::barging`] keeps the polling behaviour for comparison.
//!
//! *A late grant is no grant*: the local deadline of a grant counts from the moment the request
//! was sent, and is checked again when the reply arrives. A reply at or past it (a slow link, a
//! store election, a suspend while the reply was on the way) is released, not handed out, and the
//! attempt fails with a transient error (waiting calls retry).
//!
//! *Re-entry*: while this process holds a valid lease, further acquisitions return another guard
//! without a store call. The lease's guard count is exact under clone, drop, cancellation and
//! panic. The fast path is taken only while the lease's local deadline has not passed.
//!
//! *Heartbeat*: while any guard lives, a task renews the lease every `renew_every` with a
//! compare-and-extend ([`LeaseStore::renew`]) that never grants. The **local deadline** is the
//! send time of the last successful acquire or renew, plus the lease, minus a safety margin,
//! measured on `CLOCK_BOOTTIME` ([`BootClock`]): a suspended machine wakes up with its lease
//! already lost, and a wall-clock step changes nothing. The deadline is also *waited for* on
//! that clock ([`Clock::sleep_until`]: a `timerfd` on `CLOCK_BOOTTIME`, one per process), so
//! after a suspend the loss signal fires on resume, not at the next tick of tokio's timer (which
//! stops during a suspend). A renewal answered at or past the deadline extends nothing.
//! Transient store errors are retried with
//! short jittered backoff until that deadline. When the deadline passes, the store refuses the
//! renewal, or it fails permanently, the lease is **lost**: every guard's signal fires exactly
//! once, the heartbeat stops, and this holder writes to the store again only with a fresh
//! acquisition.
//!
//! *Release*: dropping the last guard (or [`LockGuard::release`]) stops the heartbeat and sends
//! the release at once. A new acquisition in this process waits until that release has landed,
//! so a late release can never delete a newer grant. A release whose outcome is unknown (it
//! failed, the store panicked, its runtime shut down before it ran, or the wait for it ran out)
//! may still be applied by the store later: the lock then takes its later leases under a new
//! holder string (`holder~N`), which that release cannot match. Dropping the lock object while
//! guards live does not release.
//!
//! # Store calls that may be cancelled
//!
//! The lock drops an in-flight [`LeaseStore::renew`] when the lease is released or its deadline
//! passes, and an in-flight [`LeaseStore::wait_for_change`] when a waiter gives up: a store must
//! be correct when those futures are dropped at any await (a request/response stream shared by
//! callers must match each answer to its own request). [`LeaseStore::try_lock`] and
//! [`LeaseStore::release`] are always driven to their end (in a task of their own if the caller
//! goes away), so they must end by themselves: a store bounds them with its own timeouts.
//!
//! # Stores
//!
//! [`LeaseStore`] is the contract ([`writing_a_store`] walks a store author through it); one
//! conformance suite ([`testing`], feature `testing`) checks every store against it. [`MemoryStore`] is the reference implementation, for tests and for
//! tasks of one process. The backend crates provide SQLite (embedded, one host), Redis and etcd.
//! [`DynStore`] wraps any store for a choice at run time.
//!
//! Two optional operations are for operators and tools, never called by the lock:
//! [`LeaseStore::inspect`] reads a key's holder, fence and time left from the store's record
//! ([`KeyState`]), and [`LeaseStore::break_lock`] takes a key from a stuck holder by freeing it
//! and raising its fence past every fence handed out ([`BrokenLock`]), so the old holder's
//! fenced writes, renewals and releases all fail. Stores that lack them answer
//! [`StoreErrorKind::Unsupported`].
//!
//! # Fenced writes in a database
//!
//! The fence check must be part of the write itself. In SQL:
//!
//! ```sql
//! UPDATE accounts SET balance = ?1, fence = ?2 WHERE id = ?3 AND fence <= ?2;
//! -- 0 rows updated: a newer holder has written; stop.
//! ```
//!
//! In Redis, one script compares and writes:
//!
//! ```lua
//! local seen = tonumber(redis.call('HGET', KEYS[1], 'fence') or '0')
//! if tonumber(ARGV[1]) < seen then return 0 end
//! redis.call('HSET', KEYS[1], 'fence', ARGV[1], 'value', ARGV[2])
//! return 1
//! ```
//!
//! In etcd, a transaction compares the fence stored beside the value (or, with the etcd store,
//! the lock key's `create_revision`) before its put.
//!
//! # Observability
//!
//! `tracing` spans `lease.wait`, `lease.acquire`, `lease.heartbeat` and `lease.release` carry the
//! key, fence and holder label; [`metrics`] lists the counters and histograms.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backoff;
#[cfg(any(target_os = "linux", target_os = "android"))]
mod boot_timer;
mod clock;
mod clock_base;
mod detach;
mod error;
mod fence;
mod guard;
mod holder;
pub mod input;
mod lease;
mod lock;
mod memory;
pub mod metrics;
pub mod redact;
pub mod seen;
mod state;
mod store;
mod sync;
#[cfg(feature = "testing")]
pub mod testing;

/// Writing a store: the contract from a store author's side, the suites, and a minimal store.
#[doc = include_str!("writing_a_store.md")]
pub mod writing_a_store {}

pub use clock::{BootClock, Clock, SharedClock, Sleep, TokioClock};
pub use error::{Error, StoreError, StoreErrorKind};
pub use fence::{Fence, FenceGate, StaleFence};
pub use guard::LockGuard;
pub use input::MAX_KEY_LEN;
pub use lock::{CrossProcessLock, DEFAULT_LEASE, LockBuilder};
pub use memory::MemoryStore;
pub use store::{
    BrokenLock, Capabilities, DynLeaseStore, DynStore, Enqueued, KeyState, LeaseStore,
};
