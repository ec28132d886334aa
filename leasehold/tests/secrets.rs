//! No secret of a store URL shows anywhere: URLs with a secret in every position it can take
//! (user-only user info, password, password with `/ @ : ?`, query parameter, percent-encoded,
//! IPv6 host, no scheme), for every scheme, given to every store's URL parser and builder and to
//! [`leasehold::open`]; the secret must be in no error's `Display` or `Debug` (nor any
//! `source()`'s), in no `Debug` of a builder or store, and in no log line at any level.
//!
//! Every host is `127.0.0.1` or `[::1]` on a port nothing listens on, Unix sockets and SQLite
//! files are under a directory that does not exist: no server is needed, each case fails fast.
//! Built with any set of features (`scripts/test.sh` also runs the tests with none): a store
//! left out is checked through `open`'s `NotBuilt` error only.
#![allow(unused_imports, unused_variables, dead_code)] // which parts are used depends on the features

use std::error::Error as _;
use std::fmt::Debug;
use std::io;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// Every secret starts with this, and so does every piece of it between two of its delimiters:
/// output holding any fragment of a secret that a parser split off at a delimiter holds it.
/// Checked case-insensitively (a host name may be lower-cased), raw and percent-encoded.
const MARK: &str = "Zq";

/// The delimiters that decide where user info ends (`/ @ : ?`), and more characters people put
/// in passwords.
const DELIMITERS: &str = "[/@:?]";
const OTHER_DELIMITERS: &str = "[#%+=&.,;_~!$*\\[\\]-]";

/// Where no Unix socket or SQLite file can be, so that nothing is created or reached.
const NOWHERE: &str = "/nonexistent-leasehold-secrets-test";

/// A secret of 8 or more characters: `Zq` and letters or digits, then up to three more pieces,
/// each a delimiter, `Zq` and letters or digits.
fn secret() -> impl Strategy<Value = String> {
    (
        "[A-Za-z0-9]{6,10}",
        proptest::collection::vec(
            (
                prop_oneof![3 => DELIMITERS, 2 => OTHER_DELIMITERS],
                "[A-Za-z0-9]{1,6}",
            ),
            0..4,
        ),
    )
        .prop_map(|(first, rest)| {
            let mut s = format!("{MARK}{first}");
            for (delimiter, piece) in rest {
                s.push_str(&delimiter);
                s.push_str(MARK);
                s.push_str(&piece);
            }
            s
        })
}

/// How the secret is written in the URL.
#[derive(Debug, Clone, Copy)]
enum Encoding {
    Raw,
    /// Every byte `%XX`.
    Full,
    /// Only the characters that are not letters or digits.
    Delimiters,
}

fn encode(s: &str, how: Encoding) -> String {
    s.bytes()
        .map(|b| match how {
            Encoding::Raw => char::from(b).to_string(),
            Encoding::Delimiters if b.is_ascii_alphanumeric() => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Where the secret goes.
#[derive(Debug, Clone, Copy)]
enum Position {
    /// `scheme://SECRET@host` (a token as the user name).
    UserOnly,
    /// `scheme://user:SECRET@host`.
    Password,
    /// `scheme://:SECRET@host`.
    PasswordOnly,
    /// `scheme://host/path?NAME=SECRET`.
    Query(&'static str),
    /// `scheme://host/path?db=0&NAME=SECRET&x=1`.
    QueryAmong(&'static str),
    /// `scheme://host/path?SECRET`.
    QueryWithoutValue,
    /// `scheme://user:SECRET@host/path?pass=SECRET`.
    PasswordAndQuery,
}

fn position() -> impl Strategy<Value = Position> {
    let name = prop_oneof![
        Just("password"),
        Just("pass"),
        Just("token"),
        Just("queued_grants"),
    ];
    prop_oneof![
        Just(Position::UserOnly),
        Just(Position::Password),
        Just(Position::PasswordOnly),
        name.clone().prop_map(Position::Query),
        name.prop_map(Position::QueryAmong),
        Just(Position::QueryWithoutValue),
        Just(Position::PasswordAndQuery),
    ]
}

/// The URL schemes, and `""` for a string without one.
const SCHEMES: [&str; 10] = [
    "sqlite",
    "redis",
    "rediss",
    "redis+unix",
    "unix",
    "etcd",
    "etcds",
    "postgres",
    "postgresql",
    "",
];

/// A host on `port` (nothing listens there) and a path, each as `scheme` takes them.
fn host_and_path(scheme: &str, port: u16, pick: usize) -> (String, String) {
    let hosts = [
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        format!("127.0.0.1:{port},[::1]:{port}"),
    ];
    match scheme {
        "redis+unix" | "unix" => (String::new(), format!("{NOWHERE}/redis.sock")),
        // `sqlite:///abs` has no host; `sqlite://h/p` is a relative path, its "host" a
        // directory that does not exist.
        "sqlite" => [
            (String::new(), format!("{NOWHERE}/a.db")),
            (hosts[0].clone(), "/a.db".to_owned()),
            (hosts[1].clone(), "/a.db".to_owned()),
        ][pick % 3]
            .clone(),
        "etcd" | "etcds" => (
            hosts[pick % 3].clone(),
            ["", "/", "/app/locks/"][pick % 3].to_owned(),
        ),
        _ => (hosts[pick % 2].clone(), ["", "/0"][pick % 2].to_owned()),
    }
}

fn url(scheme: &str, host: &str, path: &str, position: Position, s: &str) -> String {
    let start = if scheme.is_empty() {
        String::new()
    } else {
        format!("{scheme}://")
    };
    match position {
        Position::UserOnly => format!("{start}{s}@{host}{path}"),
        Position::Password => format!("{start}user:{s}@{host}{path}"),
        Position::PasswordOnly => format!("{start}:{s}@{host}{path}"),
        Position::Query(name) => format!("{start}{host}{path}?{name}={s}"),
        Position::QueryAmong(name) => format!("{start}{host}{path}?db=0&{name}={s}&x=1"),
        Position::QueryWithoutValue => format!("{start}{host}{path}?{s}"),
        Position::PasswordAndQuery => format!("{start}user:{s}@{host}{path}?pass={s}"),
    }
}

/// Every log line of the process, from every crate and at every level (TRACE included), until
/// [`check_logs`] reads it.
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogWriter;

impl io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        LOGS.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The runtime the cases run on, with the log capture installed process-wide first (so the
/// runtime's threads and `spawn_blocking` threads log into it too).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        // Relative SQLite paths resolve here: should a URL ever be opened as a file (as
        // `user:pw@host` once was), it lands in a directory of its own, not in the crate.
        static CWD: OnceLock<tempfile::TempDir> = OnceLock::new();
        let cwd = CWD.get_or_init(|| tempfile::tempdir().expect("a temporary directory"));
        std::env::set_current_dir(cwd.path()).expect("enter the temporary directory");
        tracing::subscriber::set_global_default(
            tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_ansi(false)
                .with_writer(|| LogWriter)
                .finish(),
        )
        .expect("the only subscriber of this test binary");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        // The capture sees TRACE events of the runtime's threads and of blocking threads.
        // Checked here, before any case can read and clear the capture.
        rt.block_on(async {
            tokio::spawn(async { tracing::trace!(target: "lease_etcd", "probe-task") })
                .await
                .unwrap();
            tokio::task::spawn_blocking(|| {
                tracing::trace!(target: "lease_sqlite", "probe-blocking");
            })
            .await
            .unwrap();
        });
        let logs = String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned();
        assert!(
            logs.contains("probe-task") && logs.contains("probe-blocking"),
            "{logs}"
        );
        rt
    })
}

/// What was shown of one URL: error texts, `Debug` strings.
#[derive(Default)]
struct Shown(Vec<String>);

impl Shown {
    fn debug(&mut self, what: &str, x: &impl Debug) {
        self.0.push(format!("{what} Debug: {x:?}"));
        self.0.push(format!("{what} Debug: {x:#?}"));
    }

    /// An error's `Display` and `Debug`, and those of every error of its `source()` chain.
    fn error(&mut self, what: &str, e: &(dyn std::error::Error + 'static)) {
        self.0.push(format!("{what}: {e}"));
        self.debug(what, &e);
        let mut source = e.source();
        while let Some(s) = source {
            self.0.push(format!("{what}, source: {s}"));
            self.debug(&format!("{what}, source"), &s);
            source = s.source();
        }
    }

    fn result<T: Debug, E: std::error::Error + 'static>(&mut self, what: &str, r: &Result<T, E>) {
        match r {
            Ok(x) => self.debug(what, x),
            Err(e) => self.error(what, e),
        }
    }
}

/// The text holds a piece of a secret: its mark, as written or percent-encoded.
fn leaks(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    let mark = MARK.to_ascii_lowercase();
    let encoded = encode(MARK, Encoding::Full).to_ascii_lowercase();
    text.contains(&mark) || text.contains(&encoded)
}

/// Fails on any log line written since the last call that holds a piece of a secret. A line
/// that a background task (a connection attempt) writes after its case ended is caught by a
/// later case: then the failing input proptest reports is not the culprit, the line is.
fn check_logs() -> Result<(), TestCaseError> {
    let text = {
        let mut logs = LOGS.lock().unwrap_or_else(|e| e.into_inner());
        let text = String::from_utf8_lossy(&logs).into_owned();
        logs.clear();
        text
    };
    for line in text.lines() {
        prop_assert!(!leaks(line), "a log line shows a secret: {line}");
    }
    Ok(())
}

/// Gives `url` to every parser, builder and `open` that takes its scheme, and records what
/// they show.
async fn try_everything(url: &str, scheme: &str) -> Shown {
    let mut shown = Shown::default();
    shown.result("Scheme::of", &leasehold::Scheme::of(url));
    #[cfg(feature = "sqlite-system")]
    if scheme.is_empty() || scheme == "sqlite" {
        // `SqliteStore::open(path)` is left out: it takes a path, not a URL, and a path is
        // shown in its messages whatever it holds (`/tmp/secret.db` is a file name).
        let r = leasehold::sqlite::SqliteStore::from_url(url).await;
        shown.result("SqliteStore::from_url", &r);
    }
    #[cfg(feature = "redis")]
    if scheme.is_empty() || scheme.starts_with("redis") || scheme == "unix" {
        // `RedisStoreBuilder::connection_url` is left out: it returns the URL as given, for
        // other clients of the same server, by design.
        let b = leasehold::redis::RedisStore::builder(url);
        shown.debug("RedisStoreBuilder", &b);
        let r = b
            .connect_timeout(Duration::from_millis(500))
            .connect()
            .await;
        shown.result("RedisStoreBuilder::connect", &r);
    }
    #[cfg(feature = "etcd")]
    if scheme.is_empty() || scheme.starts_with("etcd") {
        let b = leasehold::etcd::EtcdStoreBuilder::from_url(url);
        shown.result("EtcdStoreBuilder::from_url", &b);
        if let Ok(b) = b {
            let r = b
                .connect_timeout(Duration::from_millis(500))
                .request_timeout(Duration::from_millis(500))
                .connect()
                .await;
            shown.result("EtcdStoreBuilder::connect", &r);
        }
    }
    #[cfg(feature = "postgres")]
    if scheme.is_empty() || scheme.starts_with("postgres") {
        let b = leasehold::postgres::PostgresStore::builder(url);
        shown.debug("PostgresStoreBuilder", &b);
        let r = b
            .connect_timeout(Duration::from_millis(500))
            .connect()
            .await;
        shown.result("PostgresStoreBuilder::connect", &r);
    }
    let r = leasehold::open(url).await;
    shown.result("leasehold::open", &r);
    shown
}

fn check_url(url: &str, scheme: &str) -> Result<(), TestCaseError> {
    let shown = runtime().block_on(try_everything(url, scheme));
    for text in &shown.0 {
        prop_assert!(!leaks(text), "{url}: {text}");
    }
    check_logs()
}

/// A port on 127.0.0.1 that nothing listens on (it was free a moment ago).
fn refusing_port() -> u16 {
    static PORT: OnceLock<u16> = OnceLock::new();
    *PORT.get_or_init(lease_testkit::free_port)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn no_secret_of_a_url_shows_in_errors_debug_or_logs(
        secret in secret(),
        scheme in proptest::sample::select(&SCHEMES[..]),
        position in position(),
        encoding in prop_oneof![
            2 => Just(Encoding::Raw),
            1 => Just(Encoding::Full),
            1 => Just(Encoding::Delimiters),
        ],
        pick in 0..3usize,
    ) {
        let (host, path) = host_and_path(scheme, refusing_port(), pick);
        let url = url(scheme, &host, &path, position, &encode(&secret, encoding));
        // Without a scheme only user info makes a secret: `host/path?token=x` is a relative
        // file path to `open` (and `redact_url` keeps it), not a URL with a query.
        prop_assume!(
            !scheme.is_empty()
                || matches!(
                    position,
                    Position::UserOnly | Position::Password | Position::PasswordOnly
                )
        );
        // A raw secret in a query that holds `&` and then `=` (as a parameter without a value,
        // any `=`) gives the query a parameter whose *name* is a piece of the secret: by the
        // query's syntax it is one, and `redact_url` shows names. Such a secret must be
        // percent-encoded in a query.
        let encoded = encode(&secret, encoding);
        let names_a_parameter = match position {
            Position::QueryWithoutValue => encoded.split('&').any(|p| p.contains('=')),
            Position::Query(_) | Position::QueryAmong(_) | Position::PasswordAndQuery => {
                encoded.split('&').skip(1).any(|p| p.contains('='))
            }
            _ => false,
        };
        prop_assume!(!names_a_parameter);
        check_url(&url, scheme)?;
    }
}

/// The cases above fail fast: a refused port or a missing socket, not a timeout.
#[test]
fn a_case_is_quick() {
    let port = refusing_port();
    for scheme in SCHEMES {
        let (host, path) = host_and_path(scheme, port, 2);
        let url = url(scheme, &host, &path, Position::Password, "p4ss");
        let started = Instant::now();
        let shown = runtime().block_on(try_everything(&url, scheme));
        let took = started.elapsed();
        assert!(took < Duration::from_secs(3), "{url} took {took:?}");
        assert!(!shown.0.is_empty());
        println!("{url}: {took:?}");
    }
}
