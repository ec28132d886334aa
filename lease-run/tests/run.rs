//! `lease-run` as real processes against each store this build includes (SQLite always; Redis and
//! etcd with their features, on servers lease-testkit starts): the exit codes, and the promise
//! that no process of the command's group runs without the lease, whatever ends `lease-run`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A store for one test: its URL and what keeps it alive (a temp dir or a server).
struct Store {
    url: String,
    /// Stops the store's server until resumed (a lease on it is then lost); `None` for SQLite.
    server: Option<Box<dyn Fn(bool) + Send + Sync>>,
    _keep: Box<dyn std::any::Any + Send>,
}

fn sqlite() -> Option<Store> {
    let dir = tempfile::tempdir().unwrap();
    Some(Store {
        url: format!("sqlite://{}", dir.path().join("locks.db").display()),
        server: None,
        _keep: Box::new(dir),
    })
}

#[cfg(feature = "redis")]
fn redis() -> Option<Store> {
    let mut server = lease_testkit::RedisServer::start(lease_testkit::RedisOptions::default())?;
    let url = server.url();
    let pid = server_pid(server.process().pid());
    Some(Store {
        url,
        server: Some(Box::new(move |run| pause(pid, run))),
        _keep: Box::new(server),
    })
}

#[cfg(feature = "etcd")]
fn etcd() -> Option<Store> {
    let mut server = lease_testkit::EtcdServer::start(lease_testkit::EtcdOptions::default())?;
    let url = format!("etcd://{}/lease-run-test", server.endpoint());
    let pid = server_pid(server.members[0].process().pid());
    Some(Store {
        url,
        server: Some(Box::new(move |run| pause(pid, run))),
        _keep: Box::new(server),
    })
}

#[cfg(any(feature = "redis", feature = "etcd"))]
fn server_pid(pid: Option<u32>) -> i32 {
    i32::try_from(pid.expect("the server runs")).unwrap()
}

/// SIGSTOP (`run == false`) or SIGCONT the server.
#[cfg(any(feature = "redis", feature = "etcd"))]
fn pause(pid: i32, run: bool) {
    let pid = rustix::process::Pid::from_raw(pid).unwrap();
    let sig = if run {
        rustix::process::Signal::CONT
    } else {
        rustix::process::Signal::STOP
    };
    rustix::process::kill_process(pid, sig).unwrap();
}

fn lease_run(store: &Store) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lease-run"));
    c.arg("--store").arg(&store.url);
    c
}

fn output(c: &mut Command) -> Output {
    c.output().expect("run lease-run")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Whether process `pid` is alive (a zombie is not).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .map(|(_, r)| r.trim_start().chars().next());
            !matches!(state, Some(Some('Z' | 'X')))
        }
        Err(_) => false,
    }
}

/// Waits until `path` holds a pid and returns it.
fn read_pid(path: &Path) -> i32 {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = std::fs::read_to_string(path)
            && let Ok(pid) = s.trim().parse()
        {
            return pid;
        }
        assert!(Instant::now() < until, "no pid in {}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A shell command that starts a background grandchild (its pid in `pidfile`) and waits.
fn with_grandchild(pidfile: &Path) -> String {
    format!(
        "sleep 600 >/dev/null 2>&1 & echo $! > {}; wait",
        pidfile.display()
    )
}

/// Starts `lease-run … -c cmd` in the background.
fn spawn(store: &Store, key: &str, extra: &[&str], cmd: &str) -> Child {
    lease_run(store)
        .args(["--key", key])
        .args(extra)
        .args(["-c", cmd])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn kill(child: &Child, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap();
    rustix::process::kill_process(pid, sig).unwrap();
}

fn exports_the_fence_and_passes_the_status_through(store: Store) {
    let mut fences = Vec::new();
    for _ in 0..2 {
        let out = output(lease_run(&store).args([
            "--key",
            "job",
            "--",
            "sh",
            "-c",
            "echo \"$LEASE_KEY $LEASE_FENCE\"; exit 7",
        ]));
        assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
        let line = text(&out.stdout);
        let (key, fence) = line.trim().split_once(' ').unwrap();
        assert_eq!(key, "job");
        fences.push(fence.parse::<u64>().unwrap());
    }
    assert!(fences[1] > fences[0], "{fences:?}");
}

fn busy_timed_out_and_their_conventions(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    let mut holder = spawn(
        &store,
        "k",
        &[],
        &format!("echo $$ > {}; sleep 600", ready.display()),
    );
    read_pid(&ready);
    let busy = output(lease_run(&store).args(["--key", "k", "--", "true"]));
    assert_eq!(busy.status.code(), Some(75));
    assert!(
        text(&busy.stderr).contains("held by another holder"),
        "{}",
        text(&busy.stderr)
    );
    let quiet = output(lease_run(&store).args(["-q", "-E", "9", "-k", "k", "-n", "--", "true"]));
    assert_eq!(quiet.status.code(), Some(9));
    assert_eq!(text(&quiet.stderr), "", "-q keeps the busy case silent");
    let started = Instant::now();
    let timed_out = output(lease_run(&store).args(["-k", "k", "-w", "0.3", "--", "true"]));
    assert_eq!(
        timed_out.status.code(),
        Some(124),
        "{}",
        text(&timed_out.stderr)
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    let other = output(lease_run(&store).args(["-k", "other", "--", "true"]));
    assert_eq!(other.status.code(), Some(0), "{}", text(&other.stderr));
    kill(&holder, rustix::process::Signal::TERM);
    holder.wait().unwrap();
}

fn a_failed_start_leaves_the_key_free(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let not_executable = dir.path().join("script");
    std::fs::write(&not_executable, "#!/bin/sh\necho hi\n").unwrap();
    for (program, code) in [
        ("/no/such/program", 127),
        (not_executable.to_str().unwrap(), 126),
    ] {
        let out = output(lease_run(&store).args(["--lease", "30m", "--key", "k", "--", program]));
        assert_eq!(out.status.code(), Some(code), "{}", text(&out.stderr));
        assert!(text(&out.stderr).contains(program), "{}", text(&out.stderr));
        // The key was released: the next run gets it at once.
        let next = output(lease_run(&store).args(["--key", "k", "--", "true"]));
        assert_eq!(
            next.status.code(),
            Some(0),
            "after {program}: {}",
            text(&next.stderr)
        );
    }
}

fn nothing_of_the_group_outlives_a_sigkilled_lease_run(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("grandchild");
    let mut first = spawn(&store, "k", &["--lease", "3s"], &with_grandchild(&pidfile));
    let grandchild = read_pid(&pidfile);
    assert!(alive(grandchild));
    kill(&first, rustix::process::Signal::KILL);
    let status = first.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    // A second run at once: it may be granted only after the lease lapses, and by then nothing
    // of the first command's group may be alive.
    let check = format!(
        "if [ -d /proc/{grandchild} ] && ! grep -q '^[^)]*) Z' /proc/{grandchild}/stat; then \
         echo ALIVE; else echo dead; fi"
    );
    let second = output(lease_run(&store).args(["--key", "k", "-w", "20", "-c", &check]));
    assert_eq!(second.status.code(), Some(0), "{}", text(&second.stderr));
    assert_eq!(
        text(&second.stdout).trim(),
        "dead",
        "the first command's grandchild ran on"
    );
    assert!(!alive(grandchild));
}

fn what_the_command_leaves_behind_is_stopped(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("bg");
    let cmd = format!(
        "sleep 600 >/dev/null 2>&1 & echo $! > {}",
        pidfile.display()
    );
    let out = output(lease_run(&store).args(["--key", "k", "-c", &cmd]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        !alive(read_pid(&pidfile)),
        "a background process ran on after the release"
    );
}

fn signals_are_forwarded_and_sigterm_escalates(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let got = dir.path().join("got");
    let ready = dir.path().join("ready");
    let pidfile = dir.path().join("grandchild");
    let cmd = format!(
        "trap 'echo HUP >> {g}' HUP; trap 'echo USR1 >> {g}' USR1; trap 'echo TERM >> {g}' TERM; \
         sleep 600 >/dev/null 2>&1 & echo $! > {p}; echo $$ > {r}; while :; do sleep 0.05; done",
        g = got.display(),
        p = pidfile.display(),
        r = ready.display()
    );
    let mut run = spawn(&store, "k", &["--grace", "0.5"], &cmd);
    let shell = read_pid(&ready);
    let grandchild = read_pid(&pidfile);
    kill(&run, rustix::process::Signal::HUP);
    kill(&run, rustix::process::Signal::USR1);
    let until = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&got)
        .unwrap_or_default()
        .lines()
        .count()
        < 2
    {
        assert!(Instant::now() < until, "HUP and USR1 were not forwarded");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The group got them: the shell trapped them and runs on (its untrapping `sleep` child died
    // of HUP, as it would in a terminal's process group).
    assert!(
        alive(shell),
        "HUP and USR1 do not stop a command that traps them"
    );
    // The command traps SIGTERM and goes on: SIGKILL follows after --grace.
    let started = Instant::now();
    kill(&run, rustix::process::Signal::TERM);
    let status = run.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(128 + 9),
        "killed by SIGKILL after the grace period"
    );
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(std::fs::read_to_string(&got).unwrap().contains("TERM"));
    assert!(!alive(shell) && !alive(grandchild));
    // And the key was released on the way out.
    let next = output(lease_run(&store).args(["--key", "k", "--", "true"]));
    assert_eq!(next.status.code(), Some(0), "{}", text(&next.stderr));
}

/// The lease is lost (the store stops answering): the whole group is stopped, with SIGKILL
/// before the lease can lapse in the store.
fn a_lost_lease_stops_the_group_before_the_lease_lapses(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("grandchild");
    let cmd = format!(
        "trap '' TERM; sleep 600 >/dev/null 2>&1 & echo $! > {}; wait",
        pidfile.display()
    );
    let mut run = spawn(&store, "k", &["--lease", "3s"], &cmd);
    let grandchild = read_pid(&pidfile);
    let lost_at = Instant::now();
    let db_backup;
    match &store.server {
        Some(set_running) => {
            set_running(false);
            db_backup = None;
        }
        None => {
            // Replacing the database under the holder makes every renewal fail.
            let path = PathBuf::from(store.url.strip_prefix("sqlite://").unwrap());
            db_backup = Some(path.clone());
            std::fs::remove_file(&path).unwrap();
            std::fs::write(&path, b"").unwrap();
        }
    }
    let status = run.wait().unwrap();
    let elapsed = lost_at.elapsed();
    if let Some(set_running) = &store.server {
        set_running(true);
    }
    let mut err = String::new();
    std::io::Read::read_to_string(run.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(71), "{err}");
    assert!(err.contains("lost"), "{err}");
    assert!(!alive(grandchild), "the group was stopped");
    // Everything is dead before the lease (3 s from the last renewal, which was before the
    // fault) can lapse in the store.
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    drop(db_backup);
}

fn status_names_the_holder_and_break_takes_the_key_away(store: Store) {
    let status = |json: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_lease-run"));
        c.args(["status", "--store", &store.url, "--key", "k"]);
        if json {
            c.arg("--json");
        }
        let out = output(&mut c);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    assert_eq!(status(false).trim(), "k: free (never granted)");
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    let mut holder = spawn(
        &store,
        "k",
        &["--lease", "5s"],
        &format!("echo $$ > {}; sleep 600", ready.display()),
    );
    let shell = read_pid(&ready);
    let held = status(false);
    assert!(
        held.starts_with("k: held by ") && held.contains("/lease-run, fence "),
        "{held}"
    );
    assert!(held.contains(" left"), "{held}");
    let json = status(true);
    assert!(
        json.contains("\"held\":true") && json.contains("\"remaining_ms\":"),
        "{json}"
    );
    assert!(
        !json.contains('#'),
        "only the holder's label is shown: {json}"
    );
    // The busy message names the holder.
    let busy = output(lease_run(&store).args(["--key", "k", "--", "true"]));
    assert_eq!(busy.status.code(), Some(75));
    assert!(
        text(&busy.stderr).contains("held by "),
        "{}",
        text(&busy.stderr)
    );
    // break needs --force, then frees the key and raises the fence: the holder's next renewal
    // fails and its command is stopped.
    let mut brk = Command::new(env!("CARGO_BIN_EXE_lease-run"));
    brk.args(["break", "--store", &store.url, "--key", "k"]);
    let refused = output(&mut brk);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        text(&refused.stderr).contains("--force"),
        "{}",
        text(&refused.stderr)
    );
    let broken = output(brk.arg("--force"));
    assert_eq!(broken.status.code(), Some(0), "{}", text(&broken.stderr));
    assert!(
        text(&broken.stdout).contains("was held by "),
        "{}",
        text(&broken.stdout)
    );
    let code = holder.wait().unwrap().code();
    assert_eq!(code, Some(71), "the holder's command was stopped");
    assert!(!alive(shell));
    assert!(
        status(false).contains("free (last fence"),
        "after the break"
    );
}

fn the_cron_line_and_the_systemd_unit_run_as_written(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let store_file = dir.path().join("store");
    std::fs::write(&store_file, format!("{}\n", store.url)).unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_lease-run")).parent().unwrap();
    let out_file = dir.path().join("out");
    // The crontab line of `--help`, with cron's bare environment.
    let cron = format!(
        "lease-run -q --store-file {} --key sync -- sh -c 'echo $LEASE_FENCE >> {}'",
        store_file.display(),
        out_file.display()
    );
    for _ in 0..2 {
        let out = Command::new("/bin/sh")
            .args(["-c", &cron])
            .env_clear()
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
    assert_eq!(
        std::fs::read_to_string(&out_file).unwrap().lines().count(),
        2
    );
    // The unit's ExecStart line, with its Environment= (systemd-run needs a running systemd,
    // which a test machine may not have; the line is run as systemd would, without a shell).
    let exec_start = ["lease-run", "--key", "reindex", "--wait", "--", "/bin/true"];
    let out = Command::new(bin.join(exec_start[0]))
        .args(&exec_start[1..])
        .env_clear()
        .env("LEASE_STORE", &store.url)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

/// `--wait` rides out a store that does not answer (paused), also for the first connection.
#[cfg(feature = "redis")]
#[test]
fn wait_retries_through_a_store_outage() {
    let Some(store) = redis() else {
        return;
    };
    let set_running = store.server.as_ref().unwrap();
    set_running(false);
    let run = lease_run(&store)
        .args(["--key", "k", "--wait", "--", "true"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Longer than the store's own connect timeout and retry (2 s each), so lease-run's retries
    // are what rides it out.
    std::thread::sleep(Duration::from_secs(8));
    set_running(true);
    let out = run.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("retrying"),
        "the outage was retried, and said so: {err}"
    );
}

macro_rules! store_tests {
    ($store:ident) => {
        mod $store {
            macro_rules! case {
                ($name:ident) => {
                    #[test]
                    fn $name() {
                        if let Some(store) = super::$store() {
                            super::$name(store);
                        }
                    }
                };
            }
            case!(exports_the_fence_and_passes_the_status_through);
            case!(busy_timed_out_and_their_conventions);
            case!(a_failed_start_leaves_the_key_free);
            case!(nothing_of_the_group_outlives_a_sigkilled_lease_run);
            case!(what_the_command_leaves_behind_is_stopped);
            case!(signals_are_forwarded_and_sigterm_escalates);
            case!(a_lost_lease_stops_the_group_before_the_lease_lapses);
            case!(the_cron_line_and_the_systemd_unit_run_as_written);
            case!(status_names_the_holder_and_break_takes_the_key_away);
        }
    };
}

store_tests!(sqlite);
#[cfg(feature = "redis")]
store_tests!(redis);
#[cfg(feature = "etcd")]
store_tests!(etcd);

#[test]
fn bad_urls_and_settings_are_clear_errors() {
    let run = |args: &[&str]| output(Command::new(env!("CARGO_BIN_EXE_lease-run")).args(args));
    let out = run(&["--store", "nope://u:s3cret@x", "--key", "k", "--", "true"]);
    assert_eq!(out.status.code(), Some(69));
    let err = text(&out.stderr);
    assert!(
        err.contains("unknown store scheme") && !err.contains("s3cret"),
        "{err}"
    );
    let out = run(&["--store", "sqlite:rel.db", "--key", "k", "--", "true"]);
    assert_eq!(out.status.code(), Some(69));
    assert!(
        text(&out.stderr).contains("no `//`"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&[
        "--store",
        "sqlite:///tmp/x.db",
        "--key",
        "k",
        "--grace",
        "5s",
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("less than half of the lease"),
        "{}",
        text(&out.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_lease-run"))
        .args(["--key", "k", "--", "true"])
        .env_remove("LEASE_STORE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no store"),
        "{}",
        text(&out.stderr)
    );
}
