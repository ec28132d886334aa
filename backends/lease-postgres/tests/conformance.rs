//! The lease-core store conformance suite against a real PostgreSQL server: once with the
//! default store, once without notifications (waiters wake at the lease's end or their bound),
//! once with queued grants.

mod common;

lease_core::conformance_tests!(common::conformance_store());

mod quiet {
    use lease_postgres::PostgresStore;

    use super::common;

    async fn store() -> PostgresStore {
        let url = common::url().expect("the postgres conformance suite needs PostgreSQL");
        PostgresStore::builder(&url)
            .schema("quiet")
            .notifications(false)
            .queued_grants(false)
            .connect()
            .await
            .expect("connect to the test PostgreSQL")
    }

    lease_core::conformance_tests!(store());
}

mod queued {
    use lease_postgres::PostgresStore;

    use super::common;

    async fn store() -> PostgresStore {
        let url = common::url().expect("the postgres conformance suite needs PostgreSQL");
        PostgresStore::builder(&url)
            .schema("queued")
            .queued_grants(true)
            .connect()
            .await
            .expect("connect to the test PostgreSQL")
    }

    lease_core::conformance_tests!(store());
}
