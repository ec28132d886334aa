//! [`redact_url`]: the one redactor of store URLs for messages, `Debug` strings and logs.

/// `url` with every secret it may carry replaced by `***`, for messages, `Debug` output and logs.
///
/// It errs on the side of hiding, and never needs the URL to be valid:
///
/// - **User info**: everything between `://` and the *last* `@` before the host is user info,
///   so a password containing `/`, `?`, `#`, `:` or an unencoded `@` is hidden whole. The user
///   name is hidden with it (`redis://***@h`): people put passwords in the user position
///   (`rediss://s3cret@h`), and a secret there that contains a `:` cannot be told apart from
///   `user:password`.
/// - **A `?` before that `@`**: `redis://h/0?password=s3@cr3t` may be user info up to the `@`
///   and host `cr3t`, or a query whose value has an `@`; as the second, the rest is the tail of
///   a secret. Everything after `://` is hidden (`redis://***`), the host too.
/// - **Query**: every parameter's value is hidden (`?password=***&db=***`), since stores take
///   passwords and tokens there.
/// - **No scheme** (`user:pw@host`): the same, unless it starts like a file path (`/`, `.` or
///   `~`): `/tmp/a@b.db` is left alone.
/// - A URL with no authority (`sqlite:///tmp/a.db`, `redis+unix:///r.sock?pass=…`) keeps its
///   path; only its query is hidden.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let mut out = String::with_capacity(url.len());
    if let Some(scheme) = scheme {
        out.push_str(scheme);
        out.push_str("://");
    }
    // Only an authority can hold user info: not a path (`sqlite:///p`), and without a scheme not
    // something that looks like a file path.
    let userinfo_end = match scheme {
        Some(_) if rest.starts_with('/') => None,
        Some(_) => rest.rfind('@'),
        None => rest
            .rfind('@')
            .filter(|_| !rest.starts_with(['/', '.', '~'])),
    };
    let after = match userinfo_end {
        // A `?` before that `@`: either a password with a `?` or a query value with an `@`
        // (`redis://h?password=s3@cr3t`), where what follows the `@` is a secret's tail.
        Some(at) if rest[..at].contains('?') => {
            out.push_str("***");
            return out;
        }
        Some(at) => {
            out.push_str("***@");
            &rest[at + 1..]
        }
        None => rest,
    };
    match after.split_once('?') {
        Some((before, query)) => {
            out.push_str(before);
            out.push('?');
            for (i, param) in query.split('&').enumerate() {
                if i > 0 {
                    out.push('&');
                }
                match param.split_once('=') {
                    Some((name, _)) => {
                        out.push_str(name);
                        out.push_str("=***");
                    }
                    None => out.push_str("***"),
                }
            }
        }
        None => out.push_str(after),
    }
    out
}

#[cfg(all(test, not(lease_loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn examples() {
        let cases = [
            ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
            ("redis://u:s3cret@h:1/0", "redis://***@h:1/0"),
            ("redis://:s3cret@h:1", "redis://***@h:1"),
            ("rediss://s3cret@h", "rediss://***@h"),
            ("redis://:ab/cd+ef==@h", "redis://***@h"),
            ("redis://:p@ss:w/rd@h", "redis://***@h"),
            (
                "redis://h:1/0?password=s3cret&db=2",
                "redis://h:1/0?password=***&db=***",
            ),
            (
                "redis+unix:///p.sock?pass=s3cret",
                "redis+unix:///p.sock?pass=***",
            ),
            (
                "etcd://u:s3cret@[::1]:2379,h2:2379/pfx",
                "etcd://***@[::1]:2379,h2:2379/pfx",
            ),
            ("u:s3cret@h", "***@h"),
            // An `@` after a `?`: user info `h:1/0?password=s3` before host `cr3t`, or a query
            // whose value has an `@`? Either way, what follows the `@` may be a secret's tail.
            ("redis://h:1/0?password=s3@cr3t", "redis://***"),
            ("redis://u:pa?ss@h:1", "redis://***"),
            ("h?token=s3@cr3t", "***"),
            ("sqlite:///tmp/a@b.db", "sqlite:///tmp/a@b.db"),
            ("/tmp/a@b.db", "/tmp/a@b.db"),
            ("", ""),
        ];
        for (url, want) in cases {
            assert_eq!(redact_url(url), want, "{url}");
        }
    }

    /// A secret: long enough that it cannot appear in the output by chance, made of characters
    /// people put in passwords, including the URL delimiters.
    fn secret() -> impl Strategy<Value = String> {
        "[A-Za-z0-9/@:?#%+=&._~!$*-]{3,16}".prop_map(|s| format!("Zq{s}"))
    }

    fn host() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("h".to_owned()),
            Just("127.0.0.1:6379".to_owned()),
            Just("[::1]:2379".to_owned()),
            Just("db.example:1,db2.example:2".to_owned()),
        ]
    }

    fn percent_encoded(s: &str) -> String {
        s.bytes().map(|b| format!("%{b:02X}")).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]
        #[test]
        fn no_secret_survives(
            secret in secret(),
            host in host(),
            scheme in prop_oneof![
                Just("redis://"), Just("rediss://"), Just("etcd://"), Just("etcds://"),
                Just("redis+unix://"), Just("postgres://"), Just(""),
            ],
            position in 0..6u8,
            encode in any::<bool>(),
            path in prop_oneof![Just(""), Just("/0"), Just("/prefix/x")],
        ) {
            let s = if encode { percent_encoded(&secret) } else { secret.clone() };
            let url = match position {
                0 => format!("{scheme}{s}@{host}{path}"),          // user-only user info
                1 => format!("{scheme}user:{s}@{host}{path}"),     // password
                2 => format!("{scheme}:{s}@{host}{path}"),         // password, no user
                3 => format!("{scheme}{host}{path}?password={s}"), // query parameter
                4 => format!("{scheme}{host}{path}?db=1&pass={s}&x"),
                _ => format!("{scheme}user:{s}@{host}{path}?token={s}"),
            };
            // Without a scheme, a host with a path and no user info is a path, not a URL.
            prop_assume!(!(scheme.is_empty() && position >= 3));
            // Without a scheme, a secret containing `://` is, by the syntax, a scheme and user
            // info (`Zq://@h` is scheme `Zq` with empty user info): no redactor can tell.
            prop_assume!(!(scheme.is_empty() && secret.contains("://")));
            let out = redact_url(&url);
            prop_assert!(!out.contains(&secret), "{url} -> {out}");
            prop_assert!(!out.contains(&percent_encoded(&secret)), "{url} -> {out}");
            // The host stays readable, except where a `?` comes before the last `@`
            // (`scheme://A?B@C`: user info `A?B` and host `C`, or `C` the tail of a query
            // value): then everything is hidden.
            prop_assume!(!url.find('?').is_some_and(|q| url[q..].contains('@')));
            let first_host = host.split([',', ':']).next().unwrap_or_default();
            prop_assert!(out.contains(first_host.trim_start_matches('[')), "{url} -> {out}");
        }
    }
}
