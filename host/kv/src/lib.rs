//! Key-value buckets for filecache: what `wasi:keyvalue` guests get.
//!
//! A [`Bucket`] maps arbitrary strings to bytes. It is a handle on an [`Engine`], the one trait
//! the bindings call (get, set, delete, exists, increment, compare-and-swap, list, batches);
//! [`SqliteEngine`] is the engine a bucket gets by default ([`Bucket::new`]): one SQLite database
//! per namespace, in the namespace's directory. With the feature `remote`, `RedisEngine` keeps
//! a bucket on a Redis server shared by a fleet of hosts instead (module `redis`).
//!
//! ```text
//! <cache>/<namespace>/kv.sqlite3      the bucket: table `kv` (key, value, version, checksums)
//! <cache>/<namespace>/kv.sqlite3-wal  its write-ahead log, and -shm its index (SQLite's)
//! ```
//!
//! # What a bucket guarantees
//!
//! - **Integrity**: each row holds a CRC32C of its key and value, checked on every read; a row
//!   that fails is reported ([`filecache_store::Error::Corrupt`]) and removed, never served. A
//!   database file SQLite finds damaged is reported as [`Error::DamagedDatabase`], which says how
//!   to clear it ([`Bucket::clear`] works on a damaged file too).
//! - **Quota**: keys and values count against the namespace's quota together with its cache
//!   entries ([`filecache_store::Namespace::charge_data`]); cache entries are evicted to make
//!   room, key-value data never is. Values are bounded by the namespace's `max_entry_size`, keys
//!   by [`MAX_KEY_LEN`].
//! - **Atomicity**: every write is one SQLite transaction; `increment` and compare-and-swap read
//!   and write in one `BEGIN IMMEDIATE` transaction, so they are atomic across the processes
//!   sharing the cache directory; [`Bucket::set_many`] and [`Bucket::delete_many`] are atomic as
//!   a whole. A crash (`kill -9`, power loss in durable mode) at any point leaves each write, and
//!   each batch, entirely old or entirely new (SQLite's write-ahead log).
//! - **Durability**: WAL with `synchronous=NORMAL` (a power loss may lose the last writes, never
//!   tear one); `synchronous=FULL` when the namespace is [`Durability::Sync`](filecache_store::Durability).
//! - **Read-only** namespaces refuse every write with [`filecache_store::Error::ReadOnly`].
//! - **Listing**: [`Bucket::list_keys`] pages in insertion order; a cursor is a row's position,
//!   meaningful across runs and processes: listing from start to end with no concurrent writer
//!   returns every key exactly once (a key written meanwhile may or may not be listed).
//!
//! ```
//! use filecache_kv::Bucket;
//! use filecache_store::{FileCache, NamespaceOptions};
//! let dir = tempfile::tempdir()?;
//! let cache = FileCache::open(dir.path())?;
//! let bucket = Bucket::new(cache.namespace("my-plugin", NamespaceOptions::default())?);
//! bucket.set("a/b", b"value")?;
//! assert_eq!(bucket.get("a/b")?.as_deref(), Some(&b"value"[..]));
//! assert_eq!(bucket.increment_u64("counter", 5)?, 5);
//! assert_eq!(bucket.increment_u64("counter", 1)?, 6);
//! let page = bucket.list_keys(0, 1000)?;
//! assert_eq!(page.keys.len(), 2);
//! assert_eq!(page.next, None);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

mod error;
#[cfg(any(test, feature = "fault-injection"))]
#[doc(hidden)]
pub mod fault;
#[cfg(not(any(test, feature = "fault-injection")))]
mod fault;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod import;
pub mod maintenance;
mod path;
#[cfg(feature = "remote")]
pub mod redis;
mod sqlite;

use std::sync::Arc;

pub use error::{Error, Result};
pub use filecache_store::Namespace;
pub use import::{RECORDS_DIR, encode_record};
#[cfg(feature = "remote")]
pub use redis::RedisEngine;
pub use sqlite::{DATABASE_FILE, SqliteEngine};

/// The longest key, in bytes (so that a page of [`MAX_PAGE`] keys stays under 8 MiB). Keys count
/// against the quota with their value.
pub const MAX_KEY_LEN: usize = 8 << 10;
/// The most keys one page of [`Bucket::list_keys`] returns.
pub const MAX_PAGE: usize = 1000;

/// One page of keys from [`Bucket::list_keys`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyPage {
    /// The keys, in listing order.
    pub keys: Vec<String>,
    /// Where the next page starts; `None` at the end.
    pub next: Option<u64>,
}

/// A version of a key's value: what compare-and-swap compares. Drawn at random for every write,
/// so that any write since a read is detected (an ABA write included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Version(pub u64);

impl Version {
    /// A fresh version.
    pub fn fresh() -> Version {
        let mut b = [0u8; 8];
        // Without the OS RNG, the clock still tells writes apart.
        if getrandom::fill(&mut b).is_err() {
            return Version(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos() as u64,
            );
        }
        Version(u64::from_le_bytes(b))
    }
}

/// What [`Bucket::cas`] read: the value of a key and the version it had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cas {
    key: String,
    current: Option<Vec<u8>>,
    version: Option<Version>,
}

impl Cas {
    /// What was read of `key`: its value and version (`None`: it had none).
    pub fn new(key: String, read: Option<Versioned>) -> Cas {
        let (current, version) = match read {
            Some((v, ver)) => (Some(v), Some(ver)),
            None => (None, None),
        };
        Cas { key, current, version }
    }
    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }
    /// The value as read (`None`: the key had no value).
    pub fn current(&self) -> Option<&[u8]> {
        self.current.as_deref()
    }
    /// The version read (`None`: the key had no value).
    pub fn version(&self) -> Option<Version> {
        self.version
    }
}

/// What [`Bucket::verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Rows read and found sound.
    pub ok: u64,
    /// Rows found damaged (and removed, unless the namespace is read-only): key (cut to 64
    /// characters, lossily when not UTF-8) and what the check found.
    pub damaged: Vec<(String, &'static str)>,
    /// The database file itself is damaged (SQLite's own check failed): what it said.
    pub database: Option<String>,
}

/// Keys and bytes (keys and values, what the quota counts) a bucket holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Usage {
    /// Keys.
    pub keys: u64,
    /// Bytes of keys and values.
    pub bytes: u64,
}

/// A value and its version, as read.
pub type Versioned = (Vec<u8>, Version);

/// A key-value engine: what a [`Bucket`] does its work with. The SQLite engine
/// ([`SqliteEngine`]) is the local one; an engine over a shared server fits the same trait.
///
/// Every method is atomic on its own, and across the processes that share the engine's storage;
/// [`set_many`](Self::set_many) and [`delete_many`](Self::delete_many) are atomic as a whole.
/// Keys have already been checked against [`MAX_KEY_LEN`] by the bucket.
pub trait Engine: Send + Sync + std::fmt::Debug {
    /// The value of `key`, checked; `None` if it has none.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// The value of `key` and its version.
    fn get_versioned(&self, key: &str) -> Result<Option<Versioned>>;
    /// Whether `key` has a value.
    fn exists(&self, key: &str) -> Result<bool>;
    /// The values of `keys`, in order, gathering at most `max_bytes` bytes of values in all
    /// (past it: [`Error::TooMuchAtOnce`]).
    fn get_many(&self, keys: &[String], max_bytes: u64) -> Result<Vec<Option<Vec<u8>>>>;
    /// Sets the value of `key`.
    fn set(&self, key: &str, value: &[u8]) -> Result<()>;
    /// Sets every pair, all or none (a key given twice takes its last value).
    fn set_many(&self, pairs: &[(String, Vec<u8>)]) -> Result<()>;
    /// Removes `key`; a key without a value is not an error.
    fn delete(&self, key: &str) -> Result<()>;
    /// Removes every key, all or none.
    fn delete_many(&self, keys: &[String]) -> Result<()>;
    /// Adds `delta` to the decimal integer under `key` (missing: 0), atomically; the sum.
    fn increment_u64(&self, key: &str, delta: u64) -> Result<u64>;
    /// As [`increment_u64`](Self::increment_u64), for signed integers.
    fn increment_i64(&self, key: &str, delta: i64) -> Result<i64>;
    /// Writes `value` under `key` if its version is still `expected` (`None`: it has no value),
    /// atomically; otherwise writes nothing and answers what is there now.
    fn swap(&self, key: &str, expected: Option<Version>, value: &[u8]) -> Result<Result<(), Option<Versioned>>>;
    /// Up to `limit` keys from position `from` (0: the start), and where the next page starts.
    fn list_keys(&self, from: u64, limit: usize) -> Result<KeyPage>;
    /// Keys and bytes held.
    fn usage(&self) -> Result<Usage>;
    /// Reads and checks everything; removes what is damaged (unless read-only).
    fn verify(&self) -> Result<VerifyReport>;
    /// Removes every key (a damaged database too). How many keys were removed, when known.
    fn clear(&self) -> Result<u64>;
}

/// A key-value bucket: a handle on an [`Engine`]. Cheap to clone; clones share the engine (and
/// its database connection).
#[derive(Debug, Clone)]
pub struct Bucket {
    engine: Arc<dyn Engine>,
}

fn short(key: &str) -> String {
    key.chars().take(64).collect()
}

fn check_key(key: &str) -> Result<()> {
    if key.len() > MAX_KEY_LEN {
        return Err(Error::KeyTooLong {
            len: key.len(),
            limit: MAX_KEY_LEN,
        });
    }
    Ok(())
}

impl Bucket {
    /// The bucket of namespace `ns`, in its SQLite database (its limits, read-only mode and
    /// durability apply). The database is opened (created, and older records imported) on
    /// first use, so an error opening it is answered by the first operation.
    pub fn new(ns: Namespace) -> Bucket {
        Bucket::from_engine(Arc::new(SqliteEngine::new(ns)))
    }

    /// A bucket over any engine.
    pub fn from_engine(engine: Arc<dyn Engine>) -> Bucket {
        Bucket { engine }
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// The value of `key`, checked; `None` if it has none. A damaged row is removed and reported
    /// as an error, never served.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        check_key(key)?;
        self.engine.get(key)
    }

    /// Whether `key` has a value (checked as [`get`](Self::get) checks it).
    pub fn exists(&self, key: &str) -> Result<bool> {
        check_key(key)?;
        self.engine.exists(key)
    }

    /// The values of `keys`, in order, gathering at most `max_bytes` bytes of values: past it,
    /// [`Error::TooMuchAtOnce`] (so that one call cannot make the host hold more than that).
    pub fn get_many(&self, keys: &[String], max_bytes: u64) -> Result<Vec<Option<Vec<u8>>>> {
        keys.iter().try_for_each(|k| check_key(k))?;
        self.engine.get_many(keys, max_bytes)
    }

    /// Sets the value of `key`, atomically. Evicts cache entries of the namespace if needed to
    /// fit; fails with [`filecache_store::Error::TooLarge`] or
    /// [`filecache_store::Error::QuotaExceeded`] (storing nothing) when the value is over the
    /// limit or cannot fit even then.
    pub fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        check_key(key)?;
        self.engine.set(key, value)
    }

    /// Sets every pair in one transaction: all or none.
    pub fn set_many(&self, pairs: &[(String, Vec<u8>)]) -> Result<()> {
        pairs.iter().try_for_each(|(k, _)| check_key(k))?;
        self.engine.set_many(pairs)
    }

    /// Removes `key`; a key without a value is not an error.
    pub fn delete(&self, key: &str) -> Result<()> {
        check_key(key)?;
        self.engine.delete(key)
    }

    /// Removes every key in one transaction: all or none.
    pub fn delete_many(&self, keys: &[String]) -> Result<()> {
        keys.iter().try_for_each(|k| check_key(k))?;
        self.engine.delete_many(keys)
    }

    /// Adds `delta` to the decimal integer stored under `key` (a missing key counts as 0) and
    /// stores the sum as decimal ASCII; returns it. Atomic across processes.
    pub fn increment_u64(&self, key: &str, delta: u64) -> Result<u64> {
        check_key(key)?;
        self.engine.increment_u64(key, delta)
    }

    /// As [`increment_u64`](Self::increment_u64), for signed integers (`-` allowed).
    pub fn increment_i64(&self, key: &str, delta: i64) -> Result<i64> {
        check_key(key)?;
        self.engine.increment_i64(key, delta)
    }

    /// Reads `key` for a compare-and-swap: what [`swap`](Self::swap) compares against.
    pub fn cas(&self, key: &str) -> Result<Cas> {
        check_key(key)?;
        Ok(Cas::new(key.to_string(), self.engine.get_versioned(key)?))
    }

    /// Writes `value` under the key of `cas` if no write (by any process) replaced or removed
    /// the value `cas` read, atomically. `Ok(Err(fresh))` when one did: `fresh` holds the value
    /// now stored, for a retry.
    pub fn swap(&self, cas: &Cas, value: &[u8]) -> Result<std::result::Result<(), Cas>> {
        check_key(&cas.key)?;
        Ok(self
            .engine
            .swap(&cas.key, cas.version, value)?
            .map_err(|now| Cas::new(cas.key.clone(), now)))
    }

    /// Up to `limit` keys (at most [`MAX_PAGE`]; 0 means [`MAX_PAGE`]) from position `from` (0
    /// for the first page), and where the next page starts. Reads keys only, never values. A
    /// row found damaged is removed and left out.
    pub fn list_keys(&self, from: u64, limit: usize) -> Result<KeyPage> {
        let limit = if limit == 0 { MAX_PAGE } else { limit.min(MAX_PAGE) };
        self.engine.list_keys(from, limit)
    }

    /// Every key (pages of [`MAX_PAGE`]).
    pub fn keys(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut from = 0;
        loop {
            let page = self.list_keys(from, MAX_PAGE)?;
            out.extend(page.keys);
            match page.next {
                Some(n) => from = n,
                None => return Ok(out),
            }
        }
    }

    /// Keys and bytes held.
    pub fn usage(&self) -> Result<Usage> {
        self.engine.usage()
    }

    /// Reads and checks every row; removes those found damaged (unless read-only).
    pub fn verify(&self) -> Result<VerifyReport> {
        self.engine.verify()
    }

    /// Removes every key, and gives their bytes back to the quota; a damaged database is
    /// removed whole. How many keys were removed (0 for a damaged database, whose keys cannot
    /// be counted).
    pub fn clear(&self) -> Result<u64> {
        self.engine.clear()
    }
}

/// Parses a stored integer for `increment`.
pub(crate) fn parse<T: std::str::FromStr<Err = std::num::ParseIntError>>(key: &str, bytes: &[u8]) -> Result<T> {
    let not_a_number = |reason: String| Error::NotANumber {
        key: short(key),
        reason,
    };
    let s = std::str::from_utf8(bytes).map_err(|_| not_a_number("not UTF-8".into()))?;
    s.parse::<T>().map_err(|e| match e.kind() {
        std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow => {
            not_a_number(format!("{s:.40} is out of range"))
        }
        _ => not_a_number(format!("{:?}: {e}", s.chars().take(40).collect::<String>())),
    })
}

/// The error for `value + delta` leaving the range.
pub(crate) fn overflow(key: &str, value: impl ToString, delta: impl ToString) -> Error {
    Error::Overflow {
        key: short(key),
        value: value.to_string(),
        delta: delta.to_string(),
    }
}

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;

/// The crate README's example, compiled as a doctest so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
