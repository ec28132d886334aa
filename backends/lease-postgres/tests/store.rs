//! The store against a real PostgreSQL: URLs and credentials, unreachable servers, restarts,
//! a row locked by another session, lost connections, migrations.

mod common;

use std::time::{Duration, Instant};

use lease_core::{LeaseStore, StoreErrorKind};
use lease_postgres::{PostgresStore, tokio_postgres};
use lease_testkit::{POSTGRES_PASSWORD, PostgresOptions, PostgresServer};

const LEASE: Duration = Duration::from_secs(30);

/// A plain client of the shared server, for what another session does.
async fn session(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect a plain session");
    tokio::spawn(conn);
    client
}

#[tokio::test]
async fn bad_urls_are_invalid_input_naming_the_problem_without_the_password() {
    for (url, says) in [
        (
            "postgres://u:s3cret@h/db?lease_ttl=5",
            "unknown option `lease_ttl`",
        ),
        ("mysql://u:s3cret@h/db", "not a PostgreSQL URL"),
        (
            "postgres://u:s3cret@h:99999/db",
            "not a valid PostgreSQL URL",
        ),
        ("postgres://u:s3cret@h/db?statement_timeout=0", "above zero"),
    ] {
        let e = PostgresStore::connect(url).await.expect_err(url);
        assert_eq!(e.kind(), StoreErrorKind::InvalidInput, "{url}: {e}");
        let text = format!("{e} {e:?}");
        assert!(text.contains(says), "{url}: {text}");
        assert!(!text.contains("s3cret"), "{url}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_a_permanent_error_that_does_not_show_it() {
    let Some(url) = common::url() else { return };
    let wrong = url.replace(POSTGRES_PASSWORD, "not-the-Password-42");
    let e = PostgresStore::connect(&wrong)
        .await
        .expect_err("wrong password");
    assert_eq!(e.kind(), StoreErrorKind::Permanent, "{e}");
    let text = format!("{e} {e:?}");
    assert!(text.contains("authentication failed"), "{text}");
    assert!(!text.contains("not-the-Password-42"), "{text}");
    assert!(!text.contains(POSTGRES_PASSWORD), "{text}");
    // The right one, and the store's Debug output, show no password either.
    let store = PostgresStore::connect(&url).await.expect("connect");
    let shown = format!("{store:?} {:?}", PostgresStore::builder(&url));
    assert!(!shown.contains(POSTGRES_PASSWORD), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_a_fast_transient_error() {
    // Nothing listens: refused at once.
    let port = lease_testkit::free_port();
    let started = Instant::now();
    let e = PostgresStore::connect(&format!("postgres://u:s3cret@127.0.0.1:{port}/db"))
        .await
        .expect_err("nothing listens");
    assert_eq!(e.kind(), StoreErrorKind::Transient, "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(!e.to_string().contains("s3cret"), "{e}");

    // Something accepts but never answers (a stuck server, a black hole behind a proxy): the
    // connect timeout ends it.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let started = Instant::now();
    let e = PostgresStore::builder(&format!("postgres://u:s3cret@127.0.0.1:{port}/db"))
        .connect_timeout(Duration::from_millis(300))
        .connect()
        .await
        .expect_err("never answers");
    let took = started.elapsed();
    assert_eq!(e.kind(), StoreErrorKind::Transient, "{e}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    drop(silent);
}

/// A row locked by another session (an operator's open transaction): the call fails with a
/// transient error within about the statement timeout instead of hanging, and the store works
/// again once the row is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_locked_by_another_session_times_out_as_a_transient_error() {
    let Some(url) = common::url() else { return };
    let schema = common::unique_schema("locked");
    let store = PostgresStore::builder(&url)
        .schema(&schema)
        .statement_timeout(Duration::from_millis(300))
        .connect()
        .await
        .expect("connect");
    let f = store.try_lock(LEASE, "k", "alice").await.unwrap().unwrap();

    let mut other = session(&url).await;
    let tx = other.transaction().await.expect("begin");
    tx.execute(
        &format!("SELECT 1 FROM \"{schema}\".leases WHERE key = 'k'::bytea FOR UPDATE"),
        &[],
    )
    .await
    .expect("lock the row");

    for op in ["renew", "try_lock"] {
        let started = Instant::now();
        let e = match op {
            "renew" => store.renew(LEASE, "k", "alice", f).await.map(|_| ()),
            _ => store.try_lock(LEASE, "k", "bob").await.map(|_| ()),
        }
        .expect_err("the row is locked");
        let took = started.elapsed();
        assert_eq!(e.kind(), StoreErrorKind::Transient, "{op}: {e}");
        assert!(e.to_string().contains("statement timeout"), "{op}: {e}");
        assert!(took < Duration::from_secs(2), "{op} took {took:?}");
    }
    // Other keys are not held up by the stuck statements (their connection was dropped).
    let g = store.try_lock(LEASE, "other", "carol").await.unwrap();
    assert!(g.is_some());

    tx.rollback().await.expect("rollback");
    assert!(store.renew(LEASE, "k", "alice", f).await.expect("renew"));
    assert!(store.release("k", "alice", f).await.expect("release"));
}

/// The store's connection is killed by the server (an administrator, a restarted pooler): the
/// call that finds it gone fails as transient, and the next one reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_is_opened_again() {
    let Some(url) = common::url() else { return };
    let name = common::unique_schema("victim");
    let victim_url = format!("{url}?application_name={name}");
    let store = PostgresStore::builder(&victim_url)
        .schema(common::unique_schema("lost"))
        .connect()
        .await
        .expect("connect");
    let f = store.try_lock(LEASE, "k", "alice").await.unwrap().unwrap();
    let admin = session(&url).await;
    let killed = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&name],
        )
        .await
        .expect("terminate");
    assert!(!killed.is_empty(), "the store's connections were found");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store.renew(LEASE, "k", "alice", f).await {
            Ok(renewed) => {
                assert!(renewed, "the grant survived");
                break;
            }
            Err(e) => {
                assert_eq!(e.kind(), StoreErrorKind::Transient, "{e}");
                assert!(Instant::now() < deadline, "no reconnection: {e}");
            }
        }
    }
}

/// `pg_ctl stop -m immediate` (no checkpoint; crash recovery at the start): the grants and
/// fences committed before it are all there after it, and the store reconnects by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_immediate_restart_keeps_the_fences() {
    let Some(mut server) = PostgresServer::start(PostgresOptions::default()) else {
        return;
    };
    let store = PostgresStore::connect(&server.url())
        .await
        .expect("connect");
    assert!(store.capabilities().durable_fences);
    let mut last = None;
    for i in 0..20 {
        let holder = format!("h{i}");
        let f = store.try_lock(LEASE, "k", &holder).await.unwrap().unwrap();
        assert!(store.release("k", &holder, f).await.unwrap());
        last = Some(f);
    }
    let held = store
        .try_lock(LEASE, "held", "alice")
        .await
        .unwrap()
        .unwrap();
    server.restart_immediate();

    let deadline = Instant::now() + Duration::from_secs(15);
    let next = loop {
        match store.try_lock(LEASE, "k", "after").await {
            Ok(f) => break f.expect("the key is free"),
            Err(e) => {
                assert_eq!(e.kind(), StoreErrorKind::Transient, "{e}");
                assert!(Instant::now() < deadline, "no reconnection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(next > last.unwrap(), "{next} after {last:?}");
    let state = store.inspect("held").await.unwrap();
    assert_eq!(state.holder.as_deref(), Some("alice"));
    assert_eq!(state.fence, Some(held));
    assert_eq!(store.try_lock(LEASE, "held", "bob").await.unwrap(), None);
}

/// A server whose commits are not durable is declared so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fences_are_not_declared_durable_without_synchronous_commit() {
    let Some(server) = PostgresServer::start(PostgresOptions {
        settings: vec!["synchronous_commit=off".into()],
        ..PostgresOptions::default()
    }) else {
        return;
    };
    let store = PostgresStore::connect(&server.url())
        .await
        .expect("connect");
    assert!(!store.capabilities().durable_fences);
}

/// Many first connections to a new schema at once: one migrates, the others wait for it under
/// the advisory lock and find it done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_connections_migrate_once() {
    let Some(url) = common::url() else { return };
    let schema = common::unique_schema("Mixed Case \"quoted\"");
    let connects = (0..8).map(|_| {
        let (url, schema) = (url.clone(), schema.clone());
        async move { common::store_in(&url, &schema).await }
    });
    let stores = futures_join_all(connects).await;
    let f = stores[0].try_lock(LEASE, "k", "a").await.unwrap().unwrap();
    assert_eq!(stores[7].try_lock(LEASE, "k", "b").await.unwrap(), None);
    assert!(stores[3].release("k", "a", f).await.unwrap());
    assert_eq!(stores[0].schema(), schema);
}

async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_of_a_newer_version_is_refused() {
    let Some(url) = common::url() else { return };
    let schema = common::unique_schema("newer");
    drop(common::store_in(&url, &schema).await);
    let admin = session(&url).await;
    admin
        .execute(
            &format!("UPDATE \"{schema}\".schema_version SET version = 99"),
            &[],
        )
        .await
        .expect("pretend a newer version wrote it");
    let e = PostgresStore::builder(&url)
        .schema(&schema)
        .connect()
        .await
        .expect_err("newer schema");
    assert_eq!(e.kind(), StoreErrorKind::Permanent, "{e}");
    assert!(e.to_string().contains("version 99"), "{e}");
    assert!(e.to_string().contains("newer lease-postgres"), "{e}");
}

/// A user that may not create anything uses a schema migrated by an administrator, with only
/// the privileges on its tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_create_uses_a_migrated_schema() {
    let Some(url) = common::url() else { return };
    let schema = common::unique_schema("granted");
    drop(common::store_in(&url, &schema).await);
    let role = common::unique_schema("locker");
    let admin = session(&url).await;
    admin
        .batch_execute(&format!(
            "CREATE ROLE \"{role}\" LOGIN PASSWORD 'locker-pw';
             GRANT USAGE ON SCHEMA \"{schema}\" TO \"{role}\";
             GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA \"{schema}\" TO \"{role}\";"
        ))
        .await
        .expect("a limited role");
    let limited = url.replacen(
        &format!("{}:{POSTGRES_PASSWORD}", lease_testkit::POSTGRES_USER),
        &format!("{role}:locker-pw"),
        1,
    );
    let store = common::store_in(&limited, &schema).await;
    let f = store.try_lock(LEASE, "k", "a").await.unwrap().unwrap();
    assert!(store.release("k", "a", f).await.unwrap());
    // A schema it would have to create: refused, saying why.
    let e = PostgresStore::builder(&limited)
        .schema(common::unique_schema("not-allowed"))
        .connect()
        .await
        .expect_err("no CREATE");
    assert_eq!(e.kind(), StoreErrorKind::Permanent, "{e}");
    assert!(e.to_string().contains("permission denied"), "{e}");
}

/// The server loses committed grants (here: the table is set back as a restored older backup
/// would have it): the store that saw the later fences says so instead of handing one out again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fence_that_goes_back_is_reported_not_reused() {
    let Some(url) = common::url() else { return };
    let schema = common::unique_schema("regressed");
    let store = common::store_in(&url, &schema).await;
    let mut last = None;
    for holder in ["a", "b", "c"] {
        let f = store.try_lock(LEASE, "k", holder).await.unwrap().unwrap();
        assert!(store.release("k", holder, f).await.unwrap());
        last = Some(f);
    }
    assert_eq!(last.map(|f| f.get()), Some(3));
    let admin = session(&url).await;
    admin
        .execute(
            &format!("UPDATE \"{schema}\".leases SET fence = 1, holder = NULL"),
            &[],
        )
        .await
        .expect("set the fence back");
    let e = store
        .try_lock(LEASE, "k", "d")
        .await
        .expect_err("fence 2 again");
    assert_eq!(e.kind(), StoreErrorKind::FenceRegressed, "{e}");
    let e = store.inspect("k").await.expect_err("below the fence seen");
    assert_eq!(e.kind(), StoreErrorKind::FenceRegressed, "{e}");
    // A store that starts after the loss cannot tell; fenced resources still refuse.
    let fresh = common::store_in(&url, &schema).await;
    assert!(fresh.inspect("k").await.is_ok());
}

/// A key whose fence is at its maximum cannot be granted again: a permanent error saying so,
/// never a repeated or wrapped fence.
#[tokio::test]
async fn a_fence_at_its_maximum_is_a_permanent_error() {
    let Some(url) = common::url() else { return };
    let schema = common::unique_schema("maxfence");
    let store = common::store_in(&url, &schema).await;
    let f = store.try_lock(LEASE, "k", "a").await.unwrap().unwrap();
    assert!(store.release("k", "a", f).await.unwrap());
    session(&url)
        .await
        .execute(
            &format!("UPDATE \"{schema}\".leases SET fence = {}", i64::MAX),
            &[],
        )
        .await
        .expect("set the fence to its maximum");
    let fresh = common::store_in(&url, &schema).await;
    let e = fresh
        .try_lock(LEASE, "k", "b")
        .await
        .expect_err("no fence above the maximum");
    assert_eq!(e.kind(), StoreErrorKind::Permanent, "{e}");
    assert!(e.to_string().contains("maximum"), "{e}");
}

/// A server error with a `DETAIL:` and a `HINT:` (here raised by a trigger an administrator
/// put on the table) is one line: the server's parts joined, each said once.
#[tokio::test]
async fn a_server_error_with_detail_and_hint_is_one_line() {
    let Some(url) = common::url() else { return };
    let schema = common::unique_schema("detail");
    let store = common::store_in(&url, &schema).await;
    session(&url)
        .await
        .batch_execute(&format!(
            "CREATE FUNCTION \"{schema}\".refuse() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN RAISE EXCEPTION 'refused by policy' \
             USING DETAIL = 'the key is frozen', HINT = 'ask the operator'; END $$; \
             CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON \"{schema}\".leases \
             FOR EACH ROW EXECUTE FUNCTION \"{schema}\".refuse();"
        ))
        .await
        .expect("add the trigger");
    let e = store
        .try_lock(LEASE, "k", "a")
        .await
        .expect_err("the trigger refuses every write");
    let text = e.to_string();
    assert!(!text.contains('\n'), "{text:?}");
    assert!(
        text.contains("refused by policy; DETAIL: the key is frozen; HINT: ask the operator"),
        "{text:?}"
    );
}

/// On a direct connection the server's own `lock_timeout` can be added through the driver's
/// `options`: the server gives up the wait itself, and the error is transient.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_lock_timeout_through_the_driver_options_is_transient() {
    let Some(url) = common::url() else { return };
    let schema = common::unique_schema("lock-timeout");
    let store = PostgresStore::builder(&format!("{url}?options=-c%20lock_timeout%3D200"))
        .schema(&schema)
        .statement_timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("connect");
    let f = store.try_lock(LEASE, "k", "alice").await.unwrap().unwrap();
    let mut other = session(&url).await;
    let tx = other.transaction().await.expect("begin");
    tx.execute(
        &format!("SELECT 1 FROM \"{schema}\".leases WHERE key = 'k'::bytea FOR UPDATE"),
        &[],
    )
    .await
    .expect("lock the row");
    let started = Instant::now();
    let e = store
        .renew(LEASE, "k", "alice", f)
        .await
        .expect_err("locked");
    assert_eq!(e.kind(), StoreErrorKind::Transient, "{e}");
    assert!(e.to_string().contains("locked by another session"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    tx.rollback().await.expect("rollback");
    assert!(store.renew(LEASE, "k", "alice", f).await.unwrap());
}

/// The listening connection is killed: it comes back by itself, and releases wake waiters
/// again, long before their bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listening_connection_comes_back_after_it_was_killed() {
    let Some(url) = common::url() else { return };
    let name = common::unique_schema("deaf");
    let schema = common::unique_schema("relisten");
    let waiter = std::sync::Arc::new(
        PostgresStore::builder(&format!("{url}?application_name={name}"))
            .schema(&schema)
            .connect()
            .await
            .expect("connect"),
    );
    let holder = common::store_in(&url, &schema).await;
    let admin = session(&url).await;
    // Both of the waiter's connections (statements and listening) go.
    let killed = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&name],
        )
        .await
        .expect("terminate");
    assert_eq!(killed.len(), 2, "a statement and a listening connection");
    // The listener's first pause is at most 50 ms; the statement connection comes back at the
    // waiter's next call.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = waiter.inspect("k").await;
    let f = holder.try_lock(LEASE, "k", "alice").await.unwrap().unwrap();
    let task = {
        let waiter = waiter.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            waiter.wait_for_change("k", Duration::from_secs(20)).await;
            started.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(holder.release("k", "alice", f).await.unwrap());
    let waited = task.await.unwrap();
    assert!(
        waited < Duration::from_secs(5),
        "the release was not heard: waited {waited:?}"
    );
}
