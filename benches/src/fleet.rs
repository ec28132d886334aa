//! The parent's side of the worker processes: spawn, command, and read their JSON lines.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::backend;
use crate::proto::{Job, Msg};

/// How long the parent waits for any message before it gives up on a cell.
const SILENCE: Duration = Duration::from_secs(120);

/// A group of worker processes started together for one measurement.
pub(crate) struct Fleet {
    children: Vec<Child>,
    stdins: Vec<Option<ChildStdin>>,
    rx: mpsc::UnboundedReceiver<(usize, Msg)>,
}

impl Fleet {
    /// Starts one worker per job (this binary, re-executed with the hidden `worker`
    /// subcommand, or a peer's own process); their stderr goes to `log`.
    pub(crate) fn spawn(jobs: &[Job], log: &std::fs::File) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding the harness binary to re-execute")?;
        let (tx, rx) = mpsc::unbounded_channel();
        let mut children = Vec::new();
        let mut stdins = Vec::new();
        for (i, job) in jobs.iter().enumerate() {
            let mut cmd = match backend::of(job.store.scheme).peer_process(job) {
                Some(peer) => peer?,
                None => {
                    let mut cmd = Command::new(&exe);
                    cmd.arg("worker").arg(serde_json::to_string(job)?);
                    cmd
                }
            };
            let mut child = cmd
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(log.try_clone()?)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting the {} worker process", job.imp.name()))?;
            let stdout = child.stdout.take().context("worker stdout")?;
            stdins.push(child.stdin.take());
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let msg = serde_json::from_str(&line).unwrap_or_else(|e| Msg::Error {
                        error: format!("unreadable worker line `{line}`: {e}"),
                    });
                    if tx.send((i, msg)).is_err() {
                        return;
                    }
                }
                let _ = tx.send((i, Msg::Exited));
            });
            children.push(child);
        }
        Ok(Self {
            children,
            stdins,
            rx,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.children.len()
    }

    /// The next message from any worker; an error report or an early exit is an error.
    pub(crate) async fn recv(&mut self) -> anyhow::Result<(usize, Msg)> {
        match tokio::time::timeout(SILENCE, self.rx.recv()).await {
            Err(_) => bail!("no word from any worker for {SILENCE:?}"),
            Ok(None) => bail!("every worker is gone"),
            Ok(Some((i, Msg::Error { error }))) => bail!("worker {i}: {error}"),
            Ok(Some((i, Msg::Exited))) => {
                bail!("worker {i} exited unexpectedly (see workers.log in the out dir)")
            }
            Ok(Some(m)) => Ok(m),
        }
    }

    pub(crate) async fn send(&mut self, i: usize, cmd: &str) -> anyhow::Result<()> {
        let stdin = self.stdins[i]
            .as_mut()
            .with_context(|| format!("worker {i} has no stdin"))?;
        stdin
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .with_context(|| format!("sending `{cmd}` to worker {i}"))?;
        stdin.flush().await?;
        Ok(())
    }

    pub(crate) async fn send_all(&mut self, cmd: &str) -> anyhow::Result<()> {
        for i in 0..self.len() {
            self.send(i, cmd).await?;
        }
        Ok(())
    }

    /// Waits until every worker has said `ready`.
    pub(crate) async fn ready(&mut self) -> anyhow::Result<()> {
        let mut ready = vec![false; self.len()];
        while ready.iter().any(|r| !r) {
            match self.recv().await? {
                (i, Msg::Ready) => ready[i] = true,
                (i, other) => bail!("worker {i} sent {other:?} before `ready`"),
            }
        }
        Ok(())
    }

    /// Sends `go` to all and collects every worker's result, in worker order.
    pub(crate) async fn results(&mut self) -> anyhow::Result<Vec<serde_json::Value>> {
        self.send_all("go").await?;
        let mut out: Vec<Option<serde_json::Value>> = vec![None; self.len()];
        while out.iter().any(Option::is_none) {
            if let (i, Msg::Result { data }) = self.recv().await? {
                out[i] = Some(data);
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// SIGKILLs worker `i`.
    pub(crate) fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        self.children[i]
            .start_kill()
            .with_context(|| format!("killing worker {i}"))
    }

    /// Asks every worker to stop, waits a moment, then kills what is left.
    pub(crate) async fn finish(mut self) {
        for s in &mut self.stdins {
            if let Some(s) = s.as_mut() {
                let _ = s.write_all(b"stop\n").await;
                let _ = s.flush().await;
            }
        }
        self.stdins.clear();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        for c in &mut self.children {
            if tokio::time::timeout_at(deadline, c.wait()).await.is_err() {
                let _ = c.start_kill();
                let _ = c.wait().await;
            }
        }
    }
}
