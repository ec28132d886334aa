//! Redis key names: how a user key becomes its lease record (and the keys of the old layout).
//!
//! A user key `k` under prefix `p` is stored as one hash with no TTL, the **lease record**
//! `p{enc(k)}:v2`: `h` = holder (empty while free), `f` = the last fence handed out, `e` = the
//! lease's expiry in milliseconds of the Redis server's clock (`TIME`). `v2` is the layout
//! version; layout 1 (`p{enc(k)}:lock`, a hash whose TTL was the lease, and `p{enc(k)}:fence`,
//! the counter) is read once, on the first grant of a key under layout 2 (see the crate docs).
//!
//! `enc` percent-encodes exactly `{`, `}` and `%` and keeps every other byte (including NUL,
//! newlines and non-ASCII) as it is; Redis keys are binary-safe. So `enc` is injective and its
//! output has no braces: the prefix has none either (the builder refuses them), hence the hash tag
//! Redis Cluster parses (the text between the first `{` and the first `}` after it) is exactly
//! `enc(k)`. Every key of one lock lands in one slot (with data the user puts under the same
//! tag), a key can neither escape its tag nor end early, and the fixed suffix after `}` keeps
//! the keys of one user key from ever equalling or prefixing those of another.

/// The Redis keys of one user key: its lease record, and the two keys of layout 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Keys {
    pub(crate) record: Vec<u8>,
    pub(crate) legacy_lock: Vec<u8>,
    pub(crate) legacy_fence: Vec<u8>,
}

/// Appends `enc(key)` to `out`.
pub(crate) fn encode_into(out: &mut Vec<u8>, key: &str) {
    for &b in key.as_bytes() {
        match b {
            b'{' => out.extend_from_slice(b"%7B"),
            b'}' => out.extend_from_slice(b"%7D"),
            b'%' => out.extend_from_slice(b"%25"),
            b => out.push(b),
        }
    }
}

/// The keys of `key` under `prefix`.
pub(crate) fn keys(prefix: &[u8], key: &str) -> Keys {
    let mut base = Vec::with_capacity(prefix.len() + key.len() + 8);
    base.extend_from_slice(prefix);
    base.push(b'{');
    encode_into(&mut base, key);
    base.push(b'}');
    let with = |suffix: &[u8]| {
        let mut k = base.clone();
        k.extend_from_slice(suffix);
        k
    };
    Keys {
        record: with(b":v2"),
        legacy_lock: with(b":lock"),
        legacy_fence: with(b":fence"),
    }
}

/// The pub/sub channel on which releases of keys under `prefix` are announced; the message is
/// the user key itself.
pub(crate) fn release_channel(prefix: &[u8]) -> Vec<u8> {
    let mut c = prefix.to_vec();
    c.extend_from_slice(b"released");
    c
}

/// The hash tag Redis Cluster computes for `key`: between the first `{` and the first `}` after
/// it, if that is non-empty; else the whole key. For tests of the encoding.
#[cfg(test)]
fn cluster_hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    const ODD: &[&str] = &[
        "a", "a/", "{a}", "{a}b", "{", "}", "a{b}", "}{", "%7B", "%", "%25", "a%7Db", "a\0",
        "a\0b", "ä", "日本", ":lock", "}:lock", "a}:fence", "x:lock", "x}:lock{", "%%", "{}", "",
    ];

    #[test]
    fn tags_are_exactly_the_encoded_key_and_both_keys_share_them() {
        for &k in ODD.iter().filter(|k| !k.is_empty()) {
            let ks = keys(b"app:", k);
            let mut enc = Vec::new();
            encode_into(&mut enc, k);
            for key in [&ks.record, &ks.legacy_lock, &ks.legacy_fence] {
                assert_eq!(cluster_hash_tag(key), enc.as_slice(), "key {k:?}");
            }
            assert!(!enc.contains(&b'{') && !enc.contains(&b'}'));
        }
    }

    #[test]
    fn no_two_keys_share_a_redis_key() {
        let mut seen = HashSet::new();
        for &k in ODD {
            let ks = keys(b"p", k);
            assert!(seen.insert(ks.record), "record of {k:?} collides");
            assert!(
                seen.insert(ks.legacy_lock),
                "layout-1 lock key of {k:?} collides"
            );
            assert!(
                seen.insert(ks.legacy_fence),
                "layout-1 counter of {k:?} collides"
            );
        }
    }

    #[test]
    fn readable_keys_stay_readable() {
        let ks = keys(b"lease:", "jobs/nightly");
        assert_eq!(ks.record, b"lease:{jobs/nightly}:v2");
        assert_eq!(ks.legacy_lock, b"lease:{jobs/nightly}:lock");
        assert_eq!(ks.legacy_fence, b"lease:{jobs/nightly}:fence");
        assert_eq!(keys(b"", "{%}").record, b"{%7B%25%7D}:v2");
    }
}
