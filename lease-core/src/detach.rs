//! Store calls that must finish even when their caller is cancelled, without a task switch on
//! the common path.
//!
//! A grant or a release that the caller stops awaiting must still run to its end: a grant that
//! nobody tracks would block the key for a whole lease, a release cut off half-way would leave
//! the pending-release count taken. Spawning every such call guarantees that, but costs two
//! task switches per call (on a 2-core machine about as much as an uncontended SQLite grant).
//! [`Detachable`] polls the call in the caller's task instead, and hands it to the runtime only
//! if it is dropped before it completed.
//!
//! No crate does this: `tokio::spawn` always switches tasks, and `tokio_util`'s drop guards
//! cancel rather than finish.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};

/// A future run inline that finishes in a spawned task if it is dropped before completing.
///
/// Its output is `Err(message)` if the call panicked, so a panicking store gives the caller an
/// error as a spawned task's `JoinError` did.
pub(crate) struct Detachable<T: Send + 'static> {
    fut: Option<Pin<Box<dyn Future<Output = T> + Send>>>,
}

pub(crate) fn detachable<F>(fut: F) -> Detachable<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    Detachable {
        fut: Some(Box::pin(fut)),
    }
}

impl<T: Send + 'static> Future for Detachable<T> {
    type Output = Result<T, String>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(fut) = this.fut.as_mut() else {
            return Poll::Ready(Err("polled after completion".to_owned()));
        };
        match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(out)) => {
                this.fut = None;
                Poll::Ready(Ok(out))
            }
            Err(panic) => {
                this.fut = None;
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".to_owned());
                Poll::Ready(Err(format!("panicked: {message}")))
            }
        }
    }
}

impl<T: Send + 'static> Drop for Detachable<T> {
    fn drop(&mut self) {
        if let Some(fut) = self.fut.take() {
            // Outside a runtime (it is shutting down) the call is dropped, as a spawned task
            // would be at shutdown.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    drop(fut.await);
                });
            }
        }
    }
}

#[cfg(all(test, not(lease_loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn completes_inline() {
        assert_eq!(detachable(async { 7 }).await, Ok(7));
    }

    #[tokio::test(start_paused = true)]
    async fn finishes_in_the_background_when_dropped() {
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let call = detachable(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            flag.store(true, Ordering::SeqCst);
        });
        // Cancelled after its first poll, mid-call.
        assert!(
            tokio::time::timeout(Duration::from_millis(1), call)
                .await
                .is_err()
        );
        assert!(!done.load(Ordering::SeqCst));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            done.load(Ordering::SeqCst),
            "the dropped call was not finished"
        );
    }

    #[tokio::test]
    async fn a_panic_is_an_error() {
        let out = detachable(async {
            if true {
                panic!("store bug");
            }
        })
        .await;
        assert_eq!(out, Err("panicked: store bug".to_owned()));
    }
}
