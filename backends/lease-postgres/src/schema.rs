//! The versioned schema: numbered migrations, applied in order in one transaction under a
//! transaction-scoped advisory lock, recorded in the table `schema_version`.

use lease_core::StoreError;
use tokio_postgres::Client;
use tokio_postgres::types::Type;

use crate::NAME;
use crate::error::classify;

/// Migration `i` brings the schema from version `i` to `i + 1`; `{s}` is the quoted schema.
const MIGRATIONS: &[&str] = &[
    // One row per key, never deleted, so the fence counter survives releases. Keys and holders
    // are bytea: any Rust string, NUL included, is stored as it is. `expires_at` is on the
    // server's clock (`clock_timestamp()`). The fill factor leaves room on each page so that the
    // frequent updates of a row (renewals) stay heap-only: no index column changes, so no index
    // entry is written.
    "CREATE TABLE {s}.leases (
         key bytea PRIMARY KEY,
         holder bytea,
         fence bigint NOT NULL CHECK (fence > 0),
         expires_at timestamptz NOT NULL
     ) WITH (fillfactor = 50);",
    // Queued grants (see `queue.rs`): one entry per waiting (key, holder), in the order of
    // `seq` (an identity: never reused), with the lease it asked for and a liveness deadline on
    // the server's clock. The functions are the operations of a store with queued grants, each
    // one statement (so one transaction) that locks the key's lease row first: every change of
    // a key's queue happens under that lock.
    "CREATE TABLE {s}.waiters (
         seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
         key bytea NOT NULL,
         holder bytea NOT NULL,
         lease interval NOT NULL,
         live_until timestamptz NOT NULL,
         UNIQUE (key, holder)
     );
     CREATE INDEX waiters_in_order ON {s}.waiters (key, seq);

     -- Locks the key's row, drops its dead entries and, if the key is free, grants it to the
     -- oldest live entry (fence + 1, the lease it asked for) and announces the grant on
     -- `chan` as `g <fence> <hex key> <hex holder>`. Returns the row as it is now (all NULL
     -- for a key never granted).
     CREATE FUNCTION {s}.lease_settle(p_key bytea, chan text) RETURNS {s}.leases
     LANGUAGE plpgsql AS $$
     DECLARE
         r {s}.leases;
         w {s}.waiters;
         now_ timestamptz := clock_timestamp();
     BEGIN
         SELECT * INTO r FROM {s}.leases l WHERE l.key = p_key FOR UPDATE;
         IF r.key IS NULL THEN
             RETURN r;
         END IF;
         DELETE FROM {s}.waiters q WHERE q.key = p_key AND q.live_until <= now_;
         IF r.holder IS NOT NULL AND r.expires_at > now_ THEN
             RETURN r;
         END IF;
         SELECT * INTO w FROM {s}.waiters q WHERE q.key = p_key ORDER BY q.seq LIMIT 1;
         IF w.seq IS NULL THEN
             RETURN r;
         END IF;
         DELETE FROM {s}.waiters q WHERE q.seq = w.seq;
         UPDATE {s}.leases l SET holder = w.holder, fence = l.fence + 1,
                expires_at = now_ + w.lease
          WHERE l.key = p_key RETURNING * INTO r;
         PERFORM pg_notify(chan, 'g ' || r.fence || ' ' || encode(p_key, 'hex') || ' '
                                 || encode(w.holder, 'hex'));
         RETURN r;
     END $$;

     -- Acquire in order: settles the key, then grants or extends it for `p_holder` when no
     -- live waiter is ahead, else (with `queue`) queues it or refreshes its entry, which keeps
     -- its place. Returns whether it holds the key now, and the key's fence.
     CREATE FUNCTION {s}.lease_acquire(p_key bytea, p_holder bytea, p_lease interval,
                                       p_patience interval, queue boolean, chan text)
     RETURNS TABLE (granted boolean, fence bigint)
     LANGUAGE plpgsql AS $$
     DECLARE
         r {s}.leases;
         now_ timestamptz;
     BEGIN
         r := {s}.lease_settle(p_key, chan);
         IF r.key IS NULL THEN
             INSERT INTO {s}.leases AS l (key, holder, fence, expires_at)
             VALUES (p_key, p_holder, 1, clock_timestamp() + p_lease)
             ON CONFLICT (key) DO NOTHING RETURNING * INTO r;
             IF r.key IS NOT NULL THEN
                 RETURN QUERY SELECT true, r.fence;
                 RETURN;
             END IF;
             -- Inserted by a concurrent call since: settle what it committed.
             r := {s}.lease_settle(p_key, chan);
         END IF;
         now_ := clock_timestamp();
         IF r.holder = p_holder THEN
             -- Its own key: live, or expired with nobody live queued (else it was settled on).
             UPDATE {s}.leases l SET expires_at = now_ + p_lease WHERE l.key = p_key;
             DELETE FROM {s}.waiters q WHERE q.key = p_key AND q.holder = p_holder;
             RETURN QUERY SELECT true, r.fence;
             RETURN;
         END IF;
         IF r.holder IS NOT NULL AND r.expires_at > now_ THEN
             IF queue THEN
                 INSERT INTO {s}.waiters AS q (key, holder, lease, live_until)
                 VALUES (p_key, p_holder, p_lease, now_ + p_patience)
                 ON CONFLICT (key, holder) DO UPDATE
                     SET lease = excluded.lease, live_until = excluded.live_until;
             END IF;
             RETURN QUERY SELECT false, r.fence;
             RETURN;
         END IF;
         -- Free, and nobody live queued.
         UPDATE {s}.leases l SET holder = p_holder, fence = l.fence + 1,
                expires_at = now_ + p_lease
          WHERE l.key = p_key RETURNING * INTO r;
         DELETE FROM {s}.waiters q WHERE q.key = p_key AND q.holder = p_holder;
         RETURN QUERY SELECT true, r.fence;
     END $$;

     -- Release with grant: frees the key if `p_holder` holds it (with `p_fence`, unless NULL),
     -- then grants it to the oldest live waiter; announces the key free if nobody was.
     CREATE FUNCTION {s}.lease_release(p_key bytea, p_holder bytea, p_fence bigint, chan text)
     RETURNS boolean
     LANGUAGE plpgsql AS $$
     DECLARE
         r {s}.leases;
     BEGIN
         UPDATE {s}.leases l SET holder = NULL
          WHERE l.key = p_key AND l.holder = p_holder AND (p_fence IS NULL OR l.fence = p_fence);
         IF NOT FOUND THEN
             RETURN false;
         END IF;
         r := {s}.lease_settle(p_key, chan);
         IF r.holder IS NULL THEN
             PERFORM pg_notify(chan, encode(p_key, 'hex'));
         END IF;
         RETURN true;
     END $$;

     -- A waiter gives up: its entry goes, and a grant made to it meanwhile is released to the
     -- next waiter.
     CREATE FUNCTION {s}.lease_leave(p_key bytea, p_holder bytea, chan text) RETURNS boolean
     LANGUAGE plpgsql AS $$
     BEGIN
         PERFORM 1 FROM {s}.leases l WHERE l.key = p_key FOR UPDATE;
         DELETE FROM {s}.waiters q WHERE q.key = p_key AND q.holder = p_holder;
         RETURN {s}.lease_release(p_key, p_holder, NULL, chan);
     END $$;",
];

/// The schema version this build writes.
pub(crate) const LATEST: i32 = MIGRATIONS.len() as i32;

/// `name` as a quoted SQL identifier: taken as written, whatever its case or characters.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The key of the transaction-scoped advisory lock that serialises migrations of `schema`
/// (computed by the server: `hashtext` of this text).
fn lock_name(schema: &str) -> String {
    format!("lease-postgres schema {schema}")
}

/// Brings `schema` to [`LATEST`], creating it if missing; refuses one written by a newer
/// version. Concurrent first connections are safe: the migration runs in one transaction that
/// first takes a transaction-scoped advisory lock (no session state, so it works through a
/// transaction-pooling PgBouncer), and re-reads the version under it.
pub(crate) async fn migrate(client: &mut Client, schema: &str) -> Result<(), StoreError> {
    let q = quote_ident(schema);
    let what = format!("checking the schema `{schema}`");
    // Without a write or a lock when it is up to date: a store whose user may not create
    // anything opens a schema migrated by an administrator.
    if let Some(version) = current_version(client, &q)
        .await
        .map_err(|e| classify(&what, e))?
    {
        check_version(schema, version)?;
        if version == LATEST {
            return Ok(());
        }
    }
    let what = format!("migrating the schema `{schema}`");
    let err = |e| classify(&what, e);
    let tx = client.transaction().await.map_err(err)?;
    tx.query_typed(
        "SELECT pg_advisory_xact_lock(hashtext($1))",
        &[(&lock_name(schema), Type::TEXT)],
    )
    .await
    .map_err(err)?;
    let exists = tx
        .query_typed(
            "SELECT 1 FROM pg_namespace WHERE nspname = $1",
            &[(&schema, Type::TEXT)],
        )
        .await
        .map_err(err)?;
    if exists.is_empty() {
        tx.batch_execute(&format!("CREATE SCHEMA {q}"))
            .await
            .map_err(err)?;
    }
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {q}.schema_version (
             one boolean PRIMARY KEY DEFAULT true CHECK (one),
             version integer NOT NULL
         )"
    ))
    .await
    .map_err(err)?;
    let version = tx
        .query_typed(&format!("SELECT version FROM {q}.schema_version"), &[])
        .await
        .map_err(err)?
        .first()
        .map(|r| r.try_get::<_, i32>(0))
        .transpose()
        .map_err(err)?
        .unwrap_or(0);
    check_version(schema, version)?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.batch_execute(&sql.replace("{s}", &q))
            .await
            .map_err(|e| {
                classify(
                    &format!("migrating the schema `{schema}` to version {}", i + 1),
                    e,
                )
            })?;
    }
    tx.query_typed(
        &format!(
            "INSERT INTO {q}.schema_version (version) VALUES ($1)
             ON CONFLICT (one) DO UPDATE SET version = excluded.version"
        ),
        &[(&LATEST, Type::INT4)],
    )
    .await
    .map_err(err)?;
    tx.commit().await.map_err(err)
}

/// The recorded version, or `None` when the version table does not exist (yet).
async fn current_version(client: &Client, q: &str) -> Result<Option<i32>, tokio_postgres::Error> {
    let table = format!("{q}.schema_version");
    let found = client
        .query_typed(
            "SELECT to_regclass($1) IS NOT NULL",
            &[(&table, Type::TEXT)],
        )
        .await?;
    if !found.first().is_some_and(|r| r.get::<_, bool>(0)) {
        return Ok(None);
    }
    let rows = client
        .query_typed(&format!("SELECT version FROM {table}"), &[])
        .await?;
    rows.first().map(|r| r.try_get(0)).transpose()
}

fn check_version(schema: &str, version: i32) -> Result<(), StoreError> {
    if version > LATEST {
        return Err(StoreError::permanent(
            NAME,
            format!(
                "the schema `{schema}` has version {version}, written by a newer lease-postgres; \
                 this version understands up to {LATEST}"
            ),
        ));
    }
    if version < 0 {
        return Err(StoreError::permanent(
            NAME,
            format!("the schema `{schema}` has an invalid version {version}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_whatever_they_contain() {
        assert_eq!(quote_ident("lease"), "\"lease\"");
        assert_eq!(quote_ident("My Locks"), "\"My Locks\"");
        assert_eq!(
            quote_ident("a\"; DROP TABLE x; --"),
            "\"a\"\"; DROP TABLE x; --\""
        );
    }

    #[test]
    fn newer_and_negative_versions_are_refused() {
        let e = check_version("s", LATEST + 3).unwrap_err();
        assert_eq!(e.kind(), lease_core::StoreErrorKind::Permanent);
        assert!(e.to_string().contains("newer lease-postgres"), "{e}");
        assert!(check_version("s", -1).is_err());
        assert!(check_version("s", LATEST).is_ok());
        assert!(check_version("s", 0).is_ok());
    }
}
