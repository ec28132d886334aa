//! Shared pieces of the example programs (which open their stores with [`leasehold::open`]): the
//! fleet's job table (whose writes are fenced), and the fleet's chaos mode: its nemesis schedule,
//! the histories its workers write, the checker that reads them, and the deliberately broken
//! locks that prove the checker can fail.

// The root README's usage example runs as a doc test here, where every crate it names is a
// dependency.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

pub mod broken;
pub mod check;
pub mod history;
pub mod jobs;
pub mod nemesis;
pub mod slow;
pub mod stats;

pub use lease_core::redact::redact_url as redact;

/// The directory a run writes to: `dir`, created when missing, or else a new temporary
/// directory, removed when the returned guard is dropped.
///
/// # Errors
///
/// When the directory cannot be created (the message names it).
pub fn run_dir(
    dir: Option<&std::path::Path>,
) -> anyhow::Result<(std::path::PathBuf, Option<tempfile::TempDir>)> {
    use anyhow::Context;
    match dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
            Ok((d.to_owned(), None))
        }
        None => {
            let temp = tempfile::tempdir().context("create a temp dir")?;
            Ok((temp.path().to_owned(), Some(temp)))
        }
    }
}
