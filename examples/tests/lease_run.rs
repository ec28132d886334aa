//! `lease-run` against a real SQLite store: fence export, exit codes, busy, time-out, and loss.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn lease_run(db: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lease-run"));
    c.arg("--store").arg(format!("sqlite://{}", db.display()));
    c
}

#[test]
fn exports_the_fence_and_passes_the_exit_status_through() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("locks.db");
    for expected_fence in 1..=2 {
        let out = lease_run(&db)
            .args([
                "--key",
                "job",
                "--",
                "sh",
                "-c",
                "echo \"$LEASE_KEY $LEASE_FENCE\"; exit 7",
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(7));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("job {expected_fence}")
        );
    }
}

#[test]
fn busy_and_timed_out_have_their_own_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("locks.db");
    let mut holder = lease_run(&db)
        .args(["--key", "k", "--", "sh", "-c", "echo held; sleep 30"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "held");
    let busy = lease_run(&db)
        .args(["--key", "k", "--", "true"])
        .status()
        .unwrap();
    assert_eq!(busy.code(), Some(75), "busy");
    let started = Instant::now();
    let timed_out = lease_run(&db)
        .args(["--key", "k", "--timeout", "300ms", "--", "true"])
        .status()
        .unwrap();
    assert_eq!(timed_out.code(), Some(124), "timed out");
    assert!(started.elapsed() >= Duration::from_millis(300));
    let other = lease_run(&db)
        .args(["--key", "other", "--", "true"])
        .status()
        .unwrap();
    assert_eq!(other.code(), Some(0), "another key is free");
    holder.kill().unwrap();
    holder.wait().unwrap();
}

#[test]
fn a_lost_lease_stops_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("locks.db");
    let mut run = lease_run(&db)
        .args([
            "--key", "k", "--lease", "1s", "--grace", "1s", "--", "sleep", "60",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // Replacing the database under the holder makes every renewal fail: the lease is lost.
    std::fs::remove_file(&db).unwrap();
    std::fs::write(&db, b"").unwrap();
    let started = Instant::now();
    let status = run.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(run.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(71), "lost: {err}");
    assert!(err.contains("lost"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the command was stopped promptly"
    );
}

#[test]
fn bad_store_and_missing_command_are_clear_errors() {
    let out = Command::new(env!("CARGO_BIN_EXE_lease-run"))
        .args(["--store", "nope://x", "--key", "k", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown store scheme"));
    let dir = tempfile::tempdir().unwrap();
    let out = lease_run(&dir.path().join("l.db"))
        .args(["--key", "k", "--", "/no/such/program"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/program"));
}
