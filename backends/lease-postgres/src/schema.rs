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
