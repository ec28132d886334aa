//! Whether the store that wrote a lease or a queue entry still runs, through `flock(2)`.
//!
//! A store built with [`process_liveness`](crate::SqliteStoreBuilder::process_liveness) creates,
//! at open, a file of its own in `<db>.live/`, named by a random 128-bit id, and holds an
//! exclusive `flock` on it for as long as the store lives. It writes that id into every grant
//! (`leases.process`) and queue entry (`waiters.process`) it makes. The kernel drops the flock
//! when the process dies, however it dies (SIGKILL included), so another store that *can* take
//! the flock knows the writer is gone: its lease is treated as expired and its entries as dead,
//! at once, instead of at the end of the lease or the patience. Every store checks the ids it
//! finds, whatever its own setting: the writer decides whether its grants end with its process.
//!
//! Only that positive proof counts. A file that is missing, cannot be opened, or whose flock is
//! taken (by its owner, or for an instant by another store probing it) says nothing, and the
//! clock alone decides as before; so does a row without an id (written by an older version).
//! A file is never unlinked to break a lock (§7 of the design: two holders on two inodes): an id
//! is never used twice, so a store only ever unlinks its own file, when it closes.
//!
//! A stopped process (SIGSTOP, a debugger) keeps its flock, so its leases run out by the clock
//! as before. A process that closes file descriptors it does not own (a daemon closing every
//! descriptor after opening the store) drops its flock and looks dead: open the store after
//! such steps.

use std::fs::File;
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};

/// The directory of the liveness files, and this store's own file (flocked while the store
/// lives) if it has one.
pub(crate) struct Liveness {
    dir: PathBuf,
    own: Option<Own>,
}

struct Own {
    id: String,
    /// The open file carrying the exclusive flock; closing it (when the store closes) unlocks.
    _file: File,
}

impl Liveness {
    /// A store that only checks the ids of others (it writes none).
    pub(crate) fn checker(dir: PathBuf) -> Self {
        Self { dir, own: None }
    }

    /// Creates this store's file in `dir` (creating `dir`) under a fresh random id and takes its
    /// flock. Blocking (file system calls).
    pub(crate) fn open(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let id = format!("{:032x}", rand::random::<u128>());
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.join(&id))?;
        // Nobody else knows the id yet, so this cannot block.
        flock(&file, FlockOperation::NonBlockingLockExclusive)?;
        Ok(Self {
            dir,
            own: Some(Own { id, _file: file }),
        })
    }

    /// The id this store writes into its grants and queue entries (`None`: it has none).
    pub(crate) fn id(&self) -> Option<&str> {
        self.own.as_ref().map(|own| own.id.as_str())
    }

    /// The liveness file of the store with id `id`, if `id` is another store's well-formed id.
    pub(crate) fn file_of(&self, id: &str) -> Option<PathBuf> {
        (Some(id) != self.id() && is_an_id(id)).then(|| self.dir.join(id))
    }

    /// Whether the store with liveness id `id` is known to be gone: its file exists and its
    /// flock could be taken. `false` when it cannot be told (no id, no such file, an error) and
    /// for this store itself. Blocking (opens a file).
    pub(crate) fn is_gone(&self, id: Option<&str>) -> bool {
        let Some(id) = id.filter(|id| Some(*id) != self.id() && is_an_id(id)) else {
            return false;
        };
        let Ok(file) = File::open(self.dir.join(id)) else {
            return false;
        };
        // The probe's own flock goes when `file` closes, at the end of this call; a store probing
        // at the same instant sees it taken and counts the writer alive, which is only slower.
        matches!(
            flock(&file, FlockOperation::NonBlockingLockExclusive),
            Ok(())
        )
    }
}

/// 32 lowercase hex digits, as [`Liveness::open`] names files: nothing in a row can name a file
/// outside the directory.
fn is_an_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Drop for Liveness {
    fn drop(&mut self) {
        // Unlinked before it is unlocked: a store that opens it by name from now on finds no file
        // and relies on the clock; one that opened it before may find it unlocked after the
        // close, which is true (this store is gone), and the id is never used again.
        if let Some(own) = self.own.take() {
            let _ = std::fs::remove_file(self.dir.join(&own.id));
        }
    }
}

/// The directory of the liveness files of the database at `db`: beside it, as its wake-up
/// directory is.
pub(crate) fn dir_of(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".live");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_is_alive_while_open_and_gone_only_with_proof() {
        let dir = tempfile::tempdir().expect("temp dir");
        let one = Liveness::open(dir.path().join("stores")).expect("open");
        let two = Liveness::open(dir.path().join("stores")).expect("open");
        assert_ne!(one.id(), two.id());
        assert!(!one.is_gone(two.id()), "an open store holds its flock");
        assert!(!one.is_gone(one.id()));
        let checker = Liveness::checker(dir.path().join("stores"));
        assert_eq!(checker.id(), None);
        assert!(!checker.is_gone(one.id()));
        assert!(!one.is_gone(None), "a row without an id");
        let unknown = "0123456789abcdef0123456789abcdef";
        assert!(!one.is_gone(Some(unknown)), "no file: cannot tell");
        assert!(!one.is_gone(Some("../../etc/passwd")), "not an id");

        // A file nobody holds: its store died (the kernel dropped the flock).
        std::fs::write(dir.path().join("stores").join(unknown), b"").expect("a dead store's file");
        assert!(one.is_gone(Some(unknown)));
        assert!(one.is_gone(Some(unknown)), "the probe let go of its flock");

        let two_id = two.id().expect("an id").to_owned();
        drop(two);
        assert!(
            !dir.path().join("stores").join(&two_id).exists(),
            "a store removes its own file when it closes"
        );
        assert!(!one.is_gone(Some(&two_id)), "and is then told by the clock");
    }
}
