//! Classifying [`redis::RedisError`] into [`StoreError`].
//!
//! Redis errors never carry the password (the client redacts it, and the server's `WRONGPASS`
//! reply does not echo it), so they are kept as the error's source.

use lease_core::{StoreError, StoreErrorKind};
use redis::{ErrorKind, RedisError, ServerErrorKind};

use crate::NAME;

/// The commands the store runs, directly or inside its scripts, for ACL advice.
pub(crate) const COMMANDS: &str = "EVAL, EVALSHA, SCRIPT LOAD, SUBSCRIBE, PUBLISH, PING, HMGET, \
                                   HGET, HSET, HINCRBY, EXISTS, TIME; with queued grants also \
                                   LINDEX, LPOP, RPUSH, LREM, LRANGE, ZSCORE, ZADD, ZREM, HDEL";

/// A refusal by the ACL: `NOPERM` directly, or a command inside a script the user may not run.
fn is_permission_error(e: &RedisError) -> bool {
    let text = e.to_string();
    e.code() == Some("NOPERM")
        || text.contains("NOPERM")
        || text.contains("no permissions")
        || text.contains("can't run this command")
}

/// Maps a failed Redis call of `what` (e.g. "try_lock of `k`") into a classified error.
pub(crate) fn classify(what: &str, e: RedisError) -> StoreError {
    let (kind, message) = match e.kind() {
        ErrorKind::Io if e.to_string().contains("certificate") => (
            StoreErrorKind::Permanent,
            format!(
                "{what}: the TLS certificate was refused (give the server's CA with \
                 redis::Client::build_with_tls and RedisStore::builder_with_client)"
            ),
        ),
        ErrorKind::AuthenticationFailed => (
            StoreErrorKind::Permanent,
            format!("{what}: authentication failed: check the user and password"),
        ),
        ErrorKind::Server(ServerErrorKind::NoPerm) => (
            StoreErrorKind::Permanent,
            format!(
                "{what}: the Redis ACL user lacks a permission (it needs the lock keys \
                 `~<prefix>*`, the channel `&<prefix>*` and the commands {COMMANDS})"
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
            // The cause is printed after the message: say the reason only if it does not.
            let message = if e.to_string().to_ascii_lowercase().contains(why) {
                what.to_owned()
            } else {
                format!("{what}: {why}")
            };
            (StoreErrorKind::Transient, message)
        }
        _ if is_permission_error(&e) => (
            StoreErrorKind::Permanent,
            format!(
                "{what}: the Redis ACL user lacks a permission (it needs the lock keys \
                 `~<prefix>*`, the channel `&<prefix>*` and the commands {COMMANDS})"
            ),
        ),
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
