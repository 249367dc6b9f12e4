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

mod buckets;
mod frame;
mod scan;
mod scripts;

use std::collections::HashMap;
use std::sync::Mutex;

use filecache_store::NamespaceOptions;
use filecache_store::remote::{RemoteTier, Reply};

pub use buckets::MAX_BUCKETS_LISTED;

use crate::{Engine, Error, KeyPage, Result, Usage, VerifyReport, Version, Versioned, overflow, parse, short};
use frame::{HEAD, MAC_LEN, Read};
use scripts::{DELETE_MANY, GET_MANY, SET_MANY, SWAP};

/// Compare-and-swap rounds an `increment` tries before giving up (each lost round means another
/// writer's increment went through).
const MAX_INCREMENT_ROUNDS: usize = 10_000;

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

/// Every key of a bucket starts with this and its namespace (`filecache:kv1:{NS`), …
const KEY_HEAD: &str = "filecache:kv1:{";
/// … then a value's key goes on with this and the key (`}:k:<key>`), …
const DATA_TAIL: &str = "}:k:";
/// … and the usage hash ends with this (`}:meta`).
const META_TAIL: &str = "}:meta";

impl RedisEngine {
    /// The bucket of namespace `namespace` on the tier's server, with the namespace's limits
    /// (`max_entry_size`, `quota`) and read-only mode (the tier's
    /// [`read_only`](filecache_store::remote::RemoteOptions::read_only) makes it read-only too).
    /// Nothing is connected yet: the first call connects.
    pub fn new(tier: RemoteTier, namespace: &str, options: &NamespaceOptions) -> Result<RedisEngine> {
        filecache_store::validate_namespace_name(namespace)?;
        Ok(RedisEngine {
            read_only: options.read_only || tier.options().read_only,
            prefix: format!("{KEY_HEAD}{namespace}{DATA_TAIL}").into_bytes(),
            meta: format!("{KEY_HEAD}{namespace}{META_TAIL}").into_bytes(),
            namespace: namespace.to_string(),
            max_value: options.max_entry_size,
            quota: options.quota,
            tier,
            remembered: Mutex::new(HashMap::new()),
        })
    }

    /// The Redis key of `key` in the bucket of `namespace` (for tests and tools).
    pub fn redis_key(namespace: &str, key: &str) -> Vec<u8> {
        let mut k = format!("{KEY_HEAD}{namespace}{DATA_TAIL}").into_bytes();
        k.extend_from_slice(key.as_bytes());
        k
    }

    fn data_key(&self, key: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + key.len());
        k.extend_from_slice(&self.prefix);
        k.extend_from_slice(key.as_bytes());
        k
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
        self.list_page(from, limit)
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
        self.verify_values()
    }

    fn clear(&self) -> Result<u64> {
        self.clear_all()
    }
}
