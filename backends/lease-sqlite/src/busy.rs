//! Retrying what a busy database refused: one budget, jittered sleeps between attempts, and one
//! transient error naming the database once the budget is spent.
//!
//! SQLite's own busy handler is kept short (see `open_blocking`), so the waiting happens here.

use std::path::Path;
use std::time::{Duration, Instant};

use lease_core::StoreError;
use rand::Rng;
use rusqlite::ErrorCode;

use crate::NAME;

/// Whether SQLite refused because another connection holds a lock (the database's write lock,
/// or a table's): an attempt that a later one may get past.
pub(crate) fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// An attempt's error that may be a busy database.
pub(crate) trait Busy: Sized {
    /// The SQLite error if the database was busy; otherwise the error itself, back.
    fn into_busy(self) -> Result<rusqlite::Error, Self>;
}

impl Busy for rusqlite::Error {
    fn into_busy(self) -> Result<rusqlite::Error, Self> {
        if is_busy(&self) { Ok(self) } else { Err(self) }
    }
}

/// How long busy attempts are retried, counted from [`Budget::start`]: one budget can span
/// several [`retry_busy`] calls that make up one operation (opening sets the connection up,
/// then migrates the schema, within one budget).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    started: Instant,
    limit: Duration,
}

impl Budget {
    /// A budget of `limit`, starting now.
    pub(crate) fn start(limit: Duration) -> Self {
        Self {
            started: Instant::now(),
            limit,
        }
    }
}

/// Runs `attempt` until it succeeds, fails with an error that is not busy, or fails busy after
/// the budget is spent; sleeps 1–5 ms (jittered) between attempts.
///
/// An error that is not busy is returned at once, as `fail` makes it. A busy one after the
/// budget is a transient error saying that the database `db` stayed locked for the budget, with
/// SQLite's error as its source. The budget is checked after each attempt, so there is always
/// at least one.
///
/// `attempt` should hold the store's connection only while it runs: the sleeps happen between
/// calls, so that other calls on the same store take their own attempts meanwhile.
pub(crate) fn retry_busy<T, E: Busy>(
    db: &Path,
    budget: Budget,
    mut attempt: impl FnMut() -> Result<T, E>,
    fail: impl FnOnce(E) -> StoreError,
) -> Result<T, StoreError> {
    loop {
        let busy = match attempt().map_err(Busy::into_busy) {
            Ok(out) => return Ok(out),
            Err(Ok(busy)) => busy,
            Err(Err(other)) => return Err(fail(other)),
        };
        if budget.started.elapsed() >= budget.limit {
            return Err(StoreError::transient(
                NAME,
                format!(
                    "database {} stayed locked for {:?}",
                    db.display(),
                    budget.limit
                ),
            )
            .with_source(busy));
        }
        // Jittered, so that contending processes do not retry in lock-step and one of them
        // cannot starve the others.
        std::thread::sleep(Duration::from_millis(rand::rng().random_range(1..=5)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lease_core::StoreErrorKind;
    use rusqlite::ffi;

    fn sqlite_error(code: std::ffi::c_int) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(ffi::Error::new(code), None)
    }

    fn never_fails(e: rusqlite::Error) -> StoreError {
        panic!("a busy error was not retried: {e}")
    }

    #[test]
    fn busy_and_locked_are_retried_until_the_budget_then_transient() {
        let limit = Duration::from_millis(30);
        let db = Path::new("/var/lib/app/locks.db");
        let started = Instant::now();
        let mut attempts = 0;
        let err = retry_busy(
            db,
            Budget::start(limit),
            || -> Result<(), _> {
                attempts += 1;
                // Both kinds of lock count as busy.
                Err(sqlite_error(if attempts % 2 == 0 {
                    ffi::SQLITE_BUSY
                } else {
                    ffi::SQLITE_LOCKED
                }))
            },
            never_fails,
        )
        .expect_err("busy throughout");
        assert!(
            started.elapsed() >= limit,
            "it retried for the whole budget"
        );
        assert!(attempts > 1, "{attempts} attempts");
        assert_eq!(err.kind(), StoreErrorKind::Transient, "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("database /var/lib/app/locks.db stayed locked for 30ms"),
            "{msg}"
        );
        let source = std::error::Error::source(&err).expect("SQLite's error as the source");
        let source = source.downcast_ref::<rusqlite::Error>().expect("rusqlite");
        assert!(is_busy(source), "{source}");
    }

    #[test]
    fn a_spent_budget_still_makes_one_attempt() {
        let mut attempts = 0;
        let out = retry_busy(
            Path::new("locks.db"),
            Budget::start(Duration::ZERO),
            || {
                attempts += 1;
                Ok::<_, rusqlite::Error>(attempts)
            },
            never_fails,
        );
        assert_eq!(out.expect("success"), 1);

        let err = retry_busy(
            Path::new("locks.db"),
            Budget::start(Duration::ZERO),
            || -> Result<(), _> { Err(sqlite_error(ffi::SQLITE_BUSY)) },
            never_fails,
        )
        .expect_err("busy");
        assert_eq!(err.kind(), StoreErrorKind::Transient, "{err}");
    }

    #[test]
    fn other_errors_are_returned_at_once_as_fail_makes_them() {
        let mut attempts = 0;
        let err = retry_busy(
            Path::new("locks.db"),
            Budget::start(Duration::from_secs(60)),
            || -> Result<(), _> {
                attempts += 1;
                Err(sqlite_error(ffi::SQLITE_CORRUPT))
            },
            |e| {
                assert_eq!(e.sqlite_error_code(), Some(ErrorCode::DatabaseCorrupt));
                StoreError::permanent(NAME, "corrupted")
            },
        )
        .expect_err("corrupt");
        assert_eq!(attempts, 1, "not retried");
        assert_eq!(err.kind(), StoreErrorKind::Permanent, "{err}");
        assert!(err.to_string().contains("corrupted"), "{err}");
    }

    #[test]
    fn success_after_busy_attempts_is_returned() {
        let mut attempts = 0;
        let out = retry_busy(
            Path::new("locks.db"),
            Budget::start(Duration::from_secs(60)),
            || {
                attempts += 1;
                if attempts < 3 {
                    Err(sqlite_error(ffi::SQLITE_BUSY))
                } else {
                    Ok("done")
                }
            },
            never_fails,
        );
        assert_eq!(out.expect("success"), "done");
        assert_eq!(attempts, 3);
    }
}
