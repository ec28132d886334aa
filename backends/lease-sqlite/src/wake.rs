//! Wake-ups on release between processes of one host, through `flock(2)` on per-key files.
//!
//! Next to the database, `<db>.wake/` holds one empty file per key (named by a 64-bit FNV-1a
//! hash of the key; two keys sharing a file only cost a spurious wake-up or some latency). A
//! store that grants a key takes an exclusive `flock` on that key's file and keeps it until the
//! key is released through it, its renewal is refused, the lease it last granted or renewed has
//! run out (a holder that lost its lease without releasing it: its renewals failed, or its lock
//! stopped renewing at its deadline), or the process dies (the kernel drops the lock then). A waiter that finds the exclusive lock taken blocks on a shared `flock` on a thread
//! of its own and wakes when it is granted, which is the moment the holder let go. The store's
//! `wait_for_change` bounds that by the lease's end (from the key's row) and `max_wait`, and polls
//! when the key is held but its file is not. All of it is a hint: the caller re-runs `try_lock`
//! after every wake-up.
//!
//! `flock` locks belong to the open file description, so every store (and every waiter thread)
//! opens its own: two stores in one process exclude each other like two processes do, and a
//! store never blocks on its own lock from the thread that holds it.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use lease_core::{BootClock, Clock};

use rustix::fs::{FlockOperation, flock};
use rustix::io::Errno;
use tokio::sync::watch;

/// The per-store state: the flocks of the keys this store granted, and the threads blocked on
/// other holders' flocks (one per key file, shared by all waiters of this store).
pub(crate) struct Wake {
    /// The key files' directory and the flocks held, shared with the doorbell's thread.
    grants: Granter,
    /// Key file hash → the blocked thread's "released" signal.
    waits: Arc<Mutex<HashMap<u64, watch::Receiver<bool>>>>,
}

/// The flocks this store holds, and the sweeper that drops those whose lease ran out.
struct Held {
    state: Mutex<HeldState>,
    /// Wakes the sweeper: a lease was extended past its next wake-up, or the store closed.
    changed: Condvar,
}

#[derive(Default)]
struct HeldState {
    keys: HashMap<String, HeldKey>,
    /// Whether a sweeper thread runs (it exits when `keys` is empty, or the store closed).
    sweeping: bool,
    closed: bool,
}

struct HeldKey {
    holder: String,
    /// The open file carrying the exclusive flock; dropping it unlocks.
    _flock: File,
    /// When the lease last granted or renewed through this store ends, on [`BootClock`]
    /// (measured after its commit, so never before the lease's end in the database).
    until: Duration,
}

/// The longest the sweeper sleeps between two looks at the boot clock: its timed wait runs on
/// `CLOCK_MONOTONIC`, which stops during a suspend, so after a resume a lapsed lease's flock is
/// dropped within this much.
const SWEEP_AT_LEAST_EVERY: Duration = Duration::from_secs(1);

impl Held {
    fn lock(&self) -> MutexGuard<'_, HeldState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops the flocks of leases that ran out, until none is left or the store closes.
    fn sweep(self: &Arc<Self>) {
        let mut st = self.lock();
        loop {
            if st.closed {
                st.keys.clear();
                st.sweeping = false;
                return;
            }
            let now = BootClock.now();
            st.keys.retain(|_, k| k.until > now);
            let Some(next) = st.keys.values().map(|k| k.until).min() else {
                st.sweeping = false;
                return;
            };
            let wait = next.saturating_sub(now).min(SWEEP_AT_LEAST_EVERY);
            st = self
                .changed
                .wait_timeout(st, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Starts the sweeper if none runs.
    fn ensure_sweeper(self: &Arc<Self>, st: &mut HeldState) {
        if st.sweeping {
            return;
        }
        let held = Arc::clone(self);
        // A plain thread, so that no runtime is needed and none is held up at shutdown.
        let spawned = std::thread::Builder::new()
            .name("lease-sqlite-sweep".into())
            .spawn(move || held.sweep());
        match spawned {
            Ok(_) => st.sweeping = true,
            Err(e) => {
                tracing::debug!(error = %e, "cannot start the wake flock sweeper");
            }
        }
    }
}

impl Drop for Wake {
    fn drop(&mut self) {
        let mut st = self.grants.held.lock();
        st.closed = true;
        st.keys.clear();
        self.grants.held.changed.notify_all();
    }
}

/// Resolves when the flock a waiter watches is let go of.
pub(crate) struct Release(watch::Receiver<bool>);

impl Release {
    /// Waits until the flock is let go of, or `until`.
    pub(crate) async fn wait_until(mut self, until: tokio::time::Instant) {
        let thread_died = matches!(
            tokio::time::timeout_at(until, self.0.wait_for(|released| *released)).await,
            Ok(Err(_))
        );
        if thread_died {
            // Fall back to polling.
            tokio::time::sleep_until(until).await;
        }
    }
}

/// The wake directory of the database at `db`.
pub(crate) fn dir_of(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".wake");
    PathBuf::from(name)
}

pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Wake {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self {
            grants: Granter {
                dir,
                held: Arc::new(Held {
                    state: Mutex::new(HeldState::default()),
                    changed: Condvar::new(),
                }),
            },
            waits: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The key file; created only when `create` (a waiter), since creating a file costs about
    /// a millisecond on some disks and a grant must not pay it: a holder that finds no file takes
    /// no flock, so waiters of that one tenure poll, and the first waiter creates the file for
    /// the grants after it.
    fn file_of(&self, hash: u64, create: bool) -> std::io::Result<File> {
        key_file(&self.grants.dir, hash, create)
    }

    /// `holder` was granted `key` through this store for `lease`: hold the key's flock until it
    /// lets go, or the lease runs out without a renewal. Blocking (briefly: a waiter holds the
    /// shared lock only for an instant).
    pub(crate) fn granted(&self, key: &str, holder: &str, lease: Duration) {
        self.grants.granted(key, holder, lease);
    }

    /// A handle that takes flocks for grants as [`granted`](Self::granted) does, for the
    /// doorbell's listening thread; it takes none once this `Wake` is dropped.
    pub(crate) fn granter(&self) -> Granter {
        self.grants.clone()
    }
}

/// Takes a key's flock for a grant on behalf of a [`Wake`] (see [`Wake::granter`]).
#[derive(Clone)]
pub(crate) struct Granter {
    dir: PathBuf,
    held: Arc<Held>,
}

impl Granter {
    /// As [`Wake::granted`].
    pub(crate) fn granted(&self, key: &str, holder: &str, lease: Duration) {
        let until = BootClock.now().saturating_add(lease);
        let mut st = self.held.lock();
        if st.closed {
            return;
        }
        if let Some(entry) = st.keys.get_mut(key) {
            // Ours already (an extension, or a takeover within this store): keep the flock.
            holder.clone_into(&mut entry.holder);
            entry.until = until;
            return;
        }
        let file = match key_file(&self.dir, fnv1a64(key.as_bytes()), false) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // No waiter has waited on this key yet: see `Wake::file_of`.
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot open the wake file; waiters will poll");
                return;
            }
        };
        for _ in 0..50 {
            match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {
                    st.keys.insert(
                        key.to_owned(),
                        HeldKey {
                            holder: holder.to_owned(),
                            _flock: file,
                            until,
                        },
                    );
                    self.held.ensure_sweeper(&mut st);
                    // A sweeper asleep until a later lease's end must see this one.
                    self.held.changed.notify_all();
                    return;
                }
                // A waiter's momentary shared lock, or a colliding key's holder.
                Err(Errno::WOULDBLOCK | Errno::INTR) => {
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "flock failed; waiters will poll");
                    return;
                }
            }
        }
    }
}

/// The wake file of the key with hash `hash` in `dir` (see [`Wake::file_of`]).
fn key_file(dir: &Path, hash: u64, create: bool) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(dir.join(format!("{hash:016x}")))
}

impl Wake {
    /// `holder` renewed `key` through this store for `lease`: keep its flock that much longer.
    /// A renewal after the flock was dropped (its lease had run out) does not take it again:
    /// waiters then poll, which costs latency only.
    pub(crate) fn renewed(&self, key: &str, holder: &str, lease: Duration) {
        let until = BootClock.now().saturating_add(lease);
        let mut st = self.grants.held.lock();
        if let Some(entry) = st.keys.get_mut(key).filter(|e| e.holder == holder) {
            entry.until = until;
        }
    }

    /// `holder` no longer holds `key` through this store: wake its waiters.
    pub(crate) fn released(&self, key: &str, holder: &str) {
        let mut st = self.grants.held.lock();
        if st.keys.get(key).is_some_and(|e| e.holder == holder) {
            // Closing the file drops the flock.
            st.keys.remove(key);
        }
    }

    /// `key` was broken through this store (whoever held it): let go of its flock if this
    /// store holds it, so that waiters blocked on it wake as after a release. A holder in another
    /// store keeps its own flock until its renewal is refused, its lease runs out or its process
    /// dies; waiters that look at the row after the break see the key free at once.
    pub(crate) fn broken(&self, key: &str) {
        self.grants.held.lock().keys.remove(key);
    }

    /// If some store holds `key`'s flock, the signal that it let go of it; `None` if nobody
    /// holds the flock. Blocking (opens a file).
    pub(crate) fn watch_release(&self, key: &str) -> Option<Release> {
        let hash = fnv1a64(key.as_bytes());
        self.blocked_thread(hash, || self.file_of(hash, true))
            .map(Release)
    }

    /// The signal that the store whose liveness file is `file` is gone (its process died, or
    /// it closed): the kernel dropped that file's flock. `None` if nobody holds it, or there is
    /// no such file. Blocking (opens a file).
    pub(crate) fn watch_store(&self, file: &Path) -> Option<Release> {
        // Apart from the key files' hashes: a collision would only share a thread's signal.
        let hash = fnv1a64(file.as_os_str().as_encoded_bytes()) ^ 0x5a5a_5a5a_5a5a_5a5a;
        self.blocked_thread(hash, || File::open(file)).map(Release)
    }

    /// The signal of the thread blocked on the flock of the file `open` opens (under `hash`),
    /// starting one if the flock is held and none runs yet; `None` if nobody holds the flock.
    fn blocked_thread(
        &self,
        hash: u64,
        open: impl FnOnce() -> std::io::Result<File>,
    ) -> Option<watch::Receiver<bool>> {
        let mut waits = self.waits.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = waits.get(&hash) {
            return Some(rx.clone());
        }
        let file = open().ok()?;
        match flock(&file, FlockOperation::NonBlockingLockShared) {
            Ok(()) => return None, // Nobody holds it; closing the file unlocks.
            Err(Errno::WOULDBLOCK) => {}
            Err(_) => return None,
        }
        let (tx, rx) = watch::channel(false);
        let registry = Arc::clone(&self.waits);
        // A plain thread rather than tokio's blocking pool: it may stay blocked for as long as
        // the holder holds the key, and must not hold up a runtime's shutdown.
        let spawned = std::thread::Builder::new()
            .name("lease-sqlite-wake".into())
            .spawn(move || {
                while let Err(Errno::INTR) = flock(&file, FlockOperation::LockShared) {}
                drop(file);
                let mut waits = registry.lock().unwrap_or_else(|e| e.into_inner());
                waits.remove(&hash);
                let _ = tx.send(true);
            });
        if spawned.is_err() {
            return None;
        }
        waits.insert(hash, rx.clone());
        Some(rx)
    }
}
