//! Chaos smoke per store: a fleet under kills, pauses (one of 3× the lease at least) and, where
//! the fleet owns the server, store restarts; its history must pass `fleet check` with enough
//! acquisitions and at least one lease lost to a pause.

use std::process::Command;
use std::sync::Mutex;

/// One fleet at a time: leases are short, and three fleets at once would starve each other of the
/// machine's cores.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs a chaos fleet and returns its checker line. In `store`, `{dir}` stands for the run's
/// directory.
fn chaos(store: Option<&str>, faults: &str, duration: &str, lease: &str) -> String {
    chaos_with(store, faults, duration, lease, &[])
}

/// [`chaos`] with more arguments for the fleet.
fn chaos_with(
    store: Option<&str>,
    faults: &str,
    duration: &str,
    lease: &str,
    extra: &[&str],
) -> String {
    chaos_out(store, faults, duration, lease, extra).0
}

/// [`chaos_with`], returning the fleet's whole output beside its checker line.
fn chaos_out(
    store: Option<&str>,
    faults: &str,
    duration: &str,
    lease: &str,
    extra: &[&str],
) -> (String, String) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleet"));
    cmd.args([
        "--chaos",
        faults,
        "--seed",
        "42",
        "--duration",
        duration,
        "--lease",
        lease,
    ])
    .args(extra)
    .arg("--dir")
    .arg(dir.path());
    if let Some(s) = store {
        cmd.arg("--store")
            .arg(s.replace("{dir}", &dir.path().display().to_string()));
    }
    let out = cmd.output().expect("run fleet");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        // Keep the history for `fleet check` and a closer look.
        let kept = dir.keep();
        panic!(
            "chaos fleet failed (history kept in {}):\n{stdout}\n{stderr}",
            kept.join("history").display()
        );
    }
    let line = stdout
        .lines()
        .find(|l| l.contains(" acquisitions, "))
        .unwrap_or_else(|| panic!("no checker line:\n{stdout}"))
        .to_owned();
    assert!(line.ends_with(": ok"), "{line}");
    assert_summary_adds_up(&stdout, &line);
    // Checked again from the saved files alone: the same verdict.
    let again = Command::new(env!("CARGO_BIN_EXE_fleet"))
        .arg("check")
        .arg(dir.path().join("history"))
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );
    (line, stdout.into_owned())
}

/// The number before `what` in the fleet's `nemesis` summary line.
fn injected(stdout: &str, what: &str) -> u64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("nemesis "))
        .unwrap_or_else(|| panic!("no nemesis line:\n{stdout}"));
    count(line, what)
}

/// The smoke of partitions and slow replies on a server store: each worker reaches the store
/// through a proxy of its own, which the nemesis cuts (every byte lost) for 3× or 0.5× the
/// lease, and some workers' replies come 1.5× or 0.3× the lease late. A worker cut off mid-job
/// must give its lease up by its deadline, while the others take its keys over; a grant that
/// arrives past its deadline is given back, never used.
#[cfg(any(feature = "redis", feature = "etcd", feature = "postgres"))]
fn assert_partitions_and_slow_replies(
    store: &str,
    duration: &str,
    lease: &str,
    work: &str,
    losses: bool,
) {
    let (line, out) = chaos_out(
        Some(store),
        "kill,partition,slow",
        duration,
        lease,
        &["--work", work],
    );
    println!("{line}");
    assert!(line.contains("/kill+partition+slow: "), "{line}");
    assert!(count(&line, " partitions") >= 1, "{line}");
    assert!(injected(&out, " slowed workers") >= 1, "{out}");
    if losses {
        assert!(
            count(&line, " leases lost") >= 1,
            "no lease cut off: {line}"
        );
    }
    assert_eq!(count(&line, " accepted out of order"), 0, "{line}");
    assert_eq!(count(&line, " lost updates"), 0, "{line}");
}

/// The number before `what` in the checker line.
fn count(line: &str, what: &str) -> u64 {
    let before = &line[..line
        .find(what)
        .unwrap_or_else(|| panic!("no `{what}` in {line}"))];
    before
        .rsplit(|c: char| !c.is_ascii_digit())
        .find(|s| !s.is_empty())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count before `{what}` in {line}"))
}

/// The number a line of the fleet's summary starts with, after its label; `None` if the summary has
/// no such line.
fn summary(stdout: &str, label: &str) -> Option<u64> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .map(|rest| {
            rest.split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no count after `{label}`:\n{stdout}"))
        })
}

/// The summary's counts cover the killed workers too: every grant has one outcome or was cut
/// short by its worker's death, the table holds the completions the workers reported (plus at
/// most one per lease cut short), and the checker saw every grant the workers reported.
fn assert_summary_adds_up(stdout: &str, checker_line: &str) {
    let get = |label| summary(stdout, label).unwrap_or_else(|| panic!("no `{label}`:\n{stdout}"));
    let granted = get("leases granted");
    let cut = summary(stdout, "  cut short").unwrap_or(0);
    let outcomes: u64 = [
        "  job completed",
        "  found done",
        "  stale, rejected",
        "  gave up",
    ]
    .into_iter()
    .map(get)
    .sum();
    assert_eq!(granted, outcomes + cut, "{stdout}");
    let (done, reported) = (get("jobs done"), get("  job completed"));
    assert!(reported <= done && done <= reported + cut, "{stdout}");
    assert!(granted <= count(checker_line, " acquisitions"), "{stdout}");
    assert!(stdout.contains(" jobs/s "), "{stdout}");
}

fn assert_enough(line: &str) {
    assert!(count(line, " acquisitions") >= 200, "{line}");
    assert!(count(line, " leases lost") >= 1, "no forced expiry: {line}");
    assert!(count(line, " longer than the lease") >= 1, "{line}");
    assert!(count(line, " kills") >= 1, "{line}");
    assert_eq!(count(line, " accepted out of order"), 0, "{line}");
    assert_eq!(count(line, " lost updates"), 0, "{line}");
}

#[test]
fn sqlite_survives_kills_and_pauses() {
    // The barging mode: the queue (the default) has its own test below.
    let line = chaos(
        Some("sqlite://{dir}/locks.db?queued_grants=false"),
        "kill,pause,store-restart",
        "20s",
        "500ms",
    );
    println!("{line}");
    assert!(line.starts_with("sqlite/kill+pause: "), "{line}");
    assert_enough(&line);
}

/// The queue: workers wait in it, a killed waiter's entry and a killed holder's lease die at once
/// (`process_liveness`), and the queue's order holds (I7) with waiters served.
#[test]
fn sqlite_queue_survives_kills_and_pauses() {
    let line = chaos(
        Some("sqlite://{dir}/locks.db?queued_grants=true&process_liveness=true"),
        "kill,pause",
        "20s",
        "500ms",
    );
    println!("{line}");
    assert!(line.starts_with("sqlite-queued/kill+pause: "), "{line}");
    assert_enough(&line);
    assert!(count(&line, " queue grants") >= 100, "{line}");
}

#[cfg(feature = "redis")]
#[test]
fn redis_survives_kills_pauses_and_restarts() {
    if lease_testkit::require_binary("redis-server", "redis-server").is_none() {
        return;
    }
    let line = chaos(Some("redis"), "kill,pause,store-restart", "20s", "500ms");
    println!("{line}");
    assert_enough(&line);
    assert!(count(&line, " store restarts") >= 1, "{line}");
}

#[cfg(feature = "etcd")]
#[test]
fn etcd_survives_kills_pauses_and_restarts() {
    if lease_testkit::require_binary("etcd", "etcd-server").is_none() {
        return;
    }
    // etcd's shortest lease is 2 s: a longer run for the same number of faults.
    let line = chaos(Some("etcd"), "kill,pause,store-restart", "40s", "2s");
    println!("{line}");
    assert_enough(&line);
    assert!(count(&line, " store restarts") >= 1, "{line}");
}

/// Store pauses: work longer than the lease, so holders are mid-job when the store stops; a
/// stopped store renews nothing and each holder must give its lease up by its deadline, and
/// takeovers after kills count from the store's return.
#[cfg(feature = "redis")]
#[test]
fn redis_survives_store_pauses() {
    if lease_testkit::require_binary("redis-server", "redis-server").is_none() {
        return;
    }
    let line = chaos_with(
        Some("redis"),
        "kill,store-pause",
        "15s",
        "500ms",
        &["--work", "1s"],
    );
    println!("{line}");
    assert!(line.contains("/kill+store-pause: "), "{line}");
    assert!(count(&line, " store pauses") >= 2, "{line}");
    assert!(
        count(&line, " leases lost") >= 1,
        "no lease outlived: {line}"
    );
    assert!(count(&line, " kills") >= 1, "{line}");
    assert_eq!(count(&line, " accepted out of order"), 0, "{line}");
    assert_eq!(count(&line, " lost updates"), 0, "{line}");
}

#[cfg(feature = "etcd")]
#[test]
fn etcd_survives_store_pauses() {
    if lease_testkit::require_binary("etcd", "etcd-server").is_none() {
        return;
    }
    let line = chaos_with(
        Some("etcd"),
        "kill,store-pause",
        "20s",
        "2s",
        &["--work", "4s"],
    );
    println!("{line}");
    assert!(line.starts_with("etcd/kill+store-pause: "), "{line}");
    assert!(count(&line, " store pauses") >= 1, "{line}");
    assert!(count(&line, " kills") >= 1, "{line}");
    assert_eq!(count(&line, " accepted out of order"), 0, "{line}");
    assert_eq!(count(&line, " lost updates"), 0, "{line}");
}

#[cfg(feature = "redis")]
#[test]
fn redis_survives_partitions_and_slow_replies() {
    if lease_testkit::require_binary("redis-server", "redis-server").is_none() {
        return;
    }
    assert_partitions_and_slow_replies("redis", "15s", "500ms", "1s", true);
}

#[cfg(feature = "etcd")]
#[test]
fn etcd_survives_partitions_and_slow_replies() {
    if lease_testkit::require_binary("etcd", "etcd-server").is_none() {
        return;
    }
    // etcd's shortest lease is 2 s.
    assert_partitions_and_slow_replies("etcd", "30s", "2s", "4s", false);
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_survives_partitions_and_slow_replies() {
    if !lease_testkit::PostgresServer::installed() {
        return;
    }
    assert_partitions_and_slow_replies("postgres", "15s", "500ms", "1s", false);
}

/// Slow replies on the embedded store, and clock faults: wall clocks stepped an hour either way
/// (libfaketime), and workers in time namespaces whose boot clocks, on which the SQLite store
/// keeps its expiries, are an hour off the host's (the store corrects for its namespace).
#[test]
fn sqlite_survives_slow_replies_clock_steps_and_time_namespaces() {
    if lease_testkit::require_binary("faketime", "faketime").is_none() {
        return;
    }
    let (line, out) = chaos_out(None, "kill,slow,clock", "15s", "500ms", &[]);
    println!("{line}");
    assert!(line.contains("/kill+slow+clock: "), "{line}");
    assert!(count(&line, " clock steps") >= 2, "{line}");
    assert!(injected(&out, " slowed workers") >= 1, "{out}");
    assert!(count(&line, " acquisitions") >= 200, "{line}");
    // Time namespaces need root (CAP_SYS_ADMIN); the fleet says when it cannot make them, and
    // under CI it must.
    if !out.contains("run in a time namespace 3600 s ahead") {
        assert!(
            out.contains("no time namespaces: ") && std::env::var_os("CI").is_none(),
            "{out}"
        );
        println!("time namespaces not tested: {out}");
    }
    assert_eq!(count(&line, " accepted out of order"), 0, "{line}");
    assert_eq!(count(&line, " lost updates"), 0, "{line}");
}

/// A leader partition: the fleet's etcd is a cluster of 3 members in network namespaces of their
/// own, and the nemesis cuts the leader off its peers and its clients for 3× or 0.5× the lease.
/// The others elect a new leader, the clients find it, and no lease is granted twice.
#[cfg(feature = "etcd")]
#[test]
fn etcd_survives_leader_partitions() {
    if lease_testkit::require_binary("etcd", "etcd-server").is_none() {
        return;
    }
    if !rustix::process::geteuid().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "network namespaces need root, and CI is set"
        );
        println!("skipped: network namespaces need root");
        return;
    }
    let line = chaos(Some("etcd"), "kill,leader-partition", "30s", "2s");
    println!("{line}");
    assert!(line.starts_with("etcd/kill+leader-partition: "), "{line}");
    assert!(count(&line, " leader partitions") >= 2, "{line}");
    assert!(count(&line, " acquisitions") >= 200, "{line}");
    assert_eq!(count(&line, " accepted out of order"), 0, "{line}");
    assert_eq!(count(&line, " lost updates"), 0, "{line}");
}

/// The SQLite store has no network to cut: the fleet says so and runs the other faults.
#[test]
fn sqlite_skips_partitions_and_says_why() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fleet"))
        .args([
            "--chaos",
            "kill,partition",
            "--seed",
            "1",
            "--duration",
            "3s",
        ])
        .args(["--lease", "500ms", "--workers", "2", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("chaos: partition skipped: the SQLite store is embedded"),
        "{stdout}"
    );
    assert!(
        stdout.contains("sqlite-queued/kill: ") || stdout.contains("sqlite/kill: "),
        "{stdout}"
    );
}

/// A failover that waits for its replica (`?wait_replicas=1`): the nemesis holds the replication
/// back, kills the primary and promotes the replica, which the workers' proxies then lead to.
/// Every grant a worker was told of had reached the replica: nothing is granted twice, no fence
/// goes back.
#[cfg(feature = "redis")]
#[test]
fn redis_fails_over_without_losing_a_grant_when_writes_wait_for_the_replica() {
    if lease_testkit::require_binary("redis-server", "redis-server").is_none() {
        return;
    }
    let line = chaos(
        Some("redis?wait_replicas=1"),
        "kill,failover",
        "12s",
        "500ms",
    );
    println!("{line}");
    assert!(line.contains("/kill+failover: "), "{line}");
    assert_eq!(count(&line, " failovers"), 1, "{line}");
    assert_eq!(count(&line, " fence regressions reported"), 0, "{line}");
    assert!(count(&line, " kills") >= 1, "{line}");
    assert!(count(&line, " acquisitions") >= 100, "{line}");
    assert_eq!(count(&line, " accepted out of order"), 0, "{line}");
    assert_eq!(count(&line, " lost updates"), 0, "{line}");
}

/// Without waiting, a failover can lose the grants the replica missed: the same fence may then
/// be granted twice (the documented limit of an asynchronous replica), or a store that saw the
/// lost fence reports the regression. Whichever happened, the fleet runs on and the checker
/// names only what a lost grant explains: a fence granted twice (I3), two holders at once
/// (I6), and at the job table two writers with one fence (I1) completing a job twice (I2).
#[cfg(feature = "redis")]
#[test]
fn redis_failover_without_waiting_is_flagged_only_for_what_a_lost_grant_explains() {
    if lease_testkit::require_binary("redis-server", "redis-server").is_none() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fleet"))
        .args(["--store", "redis", "--chaos", "failover", "--seed", "42"])
        .args(["--duration", "8s", "--lease", "500ms", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains(" acquisitions, "))
        .unwrap_or_else(|| panic!("no checker line:\n{stdout}"));
    println!("{line}");
    assert_eq!(count(line, " failovers"), 1, "{line}");
    assert_eq!(count(line, " lost updates"), 0, "{line}");
    assert!(!stdout.contains("failed workers") || stdout.contains(" 0 failed workers"));
    for v in stdout.lines().filter(|l| l.starts_with("VIOLATION ")) {
        assert!(
            ["I1", "I2", "I3", "I6"]
                .iter()
                .any(|i| v.starts_with(&format!("VIOLATION {i}: "))),
            "not explained by a lost grant: {v}\n{stdout}"
        );
    }
    assert_eq!(
        out.status.success(),
        line.ends_with(": ok"),
        "the verdict is the checker's:\n{stdout}"
    );
}
