//! `lease-run`: runs a command while holding a lease, in the spirit of `flock(1)` but for every
//! process that shares the store, on one host or many.
//!
//! ```sh
//! lease-run --store sqlite:///var/lib/app/locks.db --key nightly-report -- ./report.sh
//! lease-run --store redis://10.0.0.5:6379 --key backup --timeout 30s -- pg_dump …
//! ```
//!
//! The command gets the fence in `LEASE_FENCE` (and the key in `LEASE_KEY`) to pass along with
//! its writes. If the lease is lost while it runs, the command gets SIGTERM, then SIGKILL after
//! the grace period.
//!
//! Exit status: the command's own (128 + signal if it was killed by one), or
//! 75 the key is busy (without `--wait`/`--timeout`), 124 timed out waiting, 71 the lease was
//! lost while the command ran, 69 the store failed, 127 the command could not be started.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use lease_core::{CrossProcessLock, Error};
use lease_examples::redact;
use rustix::process::{Pid, Signal, kill_process};

/// The key is held by another holder and the call did not wait.
const EXIT_BUSY: u8 = 75;
/// `--timeout` passed before the key became free.
const EXIT_TIMED_OUT: u8 = 124;
/// The lease was lost while the command ran.
const EXIT_LOST: u8 = 71;
/// The store could not be opened or failed.
const EXIT_STORE: u8 = 69;
/// The command could not be started.
const EXIT_NO_COMMAND: u8 = 127;

#[derive(Parser)]
#[command(about = "Run a command while holding a lease on a key shared by many processes")]
struct Cli {
    /// The lock store: sqlite://PATH (or a plain path), redis://…, etcd://…
    #[arg(long)]
    store: String,
    /// The key to lease.
    #[arg(long)]
    key: String,
    /// Wait for the key as long as it takes.
    #[arg(long, conflicts_with = "timeout")]
    wait: bool,
    /// Wait at most this long for the key.
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// The lease; renewed while the command runs.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    lease: Duration,
    /// Time between SIGTERM and SIGKILL when the lease is lost.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => ExitCode::from(code),
        Err((code, msg)) => {
            eprintln!("lease-run: {msg}");
            ExitCode::from(code)
        }
    }
}

async fn run(cli: Cli) -> Result<u8, (u8, String)> {
    let store = leasehold::open(&cli.store).await.map_err(|e| {
        (
            EXIT_STORE,
            format!("cannot open {}: {e:#}", redact(&cli.store)),
        )
    })?;
    let lock = CrossProcessLock::builder(store, cli.key.clone())
        .lease(cli.lease)
        .holder_label("lease-run")
        .build()
        .map_err(|e| (2, e.to_string()))?;
    let acquired = match (cli.wait, cli.timeout) {
        (true, _) => lock.lock().await,
        (false, Some(t)) => lock.lock_timeout(t).await,
        (false, None) => lock.try_lock_once().await,
    };
    let guard = acquired.map_err(|e| match e {
        Error::Busy { .. } => (EXIT_BUSY, e.to_string()),
        Error::TimedOut { .. } => (EXIT_TIMED_OUT, e.to_string()),
        e => (EXIT_STORE, e.to_string()),
    })?;
    let mut child = tokio::process::Command::new(&cli.command[0])
        .args(&cli.command[1..])
        .env("LEASE_FENCE", guard.fence().to_string())
        .env("LEASE_KEY", &cli.key)
        .spawn()
        .map_err(|e| {
            (
                EXIT_NO_COMMAND,
                format!("cannot start `{}`: {e}", cli.command[0]),
            )
        })?;
    let pid = child.id().and_then(|p| Pid::from_raw(p as i32));
    let signal = |sig: Signal| {
        if let Some(pid) = pid {
            let _ = kill_process(pid, sig);
        }
    };
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| (EXIT_STORE, e.to_string()))?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| (EXIT_STORE, e.to_string()))?;
    let status = loop {
        tokio::select! {
            status = child.wait() => break Some(status),
            () = guard.lost() => break None,
            _ = interrupt.recv() => signal(Signal::INT),
            _ = terminate.recv() => signal(Signal::TERM),
        }
    };
    let Some(status) = status else {
        eprintln!(
            "lease-run: lease on `{}` lost; stopping the command (SIGTERM, SIGKILL after {})",
            cli.key,
            humantime::format_duration(cli.grace)
        );
        signal(Signal::TERM);
        if tokio::time::timeout(cli.grace, child.wait()).await.is_err() {
            signal(Signal::KILL);
            let _ = child.wait().await;
        }
        return Ok(EXIT_LOST);
    };
    let status = status.map_err(|e| (EXIT_STORE, format!("waiting for the command: {e}")))?;
    let lost = !guard.is_held();
    let _ = guard.release().await;
    if lost {
        return Err((
            EXIT_LOST,
            format!("lease on `{}` was lost as the command ended", cli.key),
        ));
    }
    use std::os::unix::process::ExitStatusExt;
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(sig)) => 128u8.saturating_add(u8::try_from(sig).unwrap_or(0)),
        (None, None) => 1,
    })
}
