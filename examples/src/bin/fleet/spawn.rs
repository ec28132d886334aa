//! Starting worker processes, and signalling them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lease_examples::broken::Broken;
use lease_examples::nemesis::CLOCK_STEP_SECS;
use lease_examples::nemesis::proxied_url;
use lease_testkit::{HoldingProxy, faketime};
use rustix::process::{Pid, Signal, kill_process};

/// A stopped worker: its proc id and pid.
pub(crate) type Paused = (u64, Option<u32>);

/// A running worker process.
pub(crate) struct Slot {
    pub(crate) proc: u64,
    pub(crate) pid: Option<u32>,
    /// The worker's own way to the store server, when partitions may cut it.
    pub(crate) proxy: Option<Arc<HoldingProxy>>,
    pub(crate) done: tokio::task::JoinHandle<std::io::Result<std::process::Output>>,
}

/// Starts worker processes: this program again, as `fleet worker` with the run's settings.
pub(crate) struct Spawner {
    pub(crate) exe: PathBuf,
    pub(crate) store_url: String,
    pub(crate) jobs_db: PathBuf,
    pub(crate) lease: Duration,
    pub(crate) work: Duration,
    pub(crate) history: Option<PathBuf>,
    pub(crate) chaos: bool,
    pub(crate) broken: Option<Broken>,
    /// Each worker reaches the store server through a proxy of its own, which a partition
    /// cuts and a failover retargets.
    pub(crate) proxied: bool,
    /// Where the proxies lead once a failover moved the store (`host:port`).
    pub(crate) moved_to: std::sync::Mutex<Option<String>>,
    /// With the `clock` fault: how the workers' clocks are set up.
    pub(crate) clocks: Option<Clocks>,
    /// Bytes each worker leaks per job (the soak's self-test).
    pub(crate) leak_per_job: usize,
}

/// The `clock` fault's setup: every worker runs under libfaketime, its wall clock offset by the
/// number in `clock-<proc>` of the history directory; workers with an odd proc id run in a time
/// namespace whose boot and monotonic clocks are off the host's, an hour ahead (1, 5, 9 …) or
/// behind (3, 7, …).
pub(crate) struct Clocks {
    preload: String,
    /// Where the preload shim is: a temp dir of its own, since `LD_PRELOAD` splits its list at
    /// spaces and colons, which the history directory's path may hold.
    _shim: tempfile::TempDir,
    dir: PathBuf,
    /// The namespaces' offsets ahead and behind, in seconds; `None` when this process cannot
    /// make time namespaces.
    timens: Option<(i64, i64)>,
}

impl Clocks {
    /// Builds libfaketime's preload shim, puts the clock files in `dir` (the history
    /// directory) and finds out whether time namespaces with the offsets the workers get can be
    /// made here; the second value says why not, when they cannot.
    ///
    /// # Errors
    ///
    /// Why the wall clocks cannot be stepped (libfaketime or `cc` missing).
    pub(crate) fn setup(dir: &Path) -> Result<(Clocks, Option<String>), String> {
        let shim = tempfile::tempdir().map_err(|e| format!("a temp dir for the shim: {e}"))?;
        let preload = faketime::preload(shim.path())?;
        // A namespace's boot clock cannot start below zero: behind by at most half the uptime.
        let uptime = std::fs::read_to_string("/proc/uptime")
            .ok()
            .and_then(|s| s.split('.').next()?.parse::<i64>().ok())
            .unwrap_or(0);
        let behind = CLOCK_STEP_SECS.min(uptime / 2);
        // Both offsets the workers get: the kernel refuses one that would set a clock below
        // zero (the monotonic clock does not count time suspended, the boot clock does).
        let probe = |secs: i64| {
            let secs = secs.to_string();
            std::process::Command::new("unshare")
                .args(["--time", "--boottime", &secs, "--monotonic", &secs])
                .args(["--", "true"])
                .output()
        };
        let probe = probe(CLOCK_STEP_SECS).and_then(|ahead| {
            if ahead.status.success() && behind > 0 {
                probe(-behind)
            } else {
                Ok(ahead)
            }
        });
        let (timens, why) = match probe {
            Ok(out) if out.status.success() && behind > 0 => {
                (Some((CLOCK_STEP_SECS, behind)), None)
            }
            Ok(out) if out.status.success() => {
                (None, Some("the host booted moments ago".to_owned()))
            }
            Ok(out) => (
                None,
                Some(format!(
                    "`unshare --time` failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
            ),
            Err(e) => (None, Some(format!("cannot run `unshare`: {e}"))),
        };
        Ok((
            Clocks {
                preload,
                _shim: shim,
                dir: dir.to_owned(),
                timens,
            },
            why,
        ))
    }

    /// The file holding `proc`'s wall-clock offset.
    pub(crate) fn file(&self, proc: u64) -> PathBuf {
        self.dir.join(format!("clock-{proc}"))
    }

    /// The offset of `proc`'s time namespace in seconds, if it runs in one.
    pub(crate) fn namespace_offset(&self, proc: u64) -> Option<i64> {
        let (ahead, behind) = self.timens?;
        match proc % 4 {
            1 => Some(ahead),
            3 => Some(-behind),
            _ => None,
        }
    }
}

impl Spawner {
    pub(crate) fn spawn(&self, proc: u64, duration: Duration) -> anyhow::Result<Slot> {
        let fmt = |d: Duration| humantime::format_duration(d).to_string();
        let (proxy, store_url) = if self.proxied {
            let (server, _) =
                proxied_url(&self.store_url, "127.0.0.1:1").map_err(anyhow::Error::msg)?;
            let moved = self
                .moved_to
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let proxy = HoldingProxy::start(&moved.unwrap_or(server));
            let (_, url) =
                proxied_url(&self.store_url, &proxy.endpoint()).map_err(anyhow::Error::msg)?;
            (Some(Arc::new(proxy)), url)
        } else {
            (None, self.store_url.clone())
        };
        let offset = self.clocks.as_ref().and_then(|c| c.namespace_offset(proc));
        let mut cmd = match offset {
            Some(secs) => {
                // `unshare` execs the worker in the new namespace: the pid stays the worker's.
                let mut cmd = tokio::process::Command::new("unshare");
                let secs = secs.to_string();
                cmd.args(["--time", "--boottime", &secs, "--monotonic", &secs, "--"])
                    .arg(&self.exe);
                cmd
            }
            None => tokio::process::Command::new(&self.exe),
        };
        if let Some(clocks) = &self.clocks {
            let file = clocks.file(proc);
            faketime::set_offset(&file, 0)
                .with_context(|| format!("write the clock file {}", file.display()))?;
            cmd.envs(faketime::env(&clocks.preload, &file));
        }
        cmd.arg("worker")
            .args(["--proc", &proc.to_string(), "--store", &store_url])
            .arg("--jobs-db")
            .arg(&self.jobs_db)
            .args(["--duration", &fmt(duration)])
            .args(["--lease", &fmt(self.lease)])
            .args(["--work", &fmt(self.work)])
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        if let Some(h) = &self.history {
            cmd.arg("--history")
                .arg(h.join(format!("proc-{proc}.jsonl")));
        }
        if self.chaos {
            cmd.arg("--chaos");
        }
        if let Some(b) = self.broken {
            cmd.args(["--broken", b.name()]);
        }
        if self.leak_per_job > 0 {
            cmd.args(["--leak-per-job", &self.leak_per_job.to_string()]);
        }
        let child = cmd.spawn().context("start a worker process")?;
        let pid = child.id();
        Ok(Slot {
            proc,
            pid,
            proxy,
            done: tokio::spawn(child.wait_with_output()),
        })
    }
}

/// Sends `sig` to a worker process, if it has a pid.
pub(crate) fn signal(pid: Option<u32>, sig: Signal) {
    if let Some(pid) = pid.and_then(|p| Pid::from_raw(p as i32)) {
        // The worker may have exited on its own meanwhile: nothing to do then.
        let _ = kill_process(pid, sig);
    }
}
