//! The command line, defined once: `--help`, the man page (`lease-run man`) and the parser all
//! come from it.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Exit codes of `lease-run` itself (the command's own status passes through otherwise).
pub(crate) mod exit {
    /// The key is held by another holder (change with `-E`).
    pub(crate) const BUSY: u8 = 75;
    /// `--timeout` passed before the key became free.
    pub(crate) const TIMED_OUT: u8 = 124;
    /// The lease was lost while the command ran; the command was stopped.
    pub(crate) const LOST: u8 = 71;
    /// The store could not be opened or failed.
    pub(crate) const STORE: u8 = 69;
    /// Bad arguments or settings.
    pub(crate) const USAGE: u8 = 2;
}

const AFTER_HELP: &str = "\
Examples:
  lease-run --store sqlite:///var/lib/app/locks.db --key nightly-report -- ./report.sh
  lease-run status --store sqlite:///var/lib/app/locks.db --key nightly-report
  lease-run break --store sqlite:///var/lib/app/locks.db --key nightly-report --force
  lease-run --store redis://10.0.0.5:6379 --key backup -w 30 -- pg_dump -f /backup/db.sql app
  LEASE_STORE=etcd://10.0.0.7:2379 lease-run -k deploy --wait -c 'make deploy'

In a crontab (-q: no mail when the previous run still holds the key):
  */5 * * * * lease-run -q --store-file /etc/lease-run/store --key sync -- /usr/local/bin/sync.sh

In a systemd unit:
  [Service]
  Environment=LEASE_STORE=redis://locks.internal:6379
  ExecStart=/usr/local/bin/lease-run --key reindex --wait -- /usr/local/bin/reindex

Exit status:
  the command's own      it ran; 128 + N when it was killed by signal N
  75 (-E N to change)    the key is busy: another holder has it (without --wait / --timeout)
  124                    --timeout passed before the key became free
  71                     the lease was lost while the command ran; the command was stopped
  69                     the store could not be opened or failed
  126                    the command exists but cannot be run
  127                    the command was not found
  2                      bad arguments or settings

The command runs with:
  LEASE_FENCE            the lease's fencing token: pass it with every write, so that the
                         resource rejects writes of an older holder
  LEASE_KEY              the key

The command runs in its own process group. When the lease is lost, the whole group gets SIGTERM,
then SIGKILL after --grace, before the lease can lapse in the store. SIGHUP, SIGINT, SIGQUIT,
SIGTERM, SIGUSR1 and SIGUSR2 sent to lease-run are forwarded to the group (SIGTERM is followed by
SIGKILL after --grace). If lease-run itself dies (even by SIGKILL), the group is SIGKILLed. When
the command exits, what is left of its group is stopped the same way before the key is released.
A process that leaves the group (setsid, a daemon) is beyond lease-run's reach.

The store URL can come from --store, the LEASE_STORE variable or --store-file, so that passwords
stay out of crontabs and `ps`.";

/// Run a command while holding a lease on a key shared by many processes, on one host or many.
#[derive(Debug, Parser)]
#[command(
    name = "lease-run",
    version,
    after_help = AFTER_HELP,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) action: Option<Action>,
    #[command(flatten)]
    pub(crate) run: RunArgs,
}

/// What `lease-run` does besides running a command.
#[derive(Debug, Subcommand)]
pub(crate) enum Action {
    /// Show who holds a key (holder, fence, time left) or that it is free.
    Status(StatusArgs),
    /// Take a stuck key away from its holder: frees it and raises its fence, so the old holder's
    /// fenced writes are rejected and its next renewal fails.
    Break(BreakArgs),
    /// Print the man page (roff) to stdout.
    Man,
}

/// `lease-run status`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// The key.
    #[arg(short, long)]
    pub(crate) key: String,
    /// One JSON object on stdout: key, held, holder, fence, remaining_ms.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `lease-run break`.
#[derive(Debug, Args)]
pub(crate) struct BreakArgs {
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// The key.
    #[arg(short, long)]
    pub(crate) key: String,
    /// Confirm: the holder loses the key (its command is stopped at its next renewal).
    #[arg(long)]
    pub(crate) force: bool,
}

/// Where the store's URL comes from.
#[derive(Debug, Args)]
pub(crate) struct StoreArgs {
    /// The lock store: sqlite://PATH (or a plain path), redis://HOST:PORT, etcd://HOST:PORT…
    #[arg(long, env = "LEASE_STORE", hide_env_values = true, value_name = "URL")]
    pub(crate) store: Option<String>,
    /// Read the store URL from this file (first line), to keep passwords out of crontabs and ps.
    #[arg(long, value_name = "PATH", conflicts_with = "store")]
    pub(crate) store_file: Option<PathBuf>,
}

/// Running a command under the lease.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// The key to lease.
    #[arg(short, long, required = true)]
    pub(crate) key: Option<String>,
    /// Fail at once when the key is busy (the default; as flock -n).
    #[arg(short, long, conflicts_with_all = ["wait", "timeout"])]
    pub(crate) nonblock: bool,
    /// Wait for the key as long as it takes, through store outages.
    #[arg(long, conflicts_with = "timeout")]
    pub(crate) wait: bool,
    /// Wait at most this long for the key (seconds, or a duration such as 90s, 5m).
    #[arg(short = 'w', long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) timeout: Option<Duration>,
    /// The lease, renewed while the command runs.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) lease: Duration,
    /// How long the command may take to stop after SIGTERM before SIGKILL. Default: what fits in
    /// the safety margin (at most 5 s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) grace: Option<Duration>,
    /// How long before its end the lease counts as lost (default: a tenth of the lease, raised
    /// to fit --grace). The command is stopped within it.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) margin: Option<Duration>,
    /// The exit status when the key is busy.
    #[arg(short = 'E', long, value_name = "N", default_value_t = exit::BUSY)]
    pub(crate) conflict_exit_code: u8,
    /// Say nothing when the key is busy or the wait timed out, and print no notes.
    #[arg(short, long)]
    pub(crate) quiet: bool,
    /// Log the acquire, a loss and the release on stderr; -vv also every renewal, -vvv all
    /// (RUST_LOG overrides).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    /// Run this shell command (with sh -c) instead of PROGRAM ARGS.
    #[arg(
        short = 'c',
        long = "command",
        value_name = "SHELL_COMMAND",
        conflicts_with = "program"
    )]
    pub(crate) shell: Option<String>,
    /// The command and its arguments.
    #[arg(last = true, value_name = "PROGRAM", required_unless_present = "shell")]
    pub(crate) program: Vec<OsString>,
}

impl RunArgs {
    /// The command to run: `sh -c …` or the program and its arguments.
    pub(crate) fn command(&self) -> Vec<OsString> {
        match &self.shell {
            Some(s) => vec!["sh".into(), "-c".into(), s.into()],
            None => self.program.clone(),
        }
    }
}

/// Bare seconds (`30`, `1.5`) or a humantime duration (`30s`, `5m`, `1h 30m`).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("`{s}` is not a duration of zero or more seconds"));
    }
    humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e} (write 30, 30s, 5m or 1h)"))
}

/// The man page, from the same definition as `--help`.
pub(crate) fn man_page() -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_bare_seconds_or_humantime() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("-1").unwrap_err().contains("zero or more"));
        assert!(parse_duration("soon").unwrap_err().contains("write 30"));
    }

    #[test]
    fn the_definition_is_consistent() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }

    /// The man page in the tree is the one the definition renders (regenerate with
    /// `cargo run -p lease-run -- man > lease-run/lease-run.1`).
    #[test]
    fn the_checked_in_man_page_matches_the_definition() {
        let rendered = man_page().unwrap();
        let checked_in =
            std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/lease-run.1")).unwrap();
        assert!(
            rendered == checked_in,
            "lease-run.1 is stale: cargo run -p lease-run -- man > lease-run/lease-run.1"
        );
    }
}
