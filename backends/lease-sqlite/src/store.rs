//! [`SqliteStore`] and its builder.

use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lease_core::input::{validate, validate_key};
use lease_core::{BrokenLock, Capabilities, Enqueued, Fence, KeyState, LeaseStore, StoreError};
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params};

use crate::busy;
use crate::doorbell::{self, Doorbell};
use crate::hostclock::{self, HostClock};
use crate::liveness::{self, Liveness};
use crate::tx::{Row, SELECT_ROW, Tx, TxError, row_of, to_fence};
use crate::wake::{self, Wake};
use crate::{NAME, queue, schema};

/// How hard SQLite pushes commits to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// `synchronous=FULL`: a committed grant survives a power loss; fences never repeat.
    #[default]
    Full,
    /// `synchronous=NORMAL`: faster commits, but **a power loss may reissue a fence** (the last
    /// grants before it can be lost while their holders already wrote with them).
    Normal,
}

/// Builds a [`SqliteStore`]; see each setter for its default.
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `open` is called"]
pub struct SqliteStoreBuilder {
    path: PathBuf,
    durability: Durability,
    busy_budget: Duration,
    create_dirs: bool,
    queued_grants: bool,
    process_liveness: bool,
}

impl SqliteStoreBuilder {
    /// [`Durability::Full`] (default) or [`Durability::Normal`].
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// How long one operation keeps retrying a busy database before it fails with a transient
    /// error (default 2 s).
    pub fn busy_budget(mut self, budget: Duration) -> Self {
        self.busy_budget = budget;
        self
    }

    /// Whether [`open`](Self::open) creates missing parent directories (default `false`: a
    /// missing directory is an error, since a typo in the path would otherwise silently make a
    /// different lock).
    pub fn create_dirs(mut self, yes: bool) -> Self {
        self.create_dirs = yes;
        self
    }

    /// Whether the store declares [`Capabilities::queued_grants`] (default `true`; the crate
    /// docs say why), so that
    /// the lock's waiting calls queue in the database instead of polling `try_lock`.
    ///
    /// With it, a key keeps a queue of waiters (table `waiters`): a waiting call enqueues
    /// ([`LeaseStore::enqueue`]), and a release hands the key, in the same transaction, to the
    /// oldest waiter still live (fence + 1, the lease it asked for); the granted waiter's
    /// process is woken by its store's doorbell (or, failing that, by a re-read of the row) and
    /// takes the grant it finds in the row. No newcomer overtakes a live waiter, not even
    /// the process that just released the key, so waiters are served in the order they came and
    /// the releaser does not win the key back by racing its own waiters. An entry not refreshed
    /// within its patience (the lock refreshes it at every poll) is skipped, as is one written
    /// before a reboot.
    ///
    /// Without it (`false`, or `?queued_grants=false`), `enqueue` is `try_lock` and the store makes no queue
    /// entries, but it still honours the entries of stores that share the database with the
    /// option on: it grants nobody past a live waiter, and its releases hand the key to the
    /// oldest one. Processes that share a database should still agree on the option: a process
    /// without it only polls, so it gets the key only when nobody is queued.
    pub fn queued_grants(mut self, yes: bool) -> Self {
        self.queued_grants = yes;
        self
    }

    /// Whether this store's grants and queue entries end with its process (default `false`).
    ///
    /// With it, the store holds an exclusive `flock` on a file of its own in `<db>.live/` while
    /// it is open, and names that file in every grant and queue entry it makes. Another store
    /// (any store, whatever its own setting) that finds such a lease live by the clock, but can
    /// take the file's flock, knows the process is gone: the lease counts as expired and the
    /// entries as dead at once. So the key of a holder killed by SIGKILL or the OOM killer
    /// passes to the next waiter within milliseconds instead of at the end of its lease. A
    /// stopped process (SIGSTOP, a debugger) keeps its flock and its lease, which then runs out
    /// by the clock as before.
    ///
    /// Leave it off where the protected work can outlive the process that holds the lock: child
    /// processes it started that are not stopped at once when it dies (its lease gives them time
    /// to be stopped, the liveness flock does not), or a process that closes file descriptors it
    /// does not own after opening the store (it drops its flock and looks dead).
    pub fn process_liveness(mut self, yes: bool) -> Self {
        self.process_liveness = yes;
        self
    }

    /// Opens the database, creating the file and the schema when missing (and its parent
    /// directories with [`create_dirs`](Self::create_dirs)), and upgrading a schema written by an
    /// older version.
    ///
    /// # Errors
    ///
    /// An invalid-input error for a missing parent directory (without `create_dirs`); a
    /// permanent [`StoreError`] naming the path and the problem: a directory in the way, no
    /// permission, a file that is not an SQLite database, a schema from a newer version, a
    /// network filesystem; a transient one if the database stayed locked past the busy budget.
    pub async fn open(self) -> Result<SqliteStore, StoreError> {
        tokio::task::spawn_blocking(move || open_blocking(self))
            .await
            .map_err(|e| StoreError::permanent(NAME, format!("open task failed: {e}")))?
    }
}

/// The embedded SQLite store; see the [crate docs](crate) for the protocol and its limits.
///
/// Clones share one connection. Several stores (in one process or many) may open the same file.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

/// The connection and the `synchronous` level it is set to now.
struct Conn {
    conn: Connection,
    full: bool,
}

struct Inner {
    path: PathBuf,
    conn: Mutex<Conn>,
    /// Device and inode of the file when opened, to notice it being deleted or replaced.
    identity: (u64, u64),
    boot_id: String,
    /// The host's boot clock, whatever this process's time namespace.
    clock: HostClock,
    busy_budget: Duration,
    durability: Durability,
    /// Whether `enqueue` queues ([`SqliteStoreBuilder::queued_grants`]).
    queued: bool,
    wake: Wake,
    /// This store's liveness flock, and the means to tell that another store is gone.
    liveness: Liveness,
    /// Where grants to this store's queued waiters are announced (queued stores on Linux).
    doorbell: Option<Doorbell>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl SqliteStore {
    /// A builder for the database at `path`.
    pub fn builder(path: impl Into<PathBuf>) -> SqliteStoreBuilder {
        SqliteStoreBuilder {
            path: path.into(),
            durability: Durability::Full,
            busy_budget: Duration::from_secs(2),
            create_dirs: false,
            queued_grants: true,
            process_liveness: false,
        }
    }

    /// Opens (creating if needed) the database at `path` with default settings.
    ///
    /// # Errors
    ///
    /// As [`SqliteStoreBuilder::open`].
    pub async fn open(path: impl Into<PathBuf>) -> Result<SqliteStore, StoreError> {
        Self::builder(path).open().await
    }

    /// Opens the database a `sqlite://` URL names: `sqlite:///abs/path.db` or
    /// `sqlite://relative/path.db`, optionally with the settings
    /// `?queued_grants=true|false` ([`SqliteStoreBuilder::queued_grants`]) and
    /// `process_liveness=true|false` ([`SqliteStoreBuilder::process_liveness`]), so that a URL
    /// alone (for example `LEASE_STORE` of lease-run) can choose them. Percent escapes are
    /// decoded.
    ///
    /// An `@` is allowed in an absolute URL (`sqlite:///tmp/a@b.db`) but not in a relative one:
    /// `sqlite://u:pw/x@h/a.db` reads as user info up to the last `@` (which
    /// [`redact_url`](lease_core::redact::redact_url) hides), and a sqlite:// URL takes none.
    /// Write such an `@` as `%40`, or open a plain path.
    ///
    /// # Errors
    ///
    /// An invalid-input error for another scheme, an empty path, an `@` in a relative URL, or a
    /// setting that is unknown or not `true`/`false`; else as [`SqliteStoreBuilder::open`].
    pub async fn from_url(url: &str) -> Result<SqliteStore, StoreError> {
        let (path, settings) = path_from_url(url)?;
        let mut builder = Self::builder(path);
        for (name, yes) in settings {
            builder = match name {
                Setting::QueuedGrants => builder.queued_grants(yes),
                Setting::ProcessLiveness => builder.process_liveness(yes),
            };
        }
        builder.open().await
    }

    /// The database file, as an absolute path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Whether this store's leases end with its process
    /// ([`SqliteStoreBuilder::process_liveness`]): other processes treat a key it holds as free
    /// as soon as the process is gone, without waiting for the lease to run out.
    pub fn process_liveness(&self) -> bool {
        self.inner.liveness.id().is_some()
    }

    /// Runs `op` in one `BEGIN IMMEDIATE` transaction on a blocking thread, retrying busy
    /// attempts with jittered sleeps until the busy budget; then, on the same thread, `after`
    /// with the committed result, or `None` after an error (to take or drop the key's wake-up
    /// flock).
    ///
    /// `grants`: whether `op` is expected to grant a key, whose commit must then reach the disk
    /// before the fence is handed out (see [`Inner::transact`]).
    async fn run<T, F, A>(&self, grants: Grants, op: F, after: A) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&Tx<'_>) -> Result<T, TxError> + Send + 'static,
        A: FnOnce(&Wake, Option<&T>) + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let out = inner.transact(grants, op);
            after(&inner.wake, out.as_ref().ok());
            out
        })
        .await
        .map_err(|e| StoreError::permanent(NAME, format!("store task failed: {e}")))?
    }
}

/// Whether a transaction grants a key, so that its commit must reach the disk before the fence
/// is handed out: known before it starts (`No`, `Yes`), or only inside it, when it is guessed
/// from the key's queue or lease before it starts ([`Inner::predict`]).
enum Grants {
    No,
    Yes,
    /// A release, which grants the key to the next waiter if one is queued.
    IfQueued(String),
    /// An `enqueue`, which grants the key (to the caller, or to the waiter ahead of it) if it
    /// is free.
    IfFree(String),
}

/// What a waiter finds when it looks at a key ([`SqliteStore::probe`]).
enum Probe {
    /// Nobody holds the key: released, expired, from a previous boot, or never granted.
    Free,
    /// The waiter that asked holds it (it was granted the key), with this fence.
    Mine(i64),
    /// Another holder has it for `left` more (`None`: the row could not be read); `release`
    /// resolves when the store holding the key's wake-up flock lets go of it (`None`: no store
    /// holds it).
    Held {
        left: Option<Duration>,
        release: Option<wake::Release>,
    },
}

impl SqliteStore {
    /// Reads the key's row and, if a holder other than `waiter` has it, looks at the key's
    /// wake-up flock (starting the blocked thread of [`Wake::watch_release`]): file system
    /// calls, so off the async workers. The waiter's own grant needs no flock: its store takes
    /// it only when the grant is confirmed.
    async fn probe(&self, key: &str, waiter: Option<&str>) -> Probe {
        let queued = waiter.is_some();
        let inner = self.inner.clone();
        let key = key.to_owned();
        let waiter = waiter.map(str::to_owned);
        let unknown = || Probe::Held {
            left: None,
            release: None,
        };
        tokio::task::spawn_blocking(move || match inner.live_lease(&key) {
            Ok(None) => Probe::Free,
            Ok(Some((row, left))) if waiter.as_deref().is_some_and(|w| row.is_of(w.as_bytes())) => {
                // Granted by a release in another store: this store now speaks for the key, so
                // it takes the key's wake-up flock, as its own grant would have. The lock may
                // take this grant without another call (no `enqueue` to take the flock then),
                // and the next waiters would otherwise poll through the whole tenure.
                if let Some(w) = &waiter {
                    inner.wake.granted(&key, w, left);
                }
                Probe::Mine(row.fence)
            }
            // A queued waiter with a doorbell is told of its grant by it, and needs no wake-up
            // at the other grants: it watches only for the holder's store to go (its liveness
            // flock), which frees the key at once.
            Ok(Some((row, left))) if queued && inner.doorbell.is_some() => Probe::Held {
                left: Some(left),
                release: row
                    .process
                    .as_deref()
                    .and_then(|id| inner.liveness.file_of(id))
                    .and_then(|file| inner.wake.watch_store(&file)),
            },
            Ok(Some((_, left))) => Probe::Held {
                left: Some(left),
                release: inner.wake.watch_release(&key),
            },
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the key's row; polling instead");
                unknown()
            }
        })
        .await
        .unwrap_or_else(|_| unknown())
    }
}

/// Until when a waiter waits on a holder whose lease has `left` to run: the lease's end, or
/// the caller's `deadline` if earlier (or if the lease is unknown).
fn wait_until(deadline: tokio::time::Instant, left: Option<Duration>) -> tokio::time::Instant {
    left.and_then(|left| tokio::time::Instant::now().checked_add(left))
        .map_or(deadline, |end| end.min(deadline))
}

/// How often a queued waiter with a doorbell re-reads the key's row anyway: a grant made by a
/// store that rings no doorbell (an older version) is found this late at most.
const BELL_POLL: Duration = Duration::from_millis(50);

/// The growing interval (1 ms to 50 ms) at which a waiter re-reads a key that is held while
/// no store holds its wake-up flock.
struct Poll(Duration);

impl Poll {
    fn new() -> Self {
        Self(Duration::from_millis(1))
    }

    /// Sleeps one interval, but not past `until`, and doubles the interval.
    async fn tick(&mut self, until: tokio::time::Instant) {
        let now = tokio::time::Instant::now();
        tokio::time::sleep_until(until.min(now + self.0)).await;
        self.0 = (self.0 * 2).min(Duration::from_millis(50));
    }
}

impl Inner {
    /// Runs `op` in one `BEGIN IMMEDIATE` transaction.
    ///
    /// With [`Durability::Full`], only a transaction that may grant a key (`grants`) commits with
    /// `synchronous=FULL`: renewals and releases commit with `NORMAL`, which survives a crash of
    /// the process but not of the host. Losing them to a power loss is harmless: after the
    /// reboot the boot id differs, so every lease counts as expired anyway, and the fence
    /// counter only moves in grants (whose `FULL` commit also syncs every earlier WAL frame).
    /// This keeps one disk flush, not two, on the release → acquire path.
    ///
    /// Whether a transaction grants is known for sure only inside it: a release grants when a
    /// waiter is queued, an `enqueue` when the key is free. Such an operation starts as the plain
    /// read before it guesses ([`Inner::predict`]); when it guessed wrong, the step that would
    /// move a fence finds the transaction not durable enough ([`Tx::next_fence`]), and the
    /// attempt is rolled back and made again at once with `synchronous=FULL` (SQLite cannot
    /// change it inside a transaction). The read costs a few microseconds; a wasted attempt
    /// costs the write lock, the statements and the rollback, on the handoff's path. The retry re-reads everything, so what it decides is decided afresh; a
    /// queued handoff then costs one flush, the release's, and the granted waiter's
    /// confirmation is an extension that commits with `NORMAL`.
    ///
    /// The connection's mutex is held for one attempt at a time, never through the sleeps
    /// between busy attempts: a call that waits for another process's write lock must not hold
    /// up the other calls on this store (renewals of other keys, the reads of waiters), which
    /// take their own attempts in between.
    fn transact<T>(
        &self,
        grants: Grants,
        op: impl Fn(&Tx<'_>) -> Result<T, TxError>,
    ) -> Result<T, StoreError> {
        self.check_identity()?;
        let mut full = self.durability == Durability::Full && self.predict(&grants);
        let attempt = || -> Result<T, TxError> {
            let mut guard = self.conn.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if guard.full != full {
                    let level = if full { "FULL" } else { "NORMAL" };
                    // A per-connection setting, which takes no lock: its failure is final.
                    guard
                        .conn
                        .pragma_update(None, "synchronous", level)
                        .map_err(|e| TxError::Store(classify(&self.path, e)))?;
                    guard.full = full;
                }
                let tx = Tx {
                    tx: guard
                        .conn
                        .transaction_with_behavior(TransactionBehavior::Immediate)?,
                    now: self.now_ns(),
                    boot: &self.boot_id,
                    durable: full || self.durability == Durability::Normal,
                    liveness: &self.liveness,
                    doorbell: self.doorbell.as_ref().map(Doorbell::name),
                    rung: std::cell::RefCell::default(),
                };
                match op(&tx) {
                    Ok(out) => {
                        let rung = tx.rung.take();
                        tx.tx.commit()?;
                        for (bell, key_hash, grant) in rung {
                            if let Err(e) = doorbell::ring(&bell, key_hash, Some(&grant)) {
                                tracing::debug!(error = %e, "the granted waiter's doorbell is gone; it finds the grant at its next look");
                            }
                        }
                        return Ok(out);
                    }
                    // Dropping the transaction rolls it back; the next one commits with FULL.
                    Err(TxError::NeedsDurableCommit) if !full => full = true,
                    Err(e) => return Err(e),
                }
            }
        };
        busy::retry_busy(
            &self.path,
            busy::Budget::start(self.busy_budget),
            attempt,
            |e| match e {
                TxError::Sql(e) => classify(&self.path, e),
                TxError::Store(e) => e,
                // Only returned by a transaction that was durable already: a bug of the store.
                TxError::NeedsDurableCommit => StoreError::permanent(
                    NAME,
                    "a durable transaction asked for a more durable commit",
                ),
            },
        )
    }

    /// Whether a transaction of this kind will grant a key, guessed from a plain read (no write
    /// lock) before it starts. A wrong guess costs time only: a transaction that grants after a
    /// `false` is rolled back and made again durable ([`Inner::transact`]), one that does not
    /// after a `true` flushes to the disk for nothing.
    fn predict(&self, grants: &Grants) -> bool {
        let guess = match grants {
            Grants::No => Ok(false),
            Grants::Yes => Ok(true),
            Grants::IfQueued(key) => self.has_waiters(key),
            Grants::IfFree(key) => self.live_lease(key).map(|live| live.is_none()),
        };
        guess.unwrap_or_else(|e| {
            tracing::debug!(error = %e, "cannot read ahead of a transaction");
            false
        })
    }

    /// Whether the key has an entry in the queue, live or not.
    fn has_waiters(&self, key: &str) -> rusqlite::Result<bool> {
        let guard = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        guard
            .conn
            .prepare_cached("SELECT 1 FROM waiters WHERE key = ?1 LIMIT 1")?
            .query_row([key.as_bytes()], |_| Ok(()))
            .optional()
            .map(|found| found.is_some())
    }

    /// The key's live lease per the database, and how much longer it runs: `None` if nobody
    /// holds it (released, expired, from a previous boot, or never taken). A plain read, no
    /// write lock.
    fn live_lease(&self, key: &str) -> rusqlite::Result<Option<(Row, Duration)>> {
        let guard = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let row = guard
            .conn
            .prepare_cached(SELECT_ROW)?
            .query_row([key.as_bytes()], row_of)
            .optional()?;
        drop(guard);
        let now = self.now_ns();
        Ok(row.filter(|r| self.live(r, now)).map(|r| {
            let left = Duration::from_nanos(r.expires_ns.abs_diff(now));
            (r, left)
        }))
    }

    /// Whether `row` is a live lease at `now`, as a transaction tells it ([`Tx::live`]): by the
    /// clock, and its store not known to be gone.
    fn live(&self, row: &Row, now: i64) -> bool {
        row.live(now, &self.boot_id) && !self.liveness.is_gone(row.process.as_deref())
    }

    /// The key's row as [`LeaseStore::inspect`] reports it: one `SELECT` (no write lock, no
    /// transaction of its own, so a consistent snapshot of the row), retried while the database
    /// is busy; past the busy budget a transient error, as for every other call.
    fn inspect(&self, key: &str) -> Result<KeyState, StoreError> {
        self.check_identity()?;
        let row = busy::retry_busy(
            &self.path,
            busy::Budget::start(self.busy_budget),
            || {
                let guard = self.conn.lock().unwrap_or_else(|e| e.into_inner());
                guard
                    .conn
                    .prepare_cached(SELECT_ROW)
                    .and_then(|mut st| st.query_row([key.as_bytes()], row_of).optional())
            },
            |e| classify(&self.path, e),
        )?;
        let Some(row) = row else {
            return Ok(KeyState::free(None));
        };
        let fence = to_fence(row.fence)?;
        let now = self.now_ns();
        if !self.live(&row, now) {
            return Ok(KeyState::free(Some(fence)));
        }
        let remaining = Duration::from_nanos(row.expires_ns.abs_diff(now));
        Ok(KeyState::held(
            holder_string(row.holder.unwrap_or_default()),
            fence,
            remaining,
        ))
    }

    /// Now on the host's boot clock, in nanoseconds: the clock of every expiry in the database.
    fn now_ns(&self) -> i64 {
        self.clock.now_ns()
    }

    fn check_identity(&self) -> Result<(), StoreError> {
        match std::fs::metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == self.identity => Ok(()),
            Ok(_) => Err(StoreError::permanent(
                NAME,
                format!(
                    "database {} was replaced by another file while in use",
                    self.path.display()
                ),
            )),
            Err(e) => Err(StoreError::permanent(
                NAME,
                format!("database {} was deleted while in use", self.path.display()),
            )
            .with_source(e)),
        }
    }
}

fn classify(path: &Path, e: rusqlite::Error) -> StoreError {
    let transient = matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DiskFull | ErrorCode::SystemIoFailure | ErrorCode::OutOfMemory)
    );
    let what = match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => " is corrupted",
        Some(ErrorCode::ReadOnly | ErrorCode::PermissionDenied) => " cannot be written",
        Some(ErrorCode::DiskFull) => ": the disk is full",
        _ => "",
    };
    let msg = format!("database {}{what}", path.display());
    if transient {
        StoreError::transient(NAME, msg).with_source(e)
    } else {
        StoreError::permanent(NAME, msg).with_source(e)
    }
}

fn lease_ns(lease: Duration) -> i64 {
    i64::try_from(lease.as_nanos()).unwrap_or(i64::MAX)
}

/// A setting a `sqlite://` URL may carry in its query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setting {
    QueuedGrants,
    ProcessLiveness,
}

/// The settings of a URL's query (`name=true|false`, `&`-separated).
fn settings_of(query: &str, shown: &str) -> Result<Vec<(Setting, bool)>, StoreError> {
    let mut out = Vec::new();
    for param in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        let setting = match name {
            "queued_grants" => Setting::QueuedGrants,
            "process_liveness" => Setting::ProcessLiveness,
            // Without `=` it may be a value (`redact_url` hides it): not named.
            _ if !param.contains('=') => {
                return Err(StoreError::invalid_input(
                    NAME,
                    format!(
                        "the URL `{shown}` has an unknown setting without `=` (a sqlite:// URL \
                         takes queued_grants and process_liveness)"
                    ),
                ));
            }
            _ => {
                return Err(StoreError::invalid_input(
                    NAME,
                    format!(
                        "the URL `{shown}` has an unknown setting `{}` (a sqlite:// URL takes \
                         queued_grants and process_liveness; other settings go through \
                         SqliteStore::builder)",
                        name.escape_debug()
                    ),
                ));
            }
        };
        let yes = match value {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => {
                return Err(StoreError::invalid_input(
                    NAME,
                    format!(
                        "the URL `{shown}` sets `{name}` to something other than true or false"
                    ),
                ));
            }
        };
        out.push((setting, yes));
    }
    Ok(out)
}

fn path_from_url(url: &str) -> Result<(PathBuf, Vec<(Setting, bool)>), StoreError> {
    let shown = lease_core::redact::redact_url(url);
    let Some(rest) = url.strip_prefix("sqlite://") else {
        return Err(StoreError::invalid_input(
            NAME,
            format!(
                "`{shown}` is not a sqlite:// URL (use sqlite:///abs/path.db, \
                 sqlite://relative/path.db, or open a plain path)"
            ),
        ));
    };
    if rest.is_empty() || rest == "/" {
        return Err(StoreError::invalid_input(
            NAME,
            format!("the URL `{shown}` names no file"),
        ));
    }
    // `redact_url` reads everything up to the last `@` of a URL not of the form `sqlite:///…`
    // as user info: refused whole, wherever the `@` is (`sqlite://u:pw/x@h/a.db` has a
    // password with a `/`), so that no message shows a piece of it. An absolute path has no
    // user info, and keeps its `@`s.
    if !rest.starts_with('/') && rest.contains('@') {
        return Err(StoreError::invalid_input(
            NAME,
            format!(
                "the URL `{shown}` may have a user or password (an `@` not in an absolute \
                 path); a sqlite:// URL takes none: for a file whose relative path has an `@`, \
                 write it `%40`, use sqlite:///abs/path, or open a plain path"
            ),
        ));
    }
    if rest.contains('#') {
        return Err(StoreError::invalid_input(
            NAME,
            format!("the URL `{shown}` has a fragment; a sqlite:// URL takes none"),
        ));
    }
    let (rest, settings) = match rest.split_once('?') {
        Some((path, query)) => (path, settings_of(query, &shown)?),
        None => (rest, Vec::new()),
    };
    let decoded = percent_decode(rest).ok_or_else(|| {
        StoreError::invalid_input(
            NAME,
            format!("the URL `{shown}` has a bad percent escape (use %XX with two hex digits)"),
        )
    })?;
    let path = PathBuf::from(std::ffi::OsString::from_vec(decoded));
    if path == Path::new(":memory:") {
        return Err(StoreError::invalid_input(
            NAME,
            "an in-memory database cannot be shared between processes; name a file",
        ));
    }
    Ok((path, settings))
}

/// Decodes `%XX` escapes into bytes; `None` for a malformed one.
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

fn open_blocking(b: SqliteStoreBuilder) -> Result<SqliteStore, StoreError> {
    let path = b.path;
    let shown = path.display().to_string();
    if path.as_os_str().is_empty() {
        return Err(StoreError::invalid_input(
            NAME,
            "the database path is empty",
        ));
    }
    if path == Path::new(":memory:") {
        return Err(StoreError::invalid_input(
            NAME,
            "an in-memory database cannot be shared between processes; name a file",
        ));
    }
    // Before anything is created: without them no expiry can be judged.
    let boot_id = hostclock::boot_id()?;
    let clock = HostClock::open()?;
    if clock.offset_ns() != 0 {
        tracing::debug!(
            offset_ns = clock.offset_ns(),
            "this time namespace's boot clock is offset; expiries are kept on the host's"
        );
    }
    // Absolute, so that a later change of the working directory cannot make the file look
    // deleted or replaced, nor move the wake-up files.
    let path = std::path::absolute(&path).map_err(|e| {
        StoreError::permanent(NAME, format!("cannot resolve the database path {shown}"))
            .with_source(e)
    })?;
    let shown = path.display().to_string();
    if path.is_dir() {
        return Err(StoreError::permanent(
            NAME,
            format!("{shown} is a directory, not a database file"),
        ));
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    if parent.exists() && !parent.is_dir() {
        return Err(StoreError::permanent(
            NAME,
            format!(
                "cannot create {shown}: {} is not a directory",
                parent.display()
            ),
        ));
    }
    if !parent.is_dir() {
        if !b.create_dirs {
            return Err(StoreError::invalid_input(
                NAME,
                format!(
                    "the directory {} of the database does not exist: create it first (a typo \
                     would otherwise make a different lock), or open with \
                     SqliteStore::builder(path).create_dirs(true)",
                    parent.display()
                ),
            ));
        }
        std::fs::create_dir_all(&parent).map_err(|e| {
            StoreError::permanent(NAME, format!("cannot create the directory of {shown}"))
                .with_source(e)
        })?;
    }
    crate::fscheck::refuse_network_fs(&path)?;
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(&path, flags)
        .map_err(|e| StoreError::permanent(NAME, format!("cannot open {shown}")).with_source(e))?;
    let setup = |conn: &mut Connection| -> rusqlite::Result<()> {
        // Short: the store's own jittered retries do the waiting (SQLite's busy handler alone
        // starves a second process for about a second under contention).
        conn.busy_timeout(Duration::from_millis(5))?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(rusqlite::Error::InvalidParameterName(format!(
                "the database refused WAL mode (journal_mode stays {mode})"
            )));
        }
        // Grants switch to FULL when the durability asks for it (see `Inner::transact`).
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(())
    };
    // The first statements fail here for a file that is not a database, or is locked. One
    // budget for both steps: opening is one operation, however its busy waits fall.
    let budget = busy::Budget::start(b.busy_budget);
    busy::retry_busy(
        &path,
        budget,
        || setup(&mut conn),
        |e| {
            let what = match e.sqlite_error_code() {
                Some(ErrorCode::NotADatabase) => "is not an SQLite database (or is corrupted)",
                Some(ErrorCode::DatabaseCorrupt) => "is corrupted",
                Some(ErrorCode::ReadOnly | ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => {
                    "cannot be written"
                }
                _ => "cannot be set up",
            };
            StoreError::permanent(NAME, format!("{shown} {what}")).with_source(e)
        },
    )?;
    busy::retry_busy(
        &path,
        budget,
        || schema::migrate(&mut conn),
        |e| e.for_db(&shown),
    )?;
    let meta = std::fs::metadata(&path)
        .map_err(|e| StoreError::permanent(NAME, format!("cannot stat {shown}")).with_source(e))?;
    let wake_dir = wake::dir_of(&path);
    std::fs::create_dir_all(&wake_dir).map_err(|e| {
        StoreError::permanent(
            NAME,
            format!(
                "cannot create the wake-up directory {} next to the database",
                wake_dir.display()
            ),
        )
        .with_source(e)
    })?;
    let live_dir = liveness::dir_of(&path);
    let liveness = if b.process_liveness {
        Liveness::open(live_dir.clone())
    } else {
        Ok(Liveness::checker(live_dir.clone()))
    };
    let liveness = liveness.map_err(|e| {
        StoreError::permanent(
            NAME,
            format!(
                "cannot create this store's liveness file in {}",
                live_dir.display()
            ),
        )
        .with_source(e)
    })?;
    let wake = Wake::new(wake_dir);
    // Without one (not Linux, or no socket), waiters wait on the key's wake-up flock.
    let doorbell = b
        .queued_grants
        .then(|| {
            Doorbell::open(wake.granter())
                .inspect_err(|e| tracing::debug!(error = %e, "no doorbell; waiters wait on the key's wake-up flock"))
                .ok()
        })
        .flatten();
    Ok(SqliteStore {
        inner: Arc::new(Inner {
            path,
            conn: Mutex::new(Conn { conn, full: false }),
            identity: (meta.dev(), meta.ino()),
            boot_id,
            clock,
            busy_budget: b.busy_budget,
            durability: b.durability,
            queued: b.queued_grants,
            liveness,
            wake,
            doorbell,
        }),
    })
}

/// A holder as stored (the bytes of a `&str`), back as a string.
fn holder_string(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

impl LeaseStore for SqliteStore {
    /// One `BEGIN IMMEDIATE` transaction. The key is settled first (see the crate docs' queued
    /// grants): a free key with a live waiter is granted to the oldest one, so this caller is
    /// refused unless it is that waiter. A zero lease releases, handing the key to the next
    /// waiter in the same transaction.
    async fn try_lock(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
    ) -> Result<Option<Fence>, StoreError> {
        validate(NAME, key, holder)?;
        let (key, holder) = (key.to_owned(), holder.to_owned());
        let wake_lease = lease;
        let lease = lease_ns(lease);
        let (wake_key, wake_holder) = (key.clone(), holder.clone());
        let grants = if lease == 0 {
            Grants::IfQueued(key.clone())
        } else {
            Grants::Yes
        };
        let fence = self
            .run(
                grants,
                move |tx| {
                    if lease == 0 {
                        queue::release(tx, &key, &holder, None)?;
                        return Ok(None);
                    }
                    Ok(queue::acquire(tx, &key, &holder, lease)?.ok())
                },
                move |wake, fence| match fence {
                    Some(Some(_)) => wake.granted(&wake_key, &wake_holder, wake_lease),
                    // A release (zero lease), or the key is another's: not ours to signal any more.
                    Some(None) => wake.released(&wake_key, &wake_holder),
                    // Unknown: keep whatever we had.
                    None => {}
                },
            )
            .await?;
        fence.map(to_fence).transpose()
    }

    async fn renew(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
        fence: Fence,
    ) -> Result<bool, StoreError> {
        validate(NAME, key, holder)?;
        let (key, holder) = (key.to_owned(), holder.to_owned());
        let wake_lease = lease;
        let lease = lease_ns(lease);
        // Above i64::MAX: never handed out, so it matches no lease.
        let Some(fence) = fence.to_i64() else {
            return Ok(false);
        };
        let (wake_key, wake_holder) = (key.clone(), holder.clone());
        self.run(
            Grants::No,
            move |tx| {
                // Only a live lease is extended: a renewal that arrives after the lease ran out
                // (the holder was paused, or already told it lost) must not revive it; only an
                // acquisition retakes a lapsed lease.
                let n = tx.execute(
                    "UPDATE leases SET expires_ns = ?1
                 WHERE key = ?2 AND holder = ?3 AND fence = ?4 AND boot_id = ?5
                   AND expires_ns > ?6",
                    params![
                        tx.now.saturating_add(lease),
                        key.as_bytes(),
                        holder.as_bytes(),
                        fence,
                        tx.boot,
                        tx.now
                    ],
                )?;
                Ok(n == 1)
            },
            move |wake, renewed| match renewed {
                Some(true) => wake.renewed(&wake_key, &wake_holder, wake_lease),
                Some(false) => wake.released(&wake_key, &wake_holder),
                // Unknown: keep the flock; it goes when the lease last written runs out.
                None => {}
            },
        )
        .await
    }

    /// One `BEGIN IMMEDIATE` transaction: clears the holder if holder and fence match, and
    /// hands the key to the oldest live waiter in the same transaction (committed like a grant
    /// then). After the commit it rings the granted waiter's doorbell and lets go of the key's
    /// wake-up flock, which wakes the plain waiters blocked on it; it takes no flock for the
    /// granted waiter, whose own store takes it when the waiter learns of the grant.
    async fn release(&self, key: &str, holder: &str, fence: Fence) -> Result<bool, StoreError> {
        validate(NAME, key, holder)?;
        let (key, holder) = (key.to_owned(), holder.to_owned());
        // Above i64::MAX: never handed out, so it matches no lease.
        let Some(fence) = fence.to_i64() else {
            return Ok(false);
        };
        let (wake_key, wake_holder) = (key.clone(), holder.clone());
        self.run(
            Grants::IfQueued(key.clone()),
            move |tx| queue::release(tx, &key, &holder, Some(fence)),
            // Even after an error: the holder is done with the key either way, and a flock left
            // behind would only delay waiters (of a replaced database, say).
            move |wake, _| wake.released(&wake_key, &wake_holder),
        )
        .await
    }

    /// Returns as soon as the key is free per the database, its holder lets go of it through a
    /// store on this host (see the crate docs), or its lease runs out; else after `max_wait`.
    ///
    /// While the key is held but nobody holds its wake-up flock (a holder that died, one that
    /// has not taken the flock yet, or one on a colliding key file), it re-checks the flock and
    /// the row with a short growing interval (1 ms to 50 ms): plain reads, no write lock.
    async fn wait_for_change(&self, key: &str, max_wait: Duration) {
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut poll = Poll::new();
        loop {
            let (left, release) = match self.probe(key, None).await {
                // Free now: the caller's next try_lock may win it.
                Probe::Free | Probe::Mine(_) => return,
                Probe::Held { left, release } => (left, release),
            };
            let until = wait_until(deadline, left);
            if let Some(release) = release {
                release.wait_until(until).await;
                return;
            }
            // Held, but nobody holds the key's flock: poll until the lease ends.
            if tokio::time::Instant::now() >= until {
                return;
            }
            poll.tick(until).await;
        }
    }

    /// Reads the key's row (one `SELECT`, no write lock): held while it names a holder whose
    /// expiry, on the host's boot clock and from this boot, is in the future and whose store is
    /// not known to be gone (its liveness flock; see the crate docs); the time left is that
    /// expiry minus now, in nanoseconds of that clock. Otherwise free, with the row's fence.
    async fn inspect(&self, key: &str) -> Result<KeyState, StoreError> {
        validate_key(NAME, key)?;
        let inner = self.inner.clone();
        let key = key.to_owned();
        tokio::task::spawn_blocking(move || inner.inspect(&key))
            .await
            .map_err(|e| StoreError::permanent(NAME, format!("store task failed: {e}")))?
    }

    /// One `BEGIN IMMEDIATE` transaction: reads the row, clears its holder and raises its fence
    /// by one (the fence row is what the next grant increments, so that grant is higher still).
    /// It commits like a grant (`synchronous=FULL` with [`Durability::Full`]), since it moves the
    /// fence. The old holder's renew and release compare holder and fence, so both fail.
    ///
    /// The key's queue is left as it is: the next call that settles the key (the head waiter's
    /// next `enqueue`, any `try_lock`) grants it to the oldest live waiter, above the raised
    /// fence.
    ///
    /// Waiters that read the row after the break find the key free at once. A waiter already
    /// blocked on the holder's wake-up flock wakes at once if the holder's store is this one (it
    /// lets go of the flock); otherwise when that store lets go of it (the holder's next renewal
    /// is refused, its lease runs out, or its process dies), or at the waiter's own bound.
    async fn break_lock(&self, key: &str) -> Result<Option<BrokenLock>, StoreError> {
        validate_key(NAME, key)?;
        let key = key.to_owned();
        let wake_key = key.clone();
        let broken = self
            .run(
                Grants::Yes,
                move |tx| {
                    let Some(row) = tx.read_row(&key)? else {
                        return Ok(None);
                    };
                    let fence = tx.next_fence(&key, Some(row.fence), "the key cannot be broken")?;
                    let was_live = tx.live(&row);
                    tx.execute(
                        "UPDATE leases SET holder = NULL, fence = ?2 WHERE key = ?1",
                        params![key.as_bytes(), fence],
                    )?;
                    Ok(Some((fence, row.holder, was_live)))
                },
                move |wake, broken| {
                    if let Some(Some(_)) = broken {
                        wake.broken(&wake_key);
                    }
                },
            )
            .await?;
        broken
            .map(|(fence, previous, was_live)| {
                Ok(BrokenLock::new(
                    to_fence(fence)?,
                    previous.map(holder_string),
                    was_live,
                ))
            })
            .transpose()
    }

    /// With [`queued_grants`](SqliteStoreBuilder::queued_grants): one `BEGIN IMMEDIATE`
    /// transaction that settles the key, then grants it to `holder` (free, nobody queued ahead),
    /// confirms a grant already made to it (a release or an expiry handed it over), or queues
    /// `holder` (refreshing its entry, which keeps its place). A grant takes the key's wake-up
    /// flock in this store, as `try_lock`'s does. Without the option it is `try_lock`.
    async fn enqueue(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
        patience: Duration,
    ) -> Result<Enqueued, StoreError> {
        validate(NAME, key, holder)?;
        if !self.inner.queued || lease.is_zero() {
            return Ok(Enqueued::from_try_lock(
                self.try_lock(lease, key, holder).await?,
            ));
        }
        let (key, holder) = (key.to_owned(), holder.to_owned());
        let wake_lease = lease;
        let (lease, patience) = (lease_ns(lease), lease_ns(patience));
        let (wake_key, wake_holder) = (key.clone(), holder.clone());
        self.run(
            Grants::IfFree(key.clone()),
            move |tx| queue::enqueue(tx, &key, &holder, lease, patience),
            move |wake, answer| match answer {
                Some(Enqueued::Granted(_)) => wake.granted(&wake_key, &wake_holder, wake_lease),
                Some(_) => wake.released(&wake_key, &wake_holder),
                None => {}
            },
        )
        .await
    }

    /// With [`queued_grants`](SqliteStoreBuilder::queued_grants): reads the key's row (plain
    /// reads, no write lock) until it names `holder` with a live
    /// lease (`Some` with its fence), the key is free (`None` at once: the caller's next
    /// `enqueue` settles it), or `max_wait` has passed.
    ///
    /// While another holder has the key it sleeps until this store's doorbell rings for the key
    /// (the transaction that granted `holder` the key rings it after its commit, with the grant,
    /// which is then returned without a re-read; see the crate docs), the holder's store is gone
    /// (its liveness flock, if it wrote one), the lease ends, or 50 ms pass (a re-read, in case
    /// a ring was lost). Without a doorbell (not Linux) it waits as
    /// [`wait_for_change`](Self::wait_for_change) does, on the key's wake-up flock, or polls
    /// every 1 ms to 50 ms while nobody holds it. A missed wake-up costs latency only.
    ///
    /// Without the option: [`wait_for_change`](Self::wait_for_change), then `None`.
    async fn wait_for_grant(&self, key: &str, holder: &str, max_wait: Duration) -> Option<Fence> {
        if !self.inner.queued {
            // No entry of this store's is ever granted: the trait's default.
            self.wait_for_change(key, max_wait).await;
            return None;
        }
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut poll = Poll::new();
        let key_hash = wake::fnv1a64(key.as_bytes());
        loop {
            // Before the read, so that a grant committed after it rings this subscription.
            let mut bell = self.inner.doorbell.as_ref().map(|d| d.subscribe(key_hash));
            let (left, release) = match self.probe(key, Some(holder)).await {
                Probe::Mine(fence) => return Fence::from_i64(fence),
                Probe::Free => return None,
                Probe::Held { left, release } => (left, release),
            };
            // Not granted yet: after a wake-up (the doorbell, a release, the holder's store
            // gone, the lease's end) or a poll, the row says whom the key went to.
            let until = wait_until(deadline, left);
            match (&mut bell, release) {
                (Some(bell), release) => {
                    // A missed ring (a granting store without doorbells) costs one poll.
                    let until = until.min(tokio::time::Instant::now() + BELL_POLL);
                    let gone = async {
                        match release {
                            Some(release) => release.wait_until(until).await,
                            None => tokio::time::sleep_until(until).await,
                        }
                    };
                    tokio::select! {
                        rang = bell.changed() => {
                            // The granting transaction's datagram carries the grant (its
                            // doorbell thread took the key's wake-up flock for it): no re-read.
                            let fence = rang.ok().and_then(|()| bell.borrow_and_update().grant_to(key, holder));
                            if let Some(fence) = fence {
                                return Fence::from_i64(fence);
                            }
                        }
                        () = gone => {}
                    }
                }
                (None, Some(release)) => release.wait_until(until).await,
                (None, None) => poll.tick(until).await,
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
        }
    }

    /// With [`queued_grants`](SqliteStoreBuilder::queued_grants): one `BEGIN IMMEDIATE`
    /// transaction that deletes `holder`'s entry and, if the key was granted to it meanwhile,
    /// releases that grant to the next live waiter (committed like a grant then); then lets go
    /// of the key's wake-up flock if this store holds it for `holder`. Without the option:
    /// `false`, as for every store without a queue.
    async fn leave_queue(&self, key: &str, holder: &str) -> Result<bool, StoreError> {
        validate(NAME, key, holder)?;
        if !self.inner.queued {
            // This store makes no entries, so none of its holders was granted a key as one.
            return Ok(false);
        }
        let (key, holder) = (key.to_owned(), holder.to_owned());
        let (wake_key, wake_holder) = (key.clone(), holder.clone());
        self.run(
            Grants::IfQueued(key.clone()),
            move |tx| queue::leave_queue(tx, &key, &holder),
            move |wake, _| wake.released(&wake_key, &wake_holder),
        )
        .await
    }

    fn capabilities(&self) -> Capabilities {
        // With `synchronous=NORMAL` a power loss may forget the last grants and reissue a fence.
        Capabilities::new(NAME)
            .with_durable_fences(self.inner.durability == Durability::Full)
            .with_notifications(true)
            .with_queued_grants(self.inner.queued)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transaction that grants a queued waiter the key rings the waiter's doorbell after
    /// its commit: the release here, and an `enqueue` that finds the key expired.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_grant_to_a_queued_waiter_rings_its_store_s_doorbell() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("l.db");
        let open = || SqliteStore::builder(&path).queued_grants(true).open();
        let (one, two) = (open().await.expect("open"), open().await.expect("open"));
        let bell = two.inner.doorbell.as_ref().expect("a doorbell on Linux");
        let lease = Duration::from_secs(30);
        let Enqueued::Granted(a) = one.enqueue(lease, "k", "a", lease).await.expect("enqueue")
        else {
            panic!("a free key")
        };
        assert!(matches!(
            two.enqueue(lease, "k", "b", lease).await.expect("enqueue"),
            Enqueued::Waiting { .. }
        ));
        let mut rung = bell.subscribe(wake::fnv1a64(b"k"));
        let other = bell.subscribe(wake::fnv1a64(b"other key"));
        assert!(one.release("k", "a", a).await.expect("release"));
        tokio::time::timeout(Duration::from_secs(10), rung.changed())
            .await
            .expect("the release rang the granted waiter's doorbell")
            .expect("the doorbell lives");
        assert!(!other.has_changed().expect("the doorbell lives"));
        assert_eq!(
            two.wait_for_grant("k", "b", Duration::ZERO).await,
            Some(a.next().expect("a next fence")),
            "and the row says so"
        );

        // A grant made on the way by another call: the holder's lease ran out, and a newcomer's
        // enqueue hands the key to the waiter at the head.
        let short = Duration::from_millis(50);
        one.enqueue(short, "e", "x", lease).await.expect("enqueue");
        assert!(matches!(
            two.enqueue(lease, "e", "y", lease).await.expect("enqueue"),
            Enqueued::Waiting { .. }
        ));
        let mut rung = bell.subscribe(wake::fnv1a64(b"e"));
        tokio::time::sleep(short * 2).await;
        assert!(matches!(
            one.enqueue(lease, "e", "z", lease).await.expect("enqueue"),
            Enqueued::Waiting { .. }
        ));
        tokio::time::timeout(Duration::from_secs(10), rung.changed())
            .await
            .expect("the newcomer's enqueue rang the head waiter's doorbell")
            .expect("the doorbell lives");
    }

    #[test]
    fn urls_name_absolute_and_relative_files() {
        let ok = |url: &str| path_from_url(url).expect(url).0;
        assert_eq!(
            ok("sqlite:///var/lib/app/locks.db"),
            Path::new("/var/lib/app/locks.db")
        );
        assert_eq!(ok("sqlite://locks.db"), Path::new("locks.db"));
        assert_eq!(ok("sqlite://data/locks.db"), Path::new("data/locks.db"));
        assert_eq!(
            ok("sqlite:///tmp/my%20locks.db"),
            Path::new("/tmp/my locks.db")
        );
        // An `@` in an absolute path is a file name's; in a relative one it is written `%40`.
        assert_eq!(ok("sqlite:///tmp/a@b/c@d.db"), Path::new("/tmp/a@b/c@d.db"));
        assert_eq!(ok("sqlite://rel/a%40b.db"), Path::new("rel/a@b.db"));
    }

    #[test]
    fn urls_carry_the_queue_settings() {
        let (path, settings) =
            path_from_url("sqlite:///tmp/l.db?queued_grants=true&process_liveness=0").unwrap();
        assert_eq!(path, Path::new("/tmp/l.db"));
        assert_eq!(
            settings,
            [
                (Setting::QueuedGrants, true),
                (Setting::ProcessLiveness, false)
            ]
        );
        assert!(path_from_url("sqlite:///tmp/l.db").unwrap().1.is_empty());
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (url, says) in [
            ("redis://localhost/locks.db", "not a sqlite:// URL"),
            ("/tmp/locks.db", "not a sqlite:// URL"),
            ("sqlite:", "not a sqlite:// URL"),
            ("sqlite://", "names no file"),
            ("sqlite:///", "names no file"),
            ("sqlite:///tmp/locks.db?mode=ro", "unknown setting `mode`"),
            (
                "sqlite:///tmp/locks.db?queued_grants=yes",
                "other than true or false",
            ),
            ("sqlite:///tmp/locks.db#x", "fragment"),
            ("sqlite:///tmp/locks%2.db", "percent escape"),
            ("sqlite://:memory:", "in-memory"),
            // Whatever `redact_url` reads as user info (up to the last `@` of a URL that is not
            // `sqlite:///…`) is refused, and shown by no message.
            ("sqlite://u:hunter2@h/a.db", "user or password"),
            ("sqlite://hunter2@h/a.db", "user or password"),
            ("sqlite://u:hunter2/x@h/a.db", "user or password"),
            ("sqlite://u:hun/ter2@[::1]:1/a.db", "user or password"),
            ("sqlite://rel/a@b.db", "user or password"),
            ("sqlite://rel/a.db?token=hunter2@x", "user or password"),
            (
                "sqlite:///tmp/a.db?token=hunter2",
                "unknown setting `token`",
            ),
            ("sqlite:///tmp/a.db?hunter2", "unknown setting"),
        ] {
            let err = path_from_url(url).expect_err(url);
            assert_eq!(
                err.kind(),
                lease_core::StoreErrorKind::InvalidInput,
                "{url}"
            );
            assert!(err.to_string().contains(says), "{url}: {err}");
            assert!(
                !format!("{err} {err:?}").contains("hunter"),
                "{url}: {err} {err:?}"
            );
        }
    }
}
