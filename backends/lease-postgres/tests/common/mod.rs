//! Shared by the test binaries: stores on the binary's one PostgreSQL server.
#![allow(dead_code)] // each test binary uses a different part of this module

use lease_postgres::PostgresStore;
use lease_testkit::PostgresServer;

/// The shared server's URL (with its test password); `None` (test skipped) when PostgreSQL is
/// not installed and `CI` is unset.
pub(crate) fn url() -> Option<String> {
    PostgresServer::shared().map(PostgresServer::url)
}

/// A schema name no other test of this run uses.
pub(crate) fn unique_schema(name: &str) -> String {
    lease_testkit::unique_prefix(name, '_')
}

/// `url` with the store option `schema=…` added.
pub(crate) fn with_schema(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}schema={schema}")
}

/// A store on `url` in `schema`.
pub(crate) async fn store_in(url: &str, schema: &str) -> PostgresStore {
    PostgresStore::builder(url)
        .schema(schema)
        .queued_grants(false)
        .connect()
        .await
        .expect("connect to the test PostgreSQL")
}

/// A fresh store for the conformance suite (which picks its own unique keys), in the default
/// schema, without queued grants (the suite's `queued` module runs them): the cases' concurrent
/// first connections also exercise the migration lock.
pub(crate) async fn conformance_store() -> PostgresStore {
    let url = url().expect("the postgres conformance suite needs PostgreSQL installed");
    PostgresStore::builder(&url)
        .queued_grants(false)
        .connect()
        .await
        .expect("connect to the test PostgreSQL")
}
