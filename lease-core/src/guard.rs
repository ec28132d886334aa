//! [`LockGuard`]: proof that this process holds a lease, while it does.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::detach::detachable;
use crate::lease::{Inner, release_call, signal_loss};
use crate::state::Ticket;
use crate::{Error, Fence, LeaseStore, StoreError};

/// A share in the lease this process holds on a key.
///
/// Every guard counts as one holder: clones count too, and the lease is released as soon as the
/// last guard is dropped or [released](LockGuard::release). Dropping the
/// [`CrossProcessLock`](crate::CrossProcessLock) itself does not release the lease while guards
/// live.
///
/// A guard does not prove that the lease is still held *now*: a lease can be lost (see
/// [`LockGuard::lost`]). Pass [`LockGuard::fence`] with every write to a protected resource so
/// that the resource can reject writes from a superseded holder.
#[must_use = "the lease is released as soon as the guard is dropped"]
#[clippy::has_significant_drop]
pub struct LockGuard<S: LeaseStore> {
    inner: Arc<Inner<S>>,
    ticket: Ticket,
    lost: CancellationToken,
    /// `false` once this guard's share has been given back by `release`.
    active: bool,
}

impl<S: LeaseStore> std::fmt::Debug for LockGuard<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("key", &self.inner.key)
            .field("fence", &self.ticket.fence)
            .field("held", &self.is_held())
            .finish()
    }
}

impl<S: LeaseStore> LockGuard<S> {
    pub(crate) fn new(inner: Arc<Inner<S>>, ticket: Ticket) -> Self {
        let lost = inner
            .state
            .payload(ticket.generation)
            .map(|p| p.lost)
            .unwrap_or_else(|| {
                // The lease ended between issuing the ticket and here: a guard for an ended
                // lease reports it as lost straight away.
                let t = CancellationToken::new();
                t.cancel();
                t
            });
        Self {
            inner,
            ticket,
            lost,
            active: true,
        }
    }

    /// The fencing token of the grant this guard belongs to: larger than that of every earlier
    /// holder of the key.
    pub fn fence(&self) -> Fence {
        self.ticket.fence
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.inner.key
    }

    /// `true` if another holder may have had the key since this process last held it, so state
    /// cached from that time must be reloaded. `false` only when the fence shows that nobody
    /// else held it in between (or nobody ever held it before).
    pub fn is_dirty(&self) -> bool {
        self.ticket.dirty
    }

    /// `true` while the lease is held: not lost, and its local deadline has not passed.
    pub fn is_held(&self) -> bool {
        if self.lost.is_cancelled() {
            return false;
        }
        match self.inner.state.deadline(self.ticket.generation) {
            Some(deadline) if self.inner.clock.now() < deadline => true,
            Some(_) => {
                // Past the deadline but the heartbeat has not run yet (a paused process that
                // just resumed): end the lease here, so the loss signal fires now.
                if let Some(p) = self.inner.state.lose(self.ticket.generation) {
                    signal_loss(&self.inner, &p, "local deadline passed");
                }
                false
            }
            None => false,
        }
    }

    /// Resolves when the lease is lost, and at once if it already is. Never resolves for a lease
    /// that ends by release.
    ///
    /// It resolves no later than the lease's local deadline (the send time of the last
    /// successful renewal plus the lease, minus the safety margin), so work that stops on it
    /// stops before another holder can be granted the key.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe.
    pub async fn lost(&self) {
        self.lost.cancelled().await
    }

    /// The loss signal as a [`CancellationToken`], cancelled when the lease is lost. Hand it to
    /// work that already stops on a token.
    pub fn loss_token(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Gives this guard's share back and, if it was the last, releases the lease and waits for
    /// the store's answer.
    ///
    /// # Errors
    ///
    /// [`Error::Lost`] if the lease was lost before the release (the store no longer had it
    /// under this holder); [`Error::Store`] if the release failed (the lease then lapses by
    /// itself at the end of its lease).
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: the release completes in the background.
    pub async fn release(mut self) -> Result<(), Error> {
        self.active = false;
        if self.lost.is_cancelled() {
            return Err(Error::Lost {
                key: self.inner.key.clone(),
            });
        }
        let Some((fence, nonce, payload)) = self.inner.state.drop_guard(self.ticket.generation)
        else {
            return Ok(());
        };
        payload.stop.cancel();
        let call = detachable(release_call(
            self.inner.clone(),
            fence,
            nonce,
            &payload.holder,
        ));
        match call.await {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(Error::Lost {
                key: self.inner.key.clone(),
            }),
            Ok(Err(e)) => Err(Error::Store(e)),
            Err(e) => Err(Error::Store(StoreError::permanent(
                self.inner.store_name,
                format!("release {e}"),
            ))),
        }
    }
}

impl<S: LeaseStore> Clone for LockGuard<S> {
    fn clone(&self) -> Self {
        let counted = self.active && self.inner.state.clone_guard(self.ticket.generation);
        Self {
            inner: self.inner.clone(),
            ticket: self.ticket,
            lost: self.lost.clone(),
            active: counted,
        }
    }
}

impl<S: LeaseStore> Drop for LockGuard<S> {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        if let Some((fence, nonce, payload)) = self.inner.state.drop_guard(self.ticket.generation) {
            // Released at once, not on the next heartbeat tick: a waiter elsewhere is notified
            // by the store as soon as this lands. If the runtime has shut down, the spawned call
            // is dropped unrun, which counts as a release of unknown outcome (see
            // `ReleaseDone`), so the lock still works from another runtime.
            payload.stop.cancel();
            let call = release_call(self.inner.clone(), fence, nonce, &payload.holder);
            drop(payload.runtime.spawn(call));
        }
    }
}
