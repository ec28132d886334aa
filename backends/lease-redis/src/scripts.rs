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
//!
//! A store with queued grants uses the `*_Q` scripts for acquire, release and leaving the queue
//! (renew, break and inspect are the same): they also keep the key's waiter queue
//! ([`crate::keys::QueueKeys`]) and grant a free key to its oldest live waiter in the same
//! step. The plain scripts never touch a queue, so a store without queued grants runs exactly
//! the commands it always ran (and needs no further ACL permission).

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

/// Shared by the acquire scripts, whose `KEYS[2]` and `KEYS[3]` are the layout-1 lock and
/// counter: for a key without a record, whether it may be granted. `false` while a layout-1
/// lease is live on it (the caller refuses, with the layout-1 counter as the fence); otherwise
/// the record's counter starts from the layout-1 counter, so fences keep increasing across the
/// upgrade, and `true`.
const LAYOUT_1: &str = r#"
local function seed_from_layout_1()
  if redis.call('EXISTS', KEYS[2]) == 1 then
    return false
  end
  local old = redis.call('HGET', KEYS[3], 'f')
  if old then
    redis.call('HSET', KEYS[1], 'f', old)
  end
  return true
end
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{NOW}{body}"))
}

/// Shared by the `*_Q` scripts, after [`NOW`]: the queue of waiters, in `KEYS[first]` (list of
/// waiters, oldest first), `KEYS[first + 1]` (sorted set waiter → liveness deadline, ms of the
/// server's clock) and `KEYS[first + 2]` (hash waiter → `"<lease ms> <grant channel>"`), with
/// the lease record in `KEYS[1]`.
///
/// A waiter is in all three or in none. Dead waiters (deadline reached) are dropped when they
/// come to the head; one that refreshes its entry before that keeps its place.
const QUEUE: &str = r#"
local QUEUE, DEADLINES, WAITERS = KEYS[QFIRST], KEYS[QFIRST + 1], KEYS[QFIRST + 2]
local function forget(w)
  redis.call('ZREM', DEADLINES, w)
  redis.call('HDEL', WAITERS, w)
end
-- The oldest live waiter, after dropping the dead ones at the head; nil if none.
local function head(now)
  while true do
    local w = redis.call('LINDEX', QUEUE, 0)
    if not w then return nil end
    local d = tonumber(redis.call('ZSCORE', DEADLINES, w))
    if d and d > now then return w end
    redis.call('LPOP', QUEUE)
    forget(w)
  end
end
-- Grants the free key to its oldest live waiter: fence + 1, the lease that waiter asked for
-- from now, its entry removed, and '<fence>:<#key>:<key><waiter>' published on its grant
-- channel (`key` is the user key). Returns the waiter, or nil if none is live.
local function grant_next(now, key)
  while true do
    local w = head(now)
    if not w then return nil end
    local info = redis.call('HGET', WAITERS, w)
    redis.call('LPOP', QUEUE)
    forget(w)
    local sp = info and string.find(info, ' ', 1, true)
    if sp then
      redis.call('HINCRBY', KEYS[1], 'f', 1)
      redis.call('HSET', KEYS[1], 'h', w, 'e', expiry(now, string.sub(info, 1, sp - 1)))
      local f = redis.call('HGET', KEYS[1], 'f')
      redis.call('PUBLISH', string.sub(info, sp + 1), f .. ':' .. #key .. ':' .. key .. w)
      return w
    end
  end
end
-- The key was released: hands it to the oldest live waiter, else announces it free on
-- `channel` (reading the clock only if there are waiters to judge).
local function pass_on(key, channel)
  if redis.call('LINDEX', QUEUE, 0) and grant_next(now_ms(), key) then
    return
  end
  redis.call('PUBLISH', channel, key)
end
-- Releases the key if the record names `holder` (with `fence`, unless nil) and passes it on;
-- the script's reply: {1, fence} when released, else {0, the record's counter}.
local function give_back(holder, fence, key, channel)
  local r = redis.call('HMGET', KEYS[1], 'h', 'f')
  if r[1] == holder and (not fence or r[2] == fence) then
    redis.call('HSET', KEYS[1], 'h', '', 'e', '0')
    pass_on(key, channel)
    return {1, r[2]}
  end
  return {0, r[2]}
end
"#;

/// A `*_Q` script: [`NOW`], [`QUEUE`] with its keys from `KEYS[first]` on, then `body`.
fn queued_script(first: usize, body: &str) -> Script {
    let queue = QUEUE.replace("QFIRST", &first.to_string());
    Script::new(&format!("{NOW}{queue}{body}"))
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
    script(&format!(
        "{LAYOUT_1}{}",
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
if not r[2] and not seed_from_layout_1() then
  return {0, redis.call('HGET', KEYS[3], 'f')}
end
redis.call('HINCRBY', KEYS[1], 'f', 1)
redis.call('HSET', KEYS[1], 'h', holder, 'e', expiry(now, ARGV[2]))
return {1, redis.call('HGET', KEYS[1], 'f')}
"#
    ))
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

/// `try_lock` and `enqueue` of a store with queued grants: `KEYS = record, layout-1 lock,
/// layout-1 counter, queue, deadlines, waiters`; `ARGV = holder, lease_ms, release channel,
/// key, patience_ms, grant channel` (the last only with `patience_ms > 0`).
///
/// Status 1: granted or extended with the returned fence. 0: refused (another holder's live
/// lease, or live waiters ahead), or for `lease_ms == 0` nothing to release. 2: released (zero
/// lease), and handed to the oldest live waiter if there is one. 3: refused and queued
/// (`patience_ms > 0`: `enqueue`), with the key's current fence.
///
/// As [`ACQUIRE`], except that a free key (released, or its lease expired) goes to the oldest
/// live waiter first: to the caller if that is the caller (its entry is removed), otherwise to
/// that waiter (announced on its grant channel), and the caller is refused. So nobody barges
/// past a live waiter, and an expired key with waiters is handed on by whichever call notices.
/// A refused caller with a patience is queued: a new entry goes to the tail, an existing one
/// keeps its place; either way its deadline becomes now + patience and its lease and grant
/// channel are stored with it.
pub(crate) static ACQUIRE_Q: LazyLock<Script> = LazyLock::new(|| {
    queued_script(
        4,
        &format!(
            "{LAYOUT_1}{}",
            r#"
local holder = ARGV[1]
if ARGV[2] == '0' then
  local reply = give_back(holder, nil, ARGV[4], ARGV[3])
  if reply[1] == 1 then
    reply[1] = 2
  end
  return reply
end
local r = redis.call('HMGET', KEYS[1], 'h', 'f', 'e')
local now = now_ms()
local live = r[1] and r[1] ~= '' and (tonumber(r[3]) or 0) > now
if r[1] == holder and live then
  redis.call('HSET', KEYS[1], 'e', expiry(now, ARGV[2]))
  return {1, r[2]}
end
local fence = r[2]
local refused = live
if not live and not r[2] and not seed_from_layout_1() then
  fence = redis.call('HGET', KEYS[3], 'f')
  refused = true
end
if not refused then
  local w = head(now)
  if w == holder then
    redis.call('LPOP', QUEUE)
    forget(w)
  elseif w then
    grant_next(now, ARGV[4])
    fence = redis.call('HGET', KEYS[1], 'f')
    refused = true
  end
end
if not refused then
  if r[1] ~= holder then
    redis.call('HINCRBY', KEYS[1], 'f', 1)
  end
  redis.call('HSET', KEYS[1], 'h', holder, 'e', expiry(now, ARGV[2]))
  return {1, redis.call('HGET', KEYS[1], 'f')}
end
if ARGV[5] == '0' then
  return {0, fence}
end
local queued = redis.call('ZSCORE', DEADLINES, holder)
redis.call('ZADD', DEADLINES, expiry(now, ARGV[5]), holder)
redis.call('HSET', WAITERS, holder, ARGV[2] .. ' ' .. ARGV[6])
if not queued then
  redis.call('RPUSH', QUEUE, holder)
end
return {3, fence}
"#
        ),
    )
});

/// `release` of a store with queued grants: `KEYS = record, queue, deadlines, waiters`;
/// `ARGV = holder, fence, release channel, key`. Status 1: released, and in the same step
/// granted to the oldest live waiter (announced on its grant channel) or, with none, announced
/// free on the release channel; 0: the tenure is not `(holder, fence)`, nothing changed.
pub(crate) static RELEASE_Q: LazyLock<Script> = LazyLock::new(|| {
    queued_script(
        2,
        r#"
return give_back(ARGV[1], ARGV[2], ARGV[4], ARGV[3])
"#,
    )
});

/// `leave_queue`: `KEYS = record, queue, deadlines, waiters`; `ARGV = holder, release channel,
/// key`. Removes the holder's entry; if the record names the holder (a release or an expiry
/// granted it the key meanwhile), releases that grant too and passes the key on as a release
/// does. Status 1: it gave a grant back; 0: it did not.
pub(crate) static LEAVE_Q: LazyLock<Script> = LazyLock::new(|| {
    queued_script(
        2,
        r#"
if redis.call('ZSCORE', DEADLINES, ARGV[1]) then
  redis.call('LREM', QUEUE, 0, ARGV[1])
  forget(ARGV[1])
end
return give_back(ARGV[1], nil, ARGV[3], ARGV[2])
"#,
    )
});

/// The live waiters of a key, oldest first: `KEYS = record, queue, deadlines, waiters`; no
/// `ARGV`. Read-only (dead entries are skipped, not dropped).
pub(crate) static WAITERS_Q: LazyLock<Script> = LazyLock::new(|| {
    queued_script(
        2,
        r#"
local now = now_ms()
local live = {}
for _, w in ipairs(redis.call('LRANGE', QUEUE, 0, -1)) do
  local d = tonumber(redis.call('ZSCORE', DEADLINES, w))
  if d and d > now then
    table.insert(live, w)
  end
end
return live
"#,
    )
});
