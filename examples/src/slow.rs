//! Slow store replies for `fleet --chaos slow`: a [`LeaseStore`] wrapper whose replies reach the
//! lock late, as over a slow link, after the store has acted on the call.
//!
//! The nemesis sets a worker's delay by writing it (in nanoseconds, `0` to heal) to the worker's
//! control file and sending it `SIGUSR1`; the worker re-reads the file on the signal. A delay past
//! lease − margin makes grants arrive after their local deadline, which the lock must release
//! instead of handing out.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lease_core::{
    BrokenLock, Capabilities, DynStore, Enqueued, Fence, KeyState, LeaseStore, StoreError,
};

/// The control file of worker `proc` in run directory `dir`.
pub fn control_file(dir: &Path, proc: u64) -> PathBuf {
    dir.join(format!("slow-{proc}"))
}

/// Sets worker `proc`'s reply delay (zero heals).
///
/// # Errors
///
/// The control file cannot be written.
pub fn set_delay(dir: &Path, proc: u64, delay: Duration) -> std::io::Result<()> {
    std::fs::write(control_file(dir, proc), delay.as_nanos().to_string())
}

/// A store whose replies are delayed by the current delay.
#[derive(Clone)]
pub struct SlowStore {
    inner: DynStore,
    delay_ns: Arc<AtomicU64>,
}

impl SlowStore {
    /// Wraps `inner`; replies are delayed once [`SlowStore::watch`] reads a delay.
    pub fn new(inner: DynStore) -> Self {
        Self {
            inner,
            delay_ns: Arc::default(),
        }
    }

    /// Re-reads `control` on every `SIGUSR1` (a missing or unreadable file means no delay).
    ///
    /// # Errors
    ///
    /// The signal handler cannot be installed.
    pub fn watch(&self, control: PathBuf) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut usr1 = signal(SignalKind::user_defined1())?;
        let delay = self.delay_ns.clone();
        tokio::spawn(async move {
            while usr1.recv().await.is_some() {
                let ns = std::fs::read_to_string(&control)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(0);
                delay.store(ns, Ordering::Relaxed);
            }
        });
        Ok(())
    }

    async fn late<T>(&self, reply: T) -> T {
        let ns = self.delay_ns.load(Ordering::Relaxed);
        if ns > 0 {
            tokio::time::sleep(Duration::from_nanos(ns)).await;
        }
        reply
    }
}

impl LeaseStore for SlowStore {
    async fn try_lock(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
    ) -> Result<Option<Fence>, StoreError> {
        let r = self.inner.try_lock(lease, key, holder).await;
        self.late(r).await
    }

    async fn renew(
        &self,
        lease: Duration,
        key: &str,
        holder: &str,
        fence: Fence,
    ) -> Result<bool, StoreError> {
        let r = self.inner.renew(lease, key, holder, fence).await;
        self.late(r).await
    }

    async fn release(&self, key: &str, holder: &str, fence: Fence) -> Result<bool, StoreError> {
        let r = self.inner.release(key, holder, fence).await;
        self.late(r).await
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
        let r = self.inner.enqueue(lease, key, holder, patience).await;
        self.late(r).await
    }

    /// A grant's message comes late too, as over the same slow link.
    async fn wait_for_grant(&self, key: &str, holder: &str, max_wait: Duration) -> Option<Fence> {
        let r = self.inner.wait_for_grant(key, holder, max_wait).await;
        if r.is_some() { self.late(r).await } else { r }
    }

    async fn leave_queue(&self, key: &str, holder: &str) -> Result<bool, StoreError> {
        let r = self.inner.leave_queue(key, holder).await;
        self.late(r).await
    }

    /// Forwarded without delay: the lock never makes these calls.
    async fn inspect(&self, key: &str) -> Result<KeyState, StoreError> {
        self.inner.inspect(key).await
    }

    async fn break_lock(&self, key: &str) -> Result<Option<BrokenLock>, StoreError> {
        self.inner.break_lock(key).await
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}
