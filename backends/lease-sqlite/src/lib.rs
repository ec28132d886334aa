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
//! - *settle* (first step of acquire, enqueue, release and leaving the queue): delete the key's
//!   dead queue entries; if the key is free and a live entry is queued, grant the key to the
//!   oldest one (see *Queued grants* below). Nothing is queued unless some store on the
//!   database was built with [`queued_grants`](SqliteStoreBuilder::queued_grants).
//! - *acquire*: no row → insert with fence 1. Row of this holder → extend, same fence (also a
//!   retake of its own expired lease: nobody took it in between). Row of another holder, unexpired
//!   → refuse. Otherwise (released, expired, or from a previous boot) → fence + 1, this holder.
//! - *renew*: extend only if holder and fence match and the lease is from this boot.
//! - *release*: clear the holder if holder and fence match, then settle.
//! - *break* ([`break_lock`](lease_core::LeaseStore::break_lock), for operators): clear the
//!   holder and raise the row's fence by one, whoever holds the key, in one `BEGIN IMMEDIATE`
//!   transaction committed like a grant; the next grant increments that fence again.
//! - *inspect* ([`inspect`](lease_core::LeaseStore::inspect)): one `SELECT` of the row, no write
//!   lock; held while the row names a holder whose expiry, from this boot, is ahead of the boot
//!   clock and whose store is not known to be gone (**Liveness** below), with the time left on
//!   that clock.
//!
//! **Queued grants** ([`SqliteStoreBuilder::queued_grants`], on by default: under contention the
//! bench measured it fairer, flat in the number of waiters, and at least as fast with work held
//! under the lock; only take-and-release loops with no work in between are faster without it,
//! as the releaser then takes the key straight back; figures in the crate's README): a table `waiters`
//! holds one entry per waiting (key, holder), in the order of an AUTOINCREMENT sequence (never
//! reused), with the lease the waiter asked for and a liveness deadline on the same clock as a
//! lease's expiry (entries of a previous boot are dead). The lock's waiting calls
//! [`enqueue`](lease_core::LeaseStore::enqueue) (one transaction: settle, then grant, confirm a
//! grant made to this holder, or queue it / refresh its entry, which keeps its place) and wait
//! in [`wait_for_grant`](lease_core::LeaseStore::wait_for_grant); a release, in its own
//! transaction, grants the key to the oldest live waiter (fence + 1, its entry deleted), and
//! every call that finds a key free or expired with a live waiter does the same, so no
//! newcomer, not even the releasing process, overtakes a live waiter. A waiter that gives up
//! [leaves the queue](lease_core::LeaseStore::leave_queue) and gives back a grant that raced
//! in, to the next waiter in the same transaction. A grant to a waiter that died lapses with
//! the lease it asked for. A store without the option makes no entries (its `enqueue` is
//! `try_lock`) but settles like every store, so it honours the entries of the others.
//!
//! **Expiry** is measured on the host's `CLOCK_BOOTTIME` (nanoseconds since boot, counting
//! suspend) and stored with the host's boot id: a wall-clock step changes nothing, and a lease
//! written before a reboot counts as expired. That is why the store is for one host only: another
//! host's boot clock means nothing here. WAL mode also needs shared memory between the processes,
//! which network filesystems do not provide; the store refuses NFS, SMB/CIFS, 9p, Ceph and other
//! network or cluster filesystems, and network FUSE mounts such as sshfs, where `statfs` and
//! `/proc/self/mountinfo` identify them; a database path that is a symlink is checked where its
//! file really is (SQLite keeps the WAL next to the target).
//!
//! **Time namespaces**: `CLOCK_BOOTTIME` is per time namespace (containers, `unshare --time
//! --boottime N`), so every process corrects its readings to the host's boot clock: at open it
//! reads its namespace's boot-time offset from `/proc/self/timens_offsets` and subtracts it from
//! every reading. The kernel adds exactly that offset, so processes in any time namespaces of one
//! host judge expiry on one clock. No such file (a kernel without time namespaces) means no
//! offset. A process that called `unshare(CLONE_NEWTIME)` without an exec since (its own
//! namespace differs from its children's, and the file shows the children's offsets) is refused
//! at open, as is an unreadable offsets file.
//!
//! **Boot id**: `/proc/sys/kernel/random/boot_id` must be readable; a missing or empty file (a
//! sandbox without `/proc`, a file hidden by a mount) is a permanent error at open naming it,
//! since without it a lease written before a reboot could not be told from a live one.
//!
//! **Durability**: with [`Durability::Full`] (the default) every grant commits with
//! `synchronous=FULL`, so a committed grant survives a power loss and fences never repeat;
//! renewals and releases commit with `NORMAL`, since losing them to a host crash is harmless (the
//! reboot expires every lease anyway). A release (or an `enqueue`, or leaving the queue) that may
//! grant the key to a waiter commits with `FULL` when a plain read before it finds an entry
//! queued (a free key, for an `enqueue`); one that turns out to grant after all is rolled back
//! and made again at once with `FULL`: SQLite cannot change the setting inside a transaction. [`Durability::Normal`] is faster, but a power loss may lose
//! the last grants and **reissue a fence**.
//!
//! **Contention**: SQLite's own busy handler is kept short (5 ms) and the store retries busy
//! transactions itself with jittered sleeps until a budget (2 s by default), after which the call
//! fails with a transient error (a renewal retries it until the lease's deadline). A call
//! holds the store's connection for one attempt at a time, never through the sleeps between
//! attempts, so a call waiting for another process's write lock does not hold up the other
//! calls on the same store (renewals of other keys, waiters' reads).
//!
//! **Fences** are SQLite integers: a key whose fence reached `i64::MAX` cannot be granted again
//! (a permanent error; the fence is never repeated).
//!
//! **Wake-ups**: a store that grants a key holds an exclusive `flock(2)` on a per-key file in
//! `<db>.wake/` (named by a 64-bit FNV-1a hash of the key) until the key is released through it,
//! a renewal is refused, the lease it last granted or renewed runs out without a renewal (a
//! holder that lost its lease without releasing it; a sweeper thread of the store drops the
//! flock then), or its process dies. [`wait_for_change`](lease_core::LeaseStore::wait_for_change)
//! reads the key's row: free → it returns at once; held → it blocks on a thread of its own on a
//! shared `flock` of that file, and returns when the holder lets go, when the lease runs out, or
//! after `max_wait`, whichever is first. So a waiter in another process takes a released key
//! within about a millisecond instead of a poll interval. Wake-ups are hints; the lock always
//! re-runs `try_lock`. A break lets go of the key's flock if the breaking store holds it; a
//! holder in another store lets go of it when its next renewal is refused (or its lease runs
//! out, or its process dies), so waiters already blocked on it wake then, or at their bound,
//! while waiters that read the row after the break find the key free at once.
//!
//! A queued waiter's [`wait_for_grant`](lease_core::LeaseStore::wait_for_grant) is woken by
//! its store's **doorbell** instead: every store with queued grants listens on a datagram socket
//! of its own in Linux's abstract namespace (`lease-sqlite/g/<random 128-bit id>`: no file, so
//! nothing is left behind by a killed process), named in the queue entries it writes
//! (`waiters.wake`). The transaction that grants a queued waiter the key (a release, an
//! `enqueue` or `try_lock` that finds it expired, leaving the queue) sends that name the grant
//! after its commit (the key, its hash, the holder, the fence and the lease), and the waiter
//! returns that fence without reading the row again (a doorbell of an older version, named
//! without `g/`, is sent the key's hash only and reads the row). So a release wakes
//! one process, the granted one, however many wait; the others sleep on, watching only for the
//! holder's store to go (its liveness flock, below) and for the lease's end, and re-read the row
//! every 50 ms in case a ring was lost (a store of an older version rings none). The releasing
//! store takes no key flock on the waiter's behalf; the waiter's store takes it when it learns
//! of the grant, for the plain waiters of [`wait_for_change`](lease_core::LeaseStore::wait_for_change).
//! On other systems there is no doorbell and queued waiters wait on the key's flock as above.
//!
//! **Liveness** ([`SqliteStoreBuilder::process_liveness`], off by default): such a store holds
//! an exclusive `flock(2)` on a file of its own in `<db>.live/` (named by a random 128-bit id)
//! for as long as it is open, and writes that id into each grant and queue entry it makes.
//! Every store that can take that flock knows the writer's process is gone (the kernel dropped
//! the flock, however the process died): its lease counts as expired and its queue entries as
//! dead at once, so a SIGKILLed holder's key passes to the next waiter (woken by the liveness
//! or wake-up flock, dropped with the process) within a few milliseconds instead of at the end of the
//! lease. Only that proof counts: a missing or unreadable file, a flock that is taken, or a row
//! without an id leaves the decision to the clock, and no file is ever unlinked to break a lock
//! (a store removes its own file when it closes; ids are never reused). A stopped process keeps
//! its flock, so its lease runs out by the clock as before. It is off by default because the
//! lease also gives work that outlives the process (children it started, stopped only after it
//! died) time to be stopped; the flock does not.
//!
//! **Faults**: a database file deleted or replaced under a running store is detected before the
//! next operation (its device and inode changed) and reported as a permanent error, so every
//! holder's renewal fails and its guards report the loss; nothing is granted from the new file
//! through this store (it cannot know which fences the old file handed out).
//!
//! All SQLite calls run on tokio's blocking threads, never on the async workers; wake-up waits
//! block plain threads of their own, and so does the sweeper of lapsed flocks (one per store,
//! only while it holds flocks).
//!
//! # What the store guarantees, and where
//!
//! At most one holder is granted a key at a time, and fences of a key strictly increase, for
//! processes that share **one host** (one kernel, one boot), a database on a **local
//! filesystem**, a readable **boot id**, and any **time namespaces** whose boot-time offsets
//! the store can read (each process corrects for its own). Opening refuses what it can detect
//! outside these bounds; it cannot detect two hosts on a filesystem it does not recognise as
//! a network one.

mod busy;
mod doorbell;
mod fscheck;
mod hostclock;
mod liveness;
mod queue;
mod schema;
mod store;
mod tx;
mod wake;

pub use hostclock::HostClock;
pub use rusqlite;
pub use store::{Durability, SqliteStore, SqliteStoreBuilder};

/// The store's name in errors and capabilities.
const NAME: &str = "sqlite";
