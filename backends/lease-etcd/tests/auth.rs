//! User/password auth: expiring tokens are refreshed, refused credentials and missing
//! permissions are clear permanent errors, and passwords never show.

use std::io::Write;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use lease_core::{LeaseStore, StoreErrorKind};
use lease_etcd::EtcdStore;
use lease_etcd::etcd_client::{Client, Permission};
use lease_testkit::{EtcdOptions, EtcdServer};

const ROOT_PASSWORD: &str = "r00t-s3cret";
const APP_PASSWORD: &str = "app-s3cret";
const WRONG_PASSWORD: &str = "wrong-pw-123";
const LEASE: Duration = Duration::from_secs(2);
/// Tokens of this server expire after 1 s without use.
const TOKEN_TTL: Duration = Duration::from_secs(1);

/// An etcd with auth enabled: `root`, and `app` who may only use keys under `app/`.
static ETCD: LazyLock<Option<EtcdServer>> = LazyLock::new(|| {
    let server = EtcdServer::start(EtcdOptions {
        auth_token_ttl: Some(TOKEN_TTL),
        ..Default::default()
    })?;
    let endpoint = server.endpoint();
    // Set up users on a runtime of its own: this runs inside whichever test touches it first.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut c = Client::connect([endpoint], None).await.expect("connect");
            c.user_add("root", ROOT_PASSWORD, None)
                .await
                .expect("add root");
            c.user_grant_role("root", "root").await.expect("grant root");
            c.role_add("app").await.expect("add role");
            c.role_grant_permission("app", Permission::read_write("app/").with_prefix())
                .await
                .expect("grant permission");
            c.user_add("app", APP_PASSWORD, None)
                .await
                .expect("add app");
            c.user_grant_role("app", "app").await.expect("grant app");
            c.auth_enable().await.expect("enable auth");
        });
    })
    .join()
    .expect("auth setup");
    Some(server)
});

fn endpoint() -> Option<String> {
    capture_logs();
    ETCD.as_ref().map(EtcdServer::endpoint)
}

/// Every log line of this test binary, at debug level and above, from every crate (etcd-client,
/// tonic and h2 included).
static LOGS: LazyLock<Arc<Mutex<Vec<u8>>>> = LazyLock::new(Arc::default);

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(|| LogWriter(LOGS.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
    });
}

/// No password of this test binary has been logged so far.
fn assert_logs_hold_no_password() {
    let logs = LOGS.lock().unwrap_or_else(|e| e.into_inner());
    let logs = String::from_utf8_lossy(&logs);
    assert!(!logs.is_empty(), "the log capture works");
    for secret in [ROOT_PASSWORD, APP_PASSWORD, WRONG_PASSWORD] {
        assert!(!logs.contains(secret), "a password was logged");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_refreshed_and_renewal_goes_on() {
    let Some(endpoint) = endpoint() else { return };
    let store = EtcdStore::connect(&format!("etcd://app:{APP_PASSWORD}@{endpoint}/app/expiry/"))
        .await
        .expect("connect as app");
    let fence = store
        .try_lock(LEASE, "k", "alice")
        .await
        .expect("try_lock")
        .expect("granted");
    for round in 0..2 {
        // Idle past the token's TTL: the next request carries an expired token.
        tokio::time::sleep(TOKEN_TTL + Duration::from_millis(700)).await;
        let renewed = store.renew(LEASE, "k", "alice", fence).await;
        assert!(
            renewed.as_ref().is_ok_and(|&r| r),
            "round {round}: renew after the token expired: {renewed:?}"
        );
    }
    tokio::time::sleep(TOKEN_TTL + Duration::from_millis(700)).await;
    assert!(store.release("k", "alice", fence).await.expect("release"));
    let shown = format!("{store:?}");
    assert!(!shown.contains(APP_PASSWORD), "{shown}");
    assert!(shown.contains(r#"user: Some("***")"#), "{shown}");
    assert_logs_hold_no_password();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_a_permanent_error_without_the_password() {
    let Some(endpoint) = endpoint() else { return };
    let err = EtcdStore::connect(&format!("etcd://app:{WRONG_PASSWORD}@{endpoint}/app/x/"))
        .await
        .expect_err("wrong password");
    assert_eq!(err.kind(), StoreErrorKind::Permanent, "{err}");
    let msg = format!("{err} {err:?}");
    assert!(msg.contains("password refused"), "{msg}");
    assert!(!msg.contains(WRONG_PASSWORD), "{msg}");
    assert_logs_hold_no_password();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_credentials_or_permission_are_permanent_errors() {
    let Some(endpoint) = endpoint() else { return };
    // No credentials: etcd refuses every key request.
    let err = EtcdStore::connect(&format!("etcd://{endpoint}/app/x/"))
        .await
        .expect_err("no user");
    assert!(!err.is_transient(), "{err}");
    // A user without rights on the prefix.
    let err = EtcdStore::connect(&format!("etcd://app:{APP_PASSWORD}@{endpoint}/other/"))
        .await
        .expect_err("no permission");
    assert_eq!(err.kind(), StoreErrorKind::Permanent, "{err}");
    assert!(err.to_string().contains("permission"), "{err}");
    assert!(!format!("{err:?}").contains(APP_PASSWORD));
    assert_logs_hold_no_password();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_with_builder_credentials_works() {
    let Some(endpoint) = endpoint() else { return };
    let store = EtcdStore::builder([endpoint])
        .user("root", ROOT_PASSWORD)
        .prefix("anywhere/")
        .connect()
        .await
        .expect("connect as root");
    let f = store
        .try_lock(LEASE, "k", "alice")
        .await
        .expect("try_lock")
        .expect("granted");
    assert!(store.release("k", "alice", f).await.expect("release"));
    assert!(!format!("{store:?}").contains(ROOT_PASSWORD));
    tracing::debug!(?store, "a store with credentials, logged whole");
    assert_logs_hold_no_password();
}
