//! The host's boot clock and boot id, as every process on the host sees them, whatever its
//! time namespace.
//!
//! `CLOCK_BOOTTIME` is per **time namespace** (Linux 5.6+): a process in a namespace created
//! with `unshare --time --boottime N` (or by a container runtime) reads the host's boot clock
//! plus `N` seconds. Expiries written by one process and compared by another must be on one
//! clock, so the store reads its namespace's boot-time offset from `/proc/self/timens_offsets`
//! at open and subtracts it from every reading: the kernel adds exactly that offset (seconds and
//! nanoseconds) to the host's clock, so the difference is the host's boot clock, exactly. A
//! kernel without time namespaces has no such file and no offset.
//!
//! `/proc/self/timens_offsets` shows the offsets of the namespace the process's *children* will
//! enter, which is the process's own unless it called `unshare(CLONE_NEWTIME)` itself (it moves
//! into the new namespace only at its next `execve`). That state is detected by comparing
//! `/proc/self/ns/time` with `/proc/self/ns/time_for_children`, and refused.
//!
//! The boot id (`/proc/sys/kernel/random/boot_id`) tells a lease of this boot from one written
//! before a reboot; a process that cannot read it cannot tell them apart, so that is an error
//! too, never a made-up id.

use std::io::ErrorKind;

use lease_core::{BootClock, Clock, StoreError};

use crate::NAME;

pub(crate) const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
pub(crate) const OFFSETS: &str = "/proc/self/timens_offsets";
const NS_TIME: &str = "/proc/self/ns/time";
const NS_TIME_FOR_CHILDREN: &str = "/proc/self/ns/time_for_children";

/// The host's boot clock as read from this process: its namespace's clock minus the offset.
///
/// The store keeps its lease expiries on this clock; it is public for programs that compare
/// times taken in several processes of one host, some of them in time namespaces (a fleet's
/// history, for one).
///
/// ```
/// let clock = lease_sqlite::HostClock::open()?;
/// assert!(clock.now_ns() > 0);
/// # Ok::<(), lease_core::StoreError>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct HostClock {
    /// Nanoseconds this time namespace's `CLOCK_BOOTTIME` is ahead of the host's.
    offset_ns: i64,
}

impl HostClock {
    /// Reads this process's boot-time offset; see the module docs.
    ///
    /// # Errors
    ///
    /// A permanent error naming the file that cannot be read or parsed, or saying that this
    /// process has left its time namespace for its children only.
    pub fn open() -> Result<Self, StoreError> {
        let own = std::fs::read_link(NS_TIME);
        let children = std::fs::read_link(NS_TIME_FOR_CHILDREN);
        if let (Ok(own), Ok(children)) = (&own, &children) {
            if own != children {
                return Err(StoreError::permanent(
                    NAME,
                    format!(
                        "this process called unshare(CLONE_NEWTIME) without an exec since \
                         ({NS_TIME} is {}, {NS_TIME_FOR_CHILDREN} is {}): its boot-clock offset \
                         cannot be read, so its lease expiries would not be on the host's clock; \
                         open the store before unsharing, or in the child",
                        own.display(),
                        children.display()
                    ),
                ));
            }
        }
        let offset_ns = match std::fs::read_to_string(OFFSETS) {
            Ok(text) => parse_boottime_offset(&text).ok_or_else(|| {
                StoreError::permanent(
                    NAME,
                    format!(
                        "cannot parse the boot-clock offset of this time namespace from \
                         {OFFSETS}: {text:?}"
                    ),
                )
            })?,
            // A kernel without time namespaces: every process reads the host's clock.
            Err(e) if e.kind() == ErrorKind::NotFound && own.is_err() => 0,
            Err(e) => {
                return Err(StoreError::permanent(
                    NAME,
                    format!(
                        "cannot read the boot-clock offset of this time namespace from {OFFSETS}, \
                         so lease expiries could not be put on the host's clock"
                    ),
                )
                .with_source(e));
            }
        };
        Ok(Self { offset_ns })
    }

    /// Nanoseconds on the host's boot clock.
    pub fn now_ns(self) -> i64 {
        let ns = i64::try_from(BootClock.now().as_nanos()).unwrap_or(i64::MAX);
        ns.saturating_sub(self.offset_ns)
    }

    /// This namespace's offset, in nanoseconds (0 in the host's namespace).
    pub fn offset_ns(self) -> i64 {
        self.offset_ns
    }
}

/// The `boottime` line of `/proc/<pid>/timens_offsets` (`<clock> <secs> <nanosecs>`, the clock
/// by name or by its id 7) in nanoseconds; 0 if there is none. `None` if malformed.
fn parse_boottime_offset(text: &str) -> Option<i64> {
    let mut offset = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut fields = line.split_whitespace();
        let clock = fields.next()?;
        let secs: i64 = fields.next()?.parse().ok()?;
        let nanos: i64 = fields.next()?.parse().ok()?;
        if fields.next().is_some() || !(0..1_000_000_000).contains(&nanos) {
            return None;
        }
        if clock == "boottime" || clock == "7" {
            offset = secs.checked_mul(1_000_000_000)?.checked_add(nanos)?;
        }
    }
    Some(offset)
}

/// The host's boot id.
///
/// # Errors
///
/// A permanent error naming [`BOOT_ID`] if it cannot be read or is empty.
pub(crate) fn boot_id() -> Result<String, StoreError> {
    let unreadable = |why: &str| {
        format!(
            "cannot read the host's boot id from {BOOT_ID} ({why}); the SQLite store needs it \
             to tell leases of this boot from leases written before a reboot (is /proc \
             mounted and visible to this process?)"
        )
    };
    match std::fs::read_to_string(BOOT_ID) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        Ok(_) => Err(StoreError::permanent(NAME, unreadable("the file is empty"))),
        Err(e) => Err(StoreError::permanent(NAME, unreadable(&e.to_string())).with_source(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boottime_offset_is_read_by_name_or_id() {
        assert_eq!(
            parse_boottime_offset(
                "monotonic           0         0\nboottime            0         0\n"
            ),
            Some(0)
        );
        assert_eq!(
            parse_boottime_offset("monotonic 5 0\nboottime 3600 250\n"),
            Some(3_600_000_000_250)
        );
        assert_eq!(
            parse_boottime_offset("1 5 0\n7 -20 500000000\n"),
            Some(-19_500_000_000)
        );
        assert_eq!(parse_boottime_offset("monotonic 5 0\n"), Some(0));
        assert_eq!(parse_boottime_offset("boottime x 0\n"), None);
        assert_eq!(parse_boottime_offset("boottime 1 2000000000\n"), None);
        assert_eq!(parse_boottime_offset("boottime 1\n"), None);
    }

    #[test]
    fn this_process_reads_the_host_clock() {
        let clock = HostClock::open().expect("the test runs in one time namespace");
        let raw = i64::try_from(BootClock.now().as_nanos()).unwrap();
        let host = clock.now_ns();
        assert!((raw - clock.offset_ns() - host).abs() < 1_000_000_000);
        assert!(!boot_id().expect("boot id").is_empty());
    }
}
