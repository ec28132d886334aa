//! The history a chaos run leaves behind: one JSON line per event, per process, read back by the
//! checker ([`crate::check`]).
//!
//! Timestamps are `CLOCK_BOOTTIME` nanoseconds, one clock for every process of the host, so events
//! of different processes can be ordered. Each line is written with one `write` on a file opened
//! for appending and not buffered, so a process killed with SIGKILL loses at most the line it was
//! writing.
//!
//! Store calls are recorded by [`RecordingStore`], a [`LeaseStore`] wrapper, so the history sees
//! every grant, renewal and release the lock makes, with the time each was sent: the checker
//! derives each holder's deadline from them.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use lease_core::{
    BootClock, BrokenLock, Capabilities, Clock, DynStore, Enqueued, Fence, KeyState, LeaseStore,
    StoreError,
};
use serde::{Deserialize, Serialize};

/// The `proc` of nemesis events aimed at the store server (a store pause, a restart); workers
/// count from 1.
pub const STORE: u64 = 0;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// A `try_lock` that may grant the key.
    Acquire,
    /// A renewal by the lock's heartbeat.
    Renew,
    /// A release.
    Release,
    /// The lock's loss signal fired.
    Lost,
    /// The worker starts a step of protected work (after checking that it holds the lease).
    CsEnter,
    /// The worker ends a step of protected work.
    CsExit,
    /// A fenced write to the job table (`value` says which; `accepted` is the table's answer).
    Write,
    /// Nemesis: a worker was sent SIGKILL.
    Kill,
    /// Nemesis: a worker (or with proc [`STORE`], the store server) was sent SIGSTOP (`dur_ns`
    /// is the planned pause).
    Pause,
    /// Nemesis: a paused worker (or the store server) was sent SIGCONT.
    Resume,
    /// Nemesis: the store server was restarted.
    Restart,
    /// A worker ends its run normally (every guard dropped).
    Exit,
    /// A waiter's `enqueue`: ok is a grant (with its fence), fail is queued (with the key's fence
    /// the store reported, if any), info an error. The invoke carries `patience_ns`.
    Enqueue,
    /// A waiter's `wait_for_grant`: ok is a grant the store reported (with its fence), fail is
    /// an answer without one.
    GrantWait,
    /// A waiter's `leave_queue`: ok when it gave a grant back, fail when it did not.
    LeaveQueue,
    /// Nemesis: a worker was cut off the store server (`dur_ns` is the planned partition):
    /// every byte between them is lost.
    Partition,
    /// Nemesis: a partitioned worker reaches the store again.
    Heal,
    /// Nemesis: a failover of the store (proc [`STORE`]): the invoke when the replica starts
    /// missing the primary's writes, ok once the primary is dead, the replica promoted and the
    /// old primary back as its replica, in sync.
    Failover,
    /// Nemesis: a worker's store replies are delayed by `dur_ns` from now on (0: no longer).
    Slow,
    /// Nemesis: a worker's wall clock was stepped (`value` is its offset from the real time,
    /// `+3600s`; `+0s` is the step back).
    Clock,
}

/// Whether an event starts an operation, ends it, or stands alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The operation was started (sent).
    Invoke,
    /// It succeeded: a grant, a renewal or release that took effect, an accepted write.
    Ok,
    /// It was refused: the key is busy, the lease was not ours, the write was stale.
    Fail,
    /// Its outcome is unknown (an error), or the event stands alone.
    Info,
}

/// One line of a history file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// `CLOCK_BOOTTIME` nanoseconds.
    pub t_ns: u64,
    /// The worker process (0 is the nemesis; a nemesis event names its target here).
    pub proc: u64,
    /// The lock key (`job/<id>`); empty for nemesis events.
    #[serde(default)]
    pub key: String,
    /// What happened.
    pub op: Op,
    /// Invoke, ok, fail or info.
    #[serde(rename = "type")]
    pub kind: Kind,
    /// The fence the operation carries, where it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<u64>,
    /// For writes: what was written (`claim` or `done`); for clock steps, the offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// For writes: whether the fenced table accepted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted: Option<bool>,
    /// For pauses: how long the process stays stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dur_ns: Option<u64>,
    /// For errors: the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For enqueues: the patience the waiter's entry was given (it lapses unless refreshed
    /// within it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patience_ns: Option<u64>,
    /// For store calls: which lock object of the process made it (a hash of the holder string
    /// the store was given). A process may wait for a key with several lock objects one after
    /// the other, and the store queues each under its own holder: one's `leave_queue` does not
    /// take the other's entry out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiter: Option<String>,
}

impl Event {
    /// An event stamped now.
    pub fn now(proc: u64, key: &str, op: Op, kind: Kind) -> Event {
        Event::at(now_ns(), proc, key, op, kind)
    }

    /// An event at `t_ns`.
    pub fn at(t_ns: u64, proc: u64, key: &str, op: Op, kind: Kind) -> Event {
        Event {
            t_ns,
            proc,
            key: key.to_owned(),
            op,
            kind,
            fence: None,
            value: None,
            accepted: None,
            dur_ns: None,
            error: None,
            patience_ns: None,
            waiter: None,
        }
    }

    /// With a fence.
    pub fn fence(mut self, fence: u64) -> Event {
        self.fence = Some(fence);
        self
    }
}

/// The host's `CLOCK_BOOTTIME` in nanoseconds: this process's boot clock less its time
/// namespace's offset (a worker of a `clock` run may live in a namespace whose boot clock is an
/// hour off), so that every process's events are on one clock.
pub fn now_ns() -> u64 {
    static OFFSET_NS: OnceLock<i64> = OnceLock::new();
    let offset = *OFFSET_NS.get_or_init(|| match lease_sqlite::HostClock::open() {
        Ok(clock) => clock.offset_ns(),
        Err(e) => {
            eprintln!("history: {e}; events are stamped with this namespace's boot clock");
            0
        }
    });
    let raw = i64::try_from(BootClock.now().as_nanos()).unwrap_or(i64::MAX);
    u64::try_from(raw.saturating_sub(offset)).unwrap_or(0)
}

/// An append-only history file shared by the tasks of one process.
#[derive(Clone)]
pub struct History {
    file: Arc<Mutex<File>>,
    proc: u64,
}

impl History {
    /// Opens (creating) `path` for appending events of process `proc`.
    ///
    /// # Errors
    ///
    /// The file cannot be opened.
    pub fn open(path: &Path, proc: u64) -> anyhow::Result<History> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| anyhow::anyhow!("open history file {}: {e}", path.display()))?;
        Ok(History {
            file: Arc::new(Mutex::new(file)),
            proc,
        })
    }

    /// The process this history belongs to.
    pub fn proc(&self) -> u64 {
        self.proc
    }

    /// Appends one event as one line, written at once. A failed write is reported on stderr
    /// and otherwise ignored: the run goes on, and the checker sees a shorter history.
    pub fn log(&self, event: &Event) {
        let mut line = match serde_json::to_vec(event) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("history: cannot encode an event: {e}");
                return;
            }
        };
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = file.write_all(&line) {
            eprintln!("history: write failed: {e}");
        }
    }

    /// Appends an event of this process stamped now.
    pub fn event(&self, key: &str, op: Op, kind: Kind) -> Event {
        Event::now(self.proc, key, op, kind)
    }
}

/// A [`LeaseStore`] that records every call in a [`History`]: `acquire` for `try_lock`, `renew`,
/// `release`, and the queue's `enqueue`, `wait_for_grant` and `leave_queue`, each as an invoke
/// (stamped before the call is sent) and its outcome.
#[derive(Clone)]
pub struct RecordingStore {
    inner: DynStore,
    history: History,
    /// Hashes holders into [`Event::waiter`] (the holder strings themselves stay out of the
    /// history).
    waiter_hash: std::hash::RandomState,
}

impl RecordingStore {
    /// Records the calls to `inner` in `history`.
    pub fn new(inner: DynStore, history: History) -> RecordingStore {
        RecordingStore {
            inner,
            history,
            waiter_hash: std::hash::RandomState::new(),
        }
    }

    /// An event of a call made for `holder`, naming the lock object by a hash of it.
    fn event(&self, key: &str, holder: &str, op: Op, kind: Kind) -> Event {
        let mut e = self.history.event(key, op, kind);
        e.waiter = Some(format!(
            "{:016x}",
            std::hash::BuildHasher::hash_one(&self.waiter_hash, holder)
        ));
        e
    }

    fn outcome(
        &self,
        key: &str,
        holder: &str,
        op: Op,
        result: Result<Option<u64>, &StoreError>,
        ok: bool,
    ) {
        let kind = match (&result, ok) {
            (Err(_), _) => Kind::Info,
            (Ok(_), true) => Kind::Ok,
            (Ok(_), false) => Kind::Fail,
        };
        let mut e = self.event(key, holder, op, kind);
        match result {
            Ok(fence) => e.fence = fence,
            Err(err) => e.error = Some(err.to_string()),
        }
        self.history.log(&e);
    }
}

impl LeaseStore for RecordingStore {
    async fn try_lock(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
    ) -> Result<Option<Fence>, StoreError> {
        if lease.is_zero() {
            // A release through try_lock: recorded as such, without a fence (none is given).
            self.history
                .log(&self.event(key, holder, Op::Release, Kind::Invoke));
            let r = self.inner.try_lock(lease, key, holder).await;
            self.outcome(key, holder, Op::Release, r.as_ref().map(|_| None), true);
            return r;
        }
        self.history
            .log(&self.event(key, holder, Op::Acquire, Kind::Invoke));
        let r = self.inner.try_lock(lease, key, holder).await;
        let fence = r.as_ref().ok().and_then(|f| f.map(Fence::get));
        self.outcome(
            key,
            holder,
            Op::Acquire,
            r.as_ref().map(|_| fence),
            fence.is_some(),
        );
        r
    }

    async fn renew(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
        fence: Fence,
    ) -> Result<bool, StoreError> {
        self.history.log(
            &self
                .event(key, holder, Op::Renew, Kind::Invoke)
                .fence(fence.get()),
        );
        let r = self.inner.renew(lease, key, holder, fence).await;
        let ok = matches!(r, Ok(true));
        self.outcome(
            key,
            holder,
            Op::Renew,
            r.as_ref().map(|_| Some(fence.get())),
            ok,
        );
        r
    }

    async fn release(&self, key: &str, holder: &str, fence: Fence) -> Result<bool, StoreError> {
        self.history.log(
            &self
                .event(key, holder, Op::Release, Kind::Invoke)
                .fence(fence.get()),
        );
        let r = self.inner.release(key, holder, fence).await;
        let ok = matches!(r, Ok(true));
        self.outcome(
            key,
            holder,
            Op::Release,
            r.as_ref().map(|_| Some(fence.get())),
            ok,
        );
        r
    }

    async fn enqueue(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
        patience: Duration,
    ) -> Result<Enqueued, StoreError> {
        let mut e = self.event(key, holder, Op::Enqueue, Kind::Invoke);
        e.patience_ns = Some(u64::try_from(patience.as_nanos()).unwrap_or(u64::MAX));
        self.history.log(&e);
        let r = self.inner.enqueue(lease, key, holder, patience).await;
        let (fence, granted) = match &r {
            Ok(Enqueued::Granted(f)) => (Some(f.get()), true),
            Ok(Enqueued::Waiting { fence }) => (fence.map(Fence::get), false),
            Ok(_) | Err(_) => (None, false),
        };
        self.outcome(key, holder, Op::Enqueue, r.as_ref().map(|_| fence), granted);
        r
    }

    async fn wait_for_grant(&self, key: &str, holder: &str, max_wait: Duration) -> Option<Fence> {
        self.history
            .log(&self.event(key, holder, Op::GrantWait, Kind::Invoke));
        let r = self.inner.wait_for_grant(key, holder, max_wait).await;
        let fence = r.map(Fence::get);
        self.outcome(key, holder, Op::GrantWait, Ok(fence), fence.is_some());
        r
    }

    async fn leave_queue(&self, key: &str, holder: &str) -> Result<bool, StoreError> {
        self.history
            .log(&self.event(key, holder, Op::LeaveQueue, Kind::Invoke));
        let r = self.inner.leave_queue(key, holder).await;
        let ok = matches!(r, Ok(true));
        self.outcome(key, holder, Op::LeaveQueue, r.as_ref().map(|_| None), ok);
        r
    }

    async fn wait_for_change(&self, key: &str, max_wait: Duration) {
        self.inner.wait_for_change(key, max_wait).await
    }

    /// Forwarded, not recorded: the history is of the lock's own calls, and the lock never
    /// makes these.
    async fn inspect(&self, key: &str) -> Result<KeyState, StoreError> {
        self.inner.inspect(key).await
    }

    async fn break_lock(&self, key: &str) -> Result<Option<BrokenLock>, StoreError> {
        self.inner.break_lock(key).await
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}

/// Reads a history file; a torn last line (the process was killed while writing it) is skipped.
///
/// # Errors
///
/// The file cannot be read, or a line other than the last is not an event (named by line).
pub fn read_file(path: &Path) -> anyhow::Result<Vec<Event>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("read history {}: {e}", path.display()))?;
    let lines: Vec<&str> = text.lines().collect();
    let mut events = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Event>(line) {
            Ok(e) => events.push(e),
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {}
            Err(e) => anyhow::bail!("{}:{}: not a history event: {e}", path.display(), i + 1),
        }
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every call the recording store makes, invokes and outcomes alike, names its lock object,
    /// and the same one for one holder: the checker pairs invokes with outcomes by it.
    #[tokio::test]
    async fn every_recorded_call_names_its_lock_object() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.jsonl");
        let store = RecordingStore::new(
            DynStore::new(lease_core::MemoryStore::new()),
            History::open(&path, 1).unwrap(),
        );
        let lease = Duration::from_secs(5);
        let f = store.try_lock(lease, "k", "a").await.unwrap().unwrap();
        store.renew(lease, "k", "a", f).await.unwrap();
        store.release("k", "a", f).await.unwrap();
        store.try_lock(Duration::ZERO, "k", "a").await.unwrap();
        store.enqueue(lease, "k", "a", lease).await.unwrap();
        store.wait_for_grant("k", "a", Duration::ZERO).await;
        store.leave_queue("k", "a").await.unwrap();
        store.try_lock(lease, "k", "b").await.unwrap();
        let events: Vec<Event> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(events.len(), 16, "{events:?}");
        let of = |e: &Event| e.waiter.clone().expect("every call names its lock object");
        let a = of(&events[0]);
        assert!(events[..14].iter().all(|e| of(e) == a), "{events:?}");
        assert!(events[14..].iter().all(|e| of(e) != a), "{events:?}");
    }

    #[test]
    fn events_round_trip_in_the_documented_shape() {
        let mut e = Event::at(5, 2, "job/1", Op::Write, Kind::Ok).fence(3);
        e.value = Some("done".into());
        e.accepted = Some(false);
        let line = serde_json::to_string(&e).unwrap();
        assert_eq!(
            line,
            r#"{"t_ns":5,"proc":2,"key":"job/1","op":"write","type":"ok","fence":3,"value":"done","accepted":false}"#
        );
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), e);
    }

    #[test]
    fn a_torn_last_line_is_skipped_but_a_bad_middle_line_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.jsonl");
        let good = serde_json::to_string(&Event::at(1, 1, "k", Op::Lost, Kind::Info)).unwrap();
        std::fs::write(&p, format!("{good}\n{{\"t_ns\":2,\"pro")).unwrap();
        assert_eq!(read_file(&p).unwrap().len(), 1);
        std::fs::write(&p, format!("{{oops}}\n{good}\n")).unwrap();
        let err = read_file(&p).unwrap_err().to_string();
        assert!(err.contains("h.jsonl:1"), "{err}");
    }
}
