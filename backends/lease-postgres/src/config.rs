//! Connection settings: [`PostgresStoreBuilder`], the URL forms and the store's own URL options.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use lease_core::StoreError;
use lease_core::redact::redact_url;
use tokio_postgres::config::SslMode;

use crate::NAME;
use crate::store::PostgresStore;

/// The schema the store's tables live in when none is given.
pub const DEFAULT_SCHEMA: &str = "lease";

/// The URL query options tokio-postgres takes (passed on to it as they are).
const DRIVER_OPTIONS: &[&str] = &[
    "user",
    "password",
    "dbname",
    "options",
    "application_name",
    "sslmode",
    "sslnegotiation",
    "host",
    "hostaddr",
    "port",
    "connect_timeout",
    "tcp_user_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries",
    "target_session_attrs",
    "channel_binding",
    "load_balance_hosts",
];

/// The URL query options of the store itself, taken out before the driver parses the URL.
const STORE_OPTIONS: &[&str] = &[
    "schema",
    "statement_timeout",
    "notifications",
    "queued_grants",
    "sslrootcert",
];

/// Builds a [`PostgresStore`]: server, schema, timeouts, wake-ups.
///
/// Start from [`PostgresStore::builder`] with a URL,
/// `postgres://user:password@host:port/database?option=value&…` (also `postgresql://`). Besides
/// the driver's own options (`sslmode`, `application_name`, `connect_timeout`, `options`,
/// `target_session_attrs`, …) the query may carry the store's:
///
/// | option | meaning |
/// |---|---|
/// | `schema=NAME` | [`schema`](Self::schema) |
/// | `statement_timeout=MS` | [`statement_timeout`](Self::statement_timeout), in milliseconds (or with a unit: `500ms`, `2s`) |
/// | `notifications=true\|false` | [`notifications`](Self::notifications) |
/// | `queued_grants=true\|false` | [`queued_grants`](Self::queued_grants) |
/// | `sslrootcert=PATH` | with feature `tls`: the CA certificate (PEM) that signed the server's |
///
/// Any other option is an error naming it. The builder's `Debug` output, and every message of
/// the store, shows the URL with its credentials hidden.
#[derive(Clone)]
pub struct PostgresStoreBuilder {
    /// The URL as given, for messages (always redacted when shown).
    pub(crate) url: String,
    /// The driver's configuration, or why the URL is refused.
    pub(crate) config: Result<tokio_postgres::Config, String>,
    pub(crate) listen: Option<(String, Result<tokio_postgres::Config, String>)>,
    pub(crate) schema: String,
    pub(crate) statement_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) notifications: bool,
    pub(crate) queued_grants: bool,
    pub(crate) root_cert: Option<std::path::PathBuf>,
}

/// What a URL yields: the driver's configuration, and the store options it carried.
#[derive(Default)]
struct Parsed {
    schema: Option<String>,
    statement_timeout: Option<Duration>,
    notifications: Option<bool>,
    queued_grants: Option<bool>,
    root_cert: Option<std::path::PathBuf>,
}

/// Splits the store's options out of `url`'s query and parses the rest with tokio-postgres.
fn parse(url: &str) -> Result<(tokio_postgres::Config, Parsed), String> {
    let shown = redact_url(url);
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    if !matches!(scheme.as_deref(), Some("postgres" | "postgresql")) {
        return Err(format!(
            "`{shown}` is not a PostgreSQL URL: expected \
             postgres://[user[:password]@]host[:port][/database][?option=value&…] (or postgresql://)"
        ));
    }
    // A `?` before the last `@` is either in the password or starts a query whose value holds
    // an `@`; either way the query would start inside a secret, and an option named from it
    // would show a piece of it (`redact_url` hides everything after `://` then): refused
    // before anything of it is read.
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    if after_scheme
        .rfind('@')
        .is_some_and(|at| after_scheme[..at].contains('?'))
    {
        return Err(format!(
            "the URL `{shown}` has a `?` before its last `@`: write a `?` of the user name or \
             password as `%3F`, an `@` in the query as `%40`"
        ));
    }
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    if query.contains('#') || base.contains('#') {
        return Err(format!(
            "the URL `{shown}` has a fragment; a PostgreSQL URL takes none"
        ));
    }
    let mut parsed = Parsed::default();
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        // A parameter without `=` is not echoed: `redact_url` hides it whole, as it may be a
        // secret written where a value was meant.
        let Some((name, value)) = pair.split_once('=') else {
            return Err(format!(
                "the URL `{shown}` has a query parameter without `=` (options are NAME=VALUE)"
            ));
        };
        let value = percent_decode(value)
            .ok_or_else(|| format!("the URL `{shown}` has a bad percent escape in `{name}`"))?;
        match name {
            "schema" => parsed.schema = Some(value),
            "statement_timeout" => {
                parsed.statement_timeout = Some(parse_duration(&value).ok_or_else(|| {
                    "URL option `statement_timeout`: expected milliseconds, or a number with \
                     `ms` or `s`"
                        .to_owned()
                })?);
            }
            "notifications" => parsed.notifications = Some(yes_or_no(name, &value)?),
            "queued_grants" => parsed.queued_grants = Some(yes_or_no(name, &value)?),
            "sslrootcert" => parsed.root_cert = Some(value.into()),
            _ if DRIVER_OPTIONS.contains(&name) => kept.push(pair),
            _ => {
                return Err(format!(
                    "the URL `{shown}` has an unknown option `{}` (the store takes {}; the \
                     driver takes {})",
                    name.escape_debug(),
                    STORE_OPTIONS.join(", "),
                    DRIVER_OPTIONS.join(", ")
                ));
            }
        }
    }
    let driver_url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    // tokio-postgres's messages name the option, never its value, so nothing of the
    // credentials can show.
    let config = tokio_postgres::Config::from_str(&driver_url)
        .map_err(|e| format!("`{shown}` is not a valid PostgreSQL URL: {e}"))?;
    if config.get_hosts().is_empty() {
        return Err(format!("the URL `{shown}` names no host"));
    }
    Ok((config, parsed))
}

/// `true`/`1` or `false`/`0` (any case).
fn yes_or_no(name: &str, value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        // Not the value: messages show no value of the query, as `redact_url` does not.
        _ => Err(format!("URL option `{name}`: expected true, false, 1 or 0")),
    }
}

/// `500`, `500ms`, `2s` → a duration; `None` for anything else.
fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000)
    } else {
        (s, 1)
    };
    let n: u64 = num.trim().parse().ok()?;
    Some(Duration::from_millis(n.checked_mul(scale)?))
}

/// Decodes `%XX` escapes; `None` for a malformed one or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl PostgresStoreBuilder {
    pub(crate) fn new(url: &str) -> Self {
        let mut b = Self {
            url: url.to_owned(),
            config: Err(String::new()),
            listen: None,
            schema: DEFAULT_SCHEMA.to_owned(),
            statement_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
            notifications: true,
            queued_grants: true,
            root_cert: None,
        };
        b.config = parse(url).map(|(config, parsed)| {
            if let Some(schema) = parsed.schema {
                b.schema = schema;
            }
            if let Some(t) = parsed.statement_timeout {
                b.statement_timeout = t;
            }
            if let Some(n) = parsed.notifications {
                b.notifications = n;
            }
            if let Some(q) = parsed.queued_grants {
                b.queued_grants = q;
            }
            b.root_cert = parsed.root_cert;
            config
        });
        b
    }

    /// The schema the store's tables live in (default [`DEFAULT_SCHEMA`], `lease`): created at
    /// the first [`connect`](Self::connect) if missing (which needs the `CREATE` privilege on
    /// the database; a schema created beforehand by an administrator needs only `USAGE` and
    /// `CREATE` on it, or, once migrated, `SELECT, INSERT, UPDATE` on its tables). Any name
    /// PostgreSQL accepts (1 to 63 bytes, no NUL); it is always quoted, so it is taken as
    /// written, case included. Stores on different schemas never see each other's keys.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// How long one statement may take before the call fails with a transient error (default
    /// 2 s): the store stops waiting, sends PostgreSQL a cancel request for it, and opens a
    /// fresh connection for the next call. A row locked by another session (an operator's
    /// open transaction) or a stuck server thus costs a renewal one timeout, never a hang. Keep
    /// it well below the lease, so that a renewal can be retried in time.
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// How long connecting (TCP, TLS, authentication, and the schema check) may take (default
    /// 5 s). An unreachable server fails [`connect`](Self::connect) within about this long.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Whether the store keeps one connection that `LISTEN`s for releases (default true), so
    /// that [`wait_for_change`](lease_core::LeaseStore::wait_for_change) returns at once when a
    /// key is released. Off, waiters wake when the holder's lease runs out, or at their bound.
    ///
    /// `LISTEN` needs a session of its own: through a PgBouncer in *transaction* mode it
    /// silently hears nothing. Behind such a pooler, point the listening connection at the
    /// server directly ([`listen_url`](Self::listen_url)), or turn notifications off.
    pub fn notifications(mut self, yes: bool) -> Self {
        self.notifications = yes;
        self
    }

    /// Whether the store keeps a queue of waiters per key and a release hands the key to the
    /// oldest live one in the same statement (default **true**; `?queued_grants=false` in the
    /// URL turns it off). On, the store declares
    /// [`Capabilities::queued_grants`](lease_core::Capabilities::queued_grants), so the lock's
    /// waiting calls queue ([`enqueue`](lease_core::LeaseStore::enqueue)) instead of all
    /// racing for the key at every release; see [`Enqueued`](lease_core::Enqueued) for the
    /// rules.
    ///
    /// - **Table.** `<schema>.waiters`: one entry per (key, holder), in the order of an
    ///   identity column, with the lease the waiter asked for and a liveness deadline on the
    ///   server's clock (`clock_timestamp()` + patience, refreshed by every `enqueue`).
    /// - **Grants.** Every operation is one call of a PL/pgSQL function of the schema
    ///   (`lease_acquire`, `lease_release`, `lease_leave`) that locks the key's lease row
    ///   first, drops dead entries, and grants a free key to the oldest live entry (fence + 1,
    ///   the lease it asked for): a release, or any call that finds the lease expired, hands
    ///   the key over in its own transaction. The grant is announced with `pg_notify` (at
    ///   commit) to the granted waiter, whose
    ///   [`wait_for_grant`](lease_core::LeaseStore::wait_for_grant) returns its fence.
    /// - **No barging.** While a live entry is queued, nobody else is granted the key, the
    ///   holder that just released it included.
    /// - **Mixed settings.** Give every process that shares a schema the same setting: a store
    ///   without queued grants ignores the queue (it can be granted a key ahead of the waiters,
    ///   and its releases do not hand over; the queued waiters then take the key at their next
    ///   call, woken by its release announcement).
    ///
    /// On by default, as for the Redis and SQLite stores, because it was ahead of the barging
    /// mode in every row of one bench run (`lease-bench --features postgres -- --store postgres
    /// --scenario floor,uncontended,handoff,one-key --runs 1`, PostgreSQL 15, 2 cores under
    /// load; floor 425 µs): uncontended acquire p50 602 µs against 737 µs; handoff p50 at 1 ms
    /// holds 0.94–1.62 ms against 1.78–2.73 ms over 1 to 8 waiters; one key with 8 processes
    /// and 1 ms holds 354 against 164 acquisitions/s (and 466 against 200 without holds). An
    /// earlier quick run had it slower uncontended (3.98 ms against 2.61 ms on a busier
    /// machine); the full run did not repeat that. `pg_advisory_lock` stays well ahead on
    /// handoff (335 µs at 1 ms holds): the server hands it over without a commit.
    pub fn queued_grants(mut self, yes: bool) -> Self {
        self.queued_grants = yes;
        self
    }

    /// The server the listening connection (see [`notifications`](Self::notifications))
    /// connects to, when it differs from the store's URL: the PostgreSQL server itself while
    /// the statements go through a transaction-pooling PgBouncer. Same URL forms; the store's
    /// own options are not taken here.
    pub fn listen_url(mut self, url: &str) -> Self {
        let config = parse(url).and_then(|(config, parsed)| {
            if parsed.schema.is_some()
                || parsed.statement_timeout.is_some()
                || parsed.notifications.is_some()
                || parsed.queued_grants.is_some()
            {
                Err(format!(
                    "the listen URL `{}` carries store options; give them on the store's URL",
                    redact_url(url)
                ))
            } else {
                Ok(config)
            }
        });
        self.listen = Some((url.to_owned(), config));
        self
    }

    /// With feature `tls`: the CA certificate (a PEM file) that the server's certificate must
    /// chain to, instead of the system's roots; the URL option `sslrootcert=PATH` sets the same.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn root_cert(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.root_cert = Some(path.into());
        self
    }

    /// Connects, checks the server and brings the schema to this version's (creating it at the
    /// first use), and starts the listening connection.
    ///
    /// # Errors
    ///
    /// A bad URL, schema name or timeout is
    /// [`InvalidInput`](lease_core::StoreErrorKind::InvalidInput); refused credentials, a
    /// missing privilege, a schema written by a newer version of this crate or a server older
    /// than PostgreSQL 10 are permanent errors saying so; an unreachable server is a transient
    /// error naming the address, returned within about `connect_timeout`. Messages never
    /// contain the password.
    pub async fn connect(self) -> Result<PostgresStore, StoreError> {
        PostgresStore::connect_with(self).await
    }

    /// The driver's configuration the store connects with: the URL's driver options, without
    /// the store's own (`schema`, `queued_grants`, …). For other clients of the same server
    /// beside the store (scripts, tools, benchmarks), so that one URL configures both.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect) for a URL it refuses.
    pub fn connection_config(&self) -> Result<tokio_postgres::Config, StoreError> {
        self.config
            .clone()
            .map_err(|e| StoreError::invalid_input(NAME, e))
    }

    /// The URL, credentials hidden.
    pub(crate) fn shown(&self) -> String {
        redact_url(&self.url)
    }

    /// Checks everything that needs no server.
    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        let invalid = |m: String| StoreError::invalid_input(NAME, m);
        let config = self.config.as_ref().map_err(|e| invalid(e.clone()))?;
        if let Some((_, Err(e))) = &self.listen {
            return Err(invalid(e.clone()));
        }
        if self.schema.is_empty() || self.schema.len() > 63 || self.schema.contains('\0') {
            return Err(invalid(format!(
                "schema name `{}` must be 1 to 63 bytes without NUL",
                self.schema.escape_debug()
            )));
        }
        if self.statement_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(invalid("timeouts must be above zero".to_owned()));
        }
        let tls_wanted = config.get_ssl_mode() == SslMode::Require
            || self
                .listen
                .as_ref()
                .and_then(|(_, c)| c.as_ref().ok())
                .is_some_and(|c| c.get_ssl_mode() == SslMode::Require);
        if tls_wanted && !cfg!(feature = "tls") {
            return Err(invalid(format!(
                "`{}` asks for TLS (sslmode=require): enable the `tls` feature of lease-postgres",
                self.shown()
            )));
        }
        if self.root_cert.is_some() && !cfg!(feature = "tls") {
            return Err(invalid(
                "`sslrootcert` needs the `tls` feature of lease-postgres".to_owned(),
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for PostgresStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStoreBuilder")
            .field("server", &self.shown())
            .field("listen", &self.listen.as_ref().map(|(u, _)| redact_url(u)))
            .field("schema", &self.schema)
            .field("statement_timeout", &self.statement_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("notifications", &self.notifications)
            .field("queued_grants", &self.queued_grants)
            .field("root_cert", &self.root_cert)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_options_are_taken_out_and_the_rest_goes_to_the_driver() {
        let b = PostgresStoreBuilder::new(
            "postgres://app:hunter2@db.internal:6432/locks?schema=My%20Locks&statement_timeout=750\
             &notifications=false&application_name=jobs&queued_grants=1",
        );
        b.validate().expect("valid");
        assert_eq!(b.schema, "My Locks");
        assert_eq!(b.statement_timeout, Duration::from_millis(750));
        assert!(!b.notifications);
        assert!(b.queued_grants);
        let config = b.config.as_ref().unwrap();
        assert_eq!(config.get_dbname(), Some("locks"));
        assert_eq!(config.get_user(), Some("app"));
        assert_eq!(config.get_ports(), [6432]);
        assert_eq!(config.get_application_name(), Some("jobs"));
        assert_eq!(
            b.connection_config().unwrap().get_dbname(),
            Some("locks"),
            "the driver's configuration, for other clients"
        );
        let b = PostgresStoreBuilder::new("postgresql://h/db?statement_timeout=2s");
        assert_eq!(b.statement_timeout, Duration::from_secs(2));
        assert_eq!(b.schema, DEFAULT_SCHEMA);
        assert!(b.notifications);
        // A method called later overrides the URL.
        let b = PostgresStoreBuilder::new("postgres://h/?schema=a").schema("b");
        assert_eq!(b.schema, "b");
    }

    #[test]
    fn bad_urls_say_what_is_wrong_without_the_password() {
        for (url, says) in [
            ("redis://u:hunter2@h/", "not a PostgreSQL URL"),
            ("u:hunter2@h/db", "not a PostgreSQL URL"),
            (
                "postgres://u:hunter2@h/db?lease_ttl=3",
                "unknown option `lease_ttl`",
            ),
            (
                "postgres://u:hunter2@h/db?notifications=hunter2",
                "URL option `notifications`: expected true",
            ),
            (
                "postgres://u:hunter2@h/db?statement_timeout=hunter2",
                "URL option `statement_timeout`: expected milliseconds",
            ),
            (
                "postgres://u:hunter2@h/db?hunter2",
                "a query parameter without `=`",
            ),
            (
                "postgres://u:hunter2?x@h:1?pass=hunter2?x",
                "a `?` before its last `@`",
            ),
            (
                "postgres://u:hunter2@h:notaport/db",
                "not a valid PostgreSQL URL",
            ),
            (
                "postgres://u:hunter2@h/db?sslmode=sometimes",
                "not a valid PostgreSQL URL",
            ),
            ("postgres://u:hunter2@h/db#frag", "fragment"),
        ] {
            let b = PostgresStoreBuilder::new(url);
            let e = b.validate().expect_err(url);
            assert_eq!(e.kind(), lease_core::StoreErrorKind::InvalidInput, "{url}");
            let text = format!("{e} {e:?} {b:?}");
            assert!(text.contains(says), "{url}: {text}");
            assert!(!text.contains("hunter2"), "{url}: {text}");
        }
        let b = PostgresStoreBuilder::new("postgres://h/db").schema("");
        assert!(
            b.validate()
                .unwrap_err()
                .to_string()
                .contains("schema name")
        );
        let b = PostgresStoreBuilder::new("postgres://h/db").schema("x".repeat(64));
        assert!(b.validate().is_err());
        let b = PostgresStoreBuilder::new("postgres://h/db").statement_timeout(Duration::ZERO);
        assert!(b.validate().unwrap_err().to_string().contains("above zero"));
        let b = PostgresStoreBuilder::new("postgres://h/db")
            .listen_url("postgres://u:hunter2@h/?schema=x");
        let e = b.validate().unwrap_err().to_string();
        assert!(e.contains("store options") && !e.contains("hunter2"), "{e}");
        #[cfg(not(feature = "tls"))]
        {
            let b = PostgresStoreBuilder::new("postgres://h/db?sslmode=require");
            let e = b.validate().unwrap_err().to_string();
            assert!(e.contains("`tls` feature"), "{e}");
        }
    }

    #[test]
    fn builder_debug_hides_the_password() {
        let b =
            PostgresStoreBuilder::new("postgres://locker:hunter2@localhost/db?password=hunter2")
                .listen_url("postgres://locker:hunter2@localhost:5432/db");
        let shown = format!("{b:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("***@localhost"), "{shown}");
    }
}
