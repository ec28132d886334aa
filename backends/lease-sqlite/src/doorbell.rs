//! Direct wake-ups of a granted waiter: each store with queued grants listens on a datagram
//! socket of its own, and the store whose transaction grants a key to a queued waiter sends the
//! waiter's store a datagram after the commit.
//!
//! The socket is in Linux's abstract namespace (`lease-sqlite/g/<random 128-bit id>`), so it
//! has no file to leave behind when its process is killed, and no path length limit. A waiter's
//! queue entry carries the name (`waiters.wake`); the grant's datagram carries the key's 64-bit
//! hash and the grant itself: the fence, the lease, the key and the holder, as the granting
//! transaction committed them. So the granted waiter takes its grant from the datagram, without
//! reading the row again (the lock's rules for a reported grant apply: see
//! [`LeaseStore::wait_for_grant`](lease_core::LeaseStore::wait_for_grant)); the listening thread
//! first takes the key's wake-up flock for it, as a grant read from the row does.
//!
//! A datagram that is lost (the socket's buffer is full, the waiter's process is in another
//! network namespace, or the granting store is an older version that sends none) costs latency,
//! never safety: the waiter finds the grant at its next look (the lock's next poll). Names
//! without the `g/` part are those of an older version, which reads only an 8-byte datagram (the
//! key's hash) and then the row: they are rung that way, and an 8-byte ring from an older
//! granting store makes this store read the row.
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
use std::time::Duration;

use tokio::sync::watch;

use crate::wake::Granter;

/// A store's socket, and the wake-up signal of each key its waiters wait on.
pub(crate) struct Doorbell {
    name: String,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// Key hash → the key's datagrams so far.
    keys: Mutex<HashMap<u64, watch::Sender<Rung>>>,
    closed: AtomicBool,
}

impl Shared {
    fn keys(&self) -> MutexGuard<'_, HashMap<u64, watch::Sender<Rung>>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a key's doorbell heard: how many datagrams, and the grant the last one carried.
#[derive(Debug, Clone, Default)]
pub(crate) struct Rung {
    count: u64,
    grant: Option<Arc<Grant>>,
}

impl Rung {
    /// The fence of the grant the last datagram carried, if it was of `key` to `holder`.
    pub(crate) fn grant_to(&self, key: &str, holder: &str) -> Option<i64> {
        self.grant
            .as_ref()
            .filter(|g| *g.key == *key.as_bytes() && *g.holder == *holder.as_bytes())
            .map(|g| g.fence)
    }
}

/// A grant as its transaction committed it, carried by the datagram that rings its waiter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant {
    pub(crate) key: Box<[u8]>,
    pub(crate) holder: Box<[u8]>,
    pub(crate) fence: i64,
    /// The lease's length, in nanoseconds.
    pub(crate) lease_ns: i64,
}

/// A grant's datagram: the key's hash, fence, lease (ns), the key's length (all little-endian),
/// then the key and the holder.
const HEADER: usize = 8 + 8 + 8 + 4;

impl Grant {
    fn encode(&self, key_hash: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.key.len() + self.holder.len());
        out.extend_from_slice(&key_hash.to_le_bytes());
        out.extend_from_slice(&self.fence.to_le_bytes());
        out.extend_from_slice(&self.lease_ns.to_le_bytes());
        // Keys are at most `MAX_KEY_LEN` (1 KiB) bytes.
        out.extend_from_slice(
            &u32::try_from(self.key.len())
                .unwrap_or(u32::MAX)
                .to_le_bytes(),
        );
        out.extend_from_slice(&self.key);
        out.extend_from_slice(&self.holder);
        out
    }

    /// The key's hash and the grant; `None` if `datagram` is not one (or was cut short).
    fn decode(datagram: &[u8]) -> Option<(u64, Self)> {
        let word = |at: usize| -> Option<[u8; 8]> { datagram.get(at..at + 8)?.try_into().ok() };
        let key_hash = u64::from_le_bytes(word(0)?);
        let fence = i64::from_le_bytes(word(8)?);
        let lease_ns = i64::from_le_bytes(word(16)?);
        let key_len = u32::from_le_bytes(datagram.get(24..HEADER)?.try_into().ok()?);
        let key_end = HEADER.checked_add(usize::try_from(key_len).ok()?)?;
        let key = datagram.get(HEADER..key_end)?;
        let holder = datagram.get(key_end..)?;
        if holder.is_empty() || fence <= 0 || lease_ns <= 0 {
            return None;
        }
        Some((
            key_hash,
            Self {
                key: key.into(),
                holder: holder.into(),
                fence,
                lease_ns,
            },
        ))
    }
}

/// The prefix of every doorbell's name; nothing else is ever sent to.
const PREFIX: &str = "lease-sqlite/";
/// The prefix of the names of doorbells that take grants (this version's); the others take
/// only the key's hash.
const GRANT_PREFIX: &str = "lease-sqlite/g/";
/// The largest datagram the listener reads whole: a grant of a key and holder of at most
/// 16 KiB each. A longer one is cut short, read as no grant, and makes the waiter read the row.
const MAX_DATAGRAM: usize = HEADER + 32 * 1024;

impl Doorbell {
    /// Binds a fresh socket and starts its listening thread, which takes a granted key's
    /// wake-up flock through `granter` before it tells the waiter. `Err` on systems without
    /// abstract socket names, or when the socket or the thread cannot be had: the store then
    /// has no doorbell.
    pub(crate) fn open(granter: Granter) -> std::io::Result<Self> {
        let name = format!("{GRANT_PREFIX}{:032x}", rand::random::<u128>());
        // Owned by the listening thread: it closes when the thread ends.
        let listener = bind(&name)?;
        let shared = Arc::new(Shared::default());
        let for_thread = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("lease-sqlite-bell".into())
            .spawn(move || listen(&listener, &for_thread, &granter))?;
        Ok(Self { name, shared })
    }

    /// The name waiters of this store write into their queue entries.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The signal of `key`'s datagrams from now on: take it *before* reading the key's row, so
    /// that a grant committed after the read is not missed.
    pub(crate) fn subscribe(&self, key_hash: u64) -> watch::Receiver<Rung> {
        let mut keys = self.shared.keys();
        if keys.len() > 256 {
            keys.retain(|_, tx| tx.receiver_count() > 0);
        }
        keys.entry(key_hash)
            .or_insert_with(|| watch::channel(Rung::default()).0)
            .subscribe()
    }
}

impl Drop for Doorbell {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        // Wakes the listening thread, which sees `closed` and ends.
        let _ = ring(&self.name, 0, None);
    }
}

fn listen(socket: &std::os::unix::net::UnixDatagram, shared: &Shared, granter: &Granter) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let got = socket.recv(&mut buf);
        if shared.closed.load(Ordering::SeqCst) {
            return;
        }
        let (hash, grant) = match got {
            Ok(8) => (
                u64::from_le_bytes(buf[..8].try_into().unwrap_or_default()),
                None,
            ),
            Ok(n) => match Grant::decode(&buf[..n]) {
                Some((hash, grant)) => (hash, Some(grant)),
                None => continue, // not a doorbell datagram
            },
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::debug!(error = %e, "doorbell socket failed; waiters poll");
                return;
            }
        };
        let mut keys = shared.keys();
        let Some(tx) = keys.get(&hash) else { continue };
        if tx.receiver_count() == 0 {
            keys.remove(&hash);
            continue;
        }
        let grant = grant.map(|g| {
            // Before the waiter hears of it, as for a grant read from the row.
            if let (Ok(key), Ok(holder)) =
                (std::str::from_utf8(&g.key), std::str::from_utf8(&g.holder))
            {
                granter.granted(key, holder, Duration::from_nanos(g.lease_ns.unsigned_abs()));
            }
            Arc::new(g)
        });
        tx.send_modify(|r| {
            r.count = r.count.wrapping_add(1);
            r.grant = grant;
        });
    }
}

/// Sends `key_hash`, and `grant` to a doorbell that takes grants, to the doorbell named `name`,
/// without blocking. Best effort: a doorbell that is gone (its store closed or its process
/// died), full, or not a doorbell's name is skipped.
pub(crate) fn ring(name: &str, key_hash: u64, grant: Option<&Grant>) -> std::io::Result<()> {
    if !name.starts_with(PREFIX) {
        return Ok(());
    }
    let datagram = match grant {
        Some(g) if name.starts_with(GRANT_PREFIX) => g.encode(key_hash),
        _ => key_hash.to_le_bytes().to_vec(),
    };
    let socket = std::os::unix::net::UnixDatagram::unbound()?;
    socket.set_nonblocking(true)?;
    socket.send_to_addr(&datagram, &address(name)?)?;
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
    use crate::wake::Wake;

    fn granter() -> (tempfile::TempDir, Wake) {
        let dir = tempfile::tempdir().expect("temp dir");
        let wake = Wake::new(dir.path().to_owned());
        (dir, wake)
    }

    fn grant(key: &str, holder: &str, fence: i64) -> Grant {
        Grant {
            key: key.as_bytes().into(),
            holder: holder.as_bytes().into(),
            fence,
            lease_ns: 30_000_000_000,
        }
    }

    #[tokio::test]
    async fn a_ring_wakes_the_subscribers_of_its_key_only() {
        let (_dir, wake) = granter();
        let bell = Doorbell::open(wake.granter()).expect("a doorbell");
        let mut k = bell.subscribe(7);
        let mut other = bell.subscribe(8);
        ring(bell.name(), 7, None).expect("ring");
        tokio::time::timeout(Duration::from_secs(10), k.changed())
            .await
            .expect("woken")
            .expect("the doorbell lives");
        assert_eq!(
            k.borrow_and_update().grant_to("k", "a"),
            None,
            "no grant carried"
        );
        assert!(!other.has_changed().expect("the doorbell lives"));
        assert!(
            ring("not-a-doorbell", 7, None).is_ok(),
            "other names are skipped"
        );
        let name = bell.name().to_owned();
        drop(bell);
        assert!(other.changed().await.is_err(), "the listener ended");
        // Gone: the datagram has no receiver, which is an error the granting store ignores.
        assert!(ring(&name, 7, None).is_err());
    }

    #[tokio::test]
    async fn a_grant_s_ring_carries_the_grant_to_its_holder_only() {
        let (_dir, wake) = granter();
        let bell = Doorbell::open(wake.granter()).expect("a doorbell");
        let mut k = bell.subscribe(7);
        ring(bell.name(), 7, Some(&grant("key", "holder-b", 42))).expect("ring");
        tokio::time::timeout(Duration::from_secs(10), k.changed())
            .await
            .expect("woken")
            .expect("the doorbell lives");
        let rung = k.borrow_and_update().clone();
        assert_eq!(rung.grant_to("key", "holder-b"), Some(42));
        assert_eq!(rung.grant_to("key", "holder-c"), None, "another holder");
        assert_eq!(
            rung.grant_to("kex", "holder-b"),
            None,
            "another key, same hash"
        );
        assert_eq!(
            rung.grant_to("key", "holder-"),
            None,
            "a prefix of the holder"
        );
    }

    #[test]
    fn a_grant_datagram_decodes_whole_or_not_at_all() {
        let g = grant("some key", "the holder", 9);
        let bytes = g.encode(5);
        assert_eq!(Grant::decode(&bytes), Some((5, g)));
        for cut in [0, 8, 20, HEADER, HEADER + 3, HEADER + "some key".len()] {
            assert_eq!(Grant::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut long_key = bytes.clone();
        long_key[24..HEADER].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            Grant::decode(&long_key),
            None,
            "a key longer than the datagram"
        );
    }

    /// A doorbell of an older version (a name without `g/`) reads an 8-byte datagram only: it
    /// is rung with the key's hash alone, even for a grant.
    #[test]
    fn an_older_doorbell_is_rung_with_the_hash_alone() {
        let name = format!("{PREFIX}{:032x}", rand::random::<u128>());
        let old = bind(&name).expect("bind");
        ring(&name, 11, Some(&grant("key", "holder", 3))).expect("ring");
        let mut buf = [0u8; 64];
        let n = old.recv(&mut buf).expect("a datagram");
        assert_eq!(&buf[..n], &11u64.to_le_bytes());
    }
}
