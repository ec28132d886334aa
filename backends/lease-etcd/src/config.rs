//! Connection settings: [`EtcdStoreBuilder`], the `etcd://` URL form, and credential redaction.
//!
//! The settings know nothing of the store they build: [`EtcdStoreBuilder::connect`] is
//! implemented beside [`EtcdStore`](crate::EtcdStore), which it returns.

use std::fmt;
use std::time::Duration;

use lease_core::StoreError;

use crate::error::NAME;

/// The key prefix used when none is given: every key this store writes starts with it.
pub const DEFAULT_PREFIX: &str = "lease/";

/// Builds an [`EtcdStore`](crate::EtcdStore): endpoints, key prefix, credentials, TLS and
/// timeouts.
///
/// Start from [`EtcdStore::builder`](crate::EtcdStore::builder) (endpoints) or
/// [`EtcdStoreBuilder::from_url`]. The builder's
/// `Debug` output shows neither the user name nor the password.
#[derive(Clone)]
pub struct EtcdStoreBuilder {
    pub(crate) endpoints: Vec<String>,
    pub(crate) prefix: Vec<u8>,
    pub(crate) user: Option<(String, String)>,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) tls: bool,
    pub(crate) queued_grants: bool,
    #[cfg(feature = "tls")]
    pub(crate) tls_options: Option<etcd_client::TlsOptions>,
}

impl EtcdStoreBuilder {
    pub(crate) fn new<I, S>(endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            prefix: DEFAULT_PREFIX.as_bytes().to_vec(),
            user: None,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
            tls: false,
            queued_grants: false,
            #[cfg(feature = "tls")]
            tls_options: None,
        }
    }

    /// Reads endpoints, credentials and key prefix from a URL:
    ///
    /// `etcd://[user[:password]@]host1:port1[,host2:port2…][/prefix][?queued_grants=true]`
    ///
    /// `etcds://` is the same over TLS (feature `tls`). User, password and prefix may be
    /// percent-encoded (`%40` for `@`). The user info ends at the *last* `@`, as
    /// [`redact_url`](lease_core::redact::redact_url) reads it, so a password may hold `/`, `:`
    /// and `@` unencoded, while an `@` in the prefix or the query must be written `%40`; a `?`
    /// in the user info must be written `%3F` (unencoded, it could as well start a query whose
    /// value holds the `@`, and such a URL is refused). Without a path the prefix is [`DEFAULT_PREFIX`]; a path is
    /// used verbatim as the prefix after its leading `/` (so `etcd://h:2379/app/locks/` gives the
    /// prefix `app/locks/`, and `etcd://h:2379/` the empty prefix). A host without a port gets
    /// etcd's client port 2379. The query takes one option, `queued_grants=true|false|1|0`
    /// ([`queued_grants`](Self::queued_grants)); a `?` in the prefix is written `%3F`.
    ///
    /// # Errors
    ///
    /// A [`StoreErrorKind::InvalidInput`](lease_core::StoreErrorKind::InvalidInput) error naming
    /// what is wrong with the URL. The message never contains the user name, the password nor
    /// a value of the query.
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        parse_url(url)
    }

    /// Every key this store writes starts with `prefix` (default [`DEFAULT_PREFIX`]). Stores with
    /// different prefixes never see each other's keys.
    pub fn prefix(mut self, prefix: impl AsRef<[u8]>) -> Self {
        self.prefix = prefix.as_ref().to_vec();
        self
    }

    /// Authenticates as `user` with `password` (etcd's user/password auth). The token etcd hands
    /// out expires (300 s idle by default); the store re-authenticates and retries when it does.
    pub fn user(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some((user.into(), password.into()));
        self
    }

    /// How long connecting to an endpoint may take (default 3 s). An unreachable cluster fails
    /// [`connect`](Self::connect) within about this long plus one request timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one request to etcd may take before it fails as a transient error (default 5 s).
    /// The lock's renewal retries within the lease, so keep this well below the lease.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Queued grants (default off): waiting locks queue in etcd, in the order they first
    /// asked, and a release hands the key to the oldest live waiter in the same transaction
    /// ([`Capabilities::queued_grants`](lease_core::Capabilities::queued_grants); the
    /// [crate docs](crate) give the protocol). The URL option `?queued_grants=true` (or `1`;
    /// `false`/`0` for off) of [`from_url`](Self::from_url) sets the same. Stores with and
    /// without it may share keys: they never both hold one, and fences keep increasing.
    pub fn queued_grants(mut self, yes: bool) -> Self {
        self.queued_grants = yes;
        self
    }

    /// Connects over TLS with these settings (CA, client certificate for certificate auth,
    /// domain name). Implies TLS even for `etcd://` URLs.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls(mut self, options: etcd_client::TlsOptions) -> Self {
        self.tls = true;
        self.tls_options = Some(options);
        self
    }

    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        if self.endpoints.is_empty() {
            return Err(StoreError::invalid_input(NAME, "no etcd endpoints given"));
        }
        for e in &self.endpoints {
            let bare = e
                .strip_prefix("http://")
                .or_else(|| e.strip_prefix("https://"))
                .unwrap_or(e);
            if bare.is_empty() || bare.contains(['/', '@', ' ', ',']) {
                return Err(StoreError::invalid_input(
                    NAME,
                    format!(
                        "endpoint `{}` is not of the form host:port",
                        lease_core::redact::redact_url(e)
                    ),
                ));
            }
        }
        if self.connect_timeout.is_zero() || self.request_timeout.is_zero() {
            return Err(StoreError::invalid_input(
                NAME,
                "timeouts must be above zero",
            ));
        }
        #[cfg(not(feature = "tls"))]
        if self.tls || self.endpoints.iter().any(|e| e.starts_with("https://")) {
            return Err(StoreError::invalid_input(
                NAME,
                "TLS endpoints need the `tls` feature of lease-etcd",
            ));
        }
        Ok(())
    }

    /// The endpoints as etcd-client wants them: with a scheme when TLS is on.
    pub(crate) fn client_endpoints(&self) -> Vec<String> {
        self.endpoints
            .iter()
            .map(|e| {
                if self.tls && !e.starts_with("https://") && !e.starts_with("http://") {
                    format!("https://{e}")
                } else {
                    e.clone()
                }
            })
            .collect()
    }
}

impl fmt::Debug for EtcdStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStoreBuilder")
            .field("endpoints", &self.endpoints)
            .field("prefix", &String::from_utf8_lossy(&self.prefix))
            // Not even the user name: a token passed as `etcd://TOKEN@host` is one.
            .field("user", &self.user.as_ref().map(|_| "***"))
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("tls", &self.tls)
            .field("queued_grants", &self.queued_grants)
            .finish()
    }
}

fn bad_url(msg: impl fmt::Display) -> StoreError {
    StoreError::invalid_input(NAME, format!("invalid etcd URL: {msg}"))
}

fn parse_url(url: &str) -> Result<EtcdStoreBuilder, StoreError> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("etcd://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("etcds://") {
        (true, r)
    } else {
        // Never echo the URL: it may hold a password.
        return Err(bad_url(
            "it must start with `etcd://` or `etcds://` (form: etcd://[user:password@]host:port[,host:port…][/prefix])",
        ));
    };
    // The user info ends at the last `@`, as `redact_url` reads it (so messages and `Debug`,
    // which show what follows it, never show a piece of it): a password may hold `/`, `:` and
    // `@` unencoded; an `@` in the prefix or the query is written `%40`. A path (`etcd:///p`)
    // has none.
    let (userinfo, rest) = match rest.rfind('@').filter(|_| !rest.starts_with('/')) {
        Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
        None => (None, rest),
    };
    // A `?` before that `@` is either in the password or starts a query whose value has an `@`,
    // and then what follows the `@` would be a secret's tail read as a host: refused.
    if userinfo.is_some_and(|info| info.contains('?')) {
        return Err(bad_url(
            "a `?` comes before the last `@`: write a `?` of the user name or password as \
             `%3F`, an `@` in the prefix or the query as `%40`",
        ));
    }
    let (rest, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let queued_grants = query.map(parse_query).transpose()?.unwrap_or(false);
    let (hosts, path) = match rest.split_once('/') {
        Some((hosts, path)) => (hosts, Some(path)),
        None => (rest, None),
    };
    let user = match userinfo {
        None => None,
        Some(info) => {
            let (u, p) = info.split_once(':').unwrap_or((info, ""));
            let u = percent_decode(u).ok_or_else(|| bad_url("the user name is not valid UTF-8"))?;
            let p = percent_decode(p).ok_or_else(|| bad_url("the password is not valid UTF-8"))?;
            if u.is_empty() {
                return Err(bad_url("the user name before `@` is empty"));
            }
            Some((u, p))
        }
    };
    if hosts.is_empty() {
        return Err(bad_url("no host given"));
    }
    let mut endpoints = Vec::new();
    for h in hosts.split(',') {
        if h.is_empty() {
            return Err(bad_url("an empty host in the host list"));
        }
        let endpoint = match h.rsplit_once(':') {
            // `[::1]:2379` or `host:2379`
            Some((host, port)) if !port.contains(']') => {
                if host.is_empty() {
                    return Err(bad_url(format!("host `{h}` has no name")));
                }
                port.parse::<u16>()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| {
                        bad_url(format!(
                            "port `{port}` of host `{host}` is not a port number"
                        ))
                    })?;
                h.to_owned()
            }
            _ => format!("{h}:2379"),
        };
        endpoints.push(endpoint);
    }
    let mut b = EtcdStoreBuilder::new(endpoints);
    b.tls = tls;
    if let Some(path) = path {
        let prefix =
            percent_decode_bytes(path).ok_or_else(|| bad_url("bad `%` escape in the prefix"))?;
        b.prefix = prefix;
    }
    b.user = user;
    b.queued_grants = queued_grants;
    Ok(b)
}

/// The URL's query: `queued_grants=true|false|1|0`, the only option. Messages name options,
/// never values (`redact_url` hides every value, and a parameter without `=`).
fn parse_query(query: &str) -> Result<bool, StoreError> {
    let mut queued = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("queued_grants", "true" | "1")) => queued = true,
            Some(("queued_grants", "false" | "0")) => queued = false,
            Some(("queued_grants", _)) => {
                return Err(bad_url("queued_grants takes true, false, 1 or 0"));
            }
            None if pair == "queued_grants" => {
                return Err(bad_url("queued_grants takes true, false, 1 or 0"));
            }
            Some((name, _)) => {
                return Err(bad_url(format!(
                    "unknown option `{name}` (the one option is `queued_grants`)"
                )));
            }
            None => {
                return Err(bad_url(
                    "an option without `=` (the one option is `queued_grants=true|false`)",
                ));
            }
        }
    }
    Ok(queued)
}

fn percent_decode(s: &str) -> Option<String> {
    String::from_utf8(percent_decode_bytes(s)?).ok()
}

fn percent_decode_bytes(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lease_core::StoreErrorKind;

    #[test]
    fn url_with_hosts_credentials_and_prefix() {
        let b = EtcdStoreBuilder::from_url("etcd://ann:s%40cret@h1:2379,h2:12379,h3/app/locks/")
            .unwrap();
        assert_eq!(b.endpoints, ["h1:2379", "h2:12379", "h3:2379"]);
        assert_eq!(b.user, Some(("ann".into(), "s@cret".into())));
        assert_eq!(b.prefix, b"app/locks/");
        assert!(!b.tls);
        let b = EtcdStoreBuilder::from_url("etcd://127.0.0.1:2379").unwrap();
        assert_eq!(b.prefix, DEFAULT_PREFIX.as_bytes());
        assert_eq!(b.user, None);
        let b = EtcdStoreBuilder::from_url("etcd://[::1]:2379/").unwrap();
        assert_eq!(b.endpoints, ["[::1]:2379"]);
        assert_eq!(b.prefix, b"");
        let b = EtcdStoreBuilder::from_url("etcds://h:1").unwrap();
        assert!(b.tls);
        // The user info ends at the last `@`, as `redact_url` reads it: a password may hold
        // `/`, `:` and `@` unencoded; an `@` in the prefix is written `%40`.
        let b = EtcdStoreBuilder::from_url("etcd://u:pa/ss:w@rd@h:1/p%40q/").unwrap();
        assert_eq!(b.user, Some(("u".into(), "pa/ss:w@rd".into())));
        assert_eq!(b.endpoints, ["h:1"]);
        assert_eq!(b.prefix, b"p@q/");
        // A path (`etcd:///p`) has no user info, even with an `@`.
        let e = EtcdStoreBuilder::from_url("etcd:///p@h:1").unwrap_err();
        assert!(e.to_string().contains("no host"), "{e}");
    }

    #[test]
    fn the_queued_grants_option_is_read_from_the_query() {
        let b = EtcdStoreBuilder::from_url("etcd://h:1/app/?queued_grants=true").unwrap();
        assert!(b.queued_grants);
        assert_eq!(b.prefix, b"app/");
        let b = EtcdStoreBuilder::from_url("etcd://h:1?queued_grants=1").unwrap();
        assert!(b.queued_grants);
        assert_eq!(b.endpoints, ["h:1"]);
        assert_eq!(b.prefix, DEFAULT_PREFIX.as_bytes());
        let b = EtcdStoreBuilder::from_url("etcd://h:1/app/?queued_grants=false").unwrap();
        assert!(!b.queued_grants);
        let b = EtcdStoreBuilder::from_url("etcd://h:1/app/").unwrap();
        assert!(!b.queued_grants, "off by default");
        // A `?` in a password or the prefix is written `%3F`.
        let b = EtcdStoreBuilder::from_url("etcd://u:a%3Fb@h:1/x%3Fy/?queued_grants=true").unwrap();
        assert_eq!(b.user, Some(("u".into(), "a?b".into())));
        assert_eq!(b.prefix, b"x?y/");
        assert!(b.queued_grants);
        let b = EtcdStoreBuilder::from_url("etcd://h:1/")
            .unwrap()
            .queued_grants(true);
        assert!(b.queued_grants);
        assert!(format!("{b:?}").contains("queued_grants: true"));
    }

    #[test]
    fn bad_urls_name_the_problem_and_never_show_the_password() {
        for (url, what) in [
            ("redis://u:hunter2@h:1", "must start with `etcd://`"),
            ("etcd://u:hunter2@", "no host"),
            ("etcd://u:hunter2@h:1,,h:2", "empty host"),
            ("etcd://u:hunter2@h:notaport", "is not a port number"),
            ("etcd://u:hunter2@h:0", "is not a port number"),
            ("etcd://:hunter2@h:1", "user name"),
            ("etcd://u:hunter2@h:1/%zz", "escape"),
            (
                "etcd://u:hunter2@h:1/p/?queued_grants=maybe",
                "queued_grants takes",
            ),
            (
                "etcd://u:hunter2@h:1/p/?queued=true",
                "unknown option `queued`",
            ),
            ("etcd://u:hunter2@h:1?queued_grants", "queued_grants takes"),
            ("etcd://h:1?queued_grants=hunter2", "queued_grants takes"),
            ("etcd://h:1/p?hunter2", "an option without `=`"),
            // The user info ends at the last `@`, not at a `/` of the password.
            ("etcd://u:hunter2/x@h:notaport", "is not a port number"),
            ("etcd://u:hunter2/x@h:1,,h:2", "empty host"),
            // A `?` before the last `@`: a password with a `?`, or a query value with an `@`
            // (then `x` is the tail of a secret, not a host). Refused, naming neither.
            ("etcd://u:hunter?2@h:1", "`%3F`"),
            ("etcd://h:1/p?password=hunter2@x", "`%3F`"),
        ] {
            let e = EtcdStoreBuilder::from_url(url).unwrap_err();
            assert_eq!(e.kind(), StoreErrorKind::InvalidInput);
            let msg = e.to_string();
            assert!(msg.contains(what), "{url}: {msg}");
            assert!(!msg.contains("hunter"), "{url}: {msg}");
            assert!(!format!("{e:?}").contains("hunter"), "{url}: {e:?}");
        }
    }

    /// The user name is hidden too: a token passed as user-only user info (`etcd://TOKEN@h`)
    /// is a user name here.
    #[test]
    fn debug_hides_the_credentials() {
        for url in ["etcd://ann:hunter2@h:1/p/", "etcd://hunter2@h:1/p/"] {
            let b = EtcdStoreBuilder::from_url(url).unwrap();
            let shown = format!("{b:?}");
            assert!(
                !shown.contains("hunter2") && !shown.contains("ann"),
                "{shown}"
            );
            assert!(shown.contains(r#"user: Some("***")"#), "{shown}");
        }
        let b = EtcdStoreBuilder::new(["h:1"]).user("bob", "hunter2");
        let shown = format!("{b:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("bob"),
            "{shown}"
        );
        let b = EtcdStoreBuilder::new(["h:1"]);
        assert!(format!("{b:?}").contains("user: None"));
    }

    #[test]
    fn builder_validation() {
        let e = EtcdStoreBuilder::new(Vec::<String>::new())
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("no etcd endpoints"), "{e}");
        let e = EtcdStoreBuilder::new(["u:hunter2@h:1"])
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("host:port"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = EtcdStoreBuilder::new(["h:1"])
            .request_timeout(Duration::ZERO)
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("timeouts"), "{e}");
    }
}
