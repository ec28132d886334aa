//! Starting, signalling and stopping one server process.

use std::fs::File;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

/// `program` on `PATH`, if it is there.
pub(crate) fn find_binary(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

/// Finds `program` on `PATH`. `None` (with a note on stderr) when it is missing and `CI` is unset.
///
/// # Panics
///
/// When the binary is missing and the `CI` environment variable is set: under CI a missing server
/// fails the run instead of skipping it.
pub fn require_binary(program: &str, package: &str) -> Option<PathBuf> {
    match find_binary(program) {
        Some(p) => Some(p),
        None if std::env::var_os("CI").is_some() => panic!(
            "`{program}` is not installed and CI is set: install the Debian package `{package}` \
             (scripts/test.sh does)"
        ),
        None => {
            eprintln!("skipping: `{program}` not found (install the Debian package `{package}`)");
            None
        }
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; a server started on it may still race with
/// another, which [`Server::spawn`]'s callers handle by retrying on a new port).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port on 127.0.0.1")
}

/// One running server process, killed on drop. Its output goes to `<dir>/<name>.log`.
///
/// The process runs under a watchdog that kills it once the test process is gone: a server kept
/// in a `static` (one per test binary) is never dropped, and must not outlive the tests.
#[derive(Debug)]
pub struct Server {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Server {
    /// Spawns `program args` under the watchdog, with output to `dir/name.log`, and waits until
    /// `ready` returns true (polled every 20 ms, at most `timeout`). Returns an error with the
    /// log's tail if the process exits or does not become ready.
    ///
    /// `program` may be a command that executes the rest of its arguments in turn (`env VAR=…
    /// server …`): the process id stays the server's.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: Vec<String>,
        dir: &Path,
        timeout: Duration,
        ready: &dyn Fn() -> bool,
    ) -> Result<Server, String> {
        // The shell `exec`s the program, so the pid is the server's.
        let mut watched = vec![
            "-c".to_owned(),
            WATCHDOG.to_owned(),
            format!("{name}-watchdog"),
            std::process::id().to_string(),
            program.display().to_string(),
        ];
        watched.extend(args);
        let mut server = Server {
            name: name.to_owned(),
            program: PathBuf::from("/bin/sh"),
            args: watched,
            log: dir.join(format!("{name}.log")),
            child: None,
        };
        server.start(timeout, ready)?;
        Ok(server)
    }

    fn start(&mut self, timeout: Duration, ready: &dyn Fn() -> bool) -> Result<(), String> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("open {}: {e}", self.log.display()))?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", self.program.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child_mut().try_wait().map_err(|e| e.to_string())? {
                self.child = None;
                return Err(format!(
                    "{} exited with {status}:\n{}",
                    self.name,
                    self.log_tail()
                ));
            }
            if ready() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!(
                    "{} was not ready within {timeout:?}:\n{}",
                    self.name,
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("server process is running")
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The last 4 KiB of the server's log, for error messages.
    pub fn log_tail(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        let cut = s.len().saturating_sub(4096);
        let cut = (cut..s.len())
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(s.len());
        s[cut..].to_owned()
    }

    fn signal(&self, sig: Signal) {
        if let Some(pid) = self.pid().and_then(|p| Pid::from_raw(p as i32)) {
            let _ = kill_process(pid, sig);
        }
    }

    /// Pauses the process (SIGSTOP): it keeps its sockets but answers nothing. Returns once
    /// every thread of it is stopped (at most 2 s): the kernel stops each thread on its own way
    /// back to user space, so on a loaded machine a thread may still finish a request after
    /// `kill` returned.
    pub fn pause(&self) {
        if let Some(pid) = self.pid() {
            pause_process(pid);
        }
    }

    /// Resumes a paused process (SIGCONT).
    pub fn resume(&self) {
        self.signal(Signal::CONT);
    }

    /// Kills the process (SIGKILL) and reaps it. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (e.g. SIGTERM or SIGQUIT: a server's own shutdown) and waits up to
    /// `grace` for the process to exit; kills it (SIGKILL) if it has not by then. Reaps it
    /// either way. Idempotent.
    pub fn stop(&mut self, signal: Signal, grace: Duration) {
        self.signal(signal);
        let deadline = Instant::now() + grace;
        while let Some(child) = self.child.as_mut() {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => {
                    self.child = None;
                    return;
                }
                Ok(None) if Instant::now() >= deadline => break,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        self.kill();
    }

    /// Starts the process again with the same arguments (same port, same data dir), after a
    /// [`kill`](Self::kill) or on its own, and waits until `ready`.
    pub fn restart(&mut self, timeout: Duration, ready: &dyn Fn() -> bool) -> Result<(), String> {
        self.kill();
        self.start(timeout, ready)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A paused process ignores nothing of SIGKILL, but resume it anyway so it does not linger
        // stopped if the kill races with its reaping.
        self.resume();
        self.kill();
    }
}

/// Stops process `pid` (SIGSTOP) and returns once every thread of it is stopped, at most 2 s
/// later: the kernel stops each thread on its own way back to user space, so on a loaded
/// machine a thread may still run for milliseconds after `kill` returned (and a server answer
/// a request). Nothing happens for a pid that is gone.
pub fn pause_process(pid: u32) {
    let Some(p) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return;
    };
    if kill_process(p, Signal::STOP).is_err() {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while !all_threads_stopped(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The processes whose parent is `parent` (a PostgreSQL postmaster's backends, say).
pub(crate) fn children(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                // `pid (comm) S ppid …`: the parent follows the state, after the last `)`.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(parent)
            })
        })
        .collect()
}

/// Whether every thread of process `pid` is stopped (state `T` or `t` in
/// `/proc/PID/task/*/stat`); `true` when the process is gone, as there is nothing to wait for.
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat")).map_or(true, |stat| {
            // `pid (comm) S …`: the state follows the last `)`, as comm may hold one.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_none_or(|state| matches!(state, "T" | "t" | "Z" | "X"))
        })
    })
}

/// `sh -c WATCHDOG name PARENT_PID PROGRAM ARGS…`: starts a background loop that SIGKILLs the
/// server once the parent (the test process) is gone, then becomes the server. The loop also
/// ends, without killing anything, when the server exits first.
const WATCHDOG: &str = r#"parent=$1; shift
( while kill -0 "$parent" 2>/dev/null && kill -0 $$ 2>/dev/null; do sleep 0.2; done
  kill -0 "$parent" 2>/dev/null || kill -9 $$ 2>/dev/null ) </dev/null >/dev/null 2>&1 &
exec "$@""#;

/// `true` when a TCP connection to `127.0.0.1:port` succeeds, `request` is written, and the reply
/// starts with `expect`.
pub(crate) fn tcp_answers(port: u16, request: &[u8], expect: &[u8]) -> bool {
    use std::io::Write;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(request).is_err() {
        return false;
    }
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while got.len() < 4096 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.windows(expect.len()).any(|w| w == expect) {
                    return true;
                }
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `pause` returns only once every thread is stopped, even threads busy on another core at
    /// the time of the signal: a server must answer nothing after it.
    #[test]
    fn pause_returns_once_every_thread_is_stopped() {
        let Some(python) = require_binary("python3", "python3") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        // Four threads taking turns at spinning (the interpreter runs one at a time) and at
        // waking each other: on two cores, one is often mid-run when the signal comes.
        let spin = "import threading\n\
                    def spin():\n    while True: pass\n\
                    ts = [threading.Thread(target=spin) for _ in range(4)]\n\
                    [t.start() for t in ts]\n\
                    print('ready', flush=True)\n\
                    [t.join() for t in ts]";
        let log = dir.path().join("spin.log");
        let ready = || std::fs::read_to_string(&log).is_ok_and(|s| s.contains("ready"));
        let mut server = Server::spawn(
            "spin",
            &python,
            vec!["-c".into(), spin.into()],
            dir.path(),
            Duration::from_secs(10),
            &ready,
        )
        .unwrap();
        let pid = server.pid().unwrap();
        for round in 0..50 {
            server.pause();
            assert!(
                all_threads_stopped(pid),
                "round {round}: a thread still runs after pause() returned"
            );
            server.resume();
            std::thread::sleep(Duration::from_millis(2));
        }
        server.kill();
    }
}
