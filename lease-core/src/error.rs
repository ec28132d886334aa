//! The public error types: [`Error`] for lock operations, [`StoreError`] for store operations.

use std::fmt;
use std::time::Duration;

/// Why a lock operation did not hand out a guard.
///
/// The enum is flat on purpose: a caller matches one level, and each variant says what the caller
/// can do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key is held by another holder and the call did not wait
    /// ([`CrossProcessLock::try_lock_once`](crate::CrossProcessLock::try_lock_once)).
    /// Try again later, or use a waiting call.
    #[error("lease `{key}` is held by another holder")]
    Busy {
        /// The key that was busy.
        key: String,
    },
    /// The deadline of a waiting call passed before the key became free.
    #[error("timed out after {waited:?} waiting for lease `{key}`")]
    TimedOut {
        /// The key that was waited for.
        key: String,
        /// How long the call waited.
        waited: Duration,
    },
    /// The lease was lost while work ran under it (its local deadline passed, or the store named
    /// another holder). Work done under it must be treated as possibly concurrent with another
    /// holder's; writes must be fenced.
    #[error("lease `{key}` was lost while held")]
    Lost {
        /// The key whose lease was lost.
        key: String,
    },
    /// The lock was configured wrongly (for example a renew interval not shorter than the lease).
    /// Fix the configuration.
    #[error("invalid lock configuration: {0}")]
    Config(String),
    /// The store failed. [`StoreError::is_transient`] tells whether a retry can help.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Error {
    /// `true` when retrying the same call later may succeed: [`Error::Busy`],
    /// [`Error::TimedOut`], [`Error::Lost`], and transient store errors.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Busy { .. } | Error::TimedOut { .. } | Error::Lost { .. } => true,
            Error::Config(_) => false,
            Error::Store(e) => e.is_transient(),
        }
    }
}

/// The class of a [`StoreError`], which decides whether it is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// A timeout, a reset connection, a busy database past its budget: retrying may succeed. The
    /// renewal loop retries these until the local deadline.
    Transient,
    /// Bad configuration, refused credentials, a schema from a newer version: retrying the same
    /// call cannot succeed.
    Permanent,
    /// The key or holder given to the store is empty, too long, or otherwise refused. Nothing was
    /// written.
    InvalidInput,
    /// The store handed out or holds a fence lower than one it handed out before (for example a
    /// Redis restarted without persistence). Fencing is no longer sound; a holder that sees this
    /// treats its lease as lost.
    FenceRegressed,
    /// The store does not implement this operation (for example an optional operator operation
    /// such as [`LeaseStore::inspect`](crate::LeaseStore::inspect) or
    /// [`LeaseStore::break_lock`](crate::LeaseStore::break_lock) on a store that predates them).
    /// Nothing was read or written; retrying cannot help. Stores declare their locking
    /// behaviour in [`Capabilities`](crate::Capabilities); this kind is only for the optional
    /// operations, which a caller tries and falls back from.
    Unsupported,
}

/// An error from a store, classified so the lock knows whether to retry.
///
/// Backends keep their own detailed error types private and map them into this one, naming the
/// store and keeping the cause as [`std::error::Error::source`].
pub struct StoreError {
    kind: StoreErrorKind,
    store: &'static str,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl StoreError {
    /// A new error of `kind` from the store named `store` (e.g. `"redis"`).
    pub fn new(kind: StoreErrorKind, store: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            store,
            message: message.into(),
            source: None,
        }
    }

    /// A [`StoreErrorKind::Transient`] error.
    pub fn transient(store: &'static str, message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Transient, store, message)
    }

    /// A [`StoreErrorKind::Permanent`] error.
    pub fn permanent(store: &'static str, message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Permanent, store, message)
    }

    /// A [`StoreErrorKind::InvalidInput`] error.
    pub fn invalid_input(store: &'static str, message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::InvalidInput, store, message)
    }

    /// A [`StoreErrorKind::Unsupported`] error: the store named `store` does not implement the
    /// operation `message` describes (e.g. `"inspect is not supported"`).
    pub fn unsupported(store: &'static str, message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Unsupported, store, message)
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// The class of this error.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// The name of the store that failed.
    pub fn store(&self) -> &'static str {
        self.store
    }

    /// The message, without the store name or the cause.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// `true` for [`StoreErrorKind::Transient`].
    pub fn is_transient(&self) -> bool {
        self.kind == StoreErrorKind::Transient
    }
}

impl fmt::Debug for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreError")
            .field("kind", &self.kind)
            .field("store", &self.store)
            .field("message", &self.message)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let class = match self.kind {
            StoreErrorKind::Transient => "transient error",
            StoreErrorKind::Permanent => "error",
            StoreErrorKind::InvalidInput => "invalid input",
            StoreErrorKind::FenceRegressed => "fence regression",
            StoreErrorKind::Unsupported => "unsupported operation",
        };
        write!(f, "{} store {class}: {}", self.store, self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}
