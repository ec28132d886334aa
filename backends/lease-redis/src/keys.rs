//! Redis key names: how a user key becomes the lock key and the fence-counter key.
//!
//! A user key `k` under prefix `p` is stored as
//!
//! - `p{enc(k)}:lock`: the lock hash (`h` = holder, `f` = fence) with the lease as its TTL;
//! - `p{enc(k)}:fence`: the fence counter hash (`f` = last fence handed out, `h` = holder of the
//!   current or last tenure, empty after a release), with no TTL.
//!
//! `enc` percent-encodes exactly `{`, `}` and `%` and keeps every other byte (including NUL,
//! newlines and non-ASCII) as it is; Redis keys are binary-safe. So `enc` is injective and its
//! output has no braces: the prefix has none either (the builder refuses them), hence the hash tag
//! Redis Cluster parses (the text between the first `{` and the first `}` after it) is exactly
//! `enc(k)`. Both keys of one lock land in one slot, a key can neither escape its tag nor end
//! early, and the fixed suffix after `}` keeps a lock key from ever equalling or prefixing a
//! counter key of another user key.

/// The two Redis keys of one user key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyPair {
    pub(crate) lock: Vec<u8>,
    pub(crate) fence: Vec<u8>,
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

/// The lock and fence-counter keys of `key` under `prefix`.
pub(crate) fn key_pair(prefix: &[u8], key: &str) -> KeyPair {
    let mut base = Vec::with_capacity(prefix.len() + key.len() + 8);
    base.extend_from_slice(prefix);
    base.push(b'{');
    encode_into(&mut base, key);
    base.push(b'}');
    let mut lock = base.clone();
    lock.extend_from_slice(b":lock");
    let mut fence = base;
    fence.extend_from_slice(b":fence");
    KeyPair { lock, fence }
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
            let pair = key_pair(b"app:", k);
            let mut enc = Vec::new();
            encode_into(&mut enc, k);
            assert_eq!(cluster_hash_tag(&pair.lock), enc.as_slice(), "key {k:?}");
            assert_eq!(cluster_hash_tag(&pair.fence), enc.as_slice(), "key {k:?}");
            assert!(!enc.contains(&b'{') && !enc.contains(&b'}'));
        }
    }

    #[test]
    fn no_two_keys_share_a_redis_key() {
        let mut seen = HashSet::new();
        for &k in ODD {
            let pair = key_pair(b"p", k);
            assert!(seen.insert(pair.lock), "lock key of {k:?} collides");
            assert!(seen.insert(pair.fence), "fence key of {k:?} collides");
        }
    }

    #[test]
    fn readable_keys_stay_readable() {
        let pair = key_pair(b"lease:", "jobs/nightly");
        assert_eq!(pair.lock, b"lease:{jobs/nightly}:lock");
        assert_eq!(pair.fence, b"lease:{jobs/nightly}:fence");
        assert_eq!(key_pair(b"", "{%}").lock, b"{%7B%25%7D}:lock");
    }
}
