//! A server stops once the test process that started it is gone, even if it is never dropped
//! (as one kept in a `static` is not).
//!
//! The test process is this binary run again on the test filter `child --exact` with
//! [`CHILD_ENV`] set to a temp dir: [`child`] starts a server there, reports its pid and exits
//! without dropping it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lease_testkit::Server;
use lease_testkit::process_suite::{events, number, report};

const CHILD_ENV: &str = "LEASE_TESTKIT_WATCHDOG_CHILD";

/// The child role; a no-op in a normal test run.
#[test]
fn child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let server = Server::spawn(
        "sleeper",
        Path::new("sleep"),
        vec!["60".to_owned()],
        Path::new(&dir),
        Duration::from_secs(5),
        &|| true,
    )
    .expect("start the server");
    report(format_args!("PID {}", server.pid().expect("running")));
    // Gone without dropping the server.
    std::process::exit(0);
}

/// Whether `pid` is a live process (a zombie is not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
        !matches!(state, Some(Some('Z' | 'X')))
    })
}

#[test]
fn a_server_never_dropped_stops_with_its_test_process() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args(["child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir.path())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("run the child");
    assert!(out.status.success(), "the child failed: {:?}", out.status);
    let events = events(&out.stdout);
    let pid: u32 = number(
        events
            .iter()
            .find(|e| e.starts_with("PID"))
            .unwrap_or_else(|| panic!("no PID in {events:?}")),
    );
    // The watchdog polls every 0.2 s.
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        assert!(
            Instant::now() < deadline,
            "the server {pid} outlived its test process by 10 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
