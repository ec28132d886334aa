//! The worker process: claims jobs from the job table under per-job leases and completes each
//! through a fenced write that the table checks, telling the fleet every outcome as it goes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use lease_core::{CrossProcessLock, DynStore, Error, LeaseStore, StoreErrorKind};
use lease_examples::broken::{Broken, BrokenStore, SlowWallClock, TrustingRenewals};
use lease_examples::history::{Event, History, Kind, Op, RecordingStore, now_ns};
use lease_examples::jobs::{Claim, Jobs, Write};
use lease_examples::stats::WorkerReport;

use crate::tally::{Tally, tally};

/// The settings the fleet gives each worker process.
#[derive(Args)]
pub(crate) struct WorkerArgs {
    #[arg(long)]
    proc: u64,
    #[arg(long)]
    store: String,
    #[arg(long)]
    jobs_db: PathBuf,
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long, value_parser = humantime::parse_duration)]
    lease: Duration,
    #[arg(long, value_parser = humantime::parse_duration)]
    work: Duration,
    /// Append events to this history file.
    #[arg(long)]
    history: Option<PathBuf>,
    /// Chaos behaviour: contend for the lowest open jobs, split the work in steps, write without
    /// checking the lease first, and resend a release after a loss.
    #[arg(long)]
    chaos: bool,
    #[arg(long, value_parser = Broken::parse)]
    broken: Option<Broken>,
    /// Bytes to leak per completed job (the soak's self-test).
    #[arg(long, default_value_t = 0)]
    leak_per_job: usize,
}

/// One worker process: claims jobs under leases and completes them with fenced writes until
/// its time is up, telling the fleet as it goes.
pub(crate) async fn worker(args: WorkerArgs) -> anyhow::Result<bool> {
    let WorkerArgs {
        proc,
        store: store_url,
        jobs_db,
        duration,
        lease,
        work,
        history,
        chaos,
        broken,
        leak_per_job,
    } = args;
    // First, before anything else: the nemesis may signal a slow link at any time, and SIGUSR1's
    // default action ends the process.
    let slow_control = history
        .as_deref()
        .and_then(Path::parent)
        .filter(|_| chaos)
        .map(|dir| lease_examples::slow::control_file(dir, proc));
    let history = history.map(|p| History::open(&p, proc)).transpose()?;
    if history.is_some() {
        // The history's stamps are on the host's boot clock, corrected for this process's time
        // namespace: a worker that cannot correct them would stamp its events hours off.
        lease_sqlite::HostClock::open().context("read this process's boot-clock offset")?;
    }
    let mut store = open_store(&store_url, proc, Instant::now() + duration).await?;
    if let Some(b) = broken.filter(|b| !matches!(b, Broken::WallClock | Broken::RenewOnTimeout)) {
        let path = if b.needs_sqlite() {
            Some(
                lease_sqlite::SqliteStore::from_url(&store_url)
                    .await?
                    .path()
                    .to_owned(),
            )
        } else {
            None
        };
        store = DynStore::new(BrokenStore::new(store, b, path.as_deref())?);
    }
    if let Some(h) = &history {
        store = DynStore::new(RecordingStore::new(store, h.clone()));
    }
    // Between the lock and the recording: the history shows the store's answers, the lock
    // believes its renewals.
    if broken == Some(Broken::RenewOnTimeout) {
        store = DynStore::new(TrustingRenewals::new(store, lease / 4));
    }
    // The slow link sits between the recording and the lock: the history keeps the store's own
    // order of events, and the lock gets the replies late.
    if let Some(control) = slow_control {
        let slow = lease_examples::slow::SlowStore::new(store);
        slow.watch(control).context("watch for slow-link signals")?;
        store = DynStore::new(slow);
    }
    let log = |e: Event| {
        if let Some(h) = &history {
            h.log(&e);
        }
    };
    let mut jobs = Jobs::open(&jobs_db)?;
    let mut report = WorkerReport {
        worker: proc as usize,
        ..Default::default()
    };
    // Chaos: many workers on few jobs, so a paused holder's job is soon taken over.
    let contend = 8;
    let steps: u32 = if chaos { 4 } else { 1 };
    // On a store with a waiter queue a worker waits for its job's key in the queue, up to one
    // lease, so the history shows the queue's order (I7); elsewhere it tries once and picks
    // another job when the key is busy.
    let queued = store.capabilities().queued_grants;
    let until = Instant::now() + duration;
    let mut n = 0u64;
    let mut last_watcher: Option<tokio::task::JoinHandle<()>> = None;
    while Instant::now() < until {
        let job = if chaos {
            jobs.pick_contended(contend)?
        } else {
            jobs.pick()?
        };
        let Some(job) = job else { break };
        let key = format!("job/{job}");
        n += 1;
        let holder = format!("fleet-p{proc}-{n}-{:032x}", rand::random::<u128>());
        let mut builder = CrossProcessLock::builder(store.clone(), key.clone())
            .lease(lease)
            .holder(holder.clone())
            .holder_label(format!("worker-{proc}"));
        if broken == Some(Broken::WallClock) {
            builder = builder.clock(SlowWallClock::shared());
        }
        let lock = builder.build()?;
        let started = Instant::now();
        let attempt = if queued {
            lock.lock_timeout(lease).await
        } else {
            lock.try_lock_once().await
        };
        let guard = match attempt {
            Ok(g) => g,
            Err(Error::Busy { .. } | Error::TimedOut { .. }) => {
                tally(&mut report, Tally::Busy);
                continue;
            }
            // The store saw a fence go back (a failover that lost writes): it refuses the key
            // rather than hand out a fence that may repeat. Counted as an error; the worker
            // moves on.
            Err(Error::Store(e)) if e.kind() == StoreErrorKind::FenceRegressed => {
                tally(&mut report, Tally::Error);
                eprintln!("worker {proc}: {e}; moving on");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Err(e) if e.is_retryable() => {
                tally(&mut report, Tally::Error);
                eprintln!("worker {proc}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let us = started.elapsed().as_micros() as u64;
        tally(&mut report, Tally::Granted { us });
        let granted = guard.fence();
        let fence = granted.get();
        let loss = guard.loss_token();
        let watcher = history.clone().map(|h| {
            let (loss, key) = (loss.clone(), key.clone());
            tokio::spawn(async move {
                loss.cancelled().await;
                h.log(&h.event(&key, Op::Lost, Kind::Info).fence(fence));
            })
        });
        // Register this fence with the job and read its state only now that its lease is held:
        // a copy read before could be stale, and a holder this one superseded can no longer
        // complete the job from here on.
        let mut e = Event::now(proc, &key, Op::Write, Kind::Invoke).fence(fence);
        e.value = Some("claim".into());
        log(e.clone());
        let claim = jobs.claim(job, fence)?;
        e.t_ns = now_ns();
        e.kind = if claim == Claim::Stale {
            Kind::Fail
        } else {
            Kind::Ok
        };
        e.accepted = Some(claim != Claim::Stale);
        log(e);
        let mut proceed = match claim {
            Claim::Open => true,
            Claim::Done => {
                tally(&mut report, Tally::FoundDone);
                false
            }
            Claim::Stale => {
                tally(&mut report, Tally::Stale);
                false
            }
        };
        let mut lost = false;
        for _ in 0..steps {
            if !proceed {
                break;
            }
            // Stamped before the check: a cooperating worker enters only while `is_held`.
            let t = now_ns();
            if !guard.is_held() {
                lost = true;
                break;
            }
            log(Event::at(t, proc, &key, Op::CsEnter, Kind::Info).fence(fence));
            tokio::select! {
                () = guard.lost() => lost = true,
                () = tokio::time::sleep(work / steps) => {}
            }
            log(Event::now(proc, &key, Op::CsExit, Kind::Info).fence(fence));
            if lost {
                break;
            }
        }
        // A cooperating worker checks its lease right before the fenced write. In chaos mode it
        // does not, like a process paused between that check and the write: the job table's
        // fence check must reject the write if another holder has claimed the job since.
        if proceed && !chaos && (lost || !guard.is_held()) {
            proceed = false;
            tally(&mut report, Tally::GaveUp);
        }
        if proceed {
            let mut e = Event::now(proc, &key, Op::Write, Kind::Invoke).fence(fence);
            e.value = Some("done".into());
            log(e.clone());
            let w = jobs.complete(job, proc, fence)?;
            e.t_ns = now_ns();
            e.kind = if w == Write::Accepted {
                Kind::Ok
            } else {
                Kind::Fail
            };
            e.accepted = Some(w == Write::Accepted);
            log(e);
            tally(
                &mut report,
                match w {
                    Write::Accepted => Tally::Completed,
                    Write::Stale => Tally::Stale,
                },
            );
            if leak_per_job > 0 {
                // Written, so that the pages are resident; black-boxed, so that the allocation
                // stays.
                std::hint::black_box(Box::leak(vec![1u8; leak_per_job].into_boxed_slice()));
            }
        }
        if let Err(Error::Lost { .. }) = guard.release().await {
            if chaos {
                // A release that arrives late (delayed in the network, or sent by a process
                // that was stopped): the store must refuse it, the key is no longer ours.
                let _ = store.release(&key, &holder, granted).await;
            }
        }
        if loss.is_cancelled() {
            tally(&mut report, Tally::Lost);
        }
        // The loss signal can fire just after a release that found the lease already lost
        // (lease-core marks the lease lost a moment before it signals): keep watching until
        // the next job is done, so the history sees it.
        if let Some(w) = std::mem::replace(&mut last_watcher, watcher) {
            w.abort();
        }
    }
    if let Some(w) = last_watcher {
        let _ = tokio::time::timeout(Duration::from_millis(50), w).await;
    }
    log(Event::now(proc, "", Op::Exit, Kind::Info));
    println!("{}", serde_json::to_string(&report)?);
    Ok(true)
}

/// Opens the worker's store, retrying a transient error (a server restarting, a cluster between
/// leaders as a worker starts) until `until`, as the worker retries its lock calls.
///
/// # Errors
///
/// Any other error at once (a bad URL, a wrong password), or the last transient one at `until`.
async fn open_store(url: &str, proc: u64, until: Instant) -> anyhow::Result<DynStore> {
    loop {
        match leasehold::open(url).await {
            Ok(store) => return Ok(store),
            Err(leasehold::OpenError::Store(e))
                if e.kind() == StoreErrorKind::Transient && Instant::now() < until =>
            {
                eprintln!("worker {proc}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}
