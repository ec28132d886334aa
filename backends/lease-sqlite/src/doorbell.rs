//! Direct wake-ups of a granted waiter: each store with queued grants listens on a datagram
//! socket of its own, and the store whose transaction grants a key to a queued waiter sends the
//! waiter's store a datagram after the commit.
//!
//! The socket is in Linux's abstract namespace (`lease-sqlite/<random 128-bit id>`), so it has
//! no file to leave behind when its process is killed, and no path length limit. A waiter's
//! queue entry carries the name (`waiters.wake`); the grant's datagram carries the key's 64-bit
//! hash. The waiter's store then reads the key's row, as after any wake-up: the row is the
//! truth, the datagram only says when to look. A datagram that is lost (the socket's buffer is
//! full, the waiter's process is in another network namespace, or the granting store is an
//! older version that sends none) costs latency, never safety: the waiter finds the grant at its
//! next look (the lock's next poll).
//!
//! Waiters that were not granted are not woken at all, whatever the number queued: a release
//! wakes one process, the granted one, where the key's wake-up flock ([`crate::wake`]) wakes
//! every process blocked on it.
//!
//! On other systems there is no doorbell: a store's entries carry no name and its waiters wait
//! on the key's wake-up flock, as without the queue.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

/// A store's socket, and the wake-up signal of each key its waiters wait on.
pub(crate) struct Doorbell {
    name: String,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// Key hash → a counter bumped at every datagram for that key.
    keys: Mutex<HashMap<u64, watch::Sender<u64>>>,
    closed: AtomicBool,
}

impl Shared {
    fn keys(&self) -> MutexGuard<'_, HashMap<u64, watch::Sender<u64>>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The prefix of every doorbell's name; nothing else is ever sent to.
const PREFIX: &str = "lease-sqlite/";

impl Doorbell {
    /// Binds a fresh socket and starts its listening thread. `Err` on systems without abstract
    /// socket names, or when the socket or the thread cannot be had: the store then has no
    /// doorbell.
    pub(crate) fn open() -> std::io::Result<Self> {
        let name = format!("{PREFIX}{:032x}", rand::random::<u128>());
        // Owned by the listening thread: it closes when the thread ends.
        let listener = bind(&name)?;
        let shared = Arc::new(Shared::default());
        let for_thread = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("lease-sqlite-bell".into())
            .spawn(move || listen(&listener, &for_thread))?;
        Ok(Self { name, shared })
    }

    /// The name waiters of this store write into their queue entries.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The signal of `key`'s datagrams from now on: take it *before* reading the key's row, so
    /// that a grant committed after the read is not missed.
    pub(crate) fn subscribe(&self, key_hash: u64) -> watch::Receiver<u64> {
        let mut keys = self.shared.keys();
        if keys.len() > 256 {
            keys.retain(|_, tx| tx.receiver_count() > 0);
        }
        keys.entry(key_hash)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }
}

impl Drop for Doorbell {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        // Wakes the listening thread, which sees `closed` and ends.
        let _ = ring(&self.name, 0);
    }
}

fn listen(socket: &std::os::unix::net::UnixDatagram, shared: &Shared) {
    let mut buf = [0u8; 16];
    loop {
        let got = socket.recv(&mut buf);
        if shared.closed.load(Ordering::SeqCst) {
            return;
        }
        match got {
            Ok(8) => {
                let hash = u64::from_le_bytes(buf[..8].try_into().unwrap_or_default());
                let mut keys = shared.keys();
                if let Some(tx) = keys.get(&hash) {
                    if tx.receiver_count() == 0 {
                        keys.remove(&hash);
                    } else {
                        tx.send_modify(|n| *n = n.wrapping_add(1));
                    }
                }
            }
            Ok(_) => {} // not a doorbell datagram
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!(error = %e, "doorbell socket failed; waiters poll");
                return;
            }
        }
    }
}

/// Sends `key_hash` to the doorbell named `name`, without blocking. Best effort: a doorbell
/// that is gone (its store closed or its process died), full, or not a doorbell's name is
/// skipped.
pub(crate) fn ring(name: &str, key_hash: u64) -> std::io::Result<()> {
    if !name.starts_with(PREFIX) {
        return Ok(());
    }
    let socket = std::os::unix::net::UnixDatagram::unbound()?;
    socket.set_nonblocking(true)?;
    socket.send_to_addr(&key_hash.to_le_bytes(), &address(name)?)?;
    Ok(())
}

#[cfg(target_os = "linux")]
fn address(name: &str) -> std::io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
}

#[cfg(not(target_os = "linux"))]
fn address(_name: &str) -> std::io::Result<std::os::unix::net::SocketAddr> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "abstract socket names are Linux only",
    ))
}

fn bind(name: &str) -> std::io::Result<std::os::unix::net::UnixDatagram> {
    std::os::unix::net::UnixDatagram::bind_addr(&address(name)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_ring_wakes_the_subscribers_of_its_key_only() {
        let bell = Doorbell::open().expect("a doorbell");
        let mut k = bell.subscribe(7);
        let mut other = bell.subscribe(8);
        ring(bell.name(), 7).expect("ring");
        tokio::time::timeout(Duration::from_secs(10), k.changed())
            .await
            .expect("woken")
            .expect("the doorbell lives");
        assert!(!other.has_changed().expect("the doorbell lives"));
        assert!(ring("not-a-doorbell", 7).is_ok(), "other names are skipped");
        let name = bell.name().to_owned();
        drop(bell);
        assert!(other.changed().await.is_err(), "the listener ended");
        // Gone: the datagram has no receiver, which is an error the granting store ignores.
        assert!(ring(&name, 7).is_err());
    }
}
