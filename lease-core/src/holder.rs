//! Holder ids, and the registry that stops two lock objects from sharing one by accident.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

/// A holder id: a readable label plus a random part.
///
/// The full id (label + 128 random bits) is what the store compares; logs and metrics only ever
/// show the label, so the random part works as a capability that another process cannot guess.
#[derive(Clone)]
pub(crate) struct HolderId {
    pub(crate) label: String,
    pub(crate) full: String,
}

impl std::fmt::Debug for HolderId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("HolderId").field(&self.label).finish()
    }
}

impl HolderId {
    /// `host/pid/name#<32 hex digits>`.
    pub(crate) fn random(name: &str) -> Self {
        let host = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned();
        let label = format!("{host}/{}/{name}", std::process::id());
        let full = format!("{label}#{:032x}", rand::random::<u128>());
        Self { label, full }
    }

    /// A holder chosen by the user, used as is (and shown as is).
    /// The holder string the store sees for leases taken under holder nonce `nonce`: the holder
    /// itself for nonce 0, then `holder~nonce`. A new nonce is used after a call whose outcome is
    /// unknown, so that call, if the store applies it late, cannot touch a later lease.
    pub(crate) fn for_nonce(&self, nonce: u64) -> std::sync::Arc<str> {
        if nonce == 0 {
            self.full.as_str().into()
        } else {
            format!("{}~{nonce}", self.full).into()
        }
    }

    pub(crate) fn stable(holder: String) -> Self {
        Self {
            label: holder.clone(),
            full: holder,
        }
    }
}

fn registry() -> &'static Mutex<HashSet<(String, String)>> {
    static REGISTRY: OnceLock<Mutex<HashSet<(String, String)>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// Registers `(key, holder)` for a new lock object; `false` if another live lock object in this
/// process already uses it.
pub(crate) fn register(key: &str, holder: &str) -> bool {
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert((key.to_owned(), holder.to_owned()))
}

/// Frees `(key, holder)` when its lock object (all clones) is gone.
pub(crate) fn unregister(key: &str, holder: &str) {
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&(key.to_owned(), holder.to_owned()));
}
