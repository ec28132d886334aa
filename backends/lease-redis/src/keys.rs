//! Redis key names: how a user key becomes its lease record, its waiter queue (stores with
//! queued grants), and the keys of the old layout.
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
//!
//! A store with queued grants adds three keys per user key, under the same tag, none with a TTL:
//! `p{enc(k)}:q`, the list of waiters oldest first; `p{enc(k)}:d`, a sorted set waiter →
//! liveness deadline (milliseconds of the server's clock); `p{enc(k)}:w`, a hash waiter →
//! `"<lease ms> <grant channel>"`. A waiter is in all three or in none.

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

/// The queue keys of one user key (stores with queued grants).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QueueKeys {
    /// List of waiters, oldest first.
    pub(crate) queue: Vec<u8>,
    /// Sorted set: waiter → liveness deadline, in milliseconds of the server's clock.
    pub(crate) deadlines: Vec<u8>,
    /// Hash: waiter → `"<lease ms> <grant channel>"`.
    pub(crate) waiters: Vec<u8>,
}

/// `prefix{enc(key)}`, to which each key of `key` adds its suffix.
fn tagged(prefix: &[u8], key: &str) -> impl Fn(&[u8]) -> Vec<u8> {
    let mut base = Vec::with_capacity(prefix.len() + key.len() + 8);
    base.extend_from_slice(prefix);
    base.push(b'{');
    encode_into(&mut base, key);
    base.push(b'}');
    move |suffix: &[u8]| {
        let mut k = Vec::with_capacity(base.len() + suffix.len());
        k.extend_from_slice(&base);
        k.extend_from_slice(suffix);
        k
    }
}

/// The keys of `key` under `prefix`.
pub(crate) fn keys(prefix: &[u8], key: &str) -> Keys {
    let with = tagged(prefix, key);
    Keys {
        record: with(b":v2"),
        legacy_lock: with(b":lock"),
        legacy_fence: with(b":fence"),
    }
}

/// The queue keys of `key` under `prefix`.
pub(crate) fn queue_keys(prefix: &[u8], key: &str) -> QueueKeys {
    let with = tagged(prefix, key);
    QueueKeys {
        queue: with(b":q"),
        deadlines: with(b":d"),
        waiters: with(b":w"),
    }
}

/// The pub/sub channel on which releases of keys under `prefix` are announced; the message is
/// the user key itself.
pub(crate) fn release_channel(prefix: &[u8]) -> Vec<u8> {
    let mut c = prefix.to_vec();
    c.extend_from_slice(b"released");
    c
}

/// The pub/sub channel on which grants to this store's queued waiters are announced: one per
/// store, `prefix` + `grant:` + `id` (the store's random id). The message is
/// `<fence>:<waiter id>` ([`waiter_id`], [`parse_grant`]).
pub(crate) fn grant_channel(prefix: &[u8], id: &str) -> Vec<u8> {
    let mut c = prefix.to_vec();
    c.extend_from_slice(b"grant:");
    c.extend_from_slice(id.as_bytes());
    c
}

/// What names one queued waiter in a grant message: `<byte length of key>:<key><holder>`, so
/// that no two (key, holder) pairs share it whatever bytes they contain.
pub(crate) fn waiter_id(key: &[u8], holder: &[u8]) -> Vec<u8> {
    let mut id = Vec::with_capacity(key.len() + holder.len() + 8);
    id.extend_from_slice(key.len().to_string().as_bytes());
    id.push(b':');
    id.extend_from_slice(key);
    id.extend_from_slice(holder);
    id
}

/// Reads a grant message, `<fence>:<waiter id>` as the grant scripts write it: the fence and
/// the waiter id ([`waiter_id`]). `None` for anything else (such as the empty message
/// `connect` sends to check its subscription).
pub(crate) fn parse_grant(message: &[u8]) -> Option<(u64, &[u8])> {
    let colon = message.iter().position(|&b| b == b':')?;
    let (fence, id) = (&message[..colon], &message[colon + 1..]);
    if fence.is_empty() || !fence.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let fence = std::str::from_utf8(fence).ok()?.parse().ok()?;
    // The id must be well formed: a length, a colon, and at least that many bytes after it.
    let colon = id.iter().position(|&b| b == b':')?;
    let len: usize = std::str::from_utf8(&id[..colon]).ok()?.parse().ok()?;
    (colon > 0 && id.len() - colon > len).then_some((fence, id))
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
            let qs = queue_keys(b"app:", k);
            for key in [
                &ks.record,
                &ks.legacy_lock,
                &ks.legacy_fence,
                &qs.queue,
                &qs.deadlines,
                &qs.waiters,
            ] {
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
            let qs = queue_keys(b"p", k);
            for (what, key) in [
                ("queue", qs.queue),
                ("deadlines", qs.deadlines),
                ("waiters", qs.waiters),
            ] {
                assert!(seen.insert(key), "{what} key of {k:?} collides");
            }
        }
    }

    #[test]
    fn waiter_ids_never_collide_and_grant_messages_read_back() {
        let mut seen = HashSet::new();
        for &k in ODD {
            for &h in ODD {
                let id = waiter_id(k.as_bytes(), h.as_bytes());
                assert!(
                    seen.insert(id.clone()),
                    "waiter id of ({k:?}, {h:?}) collides"
                );
                let mut message = b"42:".to_vec();
                message.extend_from_slice(&id);
                assert_eq!(parse_grant(&message), Some((42, id.as_slice())));
            }
        }
        let max = format!("{}:1:kh", u64::MAX);
        assert_eq!(parse_grant(max.as_bytes()), Some((u64::MAX, &b"1:kh"[..])));
        for bad in [
            &b""[..],
            b"42",
            b":1:kh",
            b"x:1:kh",
            b"-1:1:kh",
            b"42:",
            b"42:kh",
            b"42:5:kh",
            b"42::kh",
            b"18446744073709551616:1:kh",
        ] {
            assert_eq!(parse_grant(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn readable_keys_stay_readable() {
        let ks = keys(b"lease:", "jobs/nightly");
        assert_eq!(ks.record, b"lease:{jobs/nightly}:v2");
        assert_eq!(ks.legacy_lock, b"lease:{jobs/nightly}:lock");
        assert_eq!(ks.legacy_fence, b"lease:{jobs/nightly}:fence");
        assert_eq!(keys(b"", "{%}").record, b"{%7B%25%7D}:v2");
        let qs = queue_keys(b"lease:", "jobs/nightly");
        assert_eq!(qs.queue, b"lease:{jobs/nightly}:q");
        assert_eq!(qs.deadlines, b"lease:{jobs/nightly}:d");
        assert_eq!(qs.waiters, b"lease:{jobs/nightly}:w");
        assert_eq!(grant_channel(b"lease:", "7-ab"), b"lease:grant:7-ab");
    }
}
