//! [`FaultStore`]: a wrapper that injects delays, errors, lost replies and stolen leases.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{Capabilities, Fence, LeaseStore, StoreError};

/// The faults a [`FaultStore`] injects; set with [`FaultStore::set`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Fault {
    /// Added before every call reaches the inner store.
    pub delay: Duration,
    /// The next this-many calls fail with a transient error without reaching the inner store.
    pub fail_next: usize,
    /// The next this-many calls reach the inner store, then their reply is lost (a transient
    /// error is returned although the operation took effect).
    pub lose_next_replies: usize,
    /// Every renew fails with a transient error, without reaching the inner store.
    pub fail_renewals: bool,
    /// Every renew fails with a permanent error.
    pub break_renewals: bool,
    /// Every renew answers that another holder has the key.
    pub refuse_renewals: bool,
}

impl Fault {
    /// No fault.
    pub fn none() -> Self {
        Self::default()
    }
}

/// How many calls of each kind reached the [`FaultStore`] (including failed ones).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Calls {
    /// `try_lock` calls.
    pub try_lock: usize,
    /// `renew` calls.
    pub renew: usize,
    /// `release` calls.
    pub release: usize,
}

/// Wraps a store and injects the faults in [`Fault`]; counts calls.
#[derive(Debug, Clone)]
pub struct FaultStore<S> {
    inner: S,
    state: Arc<Mutex<(Fault, Calls)>>,
}

enum Op {
    TryLock,
    Renew,
    Release,
}

impl<S: LeaseStore> FaultStore<S> {
    /// Wraps `inner` with no fault set.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            state: Arc::new(Mutex::new((Fault::none(), Calls::default()))),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Replaces the fault settings.
    pub fn set(&self, fault: Fault) {
        self.state.lock().expect("fault state").0 = fault;
    }

    /// Changes the fault settings in place.
    pub fn update(&self, f: impl FnOnce(&mut Fault)) {
        f(&mut self.state.lock().expect("fault state").0);
    }

    /// The calls counted so far.
    pub fn calls(&self) -> Calls {
        self.state.lock().expect("fault state").1
    }

    /// Counts the call and decides its fault: `Err` to fail before the store, `Ok(true)` to lose
    /// the reply after it.
    async fn before(&self, op: Op) -> Result<bool, StoreError> {
        let (delay, fail, lose) = {
            let mut st = self.state.lock().expect("fault state");
            let (fault, calls) = &mut *st;
            match op {
                Op::TryLock => calls.try_lock += 1,
                Op::Renew => calls.renew += 1,
                Op::Release => calls.release += 1,
            }
            let fail = if fault.fail_next > 0 {
                fault.fail_next -= 1;
                Some(StoreError::transient("fault", "injected failure"))
            } else if matches!(op, Op::Renew) && fault.break_renewals {
                Some(StoreError::permanent(
                    "fault",
                    "injected permanent renew failure",
                ))
            } else if matches!(op, Op::Renew) && fault.fail_renewals {
                Some(StoreError::transient("fault", "injected renew failure"))
            } else {
                None
            };
            let lose = fail.is_none() && fault.lose_next_replies > 0;
            if lose {
                fault.lose_next_replies -= 1;
            }
            (fault.delay, fail, lose)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        match fail {
            Some(e) => Err(e),
            None => Ok(lose),
        }
    }

    fn refuse_renewals(&self) -> bool {
        self.state.lock().expect("fault state").0.refuse_renewals
    }
}

fn lost_reply() -> StoreError {
    StoreError::transient("fault", "injected lost reply")
}

impl<S: LeaseStore> LeaseStore for FaultStore<S> {
    async fn try_lock(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
    ) -> Result<Option<Fence>, StoreError> {
        let lose = self.before(Op::TryLock).await?;
        let r = self.inner.try_lock(lease, key, holder).await?;
        if lose { Err(lost_reply()) } else { Ok(r) }
    }

    async fn renew(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
        fence: Fence,
    ) -> Result<bool, StoreError> {
        let lose = self.before(Op::Renew).await?;
        if self.refuse_renewals() {
            return Ok(false);
        }
        let r = self.inner.renew(lease, key, holder, fence).await?;
        if lose { Err(lost_reply()) } else { Ok(r) }
    }

    async fn release(&self, key: &str, holder: &str, fence: Fence) -> Result<bool, StoreError> {
        let lose = self.before(Op::Release).await?;
        let r = self.inner.release(key, holder, fence).await?;
        if lose { Err(lost_reply()) } else { Ok(r) }
    }

    async fn wait_for_change(&self, key: &str, max_wait: Duration) {
        self.inner.wait_for_change(key, max_wait).await
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}
