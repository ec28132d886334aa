//! The Lua scripts. Each runs atomically in Redis; keys come in `KEYS[]` (the lease record
//! first, one hash tag), user strings in `ARGV[]`, never spliced into the code.
//!
//! The record (see [`crate::keys`]) has no TTL, so neither expiry nor eviction under a
//! `volatile-*` policy can remove it: whether a lease is live is decided only by comparing its
//! `e` field with the server's clock (`TIME`, in milliseconds), inside the script that acts on
//! it. Fences travel as decimal strings (as Redis stores the counter), never as Lua numbers,
//! whose `%.14g` formatting would mangle large values; times are Lua numbers (below 2^53:
//! about 1.8e12 ms now, plus at most [`MAX_LEASE_MS`](crate::MAX_LEASE_MS)) written with `%d`.
//! Every script returns `{status, fence}` where `fence` is the record's counter (or nil if there
//! is none), so the caller can detect a counter that went backwards.

use std::sync::LazyLock;

use redis::Script;

/// Shared by the scripts: the server's time in milliseconds. Scripts are replicated by their
/// effects (the default since Redis 5, the only mode since 7), so replicas store the expiry the
/// primary computed instead of reading their own clocks.
const NOW: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function expiry(now, lease_ms)
  return string.format('%d', now + tonumber(lease_ms))
end
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{NOW}{body}"))
}

/// `try_lock`: `KEYS = record, layout-1 lock, layout-1 counter`;
/// `ARGV = holder, lease_ms, channel, key`.
///
/// Status 1: granted or extended with the returned fence. 0: refused (another holder's live
/// lease), or for `lease_ms == 0` nothing to release. 2: released (zero lease).
///
/// A record naming this holder is this holder's tenure, live or expired (nobody took it since:
/// a grant to anyone else renames it, a release empties it): it is extended with the same fence.
/// This also makes a retry after a lost reply a success with the same fence. A record naming
/// another holder refuses while `e` is in the future. Otherwise the key is vacant: the counter
/// is incremented and the record names the new holder.
///
/// A key without a record has not been granted under layout 2 yet: a live layout-1 lease (its
/// lock key exists) is refused, and the new counter starts from the layout-1 counter, so fences
/// keep increasing across the upgrade.
pub(crate) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local r = redis.call('HMGET', KEYS[1], 'h', 'f', 'e')
local holder = ARGV[1]
if ARGV[2] == '0' then
  if r[1] == holder then
    redis.call('HSET', KEYS[1], 'h', '', 'e', '0')
    redis.call('PUBLISH', ARGV[3], ARGV[4])
    return {2, r[2]}
  end
  return {0, r[2]}
end
local now = now_ms()
if r[1] == holder then
  redis.call('HSET', KEYS[1], 'e', expiry(now, ARGV[2]))
  return {1, r[2]}
end
if r[1] and r[1] ~= '' and (tonumber(r[3]) or 0) > now then
  return {0, r[2]}
end
if not r[2] then
  if redis.call('EXISTS', KEYS[2]) == 1 then
    return {0, redis.call('HGET', KEYS[3], 'f')}
  end
  local old = redis.call('HGET', KEYS[3], 'f')
  if old then
    redis.call('HSET', KEYS[1], 'f', old)
  end
end
redis.call('HINCRBY', KEYS[1], 'f', 1)
redis.call('HSET', KEYS[1], 'h', holder, 'e', expiry(now, ARGV[2]))
return {1, redis.call('HGET', KEYS[1], 'f')}
"#,
    )
});

/// `renew`: `KEYS = record`; `ARGV = holder, fence, lease_ms`. Status 1: extended; 0: the
/// tenure is not `(holder, fence)`, or its lease has expired by the server's clock. A lapsed
/// lease is never extended (its holder's deadline has passed, it was told it lost): only an
/// explicit `try_lock` can retake it.
pub(crate) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local r = redis.call('HMGET', KEYS[1], 'h', 'f', 'e')
if r[1] == ARGV[1] and r[2] == ARGV[2] then
  local now = now_ms()
  if (tonumber(r[3]) or 0) > now then
    redis.call('HSET', KEYS[1], 'e', expiry(now, ARGV[3]))
    return {1, r[2]}
  end
end
return {0, r[2]}
"#,
    )
});

/// `release`: `KEYS = record`; `ARGV = holder, fence, channel, key`. Status 1: released and
/// announced; 0: the tenure is not `(holder, fence)`, nothing changed.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local r = redis.call('HMGET', KEYS[1], 'h', 'f')
if r[1] == ARGV[1] and r[2] == ARGV[2] then
  redis.call('HSET', KEYS[1], 'h', '', 'e', '0')
  redis.call('PUBLISH', ARGV[3], ARGV[4])
  return {1, r[2]}
end
return {0, r[2]}
"#,
    )
});

/// `break_lock`: `KEYS = record, layout-1 lock, layout-1 counter`; `ARGV = channel, key`.
///
/// Raises the counter by one and empties the record, whoever held it, and announces the key.
/// Returns `{1, fence, previous holder, 1 if its lease was live}`, or `{0}` when the key was
/// never granted (no record, no layout-1 counter). The raised fence is handed to nobody: every
/// earlier grant has a lower fence, every later one a higher. A key without a record yet is
/// seeded from its layout-1 counter first; a live layout-1 lease on it (its `:lock` key exists)
/// is reported as the previous holder, and broken too, since the record now exists and
/// acquisitions no longer look at layout 1.
pub(crate) static BREAK: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local r = redis.call('HMGET', KEYS[1], 'h', 'f', 'e')
local previous = r[1] or ''
local live = 0
if not r[2] then
  local old = redis.call('HGET', KEYS[3], 'f')
  if not old then
    return {0}
  end
  redis.call('HSET', KEYS[1], 'f', old)
  if redis.call('EXISTS', KEYS[2]) == 1 then
    previous = redis.call('HGET', KEYS[2], 'h') or ''
    live = 1
  end
elseif previous ~= '' and (tonumber(r[3]) or 0) > now_ms() then
  live = 1
end
redis.call('HINCRBY', KEYS[1], 'f', 1)
redis.call('HSET', KEYS[1], 'h', '', 'e', '0')
redis.call('PUBLISH', ARGV[1], ARGV[2])
return {1, redis.call('HGET', KEYS[1], 'f'), previous, live}
"#,
    )
});

/// `inspect`: `KEYS = record, layout-1 lock, layout-1 counter`; `ARGV = the longest lease in
/// milliseconds` (reported as the time left of a layout-1 lock without a TTL). Read-only.
///
/// Returns `{1, fence, holder, ms left}` for a key granted before: `holder` is empty and `ms
/// left` 0 when the key is free (released, broken, or its lease expired by the server's clock),
/// exactly when an acquisition would find it vacant. `{0}` when the key was never granted (no
/// record, no layout-1 keys). A key without a record yet is judged as the acquire script judges
/// it: a live layout-1 lease (its `:lock` key exists) holds it, with the layout-1 counter as its
/// fence and its `PTTL` as the time left.
pub(crate) static INSPECT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local r = redis.call('HMGET', KEYS[1], 'h', 'f', 'e')
if r[2] then
  if r[1] and r[1] ~= '' then
    local left = (tonumber(r[3]) or 0) - now_ms()
    if left > 0 then
      return {1, r[2], r[1], left}
    end
  end
  return {1, r[2], '', 0}
end
local old = redis.call('HGET', KEYS[3], 'f')
if redis.call('EXISTS', KEYS[2]) == 1 then
  local l = redis.call('HMGET', KEYS[2], 'h', 'f')
  local f = old or l[2]
  local left = redis.call('PTTL', KEYS[2])
  if left == -1 then
    left = tonumber(ARGV[1])
  end
  if f and l[1] and left > 0 then
    return {1, f, l[1], left}
  end
end
if old then
  return {1, old, '', 0}
end
return {0}
"#,
    )
});
