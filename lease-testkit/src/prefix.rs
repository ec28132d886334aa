//! Key prefixes that keep the tests of one run apart on a shared server.

use std::sync::atomic::{AtomicU64, Ordering};

/// A prefix no other test of this run uses: `test{sep}{name}{sep}{pid}-{n}{sep}`, with the
/// store's separator (`:` for Redis, `/` for etcd).
pub fn unique_prefix(name: &str, separator: char) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let (pid, n) = (std::process::id(), N.fetch_add(1, Ordering::Relaxed));
    format!("test{separator}{name}{separator}{pid}-{n}{separator}")
}
