//! Classifying [`redis::RedisError`] into [`StoreError`].
//!
//! Redis errors never carry the password (the client redacts it, and the server's `WRONGPASS`
//! reply does not echo it), so they are kept as the error's source.

use lease_core::{StoreError, StoreErrorKind};
use redis::{ErrorKind, RedisError, ServerErrorKind};

use crate::NAME;

/// Maps a failed Redis call of `what` (e.g. "try_lock of `k`") into a classified error.
pub(crate) fn classify(what: &str, e: RedisError) -> StoreError {
    let (kind, message) = match e.kind() {
        ErrorKind::AuthenticationFailed => (
            StoreErrorKind::Permanent,
            format!("{what}: authentication failed: check the user and password"),
        ),
        ErrorKind::Server(ServerErrorKind::NoPerm) => (
            StoreErrorKind::Permanent,
            format!(
                "{what}: the Redis ACL user lacks a permission (it needs the lock keys \
                 `~<prefix>*`, the channel `&<prefix>*` and the commands EVAL, EVALSHA, \
                 SCRIPT LOAD, SUBSCRIBE, PING)"
            ),
        ),
        ErrorKind::InvalidClientConfig => (
            StoreErrorKind::InvalidInput,
            format!("{what}: invalid client configuration"),
        ),
        ErrorKind::Io
        | ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ReadOnly
            | ServerErrorKind::Moved
            | ServerErrorKind::Ask,
        ) => {
            let why = if e.is_timeout() {
                "timed out"
            } else if e.is_connection_refusal() {
                "connection refused"
            } else if e.is_connection_dropped() {
                "connection lost"
            } else {
                "temporarily unavailable"
            };
            (StoreErrorKind::Transient, format!("{what}: {why}"))
        }
        _ => match e.code() {
            Some("NOAUTH" | "WRONGPASS") => (
                StoreErrorKind::Permanent,
                format!("{what}: authentication failed: check the user and password"),
            ),
            // Out of memory, or a script killed: the server may recover.
            Some("OOM" | "BUSY" | "UNKILLABLE") => {
                (StoreErrorKind::Transient, format!("{what}: server busy"))
            }
            _ if e.is_unrecoverable_error() => (
                StoreErrorKind::Transient,
                format!("{what}: connection failed"),
            ),
            _ => (
                StoreErrorKind::Permanent,
                format!("{what}: Redis refused the call"),
            ),
        },
    };
    StoreError::new(kind, NAME, message).with_source(e)
}

/// A reply of an unexpected shape (another program wrote to the lock's keys).
pub(crate) fn bad_reply(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::permanent(
        NAME,
        format!("{what}: unexpected reply ({detail}); are other programs writing to these keys?"),
    )
}
