//! Classifying [`tokio_postgres::Error`] into [`StoreError`].
//!
//! PostgreSQL's errors never carry the password (the server's "password authentication failed"
//! names the user only), and tokio-postgres's own say what kind of failure happened without the
//! connection string, so they are kept as the error's source.

use lease_core::{StoreError, StoreErrorKind};
use tokio_postgres::error::SqlState;

use crate::NAME;

/// Maps a failed call of `what` (e.g. "try_lock of `k`") into a classified error.
pub(crate) fn classify(what: &str, e: tokio_postgres::Error) -> StoreError {
    let (kind, why) = match e.code() {
        Some(code) => by_sqlstate(code),
        None => by_driver_kind(&e),
    };
    StoreError::new(kind, NAME, format!("{what}: {why}")).with_source(Cause::of(&e))
}

/// The driver's error with its causes, each said once: tokio-postgres's own `Display` names
/// only the kind of failure ("error connecting to server"), and the reason (a refused
/// connection, a timeout) is in its `source()`, which a `StoreError`'s message would not show.
#[derive(Debug)]
pub(crate) struct Cause {
    text: String,
    code: Option<SqlState>,
}

impl Cause {
    /// The SQLSTATE the server answered with, if it answered.
    pub(crate) fn code(&self) -> Option<&SqlState> {
        self.code.as_ref()
    }

    fn of(e: &tokio_postgres::Error) -> Cause {
        let mut text = e.to_string();
        let mut cause = std::error::Error::source(e);
        while let Some(c) = cause {
            let said = c.to_string();
            if !said.is_empty() && !text.contains(&said) {
                text.push_str(": ");
                text.push_str(&said);
            }
            cause = c.source();
        }
        Cause {
            text: one_line(&text),
            code: e.code().cloned(),
        }
    }
}

/// `text` on one line: a server error's `Display` puts its `DETAIL:` and `HINT:` on lines of
/// their own (and a detail may hold more), which would break a log line or a worker's status
/// line in two; they are joined with `; `.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for Cause {}

/// Errors the server sent, by their SQLSTATE.
fn by_sqlstate(code: &SqlState) -> (StoreErrorKind, String) {
    use StoreErrorKind::{Permanent, Transient};
    let class = &code.code()[..2];
    match class {
        // Connection exceptions; insufficient resources (too many connections, disk full, out
        // of memory); operator intervention (shutdown, cancel, our statement timeout's cancel
        // request); system errors (I/O): the server may recover.
        "08" | "53" | "57" | "58" => {
            let why = match code {
                c if *c == SqlState::QUERY_CANCELED => "the statement was cancelled (timed out)",
                c if *c == SqlState::TOO_MANY_CONNECTIONS => "the server has too many connections",
                c if *c == SqlState::ADMIN_SHUTDOWN
                    || *c == SqlState::CRASH_SHUTDOWN
                    || *c == SqlState::CANNOT_CONNECT_NOW =>
                {
                    "the server is shutting down or starting up"
                }
                _ => "the server is temporarily unavailable",
            };
            (Transient, why.to_owned())
        }
        // Serialization failures and deadlocks: retrying is the documented answer.
        "40" => (
            Transient,
            "a concurrent transaction conflicted; retry".to_owned(),
        ),
        // A standby (after a failover, or a read-only pooler target): another try may reach
        // the new primary.
        _ if *code == SqlState::READ_ONLY_SQL_TRANSACTION => (
            Transient,
            "the server is read-only (a standby?); the lock needs the primary".to_owned(),
        ),
        _ if *code == SqlState::LOCK_NOT_AVAILABLE => (
            Transient,
            "the key's row is locked by another session (lock_timeout)".to_owned(),
        ),
        "28" => (
            Permanent,
            "authentication failed: check the user and password".to_owned(),
        ),
        _ if *code == SqlState::INSUFFICIENT_PRIVILEGE => (
            Permanent,
            "permission denied: the user needs USAGE on the store's schema, SELECT, INSERT, \
             UPDATE on its tables (and DELETE on `waiters` for queued grants), and CREATE for \
             the first migration"
                .to_owned(),
        ),
        _ if *code == SqlState::INVALID_CATALOG_NAME => {
            (Permanent, "the database does not exist".to_owned())
        }
        _ if *code == SqlState::UNDEFINED_TABLE || *code == SqlState::INVALID_SCHEMA_NAME => (
            Permanent,
            "the store's tables are gone (was the schema dropped while in use?)".to_owned(),
        ),
        _ => (
            Permanent,
            format!(
                "PostgreSQL refused the statement (SQLSTATE {})",
                code.code()
            ),
        ),
    }
}

/// Errors of the driver itself. tokio-postgres does not expose its error kinds, only their
/// fixed `Display` texts, so those are matched here.
fn by_driver_kind(e: &tokio_postgres::Error) -> (StoreErrorKind, String) {
    use StoreErrorKind::{InvalidInput, Permanent, Transient};
    let text = e.to_string();
    if e.is_closed() {
        return (Transient, "the connection was closed".to_owned());
    }
    let chain = std::iter::successors(
        std::error::Error::source(e),
        |s: &&dyn std::error::Error| s.source(),
    )
    .map(ToString::to_string)
    .collect::<Vec<_>>()
    .join(": ");
    if text.starts_with("error performing TLS handshake") {
        if chain.contains("certificate") || chain.contains("Certificate") {
            return (
                Permanent,
                "the server's TLS certificate was refused (give its CA with `sslrootcert`)"
                    .to_owned(),
            );
        }
        if chain.contains("server does not support TLS") {
            return (
                Permanent,
                "the server does not offer TLS, and the URL requires it".to_owned(),
            );
        }
        return (Transient, "the TLS handshake failed".to_owned());
    }
    if text.starts_with("authentication error") {
        return (
            Permanent,
            "authentication failed: the server asked for a password the URL does not give, or \
             for a method the client does not support"
                .to_owned(),
        );
    }
    if text.starts_with("invalid configuration") || text.starts_with("invalid connection string") {
        return (InvalidInput, "invalid connection settings".to_owned());
    }
    if text.starts_with("timeout waiting for server") {
        return (Transient, "timed out connecting".to_owned());
    }
    if text.starts_with("error connecting to server") {
        return (Transient, "cannot connect to the server".to_owned());
    }
    if text.starts_with("error communicating with the server") {
        return (Transient, "the connection failed".to_owned());
    }
    (Permanent, "unexpected answer from the server".to_owned())
}

/// A call that did not finish within the statement timeout.
pub(crate) fn timed_out(what: &str, after: std::time::Duration) -> StoreError {
    StoreError::transient(
        NAME,
        format!("{what}: no answer within the statement timeout ({after:?}); cancelled"),
    )
}

/// An answer of an unexpected shape (another program changed the store's tables).
pub(crate) fn bad_answer(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::permanent(
        NAME,
        format!(
            "{what}: unexpected answer ({detail}); are other programs writing to the store's \
             tables?"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn a_server_error_with_detail_and_hint_is_one_line() {
        let said = "db error: ERROR: could not obtain lock on row in relation \"leases\"\n\
                    DETAIL: Key (key)=(job/1) is locked.\n  \nHINT: Retry later.";
        assert_eq!(
            one_line(said),
            "db error: ERROR: could not obtain lock on row in relation \"leases\"; \
             DETAIL: Key (key)=(job/1) is locked.; HINT: Retry later."
        );
        assert_eq!(
            one_line("error connecting to server"),
            "error connecting to server"
        );
    }
}
