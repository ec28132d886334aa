//! Starting worker processes, and signalling them.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lease_examples::broken::Broken;
use lease_examples::nemesis::proxied_url;
use lease_testkit::HoldingProxy;
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
        let mut cmd = tokio::process::Command::new(&self.exe);
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
