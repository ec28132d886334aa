//! The command's process group: started under a small guard process (this binary's `__exec`
//! mode) that leads the group and takes the whole group down if `lease-run` dies, signalled as
//! a group, and waited for until no member is left.
//!
//! Why a guard process: `lease-run` may be killed by SIGKILL or the OOM killer, and then nothing
//! in it runs. The kernel's parent-death signal (`PR_SET_PDEATHSIG`) reaches only a direct
//! child, and only a process that set it for itself; the guard sets it, survives the signals
//! `lease-run` forwards (it ignores them, the command gets them), and on its parent's death
//! SIGKILLs every process of the group, grandchildren included. The command runs as the guard's
//! child in the same group; the guard exits with the command's status.

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};
use tokio::signal::unix::{SignalKind, signal};

/// The hidden first argument that runs this binary as the guard.
pub(crate) const GUARD_ARG: &str = "__exec";
/// The environment variable that tells the guard its parent's pid (removed before the command
/// starts).
const PARENT_ENV: &str = "LEASE_RUN_PARENT";

/// Exit codes the guard uses for the command's start (as `timeout(1)` and the shells do).
pub(crate) const EXIT_CANNOT_EXECUTE: u8 = 126;
/// The command was not found.
pub(crate) const EXIT_NOT_FOUND: u8 = 127;
/// Something of our own failed (EX_SOFTWARE).
pub(crate) const EXIT_INTERNAL: u8 = 70;

/// The signals `lease-run` forwards to the group (and the guard therefore ignores).
pub(crate) const FORWARDED: [(SignalKind, Signal, &str); 6] = [
    (SignalKind::hangup(), Signal::HUP, "SIGHUP"),
    (SignalKind::interrupt(), Signal::INT, "SIGINT"),
    (SignalKind::quit(), Signal::QUIT, "SIGQUIT"),
    (SignalKind::terminate(), Signal::TERM, "SIGTERM"),
    (SignalKind::user_defined1(), Signal::USR1, "SIGUSR1"),
    (SignalKind::user_defined2(), Signal::USR2, "SIGUSR2"),
];

/// A command running in its own process group under the guard.
pub(crate) struct Group {
    guard: tokio::process::Child,
    pgid: Pid,
}

impl Group {
    /// Starts `command` (program and arguments) under the guard, in a new process group, with
    /// `env` added. Must be called from the thread that lives as long as `lease-run` (the
    /// parent-death signal fires when the *thread* that forked the guard exits): `lease-run`
    /// runs a current-thread runtime on its main thread.
    pub(crate) fn start(command: &[OsString], env: &[(&str, String)]) -> std::io::Result<Group> {
        let exe = std::env::current_exe()?;
        let mut cmd = tokio::process::Command::new(exe);
        cmd.arg(GUARD_ARG)
            .arg("--")
            .args(command)
            .env(PARENT_ENV, std::process::id().to_string())
            .process_group(0)
            .kill_on_drop(false);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let guard = cmd.spawn()?;
        let pgid = guard
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .and_then(Pid::from_raw)
            .ok_or_else(|| std::io::Error::other("the guard process has no pid"))?;
        Ok(Group { guard, pgid })
    }

    /// The group's id (the guard's pid).
    pub(crate) fn pgid(&self) -> Pid {
        self.pgid
    }

    /// Sends `sig` to every process of the group.
    pub(crate) fn signal(&self, sig: Signal) {
        // ESRCH: the group is already gone.
        let _ = rustix::process::kill_process_group(self.pgid, sig);
    }

    /// Waits for the guard (and so the command) to exit; its exit code as `lease-run` reports it
    /// (128 + signal when killed by one).
    pub(crate) async fn wait(&mut self) -> std::io::Result<u8> {
        let status = self.guard.wait().await?;
        Ok(exit_code(status))
    }

    /// Stops what is left of the group: SIGTERM, then SIGKILL once `grace` has passed or by
    /// `kill_by` at the latest, then waits (up to a second more) until no member is alive.
    /// Returns whether the group is gone. The guard, if still running, is reaped here.
    pub(crate) async fn stop(&mut self, grace: Duration) -> bool {
        if !group_alive(self.pgid) && self.guard.try_wait().ok().flatten().is_some() {
            return true;
        }
        self.signal(Signal::TERM);
        let kill_at = Instant::now() + grace;
        while Instant::now() < kill_at {
            if self.reap_and_check_gone() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.kill_and_wait().await
    }

    /// SIGKILLs the group and waits (up to a second) until no member is alive.
    pub(crate) async fn kill_and_wait(&mut self) -> bool {
        self.signal(Signal::KILL);
        let give_up = Instant::now() + Duration::from_secs(1);
        while Instant::now() < give_up {
            if self.reap_and_check_gone() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.reap_and_check_gone()
    }

    fn reap_and_check_gone(&mut self) -> bool {
        let _ = self.guard.try_wait();
        !group_alive(self.pgid)
    }
}

/// An exit status as a shell reports it: the code, or 128 + the signal.
fn exit_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(sig)) => 128u8.saturating_add(u8::try_from(sig).unwrap_or(0)),
        (None, None) => 1,
    }
}

/// Whether any process of group `pgid` is alive (zombies count as dead: a killed member whose
/// parent has not reaped it runs nothing). Reads `/proc/<pid>/stat` of every process.
pub(crate) fn group_alive(pgid: Pid) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        // No /proc: ask the kernel, counting zombies as alive.
        return rustix::process::test_kill_process_group(pgid).is_ok();
    };
    let want = pgid.as_raw_nonzero().get();
    entries.flatten().any(|e| {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<i32>().ok()) else {
            return false;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        // "pid (comm) state ppid pgrp …": comm may contain spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return false;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("Z");
        let pgrp = fields.nth(1).and_then(|s| s.parse::<i32>().ok());
        pgrp == Some(want) && !matches!(state, "Z" | "X" | "x")
    })
}

/// The guard: `lease-run __exec -- PROGRAM ARGS…`. Leads the process group `lease-run` made,
/// starts the command as its child, and exits with the command's status. It ignores the
/// signals `lease-run` forwards (the command gets them as a member of the group) and, when its
/// parent dies, SIGKILLs the whole group.
pub(crate) fn guard_main(args: Vec<OsString>) -> ExitCode {
    let fail = |msg: String| {
        eprintln!("lease-run: {msg}");
        ExitCode::from(EXIT_INTERNAL)
    };
    let Some(parent) = std::env::var(PARENT_ENV)
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
        .and_then(Pid::from_raw)
    else {
        return fail(format!("`{GUARD_ARG}` is internal to lease-run"));
    };
    let command: Vec<OsString> = args.into_iter().skip_while(|a| a != "--").skip(1).collect();
    let Some((program, rest)) = command.split_first() else {
        return fail("no command to run".into());
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the guard's runtime: {e}")),
    };
    rt.block_on(async move {
        // Handlers first: from now on a forwarded signal does not end the guard.
        let mut streams = Vec::new();
        for (kind, _, name) in FORWARDED {
            match signal(kind) {
                Ok(s) => streams.push(s),
                Err(e) => return fail(format!("cannot handle {name}: {e}")),
            }
        }
        // SIGTERM (handled above) when the parent dies; then check that it has not died
        // already, before the death signal was set.
        if let Err(e) = rustix::process::set_parent_process_death_signal(Some(Signal::TERM)) {
            return fail(format!("cannot set the parent-death signal: {e}"));
        }
        if rustix::process::getppid() != Some(parent) {
            return ExitCode::from(EXIT_INTERNAL);
        }
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(rest).env_remove(PARENT_ENV).kill_on_drop(false);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let code = match e.kind() {
                    std::io::ErrorKind::NotFound => EXIT_NOT_FOUND,
                    _ => EXIT_CANNOT_EXECUTE,
                };
                eprintln!(
                    "lease-run: cannot start `{}`: {e}",
                    program.to_string_lossy()
                );
                return ExitCode::from(code);
            }
        };
        let own_group = rustix::process::getpgrp();
        loop {
            let signalled = any_signal(&mut streams);
            tokio::select! {
                status = child.wait() => {
                    return match status {
                        Ok(s) => ExitCode::from(exit_code(s)),
                        Err(e) => fail(format!("waiting for the command: {e}")),
                    };
                }
                () = signalled => {
                    if rustix::process::getppid() != Some(parent) {
                        // lease-run is gone: nothing may outlive its lease.
                        let _ = rustix::process::kill_process_group(own_group, Signal::KILL);
                    }
                }
            }
        }
    })
}

/// Resolves when any of `streams` delivers a signal.
async fn any_signal(streams: &mut [tokio::signal::unix::Signal]) {
    std::future::poll_fn(|cx| {
        for s in streams.iter_mut() {
            if s.poll_recv(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await;
}
