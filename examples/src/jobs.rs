//! The fleet's job table: the resource the locks protect. Its writes are fenced: a completion is
//! accepted only if its fence is at least the highest fence that has written the job.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

/// The first open job at or after an id: a seek in the index of open jobs (`INDEXED BY` makes
/// the statement fail rather than fall back to a scan).
const PICK_FROM: &str = "SELECT id FROM jobs INDEXED BY jobs_open
                         WHERE completions = 0 AND id >= ?1 ORDER BY id LIMIT 1";

/// One of the `?1` open jobs with the lowest ids, at random: `?1` entries of the index of open
/// jobs.
const PICK_CONTENDED: &str = "SELECT id FROM (SELECT id FROM jobs INDEXED BY jobs_open
                                              WHERE completions = 0 ORDER BY id LIMIT ?1)
                              ORDER BY random() LIMIT 1";

/// The job table in its own SQLite database.
pub struct Jobs {
    conn: Connection,
}

/// The outcome of a fenced completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// Accepted: the job is recorded as completed under this fence.
    Accepted,
    /// Rejected: a higher fence has already written this job.
    Stale,
}

/// The outcome of a fenced claim ([`Jobs::claim`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The job is not done yet; the table now rejects every fence lower than this claim's.
    Open,
    /// The job is already done: nothing to do.
    Done,
    /// Rejected: a higher fence has already claimed or written this job.
    Stale,
}

/// One job's final state, for the checker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobRow {
    /// The job.
    pub id: u64,
    /// Accepted completions (more than one is a duplicate).
    pub completions: u64,
    /// The highest fence the job has seen.
    pub fence: u64,
    /// The worker (process) of the last accepted completion.
    pub done_by: Option<u64>,
}

/// Totals read back from the table after a run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Totals {
    /// Jobs in the table.
    pub jobs: u64,
    /// Jobs completed at least once.
    pub completed: u64,
    /// Completions beyond the first, over all jobs: must be 0.
    pub duplicates: u64,
}

impl Jobs {
    /// Opens (creating if needed) the job table at `path`.
    ///
    /// # Errors
    ///
    /// SQLite's, with the path.
    pub fn open(path: &Path) -> anyhow::Result<Jobs> {
        let conn = Connection::open(path)
            .map_err(|e| anyhow::anyhow!("open job table {}: {e}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // The partial index holds the open jobs only: a pick is one index seek, however many
        // jobs there are and however many are done. `IF NOT EXISTS` also adds it to a table an
        // older version created without it.
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS jobs (
                 id INTEGER PRIMARY KEY,
                 completions INTEGER NOT NULL DEFAULT 0,
                 fence INTEGER NOT NULL DEFAULT 0,
                 done_by INTEGER
             );
             CREATE INDEX IF NOT EXISTS jobs_open ON jobs (id) WHERE completions = 0;",
        )?;
        Ok(Jobs { conn })
    }

    /// Adds jobs `0..n` (idempotent).
    ///
    /// # Errors
    ///
    /// SQLite's.
    pub fn seed(&mut self, n: u64) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut insert = tx.prepare("INSERT OR IGNORE INTO jobs (id) VALUES (?1)")?;
            for id in 0..n {
                insert.execute([id])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// A job nobody has completed yet, `None` when all are done: the first open job at or after
    /// a random id, wrapping to the first open job. Workers picking at once land on different
    /// jobs, and each pick is a seek in an index of the open jobs, not a scan of the table.
    ///
    /// # Errors
    ///
    /// SQLite's.
    pub fn pick(&self) -> anyhow::Result<Option<u64>> {
        let last: Option<u64> = self
            .conn
            .prepare_cached("SELECT max(id) FROM jobs")?
            .query_row([], |r| r.get(0))?;
        let Some(last) = last else { return Ok(None) };
        let from = rand::random_range(0..=last);
        let mut pick_from = self.conn.prepare_cached(PICK_FROM)?;
        if let Some(id) = pick_from.query_row([from], |r| r.get(0)).optional()? {
            return Ok(Some(id));
        }
        Ok(pick_from.query_row([0], |r| r.get(0)).optional()?)
    }

    /// Whether `job` has been completed (read under the job's lease, never before taking it).
    ///
    /// # Errors
    ///
    /// SQLite's.
    pub fn is_done(&self, job: u64) -> anyhow::Result<bool> {
        let n: u64 =
            self.conn
                .query_row("SELECT completions FROM jobs WHERE id = ?1", [job], |r| {
                    r.get(0)
                })?;
        Ok(n > 0)
    }

    /// The jobs with the `n` lowest ids that nobody has completed yet, one picked at random: many
    /// workers contend for few jobs, so a paused holder's job is soon wanted by another.
    ///
    /// # Errors
    ///
    /// SQLite's.
    pub fn pick_contended(&self, n: u64) -> anyhow::Result<Option<u64>> {
        Ok(self
            .conn
            .prepare_cached(PICK_CONTENDED)?
            .query_row([n], |r| r.get(0))
            .optional()?)
    }

    /// Registers `fence` with `job` before any work and reads whether the job is done, in one
    /// transaction: from now on every lower fence is rejected, so a holder that lost the job
    /// to this one can no longer complete it, not even before this one writes.
    ///
    /// # Errors
    ///
    /// SQLite's.
    pub fn claim(&mut self, job: u64, fence: u64) -> anyhow::Result<Claim> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let done: Option<u64> = tx
            .query_row(
                "UPDATE jobs SET fence = ?2 WHERE id = ?1 AND fence <= ?2 RETURNING completions",
                params![job, fence],
                |r| r.get(0),
            )
            .optional()?;
        tx.commit()?;
        Ok(match done {
            None => Claim::Stale,
            Some(0) => Claim::Open,
            Some(_) => Claim::Done,
        })
    }

    /// Every job that was claimed or completed.
    ///
    /// # Errors
    ///
    /// SQLite's.
    pub fn touched(&self) -> anyhow::Result<Vec<JobRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, completions, fence, done_by FROM jobs
             WHERE completions > 0 OR fence > 0 ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(JobRow {
                id: r.get(0)?,
                completions: r.get(1)?,
                fence: r.get(2)?,
                done_by: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records a completion of `job` by `worker` under `fence`, if no higher fence has written the
    /// job: the fence check and the write are one statement.
    ///
    /// # Errors
    ///
    /// SQLite's.
    pub fn complete(&mut self, job: u64, worker: u64, fence: u64) -> anyhow::Result<Write> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let changed = tx.execute(
            "UPDATE jobs SET completions = completions + 1, fence = ?2, done_by = ?3
             WHERE id = ?1 AND fence <= ?2",
            params![job, fence, worker],
        )?;
        tx.commit()?;
        Ok(if changed == 1 {
            Write::Accepted
        } else {
            Write::Stale
        })
    }

    /// Jobs completed so far.
    ///
    /// # Errors
    ///
    /// SQLite's.
    pub fn completed(&self) -> anyhow::Result<u64> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM jobs WHERE completions > 0", [], |r| {
                r.get(0)
            })?)
    }

    /// Totals for the summary.
    ///
    /// # Errors
    ///
    /// SQLite's.
    pub fn totals(&self) -> anyhow::Result<Totals> {
        Ok(self.conn.query_row(
            "SELECT count(*), coalesce(sum(completions > 0), 0),
                    coalesce(sum(max(completions - 1, 0)), 0)
             FROM jobs",
            [],
            |r| {
                Ok(Totals {
                    jobs: r.get(0)?,
                    completed: r.get(1)?,
                    duplicates: r.get(2)?,
                })
            },
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_fences_are_rejected_and_duplicates_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut jobs = Jobs::open(&dir.path().join("jobs.db")).unwrap();
        jobs.seed(3).unwrap();
        assert_eq!(jobs.complete(0, 1, 5).unwrap(), Write::Accepted);
        assert_eq!(jobs.complete(0, 2, 4).unwrap(), Write::Stale);
        assert!(jobs.is_done(0).unwrap());
        assert!(!jobs.is_done(1).unwrap());
        let t = jobs.totals().unwrap();
        assert_eq!((t.jobs, t.completed, t.duplicates), (3, 1, 0));
        // An equal or higher fence is accepted: with a broken lock that is a duplicate.
        assert_eq!(jobs.complete(0, 2, 5).unwrap(), Write::Accepted);
        assert_eq!(jobs.totals().unwrap().duplicates, 1);
    }

    #[test]
    fn a_claim_fences_out_lower_fences_before_any_write() {
        let dir = tempfile::tempdir().unwrap();
        let mut jobs = Jobs::open(&dir.path().join("jobs.db")).unwrap();
        jobs.seed(2).unwrap();
        assert_eq!(jobs.claim(1, 3).unwrap(), Claim::Open);
        assert_eq!(jobs.claim(1, 2).unwrap(), Claim::Stale);
        // The old holder cannot complete the job now, though the new one has not written yet.
        assert_eq!(jobs.complete(1, 7, 2).unwrap(), Write::Stale);
        assert_eq!(jobs.complete(1, 8, 3).unwrap(), Write::Accepted);
        assert_eq!(jobs.claim(1, 4).unwrap(), Claim::Done);
        let rows = jobs.touched().unwrap();
        assert_eq!(
            rows,
            vec![JobRow {
                id: 1,
                completions: 1,
                fence: 4,
                done_by: Some(8)
            }]
        );
        assert_eq!(jobs.pick_contended(5).unwrap(), Some(0));
    }

    /// The query plan of `sql` with `?1` bound to 1, one line per step.
    fn plan(jobs: &Jobs, sql: &str) -> String {
        let mut stmt = jobs
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap();
        let rows = stmt.query_map([1], |r| r.get::<_, String>(3)).unwrap();
        rows.map(Result::unwrap).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn picks_are_index_seeks_not_scans() {
        let dir = tempfile::tempdir().unwrap();
        let mut jobs = Jobs::open(&dir.path().join("jobs.db")).unwrap();
        jobs.seed(1000).unwrap();
        // A seek to the random start in the index of open jobs, already in id order: no table
        // scan, no sort.
        let from = plan(&jobs, PICK_FROM);
        assert!(from.contains("INDEX jobs_open (id>?)"), "{from}");
        assert!(!from.contains("TEMP B-TREE"), "{from}");
        // The lowest open ids: the first entries of that index (only those few are shuffled).
        let contended = plan(&jobs, PICK_CONTENDED);
        assert!(contended.contains("INDEX jobs_open"), "{contended}");
        for plan in [from, contended] {
            assert!(
                !plan.lines().any(|l| l.trim_end().ends_with("SCAN jobs")),
                "a full table scan:\n{plan}"
            );
        }
    }

    #[test]
    fn picks_find_open_jobs_spread_out_and_wrap_around() {
        let dir = tempfile::tempdir().unwrap();
        let mut jobs = Jobs::open(&dir.path().join("jobs.db")).unwrap();
        assert_eq!(jobs.pick().unwrap(), None, "an empty table has no job");
        jobs.seed(100).unwrap();
        let picked: std::collections::BTreeSet<u64> =
            (0..50).map(|_| jobs.pick().unwrap().unwrap()).collect();
        assert!(picked.len() > 10, "picks do not spread: {picked:?}");
        // Only job 3 is open: every pick finds it, from any start (wrapping when past it).
        for id in (0..100).filter(|&id| id != 3) {
            assert_eq!(jobs.complete(id, 1, 1).unwrap(), Write::Accepted);
        }
        for _ in 0..50 {
            assert_eq!(jobs.pick().unwrap(), Some(3));
        }
        assert_eq!(jobs.pick_contended(8).unwrap(), Some(3));
        assert_eq!(jobs.complete(3, 1, 1).unwrap(), Write::Accepted);
        assert_eq!(jobs.pick().unwrap(), None);
        assert_eq!(jobs.pick_contended(8).unwrap(), None);
    }

    #[test]
    fn a_table_from_before_the_index_gets_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE jobs (id INTEGER PRIMARY KEY,
                                    completions INTEGER NOT NULL DEFAULT 0,
                                    fence INTEGER NOT NULL DEFAULT 0, done_by INTEGER);
                 INSERT INTO jobs (id, completions) VALUES (0, 1), (1, 0);",
            )
            .unwrap();
        }
        let jobs = Jobs::open(&path).unwrap();
        assert_eq!(jobs.pick().unwrap(), Some(1));
        assert!(plan(&jobs, PICK_FROM).contains("INDEX jobs_open"));
    }
}
