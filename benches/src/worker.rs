//! The worker process: the harness re-executes itself with the hidden `worker` subcommand, one
//! process per contender, and talks to it over stdin (commands) and stdout (JSON lines).

use std::collections::HashMap;
use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context, bail};
use lease_core::{BootClock, Clock};
use rand::Rng;
use serde_json::json;
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

use crate::proto::{Imp, Job, Msg, Role};
use crate::store::{Held, Locker, Opened};

/// `CLOCK_BOOTTIME` in nanoseconds: one clock for every process of this host.
pub(crate) fn now_ns() -> u64 {
    u64::try_from(BootClock.now().as_nanos()).unwrap_or(u64::MAX)
}

fn send(msg: &Msg) {
    let line = serde_json::to_string(msg)
        .unwrap_or_else(|e| format!("{{\"msg\":\"error\",\"error\":\"{e}\"}}"));
    let mut out = std::io::stdout().lock();
    // The parent reads line by line; a broken pipe means it is gone, and so should we be.
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        std::process::exit(3);
    }
}

/// Runs the job given as JSON; errors are reported to the parent as an `error` line.
pub(crate) fn main(job: &str) -> std::process::ExitCode {
    let job: Job = match serde_json::from_str(job) {
        Ok(j) => j,
        Err(e) => {
            send(&Msg::Error {
                error: format!("bad job: {e}"),
            });
            return std::process::ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            send(&Msg::Error {
                error: format!("tokio runtime: {e}"),
            });
            return std::process::ExitCode::from(2);
        }
    };
    let outcome = if job.in_task {
        rt.block_on(async move { tokio::spawn(run(job)).await })
            .unwrap_or_else(|e| Err(anyhow::anyhow!("worker task: {e}")))
    } else {
        rt.block_on(run(job))
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            send(&Msg::Error {
                error: format!("{e:#}"),
            });
            std::process::ExitCode::from(1)
        }
    }
}

/// Commands from the parent, read on a task of their own so that waiting for one never blocks
/// a lock call.
struct Commands(mpsc::UnboundedReceiver<String>);

impl Commands {
    fn start() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line.trim().to_owned()).is_err() {
                    return;
                }
            }
            // The parent closed stdin: it is gone or done; stop.
            let _ = tx.send("stop".to_owned());
        });
        Self(rx)
    }

    async fn next(&mut self) -> String {
        self.0.recv().await.unwrap_or_else(|| "stop".to_owned())
    }
}

async fn run(job: Job) -> anyhow::Result<()> {
    let which_floor = matches!(job.imp, Imp::Floor | Imp::FloorFastest).then_some(job.imp);
    let opened = Opened::open(&job.store, which_floor).await?;
    let mut cmds = Commands::start();
    send(&Msg::Ready);
    match cmds.next().await.as_str() {
        "go" => {}
        "stop" => return Ok(()),
        other => bail!("expected `go`, got `{other}`"),
    }
    match job.role.clone() {
        Role::Floor {
            samples,
            warmup,
            idle_us,
        } => floor(&opened, samples, warmup, idle_us).await,
        Role::Uncontended { samples, warmup } => uncontended(&opened, &job, samples, warmup).await,
        Role::Reentrant { samples } => reentrant(&opened, &job, samples).await,
        Role::Driven { key, hold_us } => driven(&opened, &job, &key, hold_us, &mut cmds).await,
        Role::FreeRun {
            key,
            keys,
            hold_us,
            duration_ms,
        } => free_run(&opened, &job, &key, keys, hold_us, duration_ms).await,
        Role::Renewal { keys, hold_ms } => renewal(&opened, &job, keys, hold_ms).await,
        Role::CrashHolder { key } => {
            let locker = opened.locker(job.imp, &key, job.lease_ms).await?;
            let t_req = now_ns();
            let held = locker.acquire(None).await?;
            send(&Msg::Acquired {
                t_req,
                t_acq: now_ns(),
            });
            // Held until the parent SIGKILLs this process.
            let _keep = held;
            loop {
                if cmds.next().await == "stop" {
                    return Ok(());
                }
            }
        }
    }
}

fn key_name(prefix: &str) -> String {
    format!("{prefix}/{}", std::process::id())
}

async fn floor(opened: &Opened, samples: usize, warmup: usize, idle_us: u64) -> anyhow::Result<()> {
    let key = key_name("floor");
    let mut out = Vec::with_capacity(samples);
    for i in 0..warmup + samples {
        if idle_us > 0 {
            // As a handoff's holder does before its release.
            hold(idle_us).await;
        }
        let t0 = now_ns();
        opened.floor_op(&key).await?;
        if i >= warmup {
            out.push(now_ns() - t0);
        }
    }
    send(&Msg::Result {
        data: json!({ "floor": out }),
    });
    Ok(())
}

async fn uncontended(
    opened: &Opened,
    job: &Job,
    samples: usize,
    warmup: usize,
) -> anyhow::Result<()> {
    let key = key_name(&format!("uncontended-{}", job.imp.name()));
    let locker = opened.locker(job.imp, &key, job.lease_ms).await?;
    let mut acquire = Vec::with_capacity(samples);
    let mut release = Vec::with_capacity(samples);
    let before = opened.counts();
    for i in 0..warmup + samples {
        let t0 = now_ns();
        let held = locker
            .acquire(None)
            .await?
            .context("acquire returned without the lock")?;
        let t1 = now_ns();
        locker.release(held).await?;
        let t2 = now_ns();
        if i >= warmup {
            acquire.push(t1 - t0);
            release.push(t2 - t1);
        }
    }
    let after = opened.counts();
    send(&Msg::Result {
        data: json!({
            "acquire": acquire,
            "release": release,
            "store_ops": after.ops() - before.ops(),
            "iterations": warmup + samples,
        }),
    });
    Ok(())
}

async fn reentrant(opened: &Opened, job: &Job, samples: usize) -> anyhow::Result<()> {
    let key = key_name(&format!("reentrant-{}", job.imp.name()));
    let Locker::Lock(lock) = opened.locker(job.imp, &key, job.lease_ms).await? else {
        bail!("re-entry is measured for our lock only");
    };
    let first = lock.lock().await?;
    let before = opened.counts();
    let mut lat = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t0 = now_ns();
        let again = lock.lock().await?;
        lat.push(now_ns() - t0);
        drop(again);
    }
    let after = opened.counts();
    first.release().await?;
    // Renewals by the heartbeat may fall in the window; they are not acquisitions.
    send(&Msg::Result {
        data: json!({
            "reacquire": lat,
            "try_lock_calls": after.try_lock - before.try_lock,
            "release_calls": after.release - before.release,
            "renew_calls": after.renew - before.renew,
        }),
    });
    Ok(())
}

async fn driven(
    opened: &Opened,
    job: &Job,
    key: &str,
    hold_us: u64,
    cmds: &mut Commands,
) -> anyhow::Result<()> {
    let locker = opened.locker(job.imp, key, job.lease_ms).await?;
    loop {
        let t_req = now_ns();
        send(&Msg::Waiting { t_req });
        let held = locker
            .acquire(None)
            .await?
            .context("acquire returned without the lock")?;
        let t_acq = now_ns();
        send(&Msg::Acquired { t_req, t_acq });
        let cmd = cmds.next().await;
        if cmd == "release" {
            hold(hold_us).await;
        }
        let t_rel = now_ns();
        locker.release(held).await?;
        send(&Msg::Released { t_rel });
        if cmd == "stop" {
            return Ok(());
        }
        match cmds.next().await.as_str() {
            "go" => {}
            "stop" => return Ok(()),
            other => bail!("expected `go` or `stop`, got `{other}`"),
        }
    }
}

/// Holds the lock for `hold_us`: on a blocking thread, since tokio's timer rounds a sleep up to
/// its next millisecond tick (a 1 ms hold would last about 2 ms, against the peers' exact
/// `time.sleep`), so the hold is what the scenario says.
async fn hold(hold_us: u64) {
    let d = Duration::from_micros(hold_us);
    if tokio::task::spawn_blocking(move || std::thread::sleep(d))
        .await
        .is_err()
    {
        tokio::time::sleep(d).await;
    }
}

async fn free_run(
    opened: &Opened,
    job: &Job,
    prefix: &str,
    keys: u32,
    hold_us: u64,
    duration_ms: u64,
) -> anyhow::Result<()> {
    let keys = keys.max(1);
    let mut lockers: HashMap<u32, Locker> = HashMap::new();
    let before = opened.counts();
    let t_start = now_ns();
    let deadline = t_start + duration_ms * 1_000_000;
    let mut count = 0u64;
    let mut worst_wait = 0u64;
    let mut waits = Vec::new();
    loop {
        let now = now_ns();
        if now >= deadline {
            break;
        }
        let k = if keys == 1 {
            0
        } else {
            rand::rng().random_range(0..keys)
        };
        let key = format!("{prefix}/{k}");
        if job.imp == Imp::Floor {
            opened.floor_op(&key).await?;
            count += 1;
            continue;
        }
        let locker = match lockers.entry(k) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(opened.locker(job.imp, &key, job.lease_ms).await?)
            }
        };
        let t_req = now_ns();
        let left = Duration::from_nanos(deadline.saturating_sub(t_req));
        let held = locker.acquire(Some(left)).await?;
        let t_acq = now_ns();
        worst_wait = worst_wait.max(t_acq - t_req);
        let Some(held) = held else { break };
        count += 1;
        waits.push(t_acq - t_req);
        if hold_us > 0 {
            hold(hold_us).await;
        }
        locker.release(held).await?;
    }
    let elapsed = now_ns() - t_start;
    let after = opened.counts();
    // Keep the per-acquisition waits small on the wire: at most 2,000, evenly thinned.
    let step = waits.len().div_ceil(2000).max(1);
    let waits: Vec<u64> = waits.into_iter().step_by(step).collect();
    send(&Msg::Result {
        data: json!({
            "count": count,
            "elapsed_ns": elapsed,
            "worst_wait_ns": worst_wait,
            "waits": waits,
            "store_ops": after.ops() - before.ops(),
            "waits_for_change": after.wait - before.wait,
        }),
    });
    Ok(())
}

async fn renewal(opened: &Opened, job: &Job, keys: u32, hold_ms: u64) -> anyhow::Result<()> {
    let prefix = key_name(&format!("renewal-{}", job.imp.name()));
    let t0 = now_ns();
    let mut lockers = Vec::with_capacity(keys as usize);
    for k in 0..keys {
        lockers.push(
            opened
                .locker(job.imp, &format!("{prefix}/{k}"), job.lease_ms)
                .await?,
        );
    }
    // Acquire concurrently, a bounded number at a time.
    let mut held: Vec<Held> = Vec::with_capacity(lockers.len());
    for chunk in lockers.chunks(256) {
        let got = futures::future::join_all(
            chunk
                .iter()
                .map(|l| l.acquire(Some(Duration::from_secs(60)))),
        )
        .await;
        for g in got {
            held.push(g?.context("acquiring a free key timed out")?);
        }
    }
    let acquired_in = now_ns() - t0;
    let before = opened.counts();
    let t_hold = now_ns();
    tokio::time::sleep(Duration::from_millis(hold_ms)).await;
    let held_for = now_ns() - t_hold;
    let after = opened.counts();
    let lost = held.iter().filter(|h| !h.is_held()).count();
    let t_rel = now_ns();
    let mut release_errors = 0usize;
    let pairs: Vec<(&Locker, Held)> = lockers.iter().zip(held).collect();
    let mut it = pairs.into_iter();
    loop {
        let chunk: Vec<_> = it.by_ref().take(256).collect();
        if chunk.is_empty() {
            break;
        }
        for r in futures::future::join_all(chunk.into_iter().map(|(l, h)| l.release(h))).await {
            if r.is_err() {
                release_errors += 1;
            }
        }
    }
    let released_in = now_ns() - t_rel;
    send(&Msg::Result {
        data: json!({
            "keys": keys,
            "acquired_in_ns": acquired_in,
            "held_ns": held_for,
            "renew_calls": after.renew - before.renew,
            "store_ops": after.ops() - before.ops(),
            "keepalives": match (after.keepalives, before.keepalives) {
                (Some(a), Some(b)) => Some(a - b),
                _ => None,
            },
            "lost": lost,
            "released_in_ns": released_in,
            "release_errors": release_errors,
        }),
    });
    Ok(())
}
