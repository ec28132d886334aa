//! The checker's self-test: each deliberately broken lock runs through the same chaos harness as
//! the real one, and `fleet check` must name the invariant it breaks. A healthy run under the
//! same faults must pass. A checker that cannot fail proves nothing.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Mutex;

use lease_examples::broken::Broken;

/// The runs are timing-sensitive (300 ms leases): one at a time, so they do not starve each other
/// of the machine's cores.
static SERIAL: Mutex<()> = Mutex::new(());

/// A chaos run in `dir`; `queued`: on a SQLite store with its waiter queue (which the workers
/// then wait in), as a broken queue needs.
fn chaos_run(dir: &Path, broken: Option<Broken>, queued: bool) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleet"));
    cmd.args([
        "--chaos",
        "pause",
        "--seed",
        "3",
        "--duration",
        "8s",
        "--lease",
        "300ms",
        "--workers",
        "6",
    ])
    .arg("--dir")
    .arg(dir);
    if let Some(b) = broken {
        cmd.args(["--broken", b.name()]);
    }
    // The queue is the SQLite store's default: said either way, so that the plain runs stay
    // plain.
    let queued = queued || broken.is_some_and(Broken::needs_queue);
    let db = dir.join("locks.db");
    cmd.arg("--store")
        .arg(format!("sqlite://{}?queued_grants={queued}", db.display()));
    cmd.output().expect("run fleet")
}

fn check(dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleet"))
        .arg("check")
        .arg(dir.join("history"))
        .output()
        .expect("run fleet check")
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn every_broken_lock_is_caught_naming_its_invariant() {
    // Those that show only under partitions have a test of their own, on a server store.
    for broken in Broken::ALL.into_iter().filter(|b| !b.needs_partition()) {
        let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let run = chaos_run(dir.path(), Some(broken), false);
        assert!(
            !run.status.success(),
            "fleet --broken {} passed:\n{}",
            broken.name(),
            text(&run)
        );
        // The saved history, checked again on its own, fails the same way.
        let out = check(dir.path());
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            broken
                .expected()
                .iter()
                .any(|inv| stdout.contains(&format!("VIOLATION {inv}:"))),
            "--broken {} should violate {:?}:\n{stdout}",
            broken.name(),
            broken.expected()
        );
    }
}

/// A healthy run under the faults of the self-test: passes, and returns the checker's line.
fn healthy_run(queued: bool) -> String {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let run = chaos_run(dir.path(), None, queued);
    if !run.status.success() {
        let kept = dir.keep();
        panic!("history kept in {}:\n{}", kept.display(), text(&run));
    }
    let out = check(dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!stdout.contains("VIOLATION"), "{stdout}");
    stdout.lines().next().unwrap_or_default().to_owned()
}

#[test]
fn a_healthy_run_under_the_same_faults_passes() {
    let line = healthy_run(false);
    assert!(line.starts_with("sqlite/pause: "), "{line}");
    assert!(line.contains(" 0 queue grants"), "{line}");
}

/// The store's own queue, in the run that catches `lifo-queue`, passes I7: and it had to, with
/// waiters queued and served.
#[test]
fn a_healthy_queue_under_the_same_faults_passes() {
    let line = healthy_run(true);
    assert!(line.starts_with("sqlite-queued/pause: "), "{line}");
    let grants: u64 = line
        .split(" queue grants")
        .next()
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no queue grants in {line}"));
    assert!(grants >= 50, "{line}");
}

#[test]
fn check_rejects_a_path_that_is_not_a_history() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fleet"))
        .arg("check")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a fleet history"),
        "{}",
        text(&out)
    );
}

/// `renew-on-timeout` keeps its lease through a partition: its worker goes on with its job past
/// the deadline the store's answers allow. The same run with the real lock passes.
#[cfg(feature = "redis")]
#[test]
fn a_lock_that_trusts_unanswered_renewals_is_caught_under_partitions() {
    if lease_testkit::require_binary("redis-server", "redis-server").is_none() {
        return;
    }
    for broken in [Some(Broken::RenewOnTimeout), None] {
        let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleet"));
        // Work of four leases: a worker cut off is nearly always mid-job.
        cmd.args(["--store", "redis", "--chaos", "partition", "--seed", "42"])
            .args([
                "--duration",
                "12s",
                "--lease",
                "500ms",
                "--work",
                "2s",
                "--dir",
            ])
            .arg(dir.path());
        if let Some(b) = broken {
            cmd.args(["--broken", b.name()]);
        }
        let run = cmd.output().expect("run fleet");
        let out = check(dir.path());
        let stdout = String::from_utf8_lossy(&out.stdout);
        if broken.is_some() {
            assert!(!run.status.success(), "it passed:\n{}", text(&run));
            assert_eq!(out.status.code(), Some(1), "{}", text(&out));
            assert!(stdout.contains("VIOLATION I5:"), "{stdout}");
        } else {
            assert!(run.status.success(), "{}", text(&run));
            assert!(out.status.success(), "{}", text(&out));
        }
    }
}
