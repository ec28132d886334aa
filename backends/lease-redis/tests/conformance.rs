//! The lease-core store conformance suite against a real redis-server: once with the default
//! store, once with queued grants ([`RedisStoreBuilder::queued_grants`]).
//!
//! [`RedisStoreBuilder::queued_grants`]: lease_redis::RedisStoreBuilder::queued_grants

mod common;

lease_core::conformance_tests!(common::conformance_store());

mod queued {
    use lease_redis::RedisStore;

    use super::common;

    async fn store() -> RedisStore {
        let url =
            common::url().expect("the redis conformance suite needs `redis-server` installed");
        RedisStore::builder(&url)
            .prefix(common::unique_prefix("conformance-queued"))
            .queued_grants(true)
            .connect()
            .await
            .expect("connect to the test redis-server")
    }

    lease_core::conformance_tests!(store());
}
