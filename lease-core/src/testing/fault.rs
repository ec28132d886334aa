//! [`FaultStore`]: a wrapper that injects delays, errors, lost replies, late replies, calls
//! applied after they were reported failed, calls that never answer, panics and stolen leases.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{BrokenLock, Capabilities, Enqueued, Fence, KeyState, LeaseStore, StoreError};

/// A kind of store call, to aim a [`Fault`] at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `try_lock` (including the zero-lease release form).
    TryLock,
    /// `renew`.
    Renew,
    /// `release`.
    Release,
    /// `enqueue`.
    Enqueue,
    /// `leave_queue`.
    LeaveQueue,
}

/// The faults a [`FaultStore`] injects; set with [`FaultStore::set`].
///
/// The counted faults (`fail_next`, `lose_next_replies`, `apply_late_next`, `hang_next`,
/// `panic_next`) are consumed by the next calls of kind [`only`](Fault::only), or of any kind
/// when that is `None`.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Fault {
    /// The kind of call the counted faults apply to (`None`: every kind).
    pub only: Option<Call>,
    /// Added before every call reaches the inner store.
    pub delay: Duration,
    /// Added after every call was applied by the inner store, before its reply reaches the
    /// caller (a slow network on the way back: the store acted long before the caller knows).
    pub reply_delay: Duration,
    /// The next this-many calls are answered at once with a transient error, and applied to the
    /// inner store `apply_late_by` later (an outcome the caller cannot know: a timed-out request
    /// that the store still executes).
    pub apply_late_next: usize,
    /// How late `apply_late_next` calls are applied.
    pub apply_late_by: Duration,
    /// The next this-many calls are applied and then never answer, until the caller gives up
    /// and drops the call (cancelled between send and reply).
    pub hang_next: usize,
    /// The next this-many calls panic (a store bug), without reaching the inner store.
    pub panic_next: usize,
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
    /// `enqueue` calls.
    pub enqueue: usize,
    /// `leave_queue` calls.
    pub leave_queue: usize,
}

/// Wraps a store and injects the faults in [`Fault`]; counts calls.
#[derive(Debug, Clone)]
pub struct FaultStore<S> {
    inner: S,
    state: Arc<Mutex<(Fault, Calls)>>,
}

/// What to do with one call.
enum Plan {
    Fail(StoreError),
    Panic,
    /// Apply it; then lose the reply (`lose`), delay it, or never answer (`hang`).
    Apply {
        lose: bool,
        hang: bool,
        reply_delay: Duration,
    },
    /// Report a transient error now, apply after this long.
    ApplyLate(Duration),
}

/// Takes one from a counted fault if it applies to `op`.
fn take(count: &mut usize, only: Option<Call>, op: Call) -> bool {
    if *count > 0 && only.is_none_or(|o| o == op) {
        *count -= 1;
        true
    } else {
        false
    }
}

impl<S: LeaseStore + Clone> FaultStore<S> {
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

    /// Counts the call and decides its fault, after the injected `delay`.
    async fn plan(&self, op: Call) -> Plan {
        let (delay, plan) = {
            let mut st = self.state.lock().expect("fault state");
            let (fault, calls) = &mut *st;
            match op {
                Call::TryLock => calls.try_lock += 1,
                Call::Renew => calls.renew += 1,
                Call::Release => calls.release += 1,
                Call::Enqueue => calls.enqueue += 1,
                Call::LeaveQueue => calls.leave_queue += 1,
            }
            let only = fault.only;
            let plan = if take(&mut fault.panic_next, only, op) {
                Plan::Panic
            } else if take(&mut fault.fail_next, only, op) {
                Plan::Fail(StoreError::transient("fault", "injected failure"))
            } else if op == Call::Renew && fault.break_renewals {
                Plan::Fail(StoreError::permanent(
                    "fault",
                    "injected permanent renew failure",
                ))
            } else if op == Call::Renew && fault.fail_renewals {
                Plan::Fail(StoreError::transient("fault", "injected renew failure"))
            } else if take(&mut fault.apply_late_next, only, op) {
                Plan::ApplyLate(fault.apply_late_by)
            } else {
                Plan::Apply {
                    lose: take(&mut fault.lose_next_replies, only, op),
                    hang: take(&mut fault.hang_next, only, op),
                    reply_delay: fault.reply_delay,
                }
            };
            (fault.delay, plan)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        plan
    }

    /// Runs `call` against the inner store as `plan` says.
    async fn run<T, F, Fut>(&self, op: Call, call: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(S) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        match self.plan(op).await {
            Plan::Fail(e) => Err(e),
            Plan::Panic => panic!("injected panic in the store's {op:?} call"),
            Plan::ApplyLate(after) => {
                let inner = self.inner.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    let _ = call(inner).await;
                });
                Err(StoreError::transient(
                    "fault",
                    "injected timeout (the call is applied later)",
                ))
            }
            Plan::Apply {
                lose,
                hang,
                reply_delay,
            } => {
                let r = call(self.inner.clone()).await?;
                if hang {
                    std::future::pending::<()>().await;
                }
                if !reply_delay.is_zero() {
                    tokio::time::sleep(reply_delay).await;
                }
                if lose { Err(lost_reply()) } else { Ok(r) }
            }
        }
    }

    fn refuse_renewals(&self) -> bool {
        self.state.lock().expect("fault state").0.refuse_renewals
    }
}

fn lost_reply() -> StoreError {
    StoreError::transient("fault", "injected lost reply")
}

impl<S: LeaseStore + Clone> LeaseStore for FaultStore<S> {
    async fn try_lock(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
    ) -> Result<Option<Fence>, StoreError> {
        let (key, holder) = (key.to_owned(), holder.to_owned());
        self.run(Call::TryLock, move |s| async move {
            s.try_lock(lease, &key, &holder).await
        })
        .await
    }

    async fn renew(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
        fence: Fence,
    ) -> Result<bool, StoreError> {
        let refuse = self.refuse_renewals();
        let (key, holder) = (key.to_owned(), holder.to_owned());
        self.run(Call::Renew, move |s| async move {
            if refuse {
                return Ok(false);
            }
            s.renew(lease, &key, &holder, fence).await
        })
        .await
    }

    async fn release(&self, key: &str, holder: &str, fence: Fence) -> Result<bool, StoreError> {
        let (key, holder) = (key.to_owned(), holder.to_owned());
        self.run(Call::Release, move |s| async move {
            s.release(&key, &holder, fence).await
        })
        .await
    }

    async fn wait_for_change(&self, key: &str, max_wait: Duration) {
        self.inner.wait_for_change(key, max_wait).await
    }

    async fn enqueue(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
        patience: Duration,
    ) -> Result<Enqueued, StoreError> {
        let (key, holder) = (key.to_owned(), holder.to_owned());
        self.run(Call::Enqueue, move |s| async move {
            s.enqueue(lease, &key, &holder, patience).await
        })
        .await
    }

    async fn wait_for_grant(&self, key: &str, holder: &str, max_wait: Duration) -> Option<Fence> {
        self.inner.wait_for_grant(key, holder, max_wait).await
    }

    async fn leave_queue(&self, key: &str, holder: &str) -> Result<bool, StoreError> {
        let (key, holder) = (key.to_owned(), holder.to_owned());
        self.run(Call::LeaveQueue, move |s| async move {
            s.leave_queue(&key, &holder).await
        })
        .await
    }

    /// Forwarded as it is: no fault applies to it, and [`FaultStore::calls`] does not count it.
    async fn inspect(&self, key: &str) -> Result<KeyState, StoreError> {
        self.inner.inspect(key).await
    }

    /// Forwarded as it is: no fault applies to it, and [`FaultStore::calls`] does not count it.
    async fn break_lock(&self, key: &str) -> Result<Option<BrokenLock>, StoreError> {
        self.inner.break_lock(key).await
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}
