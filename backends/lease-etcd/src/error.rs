//! The store's name, and the mapping of etcd-client's errors into classified [`StoreError`]s.

use grpc::Code;
use lease_core::StoreError;

/// The store's name in errors and capabilities.
pub(crate) const NAME: &str = "etcd";

/// The gRPC status codes this crate tells apart, read from etcd-client's errors without a direct
/// dependency on tonic.
mod grpc {
    use etcd_client::Error;

    /// gRPC codes we classify (numeric values from the gRPC spec, stable forever).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Code {
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        FailedPrecondition,
        PermissionDenied,
        ResourceExhausted,
        Aborted,
        Unavailable,
        Unauthenticated,
        Other,
    }

    impl Code {
        pub(crate) fn of(e: &Error) -> Option<(Code, &str)> {
            match e {
                Error::GRpcStatus(s) => {
                    let code = match s.code() as i32 {
                        1 => Code::Cancelled,
                        2 => Code::Unknown,
                        3 => Code::InvalidArgument,
                        4 => Code::DeadlineExceeded,
                        5 => Code::NotFound,
                        7 => Code::PermissionDenied,
                        8 => Code::ResourceExhausted,
                        9 => Code::FailedPrecondition,
                        10 => Code::Aborted,
                        14 => Code::Unavailable,
                        16 => Code::Unauthenticated,
                        _ => Code::Other,
                    };
                    Some((code, s.message()))
                }
                _ => None,
            }
        }
    }
}

/// `true` when etcd says the lease a request named does not exist (expired or revoked).
pub(crate) fn is_lease_not_found(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::LeaseKeepAliveError(m) => m.contains("lease not found"),
        e => matches!(Code::of(e), Some((Code::NotFound, m)) if m.contains("lease not found")),
    }
}

/// `true` when the request certainly did not reach etcd's state machine, so sending it again
/// cannot apply it twice: no connection to the member, or a member without a leader (checked
/// before anything is proposed, thanks to "require leader").
pub(crate) fn not_sent(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) => true,
        e => matches!(
            Code::of(e),
            Some((Code::Unavailable, m))
                if m.contains("tcp connect error")
                    || m.contains("error trying to connect")
                    || m.contains("no leader")
        ),
    }
}

/// Classifies an etcd-client error. `what` names the operation ("acquire `jobs/1`").
pub(crate) fn map(what: &str, e: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    let transient = match &e {
        E::TransportError(_) | E::IoError(_) | E::WatchError(_) | E::LeaseKeepAliveError(_) => true,
        E::GRpcStatus(_) => match Code::of(&e).map(|(c, _)| c) {
            Some(
                Code::Cancelled
                | Code::Unknown
                | Code::DeadlineExceeded
                | Code::ResourceExhausted
                | Code::Aborted
                | Code::Unavailable
                | Code::NotFound,
            ) => true,
            // An expired token that could not be refreshed in time: refreshing again may work.
            Some(Code::Unauthenticated) => {
                matches!(Code::of(&e), Some((_, m)) if m.contains("invalid auth token"))
            }
            Some(
                Code::InvalidArgument
                | Code::FailedPrecondition
                | Code::PermissionDenied
                | Code::Other,
            )
            | None => false,
        },
        _ => false,
    };
    let hint = match Code::of(&e) {
        Some((Code::InvalidArgument, m)) if m.contains("authentication failed") => {
            " (user name or password refused)"
        }
        Some((Code::PermissionDenied, _)) => " (the etcd user lacks permission on the key prefix)",
        Some((Code::FailedPrecondition, m)) if m.contains("authentication is not enabled") => {
            " (credentials given but etcd auth is not enabled)"
        }
        _ => "",
    };
    let msg = format!("{what} failed{hint}");
    let err = if transient {
        StoreError::transient(NAME, msg)
    } else {
        StoreError::permanent(NAME, msg)
    };
    err.with_source(Cause::of(&e))
}

/// The readable account of an etcd-client error, kept as a [`StoreError`]'s source instead of
/// the error itself: a gRPC status prints its own cause with `Debug` (tonic's
/// `source: tonic::transport::Error(Transport, ConnectError(…))`), which is not for operators.
/// This is the status's code and message, then each cause's `Display`, each said once.
#[derive(Debug)]
struct Cause(String);

impl Cause {
    fn of(e: &etcd_client::Error) -> Cause {
        let mut text = match e {
            etcd_client::Error::GRpcStatus(s) => {
                let message = s.message();
                let code = s.code().description();
                if message.is_empty() {
                    code.to_owned()
                } else {
                    format!("{message} ({code})")
                }
            }
            e => e.to_string(),
        };
        let mut cause = match e {
            etcd_client::Error::GRpcStatus(s) => std::error::Error::source(s),
            e => std::error::Error::source(e),
        };
        while let Some(c) = cause {
            let said = c.to_string();
            if !said.is_empty() && !text.contains(&said) {
                text.push_str(": ");
                text.push_str(&said);
            }
            cause = c.source();
        }
        Cause(text)
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Cause {}

/// A request that took longer than the store's request timeout.
pub(crate) fn timed_out(what: &str, after: std::time::Duration) -> StoreError {
    StoreError::transient(NAME, format!("{what} timed out after {after:?}"))
}
