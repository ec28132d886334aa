//! The three Lua scripts. Each runs atomically in Redis; keys come in `KEYS[]` (the lock key,
//! then the fence counter, one hash tag), user strings in `ARGV[]`, never spliced into the code.
//!
//! Fences travel as decimal strings (as Redis stores the counter), never as Lua numbers, whose
//! `%.14g` formatting would mangle large values. Every script returns `{status, fence}` where
//! `fence` is the counter's current value (or nil if the counter does not exist), so the caller
//! can detect a counter that went backwards.

use std::sync::LazyLock;

use redis::Script;

/// `try_lock`: `ARGV = holder, lease_ms, channel, key`.
///
/// Status 1: granted or extended with the returned fence. 0: refused (another holder's live
/// lease), or for `lease_ms == 0` nothing to release. 2: released (zero lease).
///
/// The counter's `h` names the holder of the current tenure until a release empties it. So a
/// holder that finds its own name there owns the key whether or not the lock key still exists
/// (an expired lease nobody took since): it extends (recreating the lock key if it expired) with
/// the same fence. Anyone else gets the key only when the lock key is gone, with the counter
/// incremented.
pub(crate) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local c = redis.call('HMGET', KEYS[2], 'h', 'f')
local holder = ARGV[1]
if ARGV[2] == '0' then
  if c[1] == holder then
    redis.call('HSET', KEYS[2], 'h', '')
    redis.call('DEL', KEYS[1])
    redis.call('PUBLISH', ARGV[3], ARGV[4])
    return {2, c[2]}
  end
  return {0, c[2]}
end
if c[1] == holder then
  if redis.call('PEXPIRE', KEYS[1], ARGV[2]) == 0 then
    redis.call('HSET', KEYS[1], 'h', holder, 'f', c[2])
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
  end
  return {1, c[2]}
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, c[2]}
end
redis.call('HINCRBY', KEYS[2], 'f', 1)
redis.call('HSET', KEYS[2], 'h', holder)
local f = redis.call('HGET', KEYS[2], 'f')
redis.call('HSET', KEYS[1], 'h', holder, 'f', f)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, f}
"#,
    )
});

/// `renew`: `ARGV = holder, fence, lease_ms`. Status 1: extended (recreating an expired lock key
/// of the same, untouched tenure); 0: the tenure is not `(holder, fence)`.
pub(crate) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local c = redis.call('HMGET', KEYS[2], 'h', 'f')
if c[1] == ARGV[1] and c[2] == ARGV[2] then
  if redis.call('PEXPIRE', KEYS[1], ARGV[3]) == 0 then
    redis.call('HSET', KEYS[1], 'h', ARGV[1], 'f', ARGV[2])
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
  end
  return {1, c[2]}
end
return {0, c[2]}
"#,
    )
});

/// `release`: `ARGV = holder, fence, channel, key`. Status 1: released and announced; 0: the
/// tenure is not `(holder, fence)`, nothing changed.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local c = redis.call('HMGET', KEYS[2], 'h', 'f')
if c[1] == ARGV[1] and c[2] == ARGV[2] then
  redis.call('HSET', KEYS[2], 'h', '')
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[3], ARGV[4])
  return {1, c[2]}
end
return {0, c[2]}
"#,
    )
});
