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
    let server = lease_testkit::RedisServer::start(lease_testkit::RedisOptions::default())?;
    Some(Store {
        url: server.url(),
        server: pausable(server, |s, run| {
            let p = s.process();
            if run { p.resume() } else { p.pause() }
        }),
        _keep: Box::new(()),
    })
}

#[cfg(feature = "etcd")]
fn etcd() -> Option<Store> {
    let server = lease_testkit::EtcdServer::start(lease_testkit::EtcdOptions::default())?;
    Some(Store {
        url: format!("etcd://{}/lease-run-test", server.endpoint()),
        server: pausable(server, |s, run| {
            let p = s.members[0].process();
            if run { p.resume() } else { p.pause() }
        }),
        _keep: Box::new(()),
    })
}

#[cfg(feature = "postgres")]
fn postgres() -> Option<Store> {
    let server = lease_testkit::PostgresServer::start(lease_testkit::PostgresOptions::default())?;
    Some(Store {
        url: server.url(),
        // The postmaster and its backends, each once all its threads are stopped.
        server: pausable(server, |s, run| if run { s.resume() } else { s.pause() }),
        _keep: Box::new(()),
    })
}

/// `Store::server` for a server the closure keeps alive: `set_running(server, run)` pauses it
/// (`run == false`, returning once it is stopped) or resumes it.
#[cfg(any(feature = "redis", feature = "etcd", feature = "postgres"))]
fn pausable<S: Send + 'static>(
    server: S,
    set_running: fn(&mut S, bool),
) -> Option<Box<dyn Fn(bool) + Send + Sync>> {
    let server = std::sync::Mutex::new(server);
    Some(Box::new(move |run| {
        set_running(&mut server.lock().unwrap(), run)
    }))
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
        text(&busy.stderr).contains("`k` is busy: held by "),
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

/// A run that gives up waiting (its --timeout passed, or a signal ended the wait) leaves nothing
/// in the store's queue that the holder's release could hand the key to after it is gone (with
/// `--lease 30m`, the key would then stay held for half an hour).
fn a_run_that_gives_up_waiting_leaves_the_key_free(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let give_ups: [(&str, &dyn Fn() -> Option<i32>); 2] = [
        ("--timeout", &|| {
            let out = output(
                lease_run(&store)
                    .args(["--lease", "30m", "-k", "k", "-w", "0.5"])
                    .args(["--", "true"]),
            );
            assert!(
                text(&out.stderr).contains("timed out") || text(&out.stderr).contains("held"),
                "{}",
                text(&out.stderr)
            );
            out.status.code()
        }),
        ("SIGTERM", &|| {
            let mut waiting = spawn(&store, "k", &["--lease", "30m", "--wait"], "true");
            std::thread::sleep(Duration::from_millis(500));
            kill(&waiting, rustix::process::Signal::TERM);
            waiting.wait().unwrap().code()
        }),
    ];
    for (i, (how, give_up)) in give_ups.iter().enumerate() {
        let ready = dir.path().join(format!("ready{i}"));
        let go = dir.path().join(format!("go{i}"));
        let mut holder = spawn(
            &store,
            "k",
            &[],
            &format!(
                "echo $$ > {}; while [ ! -e {} ]; do sleep 0.01; done",
                ready.display(),
                go.display()
            ),
        );
        read_pid(&ready);
        let code = give_up();
        assert_eq!(code, Some(if i == 0 { 124 } else { 128 + 15 }), "{how}");
        // The holder releases at once; the key must be free, not granted to the run that left.
        std::fs::write(&go, b"").unwrap();
        assert_eq!(holder.wait().unwrap().code(), Some(0));
        let next = output(lease_run(&store).args(["-n", "-k", "k", "--", "true"]));
        assert_eq!(
            next.status.code(),
            Some(0),
            "after a run that gave up by {how}, the key went to it: {}",
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
        "for s in HUP INT QUIT USR1 USR2 TERM; do trap \"echo $s >> {g}\" $s; done; \
         sleep 600 >/dev/null 2>&1 & echo $! > {p}; echo $$ > {r}; while :; do sleep 0.05; done",
        g = got.display(),
        p = pidfile.display(),
        r = ready.display()
    );
    let mut run = spawn(&store, "k", &["--grace", "0.5"], &cmd);
    let shell = read_pid(&ready);
    let grandchild = read_pid(&pidfile);
    use rustix::process::Signal;
    // One at a time: a shell runs its traps between commands, and may fold a signal that comes
    // again before its trap ran into one.
    for (sig, name) in [
        (Signal::HUP, "HUP"),
        (Signal::INT, "INT"),
        (Signal::QUIT, "QUIT"),
        (Signal::USR1, "USR1"),
        (Signal::USR2, "USR2"),
    ] {
        kill(&run, sig);
        let until = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&got)
            .unwrap_or_default()
            .lines()
            .any(|l| l == name)
        {
            assert!(Instant::now() < until, "SIG{name} was not forwarded");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // The group got them: the shell trapped them and runs on (its untrapping `sleep` child died
    // of HUP, as it would in a terminal's process group).
    assert!(
        alive(shell),
        "forwarded signals do not stop a command that traps them"
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
    // The busy message names the holder, its fence and the time left.
    let busy = output(lease_run(&store).args(["--key", "k", "--", "true"]));
    assert_eq!(busy.status.code(), Some(75));
    let stderr = text(&busy.stderr);
    // The last line (a note about the store may come first).
    let said = stderr.lines().last().unwrap_or_default();
    assert!(
        said.starts_with("lease-run: `k` is busy: held by ")
            && said.contains("/lease-run, fence ")
            && said.trim_end().ends_with(" left"),
        "{said}"
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

/// The lines of `--help` that start (after indentation) with `prefix`.
fn help_lines(prefix: &str) -> Vec<String> {
    let help = output(Command::new(env!("CARGO_BIN_EXE_lease-run")).arg("--help"));
    text(&help.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

/// The crontab line and the systemd unit that `--help` (and the README) show, run as written:
/// only their paths and the store's URL are replaced by the test's own.
fn the_cron_line_and_the_systemd_unit_run_as_written(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let store_file = dir.path().join("store");
    std::fs::write(&store_file, format!("{}\n", store.url)).unwrap();
    let lease_run = Path::new(env!("CARGO_BIN_EXE_lease-run"));
    let bin = lease_run.parent().unwrap();
    let out_file = dir.path().join("out");
    let script = |name: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\necho \"$LEASE_KEY $LEASE_FENCE\" >> {}\n",
                out_file.display()
            ),
        )
        .unwrap();
        let mut perms = std::fs::metadata(&path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&path, perms).unwrap();
        path.display().to_string()
    };
    // The crontab line: five schedule fields, then the command, run by cron's `sh -c` with its
    // bare environment.
    let cron_lines = help_lines("*/5 ");
    assert_eq!(
        cron_lines.len(),
        1,
        "one crontab line in --help: {cron_lines:?}"
    );
    let command = cron_lines[0]
        .split_whitespace()
        .skip(5)
        .collect::<Vec<_>>()
        .join(" ");
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(
        readme.contains(&command),
        "the README shows the same line: {command}"
    );
    let command = command
        .replace("/etc/lease-run/store", &store_file.display().to_string())
        .replace("/usr/local/bin/sync.sh", &script("sync.sh"));
    for _ in 0..2 {
        let out = Command::new("/bin/sh")
            .args(["-c", &command])
            .env_clear()
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{command}: {}",
            text(&out.stderr)
        );
    }
    // The unit: its Environment= and ExecStart= lines. Through `systemd-run --scope` where
    // systemd runs; elsewhere the ExecStart line is run as systemd would, without a shell.
    let env_lines = help_lines("Environment=LEASE_STORE=");
    let exec_lines = help_lines("ExecStart=");
    assert_eq!(
        (env_lines.len(), exec_lines.len()),
        (1, 1),
        "{env_lines:?} {exec_lines:?}"
    );
    for line in env_lines.iter().chain(&exec_lines) {
        assert!(
            readme.contains(line.as_str()),
            "the README shows the same unit: {line}"
        );
    }
    let reindex = script("reindex");
    let exec_start: Vec<String> = exec_lines[0]
        .trim_start_matches("ExecStart=")
        .split_whitespace()
        .map(|w| match w {
            "/usr/local/bin/lease-run" => lease_run.display().to_string(),
            "/usr/local/bin/reindex" => reindex.clone(),
            w => w.to_owned(),
        })
        .collect();
    let systemd = Path::new("/run/systemd/system").is_dir()
        && Command::new("systemd-run")
            .arg("--version")
            .output()
            .is_ok();
    let mut unit = if systemd {
        let mut c = Command::new("systemd-run");
        c.args(["--scope", "--quiet", "--"]).args(&exec_start);
        c
    } else {
        let mut c = Command::new(&exec_start[0]);
        c.args(&exec_start[1..]);
        c
    };
    let out = unit
        .env_clear()
        .env("LEASE_STORE", &store.url)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{exec_start:?}: {}",
        text(&out.stderr)
    );
    let ran = std::fs::read_to_string(&out_file).unwrap();
    let keys: Vec<_> = ran.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(keys, ["sync", "sync", "reindex"], "{ran}");
}

/// SIGHUP to lease-run ends a command that does not trap it; what the command started that
/// ignores SIGHUP is stopped before lease-run exits, with the status of a death by SIGHUP.
fn a_sighup_that_ends_the_command_leaves_nothing_running(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("grandchild");
    let ready = dir.path().join("ready");
    let cmd = format!(
        "(trap '' HUP; exec sleep 600) >/dev/null 2>&1 & echo $! > {}; echo $$ > {}; wait",
        pidfile.display(),
        ready.display()
    );
    let mut run = spawn(&store, "k", &[], &cmd);
    let shell = read_pid(&ready);
    let grandchild = read_pid(&pidfile);
    kill(&run, rustix::process::Signal::HUP);
    let status = run.wait().unwrap();
    assert_eq!(status.code(), Some(128 + 1), "the command died of SIGHUP");
    assert!(
        !alive(shell) && !alive(grandchild),
        "nothing of the group runs on"
    );
    let next = output(lease_run(&store).args(["-n", "-k", "k", "--", "true"]));
    assert_eq!(next.status.code(), Some(0), "{}", text(&next.stderr));
}

/// `-v` logs the acquire and the release, `-vv` every renewal too; `RUST_LOG` overrides.
fn verbose_shows_the_lease_s_life(store: Store) {
    let run = |extra: &[&str], rust_log: Option<&str>| {
        let mut c = lease_run(&store);
        c.args(["-k", "k", "--lease", "3s"])
            .args(extra)
            .args(["--", "sleep", "1.5"]);
        c.env_remove("RUST_LOG");
        if let Some(l) = rust_log {
            c.env("RUST_LOG", l);
        }
        let out = output(&mut c);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        text(&out.stderr)
    };
    let quiet = run(&[], None);
    assert!(!quiet.contains("lease acquired"), "{quiet}");
    let v = run(&["-v"], None);
    assert!(
        v.contains("lease acquired") && v.contains("lease released"),
        "{v}"
    );
    assert!(!v.contains("lease renewed"), "renewals are -vv: {v}");
    let vv = run(&["-vv"], None);
    assert!(vv.contains("lease renewed"), "{vv}");
    let env = run(&[], Some("lease_run=info"));
    assert!(env.contains("lease acquired"), "RUST_LOG overrides: {env}");
}

/// `--wait` rides out a store that does not answer (paused), also for the first connection./// `--wait` rides out a store that does not answer (paused), also for the first connection.
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
            case!(a_run_that_gives_up_waiting_leaves_the_key_free);
            case!(nothing_of_the_group_outlives_a_sigkilled_lease_run);
            case!(what_the_command_leaves_behind_is_stopped);
            case!(signals_are_forwarded_and_sigterm_escalates);
            case!(a_lost_lease_stops_the_group_before_the_lease_lapses);
            case!(the_cron_line_and_the_systemd_unit_run_as_written);
            case!(status_names_the_holder_and_break_takes_the_key_away);
            case!(a_sighup_that_ends_the_command_leaves_nothing_running);
            case!(verbose_shows_the_lease_s_life);
        }
    };
}

store_tests!(sqlite);
#[cfg(feature = "redis")]
store_tests!(redis);
#[cfg(feature = "etcd")]
store_tests!(etcd);
#[cfg(feature = "postgres")]
store_tests!(postgres);

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
    // A store whose leases end with lease-run's process could pass the key on before the
    // command's group is stopped.
    let dir = tempfile::tempdir().unwrap();
    let liveness = format!(
        "sqlite://{}?process_liveness=true",
        dir.path().join("l.db").display()
    );
    let out = run(&["--store", &liveness, "--key", "k", "--", "true"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("process_liveness"),
        "{}",
        text(&out.stderr)
    );
}

/// An unreachable server: one line that says what failed and why, once, with no internal
/// `Debug` text of the client libraries and no password.
#[cfg(any(feature = "redis", feature = "etcd", feature = "postgres"))]
#[test]
fn an_unreachable_store_is_one_clear_line() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut urls = Vec::new();
    if cfg!(feature = "redis") {
        urls.push(format!("redis://u:s3cret@127.0.0.1:{port}"));
    }
    if cfg!(feature = "etcd") {
        urls.push(format!("etcd://u:s3cret@127.0.0.1:{port}"));
    }
    if cfg!(feature = "postgres") {
        urls.push(format!("postgres://u:s3cret@127.0.0.1:{port}/db"));
    }
    for url in urls {
        let out = output(
            Command::new(env!("CARGO_BIN_EXE_lease-run"))
                .args(["--store", &url, "--key", "k", "--", "true"]),
        );
        assert_eq!(out.status.code(), Some(69));
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("refused"), "{err}");
        assert_eq!(
            err.matches("127.0.0.1").count(),
            1,
            "the address once: {err}"
        );
        assert_eq!(
            err.to_lowercase().matches("refused").count(),
            1,
            "the cause once: {err}"
        );
        for internal in ["s3cret", "Os {", "tonic::", "source:", "kind:"] {
            assert!(!err.contains(internal), "`{internal}` in: {err}");
        }
    }
}

/// `--version`, and `--help` with the examples, the exit codes and the exported variables.
#[test]
fn help_and_version() {
    let version = output(Command::new(env!("CARGO_BIN_EXE_lease-run")).arg("--version"));
    assert_eq!(version.status.code(), Some(0));
    assert_eq!(
        text(&version.stdout).trim(),
        format!("lease-run {}", env!("CARGO_PKG_VERSION"))
    );
    let help = output(Command::new(env!("CARGO_BIN_EXE_lease-run")).arg("--help"));
    assert_eq!(help.status.code(), Some(0));
    let help = text(&help.stdout);
    for needed in [
        "Examples:",
        "lease-run status",
        "lease-run break",
        "Exit status:",
        "75 (-E N to change)",
        "124",
        "126",
        "127",
        "LEASE_FENCE",
        "LEASE_KEY",
        "--store-file",
        "--nonblock",
        "--conflict-exit-code",
    ] {
        assert!(help.contains(needed), "--help lacks `{needed}`");
    }
}

/// A Redis server that can lose its fence counters in a restart is noted (not with `-q`); one
/// with an append-only file fsynced on every write is not.
#[cfg(feature = "redis")]
#[test]
fn a_redis_without_durable_persistence_is_noted() {
    let note = "lease-run: note: the Redis server keeps no append-only file";
    let Some(plain) = redis() else {
        return;
    };
    let out = output(lease_run(&plain).args(["-k", "k", "--", "true"]));
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stderr).contains(note), "{}", text(&out.stderr));
    let out = output(lease_run(&plain).args(["-q", "-k", "k", "--", "true"]));
    assert_eq!(text(&out.stderr), "", "-q: no notes");
    let durable = lease_testkit::RedisServer::start(lease_testkit::RedisOptions {
        aof_always: true,
        ..Default::default()
    })
    .unwrap();
    let out = output(Command::new(env!("CARGO_BIN_EXE_lease-run")).args([
        "--store",
        &durable.url(),
        "-k",
        "k",
        "--",
        "true",
    ]));
    assert_eq!(out.status.code(), Some(0));
    assert!(!text(&out.stderr).contains("note"), "{}", text(&out.stderr));
}

/// etcd grants whole seconds: a lease it rounds up is said, since a dead lease-run's key then
/// frees later than asked.
#[cfg(feature = "etcd")]
#[test]
fn an_etcd_lease_rounded_up_is_noted() {
    let Some(store) = etcd() else {
        return;
    };
    let out = output(lease_run(&store).args(["--lease", "3500ms", "-k", "k", "--", "true"]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("grants a lease of 4s for --lease 3s 500ms"),
        "{}",
        text(&out.stderr)
    );
    let out = output(lease_run(&store).args(["--lease", "4s", "-k", "k", "--", "true"]));
    assert_eq!(text(&out.stderr), "", "a whole-second lease is not rounded");
}
