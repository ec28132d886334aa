//! Opening the store a URL names, in the manner of object_store's `parse_url`: the scheme picks
//! the store, the store parses the rest.

use lease_core::redact::redact_url;
use lease_core::{DynStore, StoreError};

/// The stores a URL can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Scheme {
    /// `sqlite://PATH`, or a plain path.
    Sqlite,
    /// `redis://`, `rediss://`, `redis+unix://`, `unix://`, `valkey://`, `valkeys://`.
    Redis,
    /// `etcd://`, `etcds://`.
    Etcd,
    /// `postgres://`, `postgresql://`.
    Postgres,
}

/// What every error about an unknown URL lists.
const FORMS: &str = "use sqlite://PATH (or a plain path), redis://HOST[:PORT], \
                     etcd://HOST:PORT[,HOST:PORT…][/PREFIX] or \
                     postgres://[USER[:PASSWORD]@]HOST[:PORT]/DATABASE";

/// What the programs and the test support know of one store, besides how to open it.
struct Facts {
    name: &'static str,
    label: &'static str,
    feature: &'static str,
    built: bool,
    server: bool,
}

impl Scheme {
    /// Every store, in the order the docs list them.
    pub const ALL: [Scheme; 4] = [
        Scheme::Sqlite,
        Scheme::Redis,
        Scheme::Etcd,
        Scheme::Postgres,
    ];

    /// The one list of per-store facts: adding a store adds its line here, its URL schemes in
    /// `classify` and its arm in [`open`].
    const fn facts(self) -> Facts {
        match self {
            Scheme::Sqlite => Facts {
                name: "sqlite",
                label: "SQLite",
                feature: "sqlite",
                built: cfg!(feature = "sqlite-system"),
                server: false,
            },
            Scheme::Redis => Facts {
                name: "redis",
                label: "Redis",
                feature: "redis",
                built: cfg!(feature = "redis"),
                server: true,
            },
            Scheme::Etcd => Facts {
                name: "etcd",
                label: "etcd",
                feature: "etcd",
                built: cfg!(feature = "etcd"),
                server: true,
            },
            Scheme::Postgres => Facts {
                name: "postgres",
                label: "PostgreSQL",
                feature: "postgres",
                built: cfg!(feature = "postgres"),
                server: true,
            },
        }
    }

    /// Which store `url` names: by its scheme (case-insensitive), or SQLite for a plain path.
    ///
    /// # Errors
    ///
    /// [`OpenError::UnknownScheme`] for a scheme no store takes; [`OpenError::BadUrl`] for an
    /// empty string, a URL-like string without `//` (`sqlite:locks.db`), which would otherwise
    /// open a file of that name, or a string without a scheme that has an `@` and does not start
    /// with `/`, `.` or `~` (`user:pw@host`: user info to
    /// [`redact_url`](lease_core::redact::redact_url), which hides it).
    pub fn of(url: &str) -> Result<Scheme, OpenError> {
        Ok(classify(url)?.0)
    }

    /// The store with this [`name`](Scheme::name) (`"sqlite"`, `"redis"`, `"etcd"`,
    /// `"postgres"`), as a
    /// program's `--store NAME` flag takes it.
    pub fn named(name: &str) -> Option<Scheme> {
        Scheme::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The store's name, as the stores' capabilities and the programs' `--store` flags spell it.
    pub fn name(self) -> &'static str {
        self.facts().name
    }

    /// The store's name in prose, as its makers spell it: `SQLite`, `Redis`, `etcd`,
    /// `PostgreSQL`.
    pub fn label(self) -> &'static str {
        self.facts().label
    }

    /// The cargo feature of this crate that builds the store.
    pub fn feature(self) -> &'static str {
        self.facts().feature
    }

    /// Whether this build includes the store.
    pub fn is_built(self) -> bool {
        self.facts().built
    }

    /// Whether the store is a server that processes connect to (Redis, etcd, PostgreSQL), rather
    /// than one
    /// embedded in every process that opens it (SQLite's database file). Test support and the
    /// example programs can start a throwaway server of such a store, and restart it; an
    /// embedded store has no server to start or restart.
    pub fn is_server(self) -> bool {
        self.facts().server
    }
}

impl std::fmt::Display for Scheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why [`open`] could not open a store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// No store takes this scheme.
    #[error("unknown store scheme `{scheme}://` in `{url}`: {FORMS}")]
    UnknownScheme {
        /// The scheme, as written.
        scheme: String,
        /// The URL, credentials hidden.
        url: String,
    },
    /// The URL names a store (or its TLS form) that this build leaves out.
    #[error(
        "`{url}` needs the {scheme} store{tls}, which this build leaves out: enable the \
         `{feature}` feature of leasehold",
        tls = if feature.ends_with("-tls") { " over TLS" } else { "" }
    )]
    NotBuilt {
        /// The store the URL names.
        scheme: Scheme,
        /// The feature that builds it.
        feature: &'static str,
        /// The URL, credentials hidden.
        url: String,
    },
    /// The string is not a store URL.
    #[error("bad store URL `{url}`: {reason}")]
    BadUrl {
        /// The URL, credentials hidden.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The store refused the URL or could not connect (its message hides credentials).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Opens the store `url` names, connected and checked, behind a [`DynStore`].
///
/// - `sqlite:///abs/path.db`, `sqlite://rel/path.db`, or a plain path: the embedded SQLite store
///   (feature `sqlite`, the default). A plain path with an `@` starts with `/`, `.` or `~`
///   (`./a@b.db`): `user:pw@host` is refused rather than opened as a file;
/// - `redis://…`, `redis+unix://…`, `unix://…`, `valkey://…` (feature `redis`), `rediss://…`,
///   `valkeys://…` (feature `redis-tls`);
/// - `etcd://…` (feature `etcd`), `etcds://…` (feature `etcd-tls`);
/// - `postgres://…`, `postgresql://…` (feature `postgres`; with `sslmode=require`, feature
///   `postgres-tls`).
///
/// Each store's own `connect`/`open` and builder take the same URL and more settings; use them
/// where the store is known at compile time. [`DynStore::downcast_ref`] gives the concrete store
/// back, for its own methods.
///
/// # Errors
///
/// [`OpenError`]: an unknown scheme, a store this build leaves out (naming the feature), a
/// malformed URL, or the store's own error (unreachable server, wrong password, …). No error
/// shows a password.
pub async fn open(url: &str) -> Result<DynStore, OpenError> {
    let (scheme, url) = classify(url)?;
    let url = url.as_str();
    match scheme {
        #[cfg(feature = "sqlite-system")]
        Scheme::Sqlite => {
            let store = if url.contains("://") {
                lease_sqlite::SqliteStore::from_url(url).await?
            } else {
                lease_sqlite::SqliteStore::open(url).await?
            };
            Ok(DynStore::new(store))
        }
        #[cfg(feature = "redis")]
        Scheme::Redis => Ok(DynStore::new(lease_redis::RedisStore::connect(url).await?)),
        #[cfg(feature = "etcd")]
        Scheme::Etcd => Ok(DynStore::new(lease_etcd::EtcdStore::connect(url).await?)),
        #[cfg(feature = "postgres")]
        Scheme::Postgres => Ok(DynStore::new(
            lease_postgres::PostgresStore::connect(url).await?,
        )),
        #[allow(unreachable_patterns)] // every store built
        other => Err(OpenError::NotBuilt {
            scheme: other,
            feature: other.feature(),
            url: redact_url(url),
        }),
    }
}

/// The store `url` names and the URL with its scheme in lower case; a TLS scheme whose feature
/// is not built is refused here, so the error names this crate's feature.
fn classify(url: &str) -> Result<(Scheme, String), OpenError> {
    let bad = |reason: String| OpenError::BadUrl {
        url: redact_url(url),
        reason,
    };
    if url.trim().is_empty() {
        return Err(bad(format!("it is empty; {FORMS}")));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        // `redact_url` reads `user:pw@host` (no scheme, an `@`, not starting like a path) as
        // user info and a host: it is no file name here either.
        if url.contains('@') && !url.starts_with(['/', '.', '~']) {
            return Err(bad(format!(
                "it has no `scheme://` but an `@`, so it may hold user info: write the store's \
                 URL (`redis://…`, `etcd://…`), or `./…` for a file whose name has an `@`; \
                 {FORMS}"
            )));
        }
        if let Some((prefix, _)) = url.split_once(':')
            && is_scheme(prefix)
            && !prefix.contains(['/', '.'])
        {
            return Err(bad(format!(
                "it starts like a URL but has no `//` after `{prefix}:`; write \
                 `{prefix}://HOST…` (for SQLite `sqlite://relative/path.db` or \
                 `sqlite:///abs/path.db`), or `./{prefix}:…` for a file whose name has a colon"
            )));
        }
        return Ok((Scheme::Sqlite, url.to_owned()));
    };
    if !is_scheme(scheme) {
        return Err(bad(format!(
            "`{}` is not a URL scheme (a letter, then letters, digits, `+`, `-` or `.`); {FORMS}",
            redact_url(scheme)
        )));
    }
    let lower = scheme.to_ascii_lowercase();
    let (kind, tls_feature) = match lower.as_str() {
        "sqlite" => (Scheme::Sqlite, None),
        "redis" | "redis+unix" | "unix" | "valkey" => (Scheme::Redis, None),
        "rediss" | "valkeys" => (
            Scheme::Redis,
            Some(("redis-tls", cfg!(feature = "redis-tls"))),
        ),
        "etcd" => (Scheme::Etcd, None),
        "etcds" => (Scheme::Etcd, Some(("etcd-tls", cfg!(feature = "etcd-tls")))),
        // TLS is asked for in the query, not by the scheme.
        "postgres" | "postgresql" if asks_for_tls(rest) => (
            Scheme::Postgres,
            Some(("postgres-tls", cfg!(feature = "postgres-tls"))),
        ),
        "postgres" | "postgresql" => (Scheme::Postgres, None),
        _ => {
            return Err(OpenError::UnknownScheme {
                scheme: scheme.to_owned(),
                url: redact_url(url),
            });
        }
    };
    if let Some((feature, false)) = tls_feature
        && kind.is_built()
    {
        return Err(OpenError::NotBuilt {
            scheme: kind,
            feature,
            url: redact_url(url),
        });
    }
    Ok((kind, format!("{lower}://{rest}")))
}

/// Whether a PostgreSQL URL's query asks for TLS (`sslmode=require`).
fn asks_for_tls(rest: &str) -> bool {
    rest.split_once('?').is_some_and(|(_, query)| {
        query
            .split('&')
            .any(|p| p.eq_ignore_ascii_case("sslmode=require"))
    })
}

/// RFC 3986: `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`.
fn is_scheme(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_pick_their_store_case_insensitively() {
        for (url, scheme) in [
            ("sqlite:///tmp/a.db", Scheme::Sqlite),
            ("SQLite://rel/a.db", Scheme::Sqlite),
            ("/tmp/a.db", Scheme::Sqlite),
            ("rel/a.db", Scheme::Sqlite),
            ("./odd:name.db", Scheme::Sqlite),
            ("/tmp/a@b.db", Scheme::Sqlite),
            ("./a@b.db", Scheme::Sqlite),
            ("~/a@b.db", Scheme::Sqlite),
            ("redis://h:6379", Scheme::Redis),
            ("Redis://h", Scheme::Redis),
            ("redis+unix:///run/redis.sock", Scheme::Redis),
            ("unix:///run/redis.sock", Scheme::Redis),
            ("valkey://h", Scheme::Redis),
            ("etcd://h:2379,h2:2379/app", Scheme::Etcd),
            ("postgres://u:pw@h/db", Scheme::Postgres),
            ("PostgreSQL://h:5432/db?sslmode=disable", Scheme::Postgres),
        ] {
            assert_eq!(classify(url).unwrap().0, scheme, "{url}");
        }
        assert_eq!(
            classify("SQLite://rel/a.db").unwrap().1,
            "sqlite://rel/a.db"
        );
    }

    #[test]
    fn every_store_is_found_by_its_name_which_is_also_its_url_scheme() {
        for s in Scheme::ALL {
            assert_eq!(Scheme::named(s.name()), Some(s), "{s}");
            assert_eq!(
                classify(&format!("{}://h/x", s.name())).unwrap().0,
                s,
                "{s}"
            );
        }
        assert_eq!(Scheme::named("SQLite"), None);
        assert_eq!(Scheme::named("valkey"), None);
    }

    /// The programs start a throwaway server for `--store NAME` through test support: it must
    /// know every server store, and no embedded one.
    #[test]
    fn test_support_serves_exactly_the_server_stores() {
        for s in Scheme::ALL {
            assert_eq!(
                lease_testkit::server_program(s.name()).is_some(),
                s.is_server(),
                "{s}"
            );
        }
    }

    #[test]
    fn bad_urls_are_refused_with_the_reason_and_no_secret() {
        for (url, expect) in [
            ("", "it is empty"),
            ("   ", "it is empty"),
            ("sqlite:locks.db", "no `//` after `sqlite:`"),
            ("redis:h:6379", "no `//` after `redis:`"),
            ("1redis://u:s3cret@h", "is not a URL scheme"),
            ("re dis://u:s3cret@h", "is not a URL scheme"),
            // No scheme and an `@`: user info by `redact_url`'s reading, not a file name.
            ("s3cret@h:6379", "may hold user info"),
            (":s3cret@h", "may hold user info"),
            ("u:s3cret@h", "may hold user info"),
            // Not "no `//` after `s3:`": that is a piece of the token `s3:cret`.
            ("s3:cret@h", "may hold user info"),
        ] {
            let e = classify(url).unwrap_err();
            let text = e.to_string();
            assert!(matches!(e, OpenError::BadUrl { .. }), "{url}: {e:?}");
            assert!(text.contains(expect), "{url}: {text}");
            assert!(
                !text.contains("s3") && !format!("{e:?}").contains("s3"),
                "{text}"
            );
        }
    }

    #[test]
    fn an_unknown_scheme_is_named_with_the_forms_and_no_secret() {
        let e = classify("mysql://app:s3cret@db/locks?password=s3cret").unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, OpenError::UnknownScheme { ref scheme, .. } if scheme == "mysql"));
        assert!(
            text.contains("`mysql://`")
                && text.contains("redis://HOST")
                && text.contains("postgres://"),
            "{text}"
        );
        assert!(
            !text.contains("s3cret") && !format!("{e:?}").contains("s3cret"),
            "{text}"
        );
    }

    /// Run with every feature (the workspace's tests) and with none (`scripts/test.sh` also runs
    /// `cargo test -p leasehold --no-default-features`), so both arms run.
    #[test]
    fn a_store_left_out_of_the_build_names_its_feature() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for (url, tls_feature, tls_built) in [
            ("redis://u:s3cret@h", None, false),
            ("etcd://u:s3cret@h:2379", None, false),
            ("sqlite:///nonexistent-dir/x.db", None, false),
            ("postgres://u:s3cret@h/db", None, false),
            (
                "postgres://u:s3cret@h/db?sslmode=require",
                Some("postgres-tls"),
                cfg!(feature = "postgres-tls"),
            ),
            (
                "rediss://u:s3cret@h",
                Some("redis-tls"),
                cfg!(feature = "redis-tls"),
            ),
            (
                "etcds://u:s3cret@h:1",
                Some("etcd-tls"),
                cfg!(feature = "etcd-tls"),
            ),
        ] {
            let scheme = Scheme::of(url).unwrap();
            // The missing piece: the store, else its TLS form.
            let missing = match tls_feature {
                _ if !scheme.is_built() => Some(scheme.feature()),
                Some(f) if !tls_built => Some(f),
                _ => None,
            };
            let refused = match classify(url) {
                Ok(_) if !scheme.is_built() => rt.block_on(open(url)).map(|_| ()).err(),
                Ok(_) => None,
                Err(e) => Some(e),
            };
            let Some(feature) = missing else {
                assert!(refused.is_none(), "{url}: {refused:?}");
                continue;
            };
            let e = refused.unwrap_or_else(|| panic!("{url} was not refused"));
            let text = e.to_string();
            assert!(
                matches!(e, OpenError::NotBuilt { scheme: s, feature: f, .. } if s == scheme && f == feature),
                "{url}: {e:?}"
            );
            assert!(
                text.contains(&format!("enable the `{feature}` feature")),
                "{text}"
            );
            assert!(
                !text.contains("s3cret") && !format!("{e:?}").contains("s3cret"),
                "{text}"
            );
        }
    }
}
