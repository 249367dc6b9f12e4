//! The Lua scripts that make each write of a Redis bucket atomic on the server, and how they
//! are run.

use std::sync::OnceLock;

use filecache_store::remote::Reply;

use super::RedisEngine;
use crate::Result;

/// A Lua script run with `EVALSHA` (and `EVAL` when the server does not know it yet).
pub(super) struct Script {
    name: &'static str,
    body: &'static str,
    sha: OnceLock<String>,
}

impl Script {
    const fn new(name: &'static str, body: &'static str) -> Script {
        Script {
            name,
            body,
            sha: OnceLock::new(),
        }
    }
}

/// KEYS: the meta hash, then the keys. ARGV: the quota, the prefix length, then a frame per key.
/// Answers `{1}`, or `{0, bytes needed}` when the quota refuses.
pub(super) static SET_MANY: Script = Script::new(
    "set",
    r"
local plen = tonumber(ARGV[2])
local cur = {}
local dbytes, dkeys = 0, 0
for i = 2, #KEYS do
  local k = KEYS[i]
  local before = cur[k]
  if before == nil then
    local l = redis.call('STRLEN', k)
    if l > 0 then before = (#k - plen) + l else before = 0 end
  end
  local after = (#k - plen) + #ARGV[i + 1]
  dbytes = dbytes + after - before
  if before == 0 then dkeys = dkeys + 1 end
  cur[k] = after
end
if dbytes > 0 then
  local used = tonumber(redis.call('HGET', KEYS[1], 'bytes') or '0')
  if used + dbytes > tonumber(ARGV[1]) then return {0, dbytes} end
end
for i = 2, #KEYS do redis.call('SET', KEYS[i], ARGV[i + 1]) end
if dbytes ~= 0 then redis.call('HINCRBY', KEYS[1], 'bytes', string.format('%d', dbytes)) end
if dkeys ~= 0 then redis.call('HINCRBY', KEYS[1], 'keys', string.format('%d', dkeys)) end
return {1}
",
);

/// KEYS: the meta hash, then the keys. ARGV: the prefix length. Answers how many were removed.
pub(super) static DELETE_MANY: Script = Script::new(
    "delete",
    r"
local plen = tonumber(ARGV[1])
local dbytes, dkeys = 0, 0
for i = 2, #KEYS do
  local k = KEYS[i]
  local l = redis.call('STRLEN', k)
  if l > 0 then
    redis.call('DEL', k)
    dbytes = dbytes - ((#k - plen) + l)
    dkeys = dkeys - 1
  end
end
if dbytes ~= 0 then redis.call('HINCRBY', KEYS[1], 'bytes', string.format('%d', dbytes)) end
if dkeys ~= 0 then redis.call('HINCRBY', KEYS[1], 'keys', string.format('%d', dkeys)) end
return -dkeys
",
);

/// KEYS: the meta hash, the key. ARGV: the prefix length, the value to remove. Removes the key
/// only if it still holds exactly that value (what `verify` found damaged). Answers 1 or 0.
pub(super) static DELETE_IF: Script = Script::new(
    "remove damaged",
    r"
local v = redis.call('GET', KEYS[2])
if v ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[2])
local d = (#KEYS[2] - tonumber(ARGV[1])) + #v
redis.call('HINCRBY', KEYS[1], 'bytes', string.format('%d', -d))
redis.call('HINCRBY', KEYS[1], 'keys', -1)
return 1
",
);

/// KEYS: the meta hash, the key. ARGV: the quota, the prefix length, the expected version (8
/// bytes; empty: no value expected), the new frame, how many bytes of a current value to answer.
/// Answers `{1}` when written; `{0}` (no value now) or `{0, value now}` when the version did not
/// match; `{2, bytes needed}` when the quota refuses.
pub(super) static SWAP: Script = Script::new(
    "compare-and-swap",
    r"
local k = KEYS[2]
local l = redis.call('STRLEN', k)
local expected = ARGV[3]
if l > 0 then
  if expected == '' or redis.call('GETRANGE', k, 4, 11) ~= expected then
    return {0, redis.call('GETRANGE', k, 0, tonumber(ARGV[5]) - 1)}
  end
elseif expected ~= '' then
  return {0}
end
local klen = #k - tonumber(ARGV[2])
local before = 0
if l > 0 then before = klen + l end
local d = klen + #ARGV[4] - before
if d > 0 then
  local used = tonumber(redis.call('HGET', KEYS[1], 'bytes') or '0')
  if used + d > tonumber(ARGV[1]) then return {2, d} end
end
redis.call('SET', k, ARGV[4])
if d ~= 0 then redis.call('HINCRBY', KEYS[1], 'bytes', string.format('%d', d)) end
if l == 0 then redis.call('HINCRBY', KEYS[1], 'keys', 1) end
return {1}
",
);

/// KEYS: the keys. ARGV: how many bytes of each value to answer, the most bytes of values in
/// all, the bytes of framing per value. Answers `{1, value…}` (empty: none) or `{0, bytes}` when
/// the values hold more than allowed.
pub(super) static GET_MANY: Script = Script::new(
    "get-many",
    r"
local each, total, over = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local sum = 0
for i = 1, #KEYS do
  local l = redis.call('STRLEN', KEYS[i])
  if l > 0 then sum = sum + math.max(math.min(l, each) - over, 0) end
end
if sum > total then return {0, sum} end
local out = {1}
for i = 1, #KEYS do out[i + 1] = redis.call('GETRANGE', KEYS[i], 0, each - 1) end
return out
",
);

impl RedisEngine {
    /// Runs `script` (`EVALSHA`, or `EVAL` if the server does not have it yet).
    pub(super) fn eval(&self, script: &Script, keys: &[&[u8]], args: &[&[u8]], max_reply: u64) -> Result<Reply> {
        let sha = match script.sha.get() {
            Some(sha) => sha.as_bytes(),
            None => match self.command("script load", &[b"SCRIPT", b"LOAD", script.body.as_bytes()], 64)? {
                Reply::Bulk(Some(sha)) if sha.len() == 40 => script
                    .sha
                    .get_or_init(|| String::from_utf8_lossy(&sha).into_owned())
                    .as_bytes(),
                other => return Err(self.unexpected("script load", &other)),
            },
        };
        let numkeys = keys.len().to_string();
        let mut argv: Vec<&[u8]> = Vec::with_capacity(3 + keys.len() + args.len());
        argv.extend([&b"EVALSHA"[..], sha, numkeys.as_bytes()]);
        argv.extend_from_slice(keys);
        argv.extend_from_slice(args);
        let mut reply = self.command(script.name, &argv, max_reply)?;
        if matches!(&reply, Reply::Error(e) if e.starts_with("NOSCRIPT")) {
            // The server restarted or its scripts were flushed: EVAL caches it again.
            argv[0] = b"EVAL";
            argv[1] = script.body.as_bytes();
            reply = self.command(script.name, &argv, max_reply)?;
        }
        match reply {
            Reply::Error(_) => Err(self.unexpected(script.name, &reply)),
            reply => Ok(reply),
        }
    }
}
