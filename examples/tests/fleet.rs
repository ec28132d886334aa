//! The demo fleet runs real worker processes on a temp SQLite store and finds no violation.

use std::process::Command;

#[test]
fn fleet_on_sqlite_completes_jobs_without_violations() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fleet"))
        .args([
            "--workers",
            "3",
            "--duration",
            "3s",
            "--jobs",
            "2000",
            "--lease",
            "1s",
        ])
        .arg("--dir")
        .arg(dir.path())
        .output()
        .expect("run fleet");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "fleet failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("duplicate completions  0"), "{stdout}");
    assert!(stdout.contains("ok, 0 violations"), "{stdout}");
    let done: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("jobs done"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("a jobs done line");
    assert!(done > 10, "the fleet did almost nothing:\n{stdout}");
    assert!(stdout.contains(" jobs/s "), "{stdout}");
    // The counts agree: every granted lease has one outcome, and without kills the table holds
    // exactly the completions the workers reported.
    let count = |label: &str| -> u64 {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(label))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no `{label}` line:\n{stdout}"))
    };
    let outcomes: u64 = [
        "  job completed",
        "  found done",
        "  stale, rejected",
        "  gave up",
    ]
    .into_iter()
    .map(count)
    .sum();
    assert_eq!(count("leases granted"), outcomes, "{stdout}");
    assert_eq!(count("  job completed"), done, "{stdout}");
    assert!(
        !stdout.contains("cut short"),
        "nothing was killed:\n{stdout}"
    );
    // Every worker completed something: none was starved.
    let per = stdout
        .lines()
        .find(|l| l.starts_with("per worker"))
        .expect("per worker line");
    assert_eq!(per.matches('=').count(), 3, "{per}");
    assert!(!per.contains("=0"), "a worker completed nothing: {per}");
}

#[test]
fn fleet_rejects_a_bad_store_url_clearly() {
    let out = Command::new(env!("CARGO_BIN_EXE_fleet"))
        .args([
            "--duration",
            "1s",
            "--store",
            "mysql://u:secret@localhost/x",
        ])
        .output()
        .expect("run fleet");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("unknown store scheme `mysql://`"),
        "{stderr}"
    );
    assert!(!stderr.contains("secret"), "the password leaked: {stderr}");
}

/// The soak's resource check: a clean run's workers keep their memory and descriptors, and
/// workers that leak memory on every job fail the run, named.
#[test]
fn the_soak_check_passes_a_steady_fleet_and_fails_a_leaking_one() {
    let soak = |leak: &str| {
        let dir = tempfile::tempdir().unwrap();
        // With a history: the samples must stay out of it, which the checker reads whole.
        let out = Command::new(env!("CARGO_BIN_EXE_fleet"))
            .args(["--duration", "6s", "--workers", "2"])
            .args(["--sample-every", "500ms", "--sample-from", "2s"])
            .args(["--leak-per-job", leak, "--dir"])
            .arg(dir.path())
            .arg("--history")
            .arg(dir.path().join("history"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let samples = std::fs::read_to_string(dir.path().join("resources.jsonl")).unwrap();
        assert!(samples.lines().count() >= 2 * 8, "{samples}");
        (out.status.success(), stdout)
    };
    let (ok, stdout) = soak("0");
    assert!(ok, "{stdout}");
    assert!(
        stdout.contains("resources              2 workers sampled every 500ms"),
        "{stdout}"
    );
    assert!(stdout.contains(": ok\n"), "{stdout}");
    let (ok, stdout) = soak("20000");
    assert!(!ok, "{stdout}");
    assert!(stdout.contains("limit +10.0 %: GREW"), "{stdout}");
    assert!(
        stdout.contains("resources              w1 grew from"),
        "{stdout}"
    );
}

/// A worker that starts while its store is away (a server restarting, a cluster between
/// leaders) retries opening it, as it retries its lock calls, instead of exiting: here its way
/// to Redis leads nowhere for its first second.
#[cfg(feature = "redis")]
#[test]
fn a_worker_waits_for_a_store_that_is_away_when_it_starts() {
    let Some(redis) = lease_testkit::RedisServer::start(Default::default()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs.db");
    lease_examples::jobs::Jobs::open(&jobs)
        .unwrap()
        .seed(100)
        .unwrap();
    // Nothing listens at port 1: every connection through the proxy is closed at once.
    let proxy = lease_testkit::HoldingProxy::start("127.0.0.1:1");
    let worker = Command::new(env!("CARGO_BIN_EXE_fleet"))
        .args(["worker", "--proc", "1", "--store"])
        .arg(format!("redis://{}/", proxy.endpoint()))
        .arg("--jobs-db")
        .arg(&jobs)
        .args(["--duration", "3s", "--lease", "1s", "--work", "1ms"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(1));
    proxy.retarget(&format!("127.0.0.1:{}", redis.port()));
    let out = worker.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("retrying"), "{stderr}");
    assert!(stdout.contains("\"completed\":"), "{stdout}");
}
