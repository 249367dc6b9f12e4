//! The Redis engine (feature `remote`): a bucket that lives on a Redis server shared by a fleet
//! of hosts, never copied locally, over the remote tier's own client
//! ([`filecache_store::remote::RemoteTier`]: a deadline per operation, a bound on every reply,
//! a pool of connections and a circuit breaker).
//!
//! # Layout
//!
//! ```text
//! filecache:kv1:{NS}:k:<key>   a value of namespace NS's bucket (a Redis string, framed below)
//! filecache:kv1:{NS}:meta      the bucket's usage (a hash: `bytes`, `keys`)
//! ```
//!
//! Cache entries of the remote tier live under `filecache:v1:`, so the two never meet; a
//! namespace name holds no `:`, so two buckets never meet either. (The braces make every key of
//! a bucket one Redis Cluster hash slot, as the multi-key scripts need.) Key-value data is never
//! given a TTL: configure the server so that it does not evict it (`maxmemory-policy
//! volatile-lru` evicts only keys with a TTL, i.e. cache entries given `--remote-ttl`).
//!
//! # Values
//!
//! Every value is framed: `fkv1`, the version (8 bytes, little-endian, drawn at random for each
//! write: what compare-and-swap compares), a CRC32C of the key, the version and the value, the
//! value, and with a fleet key ([`RemoteOptions::fleet_key`](filecache_store::remote::RemoteOptions))
//! an HMAC-SHA256 under it of the namespace, the key and all of that. A value that fails its
//! checks (written by a host without the key, by a hostile writer with access to Redis, or
//! damaged) is refused with [`Error::Rejected`], never served; [`RedisEngine::verify`] removes it.
//!
//! # Guarantees
//!
//! - Every write is one Lua script (`EVALSHA`), atomic on the server: `set-many` and
//!   `delete-many` all or nothing; compare-and-swap compares the version and writes in one step.
//!   `increment` reads, adds (the decimal-integer rules and errors of the SQLite engine) and
//!   writes back by compare-and-swap, retrying when another writer came first: exact across
//!   hosts. (An engine remembers the last value and version it wrote to a counter, so that the
//!   next increment of it is one round trip, the swap, when no other writer came between.) (Redis's own `INCRBY` is not used: it works on a bare integer, which could carry
//!   neither the checksum nor the fleet MAC, so a forged counter would be served.)
//! - The quota: the bucket's bytes (keys and framed values) are counted in its `meta` hash by
//!   the same script that writes, which refuses a write that would take them past the quota, so
//!   hosts together cannot exceed it. Values are bounded by the namespace's `max_entry_size`.
//! - Faults: every call fails, with [`Error::Remote`] (`other` to a guest) and a message naming
//!   the server, within the tier's operation timeout; never a local fallback (a lost increment is
//!   worse than an error). After repeated failures the tier's circuit breaker fails calls at once
//!   for its cool-down; then the next call connects again. A write whose answer was lost (the
//!   server stalled or died after running it) may or may not have been applied, as with any
//!   remote store: the error says the call failed, not that nothing changed.
//! - Durability is the server's (its `appendonly`/`save` settings), not `--durable`.
//!
//! # Listing
//!
//! [`list_keys`](RedisEngine::list_keys) walks the keyspace with `SCAN`; the cursor is Redis's
//! own (0 starts, and the last page answers `None`). What `SCAN` guarantees is what a listing
//! guarantees: a key present during the whole listing is returned, possibly more than once (when
//! the server resizes its table meanwhile); a key written or removed by a concurrent writer may
//! or may not be. Keys come in no particular order, a page may hold none (the cursor still
//! moves on) or a few more than asked for (never one fewer: none is dropped), and a cursor is
//! meaningful only on the server that gave it.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use filecache_store::NamespaceOptions;
use filecache_store::entry::Checksum;
use filecache_store::remote::{RemoteTier, Reply};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{
    Engine, Error, KeyPage, MAX_KEY_LEN, Result, Usage, VerifyReport, Version, Versioned, overflow, parse, short,
};

const MAGIC: &[u8; 4] = b"fkv1";
/// Magic, version, CRC32C.
const HEAD: usize = 16;
const MAC_LEN: usize = 32;
const MAC_DOMAIN: &[u8] = b"filecache kv value v1\0";
/// Compare-and-swap rounds an `increment` tries before giving up (each lost round means another
/// writer's increment went through).
const MAX_INCREMENT_ROUNDS: usize = 10_000;
/// `SCAN` calls one page may take.
const MAX_SCANS_PER_PAGE: usize = 32;

/// A Lua script run with `EVALSHA` (and `EVAL` when the server does not know it yet).
struct Script {
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
static SET_MANY: Script = Script::new(
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
static DELETE_MANY: Script = Script::new(
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
static DELETE_IF: Script = Script::new(
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
static SWAP: Script = Script::new(
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
static GET_MANY: Script = Script::new(
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

/// A bucket on a Redis server shared by a fleet: see the [module docs](self).
///
/// ```no_run
/// use std::sync::Arc;
/// use filecache_kv::{Bucket, RedisEngine};
/// use filecache_store::NamespaceOptions;
/// use filecache_store::remote::{RemoteOptions, RemoteTier};
/// let tier = RemoteTier::new(RemoteOptions::new("redis://127.0.0.1:6379"))?;
/// let engine = RedisEngine::new(tier, "my-plugin", &NamespaceOptions::default())?;
/// let bucket = Bucket::from_engine(Arc::new(engine));
/// assert_eq!(bucket.increment_u64("visits", 1)?, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct RedisEngine {
    tier: RemoteTier,
    namespace: String,
    /// `filecache:kv1:{NS}:k:`
    prefix: Vec<u8>,
    /// `filecache:kv1:{NS}:meta`
    meta: Vec<u8>,
    max_value: u64,
    quota: u64,
    read_only: bool,
    /// The last value and version this engine wrote by `increment`, per key (at most
    /// [`MAX_REMEMBERED`]): the next increment of the key tries its compare-and-swap against it
    /// straight away, one round trip instead of a read and a swap. The swap still compares on
    /// the server, so a stale entry costs a retry, never a wrong sum.
    remembered: Mutex<HashMap<String, Versioned>>,
}

/// Counters remembered per engine (see `RedisEngine::remembered`).
const MAX_REMEMBERED: usize = 256;

impl std::fmt::Debug for RedisEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEngine")
            .field("server", &self.tier.shown_url())
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// A value as read: its content and version, or why it is refused.
enum Read {
    Missing,
    Found(Vec<u8>, Version),
}

impl RedisEngine {
    /// The bucket of namespace `namespace` on the tier's server, with the namespace's limits
    /// (`max_entry_size`, `quota`) and read-only mode (the tier's
    /// [`read_only`](filecache_store::remote::RemoteOptions::read_only) makes it read-only too).
    /// Nothing is connected yet: the first call connects.
    pub fn new(tier: RemoteTier, namespace: &str, options: &NamespaceOptions) -> Result<RedisEngine> {
        filecache_store::validate_namespace_name(namespace)?;
        let base = format!("filecache:kv1:{{{namespace}}}:");
        Ok(RedisEngine {
            read_only: options.read_only || tier.options().read_only,
            prefix: format!("{base}k:").into_bytes(),
            meta: format!("{base}meta").into_bytes(),
            namespace: namespace.to_string(),
            max_value: options.max_entry_size,
            quota: options.quota,
            tier,
            remembered: Mutex::new(HashMap::new()),
        })
    }

    /// The Redis key of `key` in the bucket of `namespace` (for tests and tools).
    pub fn redis_key(namespace: &str, key: &str) -> Vec<u8> {
        let mut k = format!("filecache:kv1:{{{namespace}}}:k:").into_bytes();
        k.extend_from_slice(key.as_bytes());
        k
    }

    fn data_key(&self, key: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + key.len());
        k.extend_from_slice(&self.prefix);
        k.extend_from_slice(key.as_bytes());
        k
    }

    fn trailer(&self) -> usize {
        if self.tier.options().fleet_key.is_some() {
            MAC_LEN
        } else {
            0
        }
    }

    /// The longest stored value accepted (an acceptable value, framed).
    fn max_stored(&self) -> u64 {
        (HEAD as u64 + self.trailer() as u64).saturating_add(self.max_value)
    }

    fn mac(&self, key: &str) -> Option<Hmac<Sha256>> {
        let fleet_key = self.tier.options().fleet_key.as_ref()?;
        let mut mac = Hmac::<Sha256>::new_from_slice(fleet_key).expect("HMAC takes keys of any length");
        mac.update(MAC_DOMAIN);
        mac.update(&[self.namespace.len() as u8]);
        mac.update(self.namespace.as_bytes());
        mac.update(&(key.len() as u32).to_le_bytes());
        mac.update(key.as_bytes());
        Some(mac)
    }

    fn crc(key: &str, version: &[u8], value: &[u8]) -> u32 {
        let mut c = Checksum::default();
        c.update(key.as_bytes());
        c.update(version);
        c.update(value);
        c.value()
    }

    fn encode(&self, key: &str, version: Version, value: &[u8]) -> Vec<u8> {
        let v = version.0.to_le_bytes();
        let mut out = Vec::with_capacity(HEAD + value.len() + self.trailer());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&v);
        out.extend_from_slice(&Self::crc(key, &v, value).to_le_bytes());
        out.extend_from_slice(value);
        if let Some(mut mac) = self.mac(key) {
            mac.update(&out);
            out.extend_from_slice(&mac.finalize().into_bytes());
        }
        out
    }

    /// Checks a stored value (at most [`max_stored`](Self::max_stored) + 1 bytes of it).
    fn decode(&self, key: &str, mut stored: Vec<u8>) -> Result<Read> {
        if stored.is_empty() {
            return Ok(Read::Missing);
        }
        if stored.len() as u64 > self.max_stored() {
            // Written by a host with a larger limit: not damage, but not for this host.
            return Err(filecache_store::Error::TooLarge { limit: self.max_value }.into());
        }
        let reject = |reason: &'static str| {
            tracing::warn!(
                server = %self.tier.shown_url(),
                namespace = %self.namespace,
                key = %short(key),
                reason,
                "refused a key-value value from Redis"
            );
            Error::Rejected {
                namespace: self.namespace.clone(),
                key: short(key),
                reason,
            }
        };
        let trailer = self.trailer();
        if stored.len() < HEAD + trailer {
            return Err(reject(if trailer > 0 {
                "shorter than a frame and a MAC"
            } else {
                "shorter than a frame"
            }));
        }
        if let Some(mut mac) = self.mac(key) {
            let (body, tag) = stored.split_at(stored.len() - MAC_LEN);
            mac.update(body);
            mac.verify_slice(tag)
                .map_err(|_| reject("MAC mismatch (not written under this host's fleet key)"))?;
            stored.truncate(stored.len() - MAC_LEN);
        }
        if &stored[..4] != MAGIC {
            return Err(reject("not a key-value value (no frame)"));
        }
        let v: [u8; 8] = stored[4..12].try_into().expect("checked length");
        let crc = u32::from_le_bytes(stored[12..16].try_into().expect("checked length"));
        if Self::crc(key, &v, &stored[HEAD..]) != crc {
            return Err(reject("checksum mismatch"));
        }
        stored.drain(..HEAD);
        Ok(Read::Found(stored, Version(u64::from_le_bytes(v))))
    }

    fn remote(&self, e: filecache_store::Error) -> Error {
        Error::Remote {
            namespace: self.namespace.clone(),
            message: e.full_message(),
        }
    }

    fn unexpected(&self, op: &str, reply: &Reply) -> Error {
        let what = match reply {
            Reply::Error(e) => format!(
                "the server answered an error: {}",
                e.chars().take(200).collect::<String>()
            ),
            other => format!("unexpected answer {:.80}", format!("{other:?}")),
        };
        Error::Remote {
            namespace: self.namespace.clone(),
            message: format!("{} {op}: {what}", self.tier.shown_url()),
        }
    }

    fn command(&self, op: &'static str, args: &[&[u8]], max_reply: u64) -> Result<Reply> {
        self.tier.command(op, args, max_reply).map_err(|e| self.remote(e))
    }

    /// Runs `script` (`EVALSHA`, or `EVAL` if the server does not have it yet).
    fn eval(&self, script: &Script, keys: &[&[u8]], args: &[&[u8]], max_reply: u64) -> Result<Reply> {
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

    fn check_writable(&self) -> Result<()> {
        if self.read_only {
            return Err(filecache_store::Error::ReadOnly.into());
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<()> {
        if value.len() as u64 > self.max_value {
            return Err(filecache_store::Error::TooLarge { limit: self.max_value }.into());
        }
        Ok(())
    }

    fn quota_exceeded(&self, needed: i64) -> Error {
        filecache_store::Error::QuotaExceeded {
            needed: needed.max(0) as u64,
            quota: self.quota,
        }
        .into()
    }

    /// Reads and checks `key`.
    fn read(&self, key: &str) -> Result<Read> {
        // GETRANGE's end is inclusive: at most one byte over the largest acceptable value, so a
        // larger one is refused without being transferred.
        let last = self.max_stored().min(i64::MAX as u64 - 1);
        let end = last.to_string();
        let dkey = self.data_key(key);
        match self.command("get", &[b"GETRANGE", &dkey, b"0", end.as_bytes()], last + 1)? {
            Reply::Bulk(v) => self.decode(key, v.unwrap_or_default()),
            other => Err(self.unexpected("get", &other)),
        }
    }

    fn read_versioned(&self, key: &str) -> Result<Option<Versioned>> {
        Ok(match self.read(key)? {
            Read::Missing => None,
            Read::Found(v, ver) => Some((v, ver)),
        })
    }

    /// One page of `SCAN`: the next cursor and the bucket's keys it returned.
    fn scan(&self, cursor: u64, count: usize) -> Result<(u64, Vec<String>)> {
        let mut pattern = self.prefix.clone();
        pattern.push(b'*');
        let cursor = cursor.to_string();
        let count_s = count.to_string();
        // SCAN's COUNT is a hint: allow four times as many keys as asked, of the longest kind.
        let bound = ((count as u64).saturating_mul(4) + 16)
            .saturating_mul(self.prefix.len() as u64 + MAX_KEY_LEN as u64 + 16)
            .saturating_add(64);
        let reply = self.command(
            "list-keys",
            &[
                b"SCAN",
                cursor.as_bytes(),
                b"MATCH",
                &pattern,
                b"COUNT",
                count_s.as_bytes(),
            ],
            bound,
        )?;
        let Reply::Array(mut parts) = reply else {
            return Err(self.unexpected("list-keys", &reply));
        };
        let (Some(Reply::Array(keys)), Some(Reply::Bulk(Some(next))), None) = (parts.pop(), parts.pop(), parts.pop())
        else {
            return Err(self.unexpected("list-keys", &Reply::Array(parts)));
        };
        let next = std::str::from_utf8(&next)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| self.unexpected("list-keys", &Reply::Bulk(Some(next.clone()))))?;
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let Reply::Bulk(Some(k)) = k else {
                return Err(self.unexpected("list-keys", &k));
            };
            let Some(rest) = k.strip_prefix(&self.prefix[..]) else {
                continue; // not ours (a server answering past its MATCH)
            };
            match String::from_utf8(rest.to_vec()) {
                Ok(s) if s.len() <= MAX_KEY_LEN => out.push(s),
                _ => tracing::warn!(
                    namespace = %self.namespace,
                    "a key in the shared bucket is not UTF-8 or too long (not written by filecache): left out"
                ),
            }
        }
        Ok((next, out))
    }

    /// Writes `value` under `key` if its version is `expected`, by [`SWAP`]; the version
    /// written.
    fn swap_value(
        &self,
        key: &str,
        expected: Option<Version>,
        value: &[u8],
    ) -> Result<Result<Version, Option<Versioned>>> {
        self.check_writable()?;
        self.check_value(value)?;
        let version = Version::fresh();
        let frame = self.encode(key, version, value);
        let expected = expected.map(|v| v.0.to_le_bytes());
        let quota = self.quota.to_string();
        let plen = self.prefix.len().to_string();
        let each = self.max_stored().saturating_add(1).min(i64::MAX as u64);
        let each_s = each.to_string();
        let dkey = self.data_key(key);
        let reply = self.eval(
            &SWAP,
            &[&self.meta, &dkey],
            &[
                quota.as_bytes(),
                plen.as_bytes(),
                expected.as_ref().map_or(&b""[..], |e| &e[..]),
                &frame,
                each_s.as_bytes(),
            ],
            each + 64,
        )?;
        match reply {
            Reply::Array(items) => match &items[..] {
                [Reply::Integer(1)] => Ok(Ok(version)),
                [Reply::Integer(0)] => Ok(Err(None)),
                [Reply::Integer(0), Reply::Bulk(now)] => match self.decode(key, now.clone().unwrap_or_default())? {
                    Read::Missing => Ok(Err(None)),
                    Read::Found(v, ver) => Ok(Err(Some((v, ver)))),
                },
                [Reply::Integer(2), Reply::Integer(needed)] => Err(self.quota_exceeded(*needed)),
                _ => Err(self.unexpected("compare-and-swap", &Reply::Array(items))),
            },
            other => Err(self.unexpected("compare-and-swap", &other)),
        }
    }

    fn increment<T>(&self, key: &str, delta: T, checked_add: fn(T, T) -> Option<T>) -> Result<T>
    where
        T: Copy + Default + ToString + std::str::FromStr<Err = std::num::ParseIntError>,
    {
        self.check_writable()?;
        let remembered = self
            .remembered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned();
        let mut from_memory = remembered.is_some();
        let mut current = match remembered {
            Some(r) => Some(r),
            None => self.read_versioned(key)?,
        };
        for _ in 0..MAX_INCREMENT_ROUNDS {
            let step = match &current {
                None => Ok((T::default(), None)),
                Some((bytes, version)) => parse::<T>(key, bytes).map(|v| (v, Some(*version))),
            }
            .and_then(|(value, expected)| {
                let sum = checked_add(value, delta).ok_or_else(|| overflow(key, value, delta))?;
                Ok((sum, expected))
            });
            let (sum, expected) = match step {
                Ok(step) => step,
                // What is remembered may be stale: only the server's value can be refused.
                Err(_) if from_memory => {
                    from_memory = false;
                    current = self.read_versioned(key)?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let sum_bytes = sum.to_string().into_bytes();
            match self.swap_value(key, expected, &sum_bytes)? {
                Ok(version) => {
                    let mut remembered = self.remembered.lock().unwrap_or_else(|p| p.into_inner());
                    if remembered.len() >= MAX_REMEMBERED && !remembered.contains_key(key) {
                        remembered.clear();
                    }
                    remembered.insert(key.to_string(), (sum_bytes, version));
                    return Ok(sum);
                }
                Err(now) => {
                    from_memory = false;
                    current = now;
                }
            }
        }
        Err(Error::Remote {
            namespace: self.namespace.clone(),
            message: format!(
                "increment of key {:?}: other writers changed it {MAX_INCREMENT_ROUNDS} times in a row; try again",
                short(key)
            ),
        })
    }

    fn remove_damaged(&self, key: &str, stored: &[u8]) -> Result<()> {
        let plen = self.prefix.len().to_string();
        let dkey = self.data_key(key);
        match self.eval(&DELETE_IF, &[&self.meta, &dkey], &[plen.as_bytes(), stored], 16)? {
            Reply::Integer(_) => Ok(()),
            other => Err(self.unexpected("remove damaged", &other)),
        }
    }

    /// The stored bytes of `key`, unchecked (for `verify`).
    fn raw(&self, key: &str) -> Result<Vec<u8>> {
        let last = self.max_stored().min(i64::MAX as u64 - 1);
        let end = last.to_string();
        let dkey = self.data_key(key);
        match self.command("verify", &[b"GETRANGE", &dkey, b"0", end.as_bytes()], last + 1)? {
            Reply::Bulk(v) => Ok(v.unwrap_or_default()),
            other => Err(self.unexpected("verify", &other)),
        }
    }
}

impl Engine for RedisEngine {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.read_versioned(key)?.map(|(v, _)| v))
    }

    fn get_versioned(&self, key: &str) -> Result<Option<Versioned>> {
        self.read_versioned(key)
    }

    fn exists(&self, key: &str) -> Result<bool> {
        Ok(matches!(self.read(key)?, Read::Found(..)))
    }

    fn get_many(&self, keys: &[String], max_bytes: u64) -> Result<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let each = self.max_stored().saturating_add(1).min(i64::MAX as u64);
        let over = (HEAD + self.trailer()).to_string();
        let (each_s, total_s) = (each.to_string(), max_bytes.min(i64::MAX as u64).to_string());
        let dkeys: Vec<Vec<u8>> = keys.iter().map(|k| self.data_key(k)).collect();
        let key_refs: Vec<&[u8]> = dkeys.iter().map(Vec::as_slice).collect();
        let n = keys.len() as u64;
        let bound = max_bytes
            .min(each.saturating_mul(n))
            .saturating_add(n.saturating_mul(HEAD as u64 + MAC_LEN as u64 + 32))
            .saturating_add(64);
        let reply = self.eval(
            &GET_MANY,
            &key_refs,
            &[each_s.as_bytes(), total_s.as_bytes(), over.as_bytes()],
            bound,
        )?;
        let Reply::Array(mut items) = reply else {
            return Err(self.unexpected("get-many", &reply));
        };
        match items.first() {
            Some(Reply::Integer(1)) if items.len() == keys.len() + 1 => {}
            Some(Reply::Integer(0)) => {
                return Err(Error::TooMuchAtOnce {
                    what: "get-many",
                    limit: max_bytes,
                });
            }
            _ => return Err(self.unexpected("get-many", &Reply::Array(items))),
        }
        items
            .drain(1..)
            .zip(keys)
            .map(|(item, key)| match item {
                Reply::Bulk(v) => Ok(match self.decode(key, v.unwrap_or_default())? {
                    Read::Missing => None,
                    Read::Found(v, _) => Some(v),
                }),
                other => Err(self.unexpected("get-many", &other)),
            })
            .collect()
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        self.set_many(&[(key.to_string(), value.to_vec())])
    }

    fn set_many(&self, pairs: &[(String, Vec<u8>)]) -> Result<()> {
        self.check_writable()?;
        if pairs.is_empty() {
            return Ok(());
        }
        pairs.iter().try_for_each(|(_, v)| self.check_value(v))?;
        let frames: Vec<Vec<u8>> = pairs.iter().map(|(k, v)| self.encode(k, Version::fresh(), v)).collect();
        let dkeys: Vec<Vec<u8>> = pairs.iter().map(|(k, _)| self.data_key(k)).collect();
        let mut keys: Vec<&[u8]> = vec![&self.meta];
        keys.extend(dkeys.iter().map(Vec::as_slice));
        let (quota, plen) = (self.quota.to_string(), self.prefix.len().to_string());
        let mut args: Vec<&[u8]> = vec![quota.as_bytes(), plen.as_bytes()];
        args.extend(frames.iter().map(Vec::as_slice));
        match self.eval(&SET_MANY, &keys, &args, 64)? {
            Reply::Array(items) => match &items[..] {
                [Reply::Integer(1)] => Ok(()),
                [Reply::Integer(0), Reply::Integer(needed)] => Err(self.quota_exceeded(*needed)),
                _ => Err(self.unexpected("set", &Reply::Array(items))),
            },
            other => Err(self.unexpected("set", &other)),
        }
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.delete_many(&[key.to_string()])
    }

    fn delete_many(&self, keys: &[String]) -> Result<()> {
        self.check_writable()?;
        if keys.is_empty() {
            return Ok(());
        }
        let dkeys: Vec<Vec<u8>> = keys.iter().map(|k| self.data_key(k)).collect();
        let mut all: Vec<&[u8]> = vec![&self.meta];
        all.extend(dkeys.iter().map(Vec::as_slice));
        let plen = self.prefix.len().to_string();
        match self.eval(&DELETE_MANY, &all, &[plen.as_bytes()], 16)? {
            Reply::Integer(_) => Ok(()),
            other => Err(self.unexpected("delete", &other)),
        }
    }

    fn increment_u64(&self, key: &str, delta: u64) -> Result<u64> {
        self.increment(key, delta, u64::checked_add)
    }

    fn increment_i64(&self, key: &str, delta: i64) -> Result<i64> {
        self.increment(key, delta, i64::checked_add)
    }

    fn swap(&self, key: &str, expected: Option<Version>, value: &[u8]) -> Result<Result<(), Option<Versioned>>> {
        Ok(self.swap_value(key, expected, value)?.map(|_| ()))
    }

    fn list_keys(&self, from: u64, limit: usize) -> Result<KeyPage> {
        let step = (limit / 4).max(1);
        let mut keys = Vec::new();
        let mut cursor = from;
        for _ in 0..MAX_SCANS_PER_PAGE {
            let (next, found) = self.scan(cursor, step)?;
            keys.extend(found);
            cursor = next;
            // Another step could take the page past `limit`.
            if cursor == 0 || keys.len() + step > limit {
                break;
            }
        }
        Ok(KeyPage {
            keys,
            next: (cursor != 0).then_some(cursor),
        })
    }

    fn usage(&self) -> Result<Usage> {
        match self.command("usage", &[b"HMGET", &self.meta, b"keys", b"bytes"], 128)? {
            Reply::Array(items) => {
                let num = |r: &Reply| match r {
                    Reply::Bulk(Some(b)) => std::str::from_utf8(b).ok().and_then(|s| s.parse::<i64>().ok()),
                    Reply::Bulk(None) => Some(0),
                    _ => None,
                };
                match &items[..] {
                    [k, b] => match (num(k), num(b)) {
                        (Some(k), Some(b)) => Ok(Usage {
                            keys: k.max(0) as u64,
                            bytes: b.max(0) as u64,
                        }),
                        _ => Err(self.unexpected("usage", &Reply::Array(items))),
                    },
                    _ => Err(self.unexpected("usage", &Reply::Array(items))),
                }
            }
            other => Err(self.unexpected("usage", &other)),
        }
    }

    fn verify(&self) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let mut from = 0;
        loop {
            let page = self.list_keys(from, crate::MAX_PAGE)?;
            for key in page.keys {
                let stored = self.raw(&key)?;
                match self.decode(&key, stored.clone()) {
                    Ok(Read::Found(..)) => report.ok += 1,
                    Ok(Read::Missing) => {}
                    Err(Error::Rejected { reason, .. }) => {
                        if !self.read_only {
                            self.remove_damaged(&key, &stored)?;
                        }
                        report.damaged.push((short(&key), reason));
                    }
                    // Over this host's size limit: another host's value, not damage.
                    Err(Error::Store(filecache_store::Error::TooLarge { .. })) => {}
                    Err(e) => return Err(e),
                }
            }
            match page.next {
                Some(n) => from = n,
                None => return Ok(report),
            }
        }
    }

    fn clear(&self) -> Result<u64> {
        self.check_writable()?;
        let mut removed = 0u64;
        let mut from = 0;
        loop {
            let page = self.list_keys(from, crate::MAX_PAGE)?;
            if !page.keys.is_empty() {
                let dkeys: Vec<Vec<u8>> = page.keys.iter().map(|k| self.data_key(k)).collect();
                let mut all: Vec<&[u8]> = vec![&self.meta];
                all.extend(dkeys.iter().map(Vec::as_slice));
                let plen = self.prefix.len().to_string();
                match self.eval(&DELETE_MANY, &all, &[plen.as_bytes()], 16)? {
                    Reply::Integer(n) => removed += n.max(0) as u64,
                    other => return Err(self.unexpected("clear", &other)),
                }
            }
            match page.next {
                Some(n) => from = n,
                None => return Ok(removed),
            }
        }
    }
}
