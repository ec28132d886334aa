//! `lease-run`: runs a command while holding a lease, in the spirit of `flock(1)` but for every
//! process that shares the store, on one host or many. See `lease-run --help` (or
//! `man ./lease-run.1`) for the options, the exit codes and the exported variables.
//!
//! The promise: the command, and every process of its group, runs only while the lease is held.
//! It is stopped (SIGTERM, then SIGKILL after the grace period) when the lease is lost, before
//! the lease can lapse in the store; it dies with `lease-run` even when `lease-run` is killed by
//! SIGKILL; and the key is released on every exit path, also when the command cannot start.

mod cli;
mod group;
mod notes;
mod ops;

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use cli::{Action, Cli, RunArgs, StoreArgs, exit};
use group::Group;
use leasehold::{CrossProcessLock, DynStore, Error, LeaseStore, LockGuard, StoreErrorKind};
use rustix::process::Signal;
use tokio::signal::unix::signal;
use tracing::{info, warn};

/// Time kept between SIGKILL of the group and the earliest moment the store could grant the key
/// to another holder: SIGKILL is delivered asynchronously.
const KILL_SLACK: Duration = Duration::from_millis(250);
/// The longest default grace period.
const MAX_DEFAULT_GRACE: Duration = Duration::from_secs(5);
/// How long lease-run waits, before it exits, for the store calls its lock still has in flight.
const SETTLE: Duration = Duration::from_secs(5);

/// A failure: the exit code and the message (printed once, prefixed with `lease-run: `).
pub(crate) struct Failure(pub(crate) u8, pub(crate) String);

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == group::GUARD_ARG) {
        return group::guard_main(args);
    }
    let cli = Cli::parse_from(args);
    // One thread: the command's guard process is forked from this (main) thread, which lives as
    // long as lease-run, so its parent-death signal fires only when lease-run dies.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lease-run: cannot start the runtime: {e}");
            return ExitCode::from(group::EXIT_INTERNAL);
        }
    };
    let result = match cli.action {
        Some(Action::Man) => man(),
        Some(Action::Status(a)) => rt.block_on(ops::status(a)),
        Some(Action::Break(a)) => rt.block_on(ops::break_key(a)),
        None => {
            init_logging(cli.run.verbose);
            rt.block_on(run(cli.run))
        }
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(Failure(code, msg)) => {
            if !msg.is_empty() {
                eprintln!("lease-run: {msg}");
            }
            ExitCode::from(code)
        }
    }
}

fn man() -> Result<u8, Failure> {
    use std::io::Write as _;
    let page = cli::man_page().map_err(|e| Failure(group::EXIT_INTERNAL, e.to_string()))?;
    std::io::stdout()
        .write_all(&page)
        .map_err(|e| Failure(group::EXIT_INTERNAL, e.to_string()))?;
    Ok(0)
}

/// `-v` → info, `-vv` → debug, `-vvv` → trace, for lease-run and the lock; `RUST_LOG` overrides.
fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "warn,lease_run={level},lease_core={level},lease_sqlite={level},\
             lease_redis={level},lease_etcd={level}"
        ))
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// The lease's timing, checked so that a lost lease's command is dead before the store can grant
/// the key to anyone else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Timing {
    lease: Duration,
    margin: Duration,
    grace: Duration,
}

impl Timing {
    /// `Err` for settings that cannot keep the promise; `Ok((timing, note))`, with a note when
    /// the margin was raised to fit the grace period.
    fn new(
        lease: Duration,
        margin: Option<Duration>,
        grace: Option<Duration>,
    ) -> Result<(Timing, Option<String>), String> {
        let show = |d: Duration| humantime::format_duration(d).to_string();
        let fit = |m: Duration| m.saturating_sub(KILL_SLACK).min(MAX_DEFAULT_GRACE);
        let (margin, grace, note) = match (margin, grace) {
            (Some(m), Some(g)) => {
                if g + KILL_SLACK > m {
                    return Err(format!(
                        "--grace {} does not fit in --margin {}: the command must be killed {} \
                         before the lease can lapse in the store; lower --grace or raise --margin",
                        show(g),
                        show(m),
                        show(KILL_SLACK)
                    ));
                }
                (m, g, None)
            }
            (Some(m), None) => (m, fit(m), None),
            (None, Some(g)) => {
                let default = lease / 10;
                let needed = g + KILL_SLACK;
                if needed > default {
                    let note = format!(
                        "--grace {}: the lease counts as lost {} before its end (not {}), so \
                         that the command is stopped before the store can grant the key to \
                         another holder",
                        show(g),
                        show(needed),
                        show(default)
                    );
                    (needed, g, Some(note))
                } else {
                    (default, g, None)
                }
            }
            (None, None) => {
                let m = lease / 10;
                (m, fit(m), None)
            }
        };
        if margin * 2 > lease {
            return Err(format!(
                "a safety margin of {} leaves less than half of the lease {} to renew in; use \
                 --lease {} or more, or a shorter --grace",
                show(margin),
                show(lease),
                show(margin * 2)
            ));
        }
        if grace.is_zero() && margin <= KILL_SLACK {
            return Err(format!(
                "the lease {} is too short to stop the command before it can lapse in the store \
                 (the margin must exceed {}); use --lease 3s or more",
                show(lease),
                show(KILL_SLACK)
            ));
        }
        Ok((
            Timing {
                lease,
                margin,
                grace,
            },
            note,
        ))
    }
}

pub(crate) fn store_url(args: &StoreArgs) -> Result<String, Failure> {
    let usage = |m: String| Failure(exit::USAGE, m);
    if let Some(url) = &args.store {
        return Ok(url.trim().to_owned());
    }
    let Some(path) = &args.store_file else {
        return Err(usage(
            "no store: give --store URL, set LEASE_STORE, or --store-file PATH".into(),
        ));
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| usage(format!("cannot read --store-file {}: {e}", path.display())))?;
    let url = text.lines().next().unwrap_or("").trim().to_owned();
    if url.is_empty() {
        return Err(usage(format!(
            "--store-file {} has no URL on its first line",
            path.display()
        )));
    }
    Ok(url)
}

/// Why the store could not be opened, said once: every [`leasehold::OpenError`] names the URL
/// (redacted) or the store and where it was looking, so lease-run adds nothing but the context.
pub(crate) fn open_failed(e: &leasehold::OpenError) -> String {
    match e {
        // lease-run's features carry the same names as leasehold's.
        leasehold::OpenError::NotBuilt { feature, .. } => format!(
            "cannot open the store: {e} (for lease-run: cargo install lease-run --features \
             {feature})"
        ),
        e => format!("cannot open the store: {e}"),
    }
}

/// How long to wait for the key.
#[derive(Debug, Clone, Copy)]
enum Wait {
    /// One attempt.
    Once,
    /// Until then, through store outages.
    Until(Instant),
    /// As long as it takes, through store outages.
    Forever,
}

impl Wait {
    /// Whether a retry after `pause` still starts in time.
    fn allows(self, pause: Duration) -> bool {
        match self {
            Wait::Once => false,
            Wait::Until(d) => Instant::now() + pause < d,
            Wait::Forever => true,
        }
    }
}

/// Retries `op` on transient store errors while `wait` allows.
async fn retrying<T, E, F, Fut>(
    wait: Wait,
    what: &str,
    transient: impl Fn(&E) -> bool,
    mut op: F,
) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut pause = Duration::from_millis(100);
    loop {
        match op().await {
            Err(e) if transient(&e) && wait.allows(pause) => {
                warn!(error = %e, "{what} failed; retrying in {}", humantime::format_duration(pause));
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

async fn run(args: RunArgs) -> Result<u8, Failure> {
    let url = store_url(&args.store)?;
    let key = args.key.clone().unwrap_or_default();
    let (timing, note) =
        Timing::new(args.lease, args.margin, args.grace).map_err(|m| Failure(exit::USAGE, m))?;
    if let Some(note) = note
        && !args.quiet
    {
        eprintln!("lease-run: note: {note}");
    }
    // Forwarded signals are handled from the start: one that arrives while we wait for the key
    // ends the wait cleanly instead of killing lease-run with a grant in flight.
    let mut signals = Vec::new();
    for (kind, sig, name) in group::FORWARDED {
        let stream =
            signal(kind).map_err(|e| Failure(group::EXIT_INTERNAL, format!("{name}: {e}")))?;
        signals.push((stream, sig, name));
    }
    let started = Instant::now();
    let wait = match (args.wait, args.timeout) {
        (true, _) => Wait::Forever,
        (false, Some(t)) => Wait::Until(started + t),
        (false, None) => Wait::Once,
    };
    let store = tokio::select! {
        s = retrying(wait, "opening the store", |e: &leasehold::OpenError| {
            matches!(e, leasehold::OpenError::Store(s) if s.kind() == StoreErrorKind::Transient)
        }, || leasehold::open(&url)) => s.map_err(|e| Failure(exit::STORE, open_failed(&e)))?,
        (sig, _) = next_signal(&mut signals) => return Ok(128 + sig),
    };
    notes::refuse_unsafe(&store)?;
    let caps = store.capabilities();
    let granted = caps.effective_lease(timing.lease);
    if granted != timing.lease && !args.quiet {
        eprintln!(
            "lease-run: note: the {} store grants a lease of {} for --lease {}: if lease-run dies, \
             the key frees after that long",
            caps.name,
            humantime::format_duration(granted),
            humantime::format_duration(timing.lease)
        );
    }
    if !args.quiet
        && let Some(note) = notes::durability(&store).await
    {
        eprintln!("lease-run: note: {note}");
    }
    let lock = CrossProcessLock::builder(store, key.clone())
        .lease(timing.lease)
        .safety_margin(timing.margin)
        .renew_every((timing.lease - timing.margin) / 3)
        .holder_label("lease-run")
        .build()
        .map_err(|e| Failure(exit::USAGE, e.to_string()))?;
    let result = run_locked(&args, &lock, wait, timing, &mut signals).await;
    // Whatever ended the run, the store calls the lock sent in tasks of their own (a queue
    // exit after a wait that gave up, the release of a grant that raced in) must land before
    // the runtime goes with lease-run: a queue entry left behind could be granted the key
    // after lease-run is gone, and the key would then stay held for a whole lease.
    if !lock.settle(SETTLE).await {
        warn!(key = %key, "a release or queue exit did not land in time; it lapses by itself");
    }
    result
}

/// Takes the lease and runs the command under it.
async fn run_locked(
    args: &RunArgs,
    lock: &CrossProcessLock<DynStore>,
    wait: Wait,
    timing: Timing,
    signals: &mut [(tokio::signal::unix::Signal, Signal, &'static str)],
) -> Result<u8, Failure> {
    let key = lock.key();
    let acquired = tokio::select! {
        g = acquire(lock, wait, args.quiet, args.conflict_exit_code) => g,
        (sig, _) = next_signal(signals) => return Ok(128 + sig),
    };
    let guard = match acquired {
        Ok(g) => g,
        Err(Failure(code, msg)) if code == args.conflict_exit_code && !msg.is_empty() => {
            // Name the holder, if the store can say.
            let msg = match ops::holder_of(lock.store(), key).await {
                Some(holder) => format!("`{key}` is busy: {holder}"),
                None => msg,
            };
            return Err(Failure(code, msg));
        }
        Err(f) => return Err(f),
    };
    info!(key = %key, fence = guard.fence().get(), "lease acquired");
    let outcome = supervise(args, key, &guard, timing, signals).await;
    let lost = !guard.is_held();
    match guard.release().await {
        Ok(()) => info!(key = %key, "lease released"),
        Err(e) => warn!(key = %key, error = %e, "release failed; the lease lapses at its end"),
    }
    match outcome {
        Outcome::Exited(code) if lost => Err(Failure(
            exit::LOST,
            format!("the lease on `{key}` was lost as the command ended (it exited {code})"),
        )),
        Outcome::Exited(code) => Ok(code),
        Outcome::Lost => Err(Failure(exit::LOST, String::new())),
        Outcome::Failed(msg) => Err(Failure(group::EXIT_INTERNAL, msg)),
    }
}

/// Takes the lease: once, or waiting until `deadline` through store errors.
async fn acquire(
    lock: &CrossProcessLock<DynStore>,
    wait: Wait,
    quiet: bool,
    busy_code: u8,
) -> Result<LockGuard<DynStore>, Failure> {
    let attempt = retrying(
        wait,
        "taking the lease",
        |e: &Error| matches!(e, Error::Store(s) if s.kind() == StoreErrorKind::Transient),
        || async {
            match wait {
                Wait::Once => lock.try_lock_once().await,
                Wait::Until(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    lock.lock_timeout(left).await
                }
                Wait::Forever => lock.lock().await,
            }
        },
    )
    .await;
    attempt.map_err(|e| {
        let quiet_msg = |m: String| if quiet { String::new() } else { m };
        match e {
            Error::Busy { .. } => Failure(busy_code, quiet_msg(e.to_string())),
            Error::TimedOut { .. } => Failure(exit::TIMED_OUT, quiet_msg(e.to_string())),
            e => Failure(exit::STORE, e.to_string()),
        }
    })
}

/// How the command's run ended.
enum Outcome {
    /// The command exited (the code as a shell reports it); its group is gone.
    Exited(u8),
    /// The lease was lost; the group was stopped.
    Lost,
    /// The command could not be supervised.
    Failed(String),
}

/// The next forwarded signal: its number and the signal.
async fn next_signal(
    signals: &mut [(tokio::signal::unix::Signal, Signal, &'static str)],
) -> (u8, Signal) {
    std::future::poll_fn(|cx| {
        for (stream, sig, _) in signals.iter_mut() {
            if stream.poll_recv(cx).is_ready() {
                let n = u8::try_from(sig.as_raw()).unwrap_or(0);
                return std::task::Poll::Ready((n, *sig));
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Runs the command under the lease until it exits or the lease is lost.
async fn supervise(
    args: &RunArgs,
    key: &str,
    guard: &LockGuard<DynStore>,
    timing: Timing,
    signals: &mut [(tokio::signal::unix::Signal, Signal, &'static str)],
) -> Outcome {
    let command = args.command();
    let env = [
        ("LEASE_FENCE", guard.fence().get().to_string()),
        ("LEASE_KEY", key.to_owned()),
    ];
    let mut group = match Group::start(&command, &env) {
        Ok(g) => g,
        Err(e) => return Outcome::Failed(format!("cannot start the command's guard: {e}")),
    };
    info!(
        pgid = group.pgid().as_raw_nonzero().get(),
        "command started"
    );
    let mut kill_at: Option<tokio::time::Instant> = None;
    let exited = loop {
        let escalate = async {
            match kill_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = guard.lost() => break None,
            code = group.wait() => break Some(code),
            (_, sig) = next_signal(signals) => {
                group.signal(sig);
                if sig == Signal::TERM && kill_at.is_none() {
                    kill_at = Some(tokio::time::Instant::now() + timing.grace);
                }
            }
            () = escalate => {
                info!("the command outlived --grace after SIGTERM; SIGKILL");
                group.signal(Signal::KILL);
                kill_at = None;
            }
        }
    };
    match exited {
        None => {
            eprintln!(
                "lease-run: the lease on `{key}` was lost; stopping the command (SIGTERM, SIGKILL \
                 after {})",
                humantime::format_duration(timing.grace)
            );
            if !group.stop(timing.grace).await {
                warn!("processes of the command's group are still alive after SIGKILL");
            }
            Outcome::Lost
        }
        Some(Err(e)) => {
            group.kill_and_wait().await;
            Outcome::Failed(format!("waiting for the command: {e}"))
        }
        Some(Ok(code)) => {
            // The command is done; nothing it started may run on without the lease.
            if group::group_alive(group.pgid()) {
                info!("stopping what the command left running in its group");
                group.stop(timing.grace).await;
            }
            Outcome::Exited(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn the_default_grace_fits_in_the_default_margin() {
        let (t, note) = Timing::new(secs(10.0), None, None).unwrap();
        assert_eq!(t.margin, secs(1.0));
        assert_eq!(t.grace, secs(0.75));
        assert!(note.is_none());
        let (t, _) = Timing::new(secs(120.0), None, None).unwrap();
        assert_eq!((t.margin, t.grace), (secs(12.0), secs(5.0)));
    }

    #[test]
    fn a_long_grace_raises_the_margin_and_says_so() {
        let (t, note) = Timing::new(secs(30.0), None, Some(secs(5.0))).unwrap();
        assert_eq!(t.margin, secs(5.25));
        assert!(t.grace + KILL_SLACK <= t.margin);
        assert!(
            note.unwrap()
                .contains("counts as lost 5s 250ms before its end")
        );
    }

    #[test]
    fn settings_that_cannot_keep_the_promise_are_refused() {
        let e = Timing::new(secs(10.0), Some(secs(1.0)), Some(secs(5.0))).unwrap_err();
        assert!(e.contains("does not fit in --margin"), "{e}");
        let e = Timing::new(secs(10.0), None, Some(secs(5.0))).unwrap_err();
        assert!(e.contains("less than half of the lease"), "{e}");
        let e = Timing::new(secs(2.0), None, None).unwrap_err();
        assert!(e.contains("too short"), "{e}");
    }
}
