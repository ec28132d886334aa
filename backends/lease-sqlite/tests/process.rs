//! Lock holders in real OS processes sharing one database file: mutual exclusion on a fenced
//! counter, a SIGKILLed holder replaced within lease + 1 s, a holder paused past its lease that
//! learns of the loss on resume and whose fenced write is refused, the release → acquire handoff
//! time between two processes, fairness between eight contending processes, and a holder whose
//! wall clock is a day off (libfaketime) changing nothing, holders in different time namespaces
//! (`unshare --time --boottime`) on one clock, and a boot id hidden in a mount namespace
//! failing the open.
//!
//! The kill and pause cases every backend shares are lease-testkit's process suite; the cases
//! below are SQLite's own, on the same harness. The children are this test binary run again,
//! each in a role of [`child_role`] (or the suite's `holder`) on a target, the lock database's
//! path; the counter database lies beside it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lease_core::{BootClock, Clock, CrossProcessLock, Error, Fence};
use lease_sqlite::rusqlite::Connection;
use lease_sqlite::{Durability, SqliteStore};
use lease_testkit::process_suite::{
    Holder, Signal, child_command, fence_of, hold, is_child, lock, number, replace_paused_holder,
    report, run_all, wrapped_child_command,
};

const LEASE: Duration = Duration::from_secs(2);

lease_testkit::process_conformance_tests!(
    lease: LEASE,
    target: Some(TempDb::new()),
    open: open,
    roles: child_role,
);

/// One test's temp dir, holding the lock database (the processes' target) and the counter.
struct TempDb {
    _dir: tempfile::TempDir,
    db: String,
}

impl TempDb {
    fn new() -> TempDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("locks.db").display().to_string();
        TempDb { _dir: dir, db }
    }

    fn db(&self) -> &Path {
        Path::new(&self.db)
    }

    fn counter(&self) -> PathBuf {
        counter_beside(self.db())
    }
}

impl AsRef<str> for TempDb {
    fn as_ref(&self) -> &str {
        &self.db
    }
}

/// Where the counter database of the lock database `db` is.
fn counter_beside(db: &Path) -> PathBuf {
    db.with_file_name("counter.db")
}

fn now_ns() -> u128 {
    BootClock.now().as_nanos()
}

/// The counter every critical section bumps, in its own database file, guarded by the fence.
fn counter_db(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("open the counter database");
    conn.busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY, value INTEGER NOT NULL,
             fence INTEGER NOT NULL);
         INSERT OR IGNORE INTO counter (id, value, fence) VALUES (1, 0, 0);",
    )
    .expect("create the counter");
    conn
}

/// The fenced write: refused (0 rows) once a larger fence has written.
fn fenced_increment(conn: &Connection, fence: Fence) -> usize {
    conn.execute(
        "UPDATE counter SET value = value + 1, fence = ?1 WHERE id = 1 AND fence <= ?1",
        [i64::try_from(fence.get()).expect("fence fits")],
    )
    .expect("fenced update")
}

fn counter_value(path: &Path) -> i64 {
    counter_db(path)
        .query_row("SELECT value FROM counter WHERE id = 1", [], |r| r.get(0))
        .expect("read the counter")
}

/// The store at a target, the lock database's path.
async fn open(db: String) -> SqliteStore {
    SqliteStore::open(db).await.expect("open the store")
}

async fn lock_on(db: &Path, label: &str) -> CrossProcessLock<SqliteStore> {
    lock(open(db.display().to_string()).await, LEASE, label)
}

/// SQLite's own child roles, on the lock database `db` (and the counter beside it).
async fn child_role(role: String, db: String, arg: String) {
    let db = Path::new(&db);
    let counter = counter_beside(db);
    let counter = counter.as_path();
    match role.as_str() {
        "counter" => child_counter(db, counter, arg.parse().expect("iterations")).await,
        "fenced-holder" => child_holder(db, counter).await,
        "wall-holder" => {
            let wall = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("after 1970")
                .as_secs();
            report(format_args!("WALL {wall}"));
            child_holder(db, counter).await;
        }
        "handoff" => child_handoff(db, arg == "normal").await,
        "fair" => child_fair(db, arg.parse().expect("seconds")).await,
        "ns-holder" => {
            report(format_args!("CLOCK {}", now_ns()));
            child_holder(db, counter).await;
        }
        "try-once" => {
            report(format_args!("CLOCK {}", now_ns()));
            let lock = lock_on(db, "try-once").await;
            match lock.try_lock_once().await {
                Ok(guard) => {
                    report(format_args!("TRY fence {}", guard.fence().get()));
                    guard.release().await.expect("release");
                }
                Err(Error::Busy { .. }) => report("TRY busy"),
                Err(e) => report(format_args!("TRY error {e}")),
            }
        }
        "open" => {
            let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map_or_else(
                |e| format!("unreadable ({e})"),
                |s| format!("{:?}", s.trim()),
            );
            report(format_args!("BOOTID {boot_id}"));
            match SqliteStore::open(db).await {
                Ok(_) => report("OPEN ok"),
                Err(e) => report(format_args!("OPEN error {:?}: {e}", e.kind())),
            }
        }
        other => panic!("unknown child role {other}"),
    }
}

/// `n` critical sections, each bumping the counter with its fence between `ENTER` and `EXIT`.
async fn child_counter(db: &Path, counter: &Path, n: u32) {
    let lock = lock_on(db, "counter").await;
    let conn = counter_db(counter);
    let mut accepted = 0;
    for _ in 0..n {
        let guard = lock
            .lock_timeout(Duration::from_secs(30))
            .await
            .expect("acquire");
        report(format_args!("ENTER {}", now_ns()));
        accepted += fenced_increment(&conn, guard.fence());
        // Stay inside a little, so that an overlap would show.
        std::thread::sleep(Duration::from_micros(500));
        report(format_args!("EXIT {}", now_ns()));
        guard.release().await.expect("release");
    }
    report(format_args!("DONE {accepted}"));
}

/// Takes the key, reports `HELD <fence>`; when the loss signal fires, tries its fenced write and
/// reports `LOST held=<is_held> rows=<rows written>`; then waits to be killed.
async fn child_holder(db: &Path, counter: &Path) {
    let lock = lock_on(db, "holder").await;
    let conn = counter_db(counter);
    hold(lock, move |fence| {
        format!(" rows={}", fenced_increment(&conn, fence))
    })
    .await;
}

/// [`HANDOFF_ROUNDS`] acquisitions, printing `ACQ <ns>` when granted and `REL <ns>` just before
/// releasing; with [`Durability::Normal`] if `normal`.
async fn child_handoff(db: &Path, normal: bool) {
    let durability = if normal {
        Durability::Normal
    } else {
        Durability::Full
    };
    let store = SqliteStore::builder(db)
        .durability(durability)
        .open()
        .await
        .expect("open the store");
    let lock = lock(store, LEASE, "handoff");
    for _ in 0..HANDOFF_ROUNDS {
        let guard = lock
            .lock_timeout(Duration::from_secs(30))
            .await
            .expect("acquire");
        report(format_args!("ACQ {}", now_ns()));
        // Long enough for the other process to be back and waiting for the key.
        std::thread::sleep(Duration::from_millis(5));
        report(format_args!("REL {}", now_ns()));
        guard.release().await.expect("release");
        // Give the other process the turn (it is waiting, and takes it in well under 5 ms),
        // then wait for it in turn.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    report("DONE");
}

/// Contends for `secs` seconds: hold briefly, release, pause briefly; prints `DONE <count>`.
async fn child_fair(db: &Path, secs: f64) {
    let lock = lock_on(db, "fair").await;
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut count = 0u64;
    while Instant::now() < end {
        match lock.lock_timeout(end - Instant::now()).await {
            Ok(guard) => {
                count += 1;
                std::thread::sleep(Duration::from_millis(1));
                guard.release().await.expect("release");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(Error::TimedOut { .. }) => break,
            Err(e) => panic!("lock: {e}"),
        }
    }
    report(format_args!("DONE {count}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_never_overlap_and_every_fenced_increment_counts() {
    if is_child() {
        return;
    }
    const PROCESSES: usize = 4;
    const N: u32 = 25;
    let tmp = TempDb::new();
    counter_db(&tmp.counter());
    let cmds = (0..PROCESSES)
        .map(|_| child_command("counter", tmp.as_ref(), &N.to_string()))
        .collect();
    let outputs = run_all(cmds).await;
    let mut intervals = Vec::new();
    let mut accepted = 0;
    for (p, events) in outputs.iter().enumerate() {
        let mut enter = None;
        for e in events {
            if e.starts_with("ENTER") {
                enter = Some(number::<u128>(e));
            } else if e.starts_with("EXIT") {
                intervals.push((
                    enter.take().expect("EXIT after ENTER"),
                    number::<u128>(e),
                    p,
                ));
            } else if e.starts_with("DONE") {
                accepted += number::<i64>(e);
            }
        }
    }
    assert_eq!(intervals.len(), PROCESSES * N as usize);
    intervals.sort();
    for w in intervals.windows(2) {
        assert!(
            w[0].1 < w[1].0,
            "process {} entered at {} before process {} left at {}",
            w[1].2,
            w[1].0,
            w[0].2,
            w[0].1
        );
    }
    let value = counter_value(&tmp.counter());
    assert_eq!(
        value, accepted,
        "the counter equals the accepted increments"
    );
    assert_eq!(
        accepted,
        (PROCESSES as i64) * i64::from(N),
        "no holder was fenced off"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_holder_is_replaced_and_its_fenced_write_is_refused_on_resume() {
    if is_child() {
        return;
    }
    let tmp = TempDb::new();
    let mut holder = Holder::spawn_command(child_command("fenced-holder", tmp.as_ref(), ""));
    let child_fence = fence_of(&holder.expect_line("HELD", Duration::from_secs(20)).await);
    let lock = lock_on(tmp.db(), "parent").await;
    let (guard, lost) =
        replace_paused_holder(&mut holder, child_fence, &lock, 3 * LEASE, |guard| {
            assert_eq!(
                fenced_increment(&counter_db(&tmp.counter()), guard.fence()),
                1,
                "the new holder writes"
            );
        })
        .await;
    assert_eq!(
        lost, "LOST held=false rows=0",
        "the resumed holder knows it lost the key, and its fenced write is refused"
    );
    assert!(
        guard.is_held(),
        "the resumed holder did not take the key back"
    );
    assert_eq!(counter_value(&tmp.counter()), 1);
    guard.release().await.expect("release");
}

const HANDOFF_ROUNDS: u32 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoff_between_two_processes_full_durability() {
    if is_child() {
        return;
    }
    handoff("full").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoff_between_two_processes_normal_durability() {
    if is_child() {
        return;
    }
    handoff("normal").await;
}

/// Two processes take turns; prints the release → acquire times. Asserts only that the median
/// is far below the lock's poll interval (250 ms), i.e. that waiters are woken.
async fn handoff(durability: &str) {
    let tmp = TempDb::new();
    let cmds = (0..2)
        .map(|_| child_command("handoff", tmp.as_ref(), durability))
        .collect();
    let outputs = run_all(cmds).await;
    // Merge both processes' events by time; a handoff is a release by one process followed
    // by the other's grant.
    let mut all: Vec<(u128, bool, usize)> = Vec::new();
    for (p, events) in outputs.iter().enumerate() {
        for e in events {
            if e.starts_with("ACQ") {
                all.push((number(e), true, p));
            } else if e.starts_with("REL") {
                all.push((number(e), false, p));
            }
        }
    }
    all.sort();
    let mut handoffs: Vec<u128> = all
        .windows(2)
        .filter(|w| !w[0].1 && w[1].1 && w[0].2 != w[1].2)
        .map(|w| w[1].0 - w[0].0)
        .collect();
    handoffs.sort_unstable();
    assert!(
        handoffs.len() >= 50,
        "the processes took turns ({} handoffs)",
        handoffs.len()
    );
    let at = |q: f64| {
        Duration::from_nanos(
            u64::try_from(handoffs[((handoffs.len() - 1) as f64 * q) as usize]).unwrap_or(0),
        )
    };
    println!(
        "release → acquire between two processes ({durability} durability) over {} handoffs: \
         p50 {:?}, p90 {:?}, max {:?}",
        handoffs.len(),
        at(0.5),
        at(0.9),
        at(1.0)
    );
    assert!(
        at(0.5) < Duration::from_millis(100),
        "the median handoff is not a poll interval"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_contending_processes_all_acquire() {
    if is_child() {
        return;
    }
    const PROCESSES: usize = 8;
    let secs: f64 = std::env::var("LEASE_SQLITE_FAIRNESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let tmp = TempDb::new();
    let cmds = (0..PROCESSES)
        .map(|_| child_command("fair", tmp.as_ref(), &secs.to_string()))
        .collect();
    let outputs = run_all(cmds).await;
    let counts: Vec<f64> = outputs
        .iter()
        .map(|events| {
            let done = events.iter().find(|e| e.starts_with("DONE")).expect("DONE");
            number::<u64>(done) as f64
        })
        .collect();
    let sum: f64 = counts.iter().sum();
    let squares: f64 = counts.iter().map(|c| c * c).sum();
    let jain = sum * sum / (PROCESSES as f64 * squares);
    println!(
        "{PROCESSES} processes over {secs} s: acquisitions per process {counts:?}, total {sum}, \
         Jain's index {jain:.3}"
    );
    assert!(
        counts.iter().all(|&c| c >= 1.0),
        "every process acquires at least once: {counts:?}"
    );
}

/// The child holder's wall clock set a day off (libfaketime, monotonic clocks left alone), in
/// both directions: a lease is neither expired early (a clock behind) nor kept past its end (a
/// clock ahead). Skipped without `faketime`, except under `CI`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_with_a_stepped_wall_clock_changes_nothing() {
    if is_child() {
        return;
    }
    // The library itself rather than the `faketime` wrapper, which forks: a SIGKILL must reach
    // the holder.
    let libfaketime = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
        "/usr/local/lib/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .find(|p| Path::new(p).is_file());
    let Some(libfaketime) = libfaketime else {
        assert!(
            std::env::var_os("CI").is_none(),
            "faketime is needed under CI"
        );
        println!("skipped: no libfaketime");
        return;
    };
    let tmp = TempDb::new();
    let lock = lock_on(tmp.db(), "parent").await;
    for offset in ["-1d", "+1d"] {
        let mut cmd = child_command("wall-holder", tmp.as_ref(), "");
        cmd.env("LD_PRELOAD", libfaketime)
            .env("FAKETIME", offset)
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        let mut holder = Holder::spawn_command(cmd);
        let wall: i64 = number(&holder.expect_line("WALL", Duration::from_secs(20)).await);
        let real = i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("after 1970")
                .as_secs(),
        )
        .expect("seconds");
        assert!(
            (wall - real).abs() > 12 * 3600,
            "the child's wall clock is a day off ({offset}): {wall} vs {real}"
        );
        let child_fence = fence_of(&holder.expect_line("HELD", Duration::from_secs(20)).await);
        assert!(
            matches!(lock.try_lock_once().await, Err(Error::Busy { .. })),
            "the child's lease is valid here ({offset})"
        );
        let why = format!("the holder's wall clock {offset}");
        take_over_after_kill(&holder, child_fence, &lock, Duration::from_secs(30), &why).await;
    }
}

/// Kills `holder` and takes the key with `lock`, waiting at most `within`: granted within
/// lease + 1 s of the kill, with a fence above `child_fence`. `why` names the case in messages.
async fn take_over_after_kill(
    holder: &Holder,
    child_fence: Fence,
    lock: &CrossProcessLock<SqliteStore>,
    within: Duration,
    why: &str,
) {
    holder.signal(Signal::KILL);
    let killed_at = Instant::now();
    let guard = lock
        .lock_timeout(within)
        .await
        .unwrap_or_else(|e| panic!("acquired after the kill ({why}): {e}"));
    let took = killed_at.elapsed();
    assert!(
        took <= LEASE + Duration::from_secs(1),
        "acquired within lease + 1 s of the kill ({why}), took {took:?}"
    );
    assert!(guard.fence() > child_fence);
    guard.release().await.expect("release");
}

/// Whether `cmd` runs and succeeds here (a namespace tool, say); under `CI` it must.
fn can_run(cmd: &[&str]) -> bool {
    let ok = Command::new(cmd[0])
        .args(&cmd[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok || std::env::var_os("CI").is_none(),
        "`{}` must work under CI (it needs root and util-linux's unshare)",
        cmd.join(" ")
    );
    if !ok {
        println!("skipped: `{}` does not work here", cmd.join(" "));
    }
    ok
}

/// `CLOCK_BOOTTIME` is per time namespace: a process started by `unshare --time --boottime
/// 3600` reads the host's boot clock plus an hour. Expiry written and read by processes in
/// different namespaces must still be on one clock: a holder in the root namespace is not
/// expired an hour early for a process in the offset namespace (which would grant it a second
/// fence over a live lease), and a holder in the offset namespace does not keep the key an hour
/// past its death.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_in_different_time_namespaces_never_both_hold_a_key() {
    if is_child() {
        return;
    }
    const OFFSET_SECS: i64 = 3600;
    let offset = OFFSET_SECS.to_string();
    let unshare = ["unshare", "--time", "--boottime", offset.as_str()];
    if !can_run(&[&unshare[..], &["true"]].concat()) {
        return;
    }
    let tmp = TempDb::new();
    let check_offset = |line: &str| {
        let child: i128 = number(line);
        let skew = child - i128::try_from(now_ns()).expect("ns");
        let want = i128::from(OFFSET_SECS) * 1_000_000_000;
        assert!(
            (skew - want).abs() < 60_000_000_000,
            "the child's boot clock is {OFFSET_SECS} s ahead of ours (skew {skew} ns)"
        );
    };

    // The root namespace holds; a process an hour ahead must find the key held.
    let lock = lock_on(tmp.db(), "parent").await;
    let guard = lock
        .lock_timeout(Duration::from_secs(10))
        .await
        .expect("parent acquires");
    let outputs = run_all(vec![wrapped_child_command(
        &unshare,
        "try-once",
        tmp.as_ref(),
        "",
    )])
    .await;
    let events = &outputs[0];
    check_offset(
        events
            .iter()
            .find(|e| e.starts_with("CLOCK"))
            .expect("CLOCK"),
    );
    let tried = events.iter().find(|e| e.starts_with("TRY")).expect("TRY");
    assert_eq!(
        tried,
        "TRY busy",
        "a process in another time namespace was granted a key held by fence {}",
        guard.fence()
    );
    assert!(guard.is_held());
    let parent_fence = guard.fence();
    guard.release().await.expect("release");

    // A holder in the offset namespace: held for us while it lives, free within lease + 1 s
    // of its death.
    let mut holder = Holder::spawn_command(wrapped_child_command(
        &unshare,
        "ns-holder",
        tmp.as_ref(),
        "",
    ));
    check_offset(&holder.expect_line("CLOCK", Duration::from_secs(20)).await);
    let child_fence = fence_of(&holder.expect_line("HELD", Duration::from_secs(20)).await);
    assert!(child_fence > parent_fence);
    assert!(
        matches!(lock.try_lock_once().await, Err(Error::Busy { .. })),
        "the offset holder's lease is valid in the root namespace"
    );
    // Within lease + 5 s at most: the dead offset holder's lease ends on the host's clock.
    let why = "a holder in the offset time namespace";
    take_over_after_kill(
        &holder,
        child_fence,
        &lock,
        LEASE + Duration::from_secs(5),
        why,
    )
    .await;
}

/// Without a readable boot id the store cannot tell a lease of this boot from one written
/// before a reboot: opening must fail with a permanent error naming the file, never fall back
/// to a made-up id. The boot id is hidden from a child in a mount namespace of its own, once by
/// an empty file bound over it and once by an empty tmpfs over its directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hidden_boot_id_fails_open_naming_the_file() {
    if is_child() {
        return;
    }
    // `--propagation unchanged`: unshare's default makes `/` private, which fails where `/` is
    // not a mount point (a chroot). The script makes `/proc` private instead, before mounting
    // anything under it, so nothing it mounts reaches the host's namespace.
    let unshare = ["unshare", "--mount", "--propagation", "unchanged"];
    if !can_run(&[&unshare[..], &["sh", "-c", "mount --make-rprivate /proc"]].concat()) {
        return;
    }
    let tmp = TempDb::new();
    let empty = tmp.db().with_file_name("empty");
    std::fs::write(&empty, "").expect("an empty file");
    let empty = empty.display().to_string();
    let bind = format!("mount --bind '{empty}' /proc/sys/kernel/random/boot_id");
    let tmpfs = "mount -t tmpfs none /proc/sys/kernel/random".to_owned();
    let run = |hide: Option<&str>| {
        let script = format!(
            "mount --make-rprivate /proc && {} && exec \"$@\"",
            hide.unwrap_or("true")
        );
        wrapped_child_command(
            &[&unshare[..], &["--", "sh", "-c", &script, "sh"]].concat(),
            "open",
            tmp.as_ref(),
            "",
        )
    };
    let outputs = run_all(vec![run(None), run(Some(&bind)), run(Some(&tmpfs))]).await;
    let line = |events: &[String], prefix: &str| {
        events
            .iter()
            .find(|e| e.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {events:?}"))
            .clone()
    };
    assert_eq!(
        line(&outputs[0], "OPEN"),
        "OPEN ok",
        "opens with the boot id visible"
    );
    for (events, how) in outputs[1..].iter().zip(["an empty file", "a tmpfs"]) {
        let boot_id = line(events, "BOOTID");
        assert!(
            boot_id == "BOOTID \"\"" || boot_id.starts_with("BOOTID unreadable"),
            "the boot id is hidden by {how}: {boot_id}"
        );
        let open = line(events, "OPEN");
        assert!(
            open.starts_with("OPEN error Permanent")
                && open.contains("/proc/sys/kernel/random/boot_id"),
            "a hidden boot id ({how}) fails the open naming the file: {open}"
        );
    }
}
