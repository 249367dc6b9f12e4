//! Key-value buckets over a namespace: the store behind `wasi:keyvalue`.
//!
//! A [`Bucket`] is a [`Namespace`] seen as a map from arbitrary strings to bytes. Its records
//! live apart from the namespace's cache entries and, unlike them, are data: they count against
//! the namespace's quota but are never evicted (cache entries of the same namespace are evicted
//! to make room for them instead).
//!
//! ```text
//! <namespace>/kv/<first byte of digest, hex>/<SHA-256 digest of the key, hex>
//! ```
//!
//! Each record is one file holding the original key and the value, with one checksum over both
//! (see [`record`]). A key never names a file: its digest does, so an empty key, `..`, `a/b`, a
//! NUL or 4 KiB of text are all just keys. A record is written to a temporary file and renamed
//! into place under the namespace lock, so its key and value appear and disappear together: a
//! crash at any point leaves each key with its old record or its new one, never a listed key
//! without a value (a temporary file left by a dead writer is reclaimed by the next open).
//!
//! Reads take no lock. [`Bucket::increment_u64`] (and `_i64`) and [`Bucket::swap`] read,
//! compute and write under the namespace lock (an in-process mutex plus an `flock` on the
//! namespace's `state` file), so they are atomic across the processes sharing the cache
//! directory.
//!
//! # The read cache
//!
//! [`Bucket::get`] and [`Bucket::exists`] answer from memory when they can: each namespace
//! handle (shared by its clones, and so by every bucket made from it) keeps the values it read,
//! and the keys it found without one, together with the *bucket generation* they were read at:
//! a number in the namespace's `kv-generation` file that every change of any record through the
//! store moves on (set, delete, increment, swap, the batch operations, `clear`, the removal of a
//! damaged record found by a read, a listing or `verify`), in any process. A read costs one
//! positional read of that 16-byte file; while it still holds the generation a value was read
//! at, the value is served from memory, and otherwise the record is read and checked from disk
//! as always (how this stays exact under concurrent changes, torn reads of the file and writers
//! that die mid-change is told in `namespace/kv.rs`). What that guarantees:
//!
//! - A change made through the store by any process is seen by every later read, in every
//!   process: a cached answer is served only while no change of the bucket has begun since it
//!   was read, so it was the current value at some moment during the read that serves it.
//! - Only checked values enter the cache: a record that fails its check is reported and
//!   removed as before, never cached, never served.
//! - A value read once is served from memory until some process changes the bucket (any key of
//!   it) through the store. Damage done to a record file *behind the store's back* after it was
//!   read, or a file replaced by hand, goes unnoticed by the handles that cached it until then;
//!   the next read from disk finds it, reports it and removes the record (a handle that had not
//!   cached the key finds it at once).
//! - The generation file is one of the namespace's own files, like `state`: a missing, short,
//!   torn or damaged one only means reads from disk (the next change writes a fresh random
//!   generation), but removing it while processes have the namespace open, or sharing the
//!   directory with a version of this crate that does not move it on, leaves their caches
//!   stale.
//! - Bounded: at most 8 MiB per namespace handle, keys and bookkeeping included (emptied when a
//!   new value would not fit); values over 64 KiB are never cached.
//!
//! [`Bucket::list_keys`] pages through the keys in the order of their digests. A position is the
//! first 8 bytes of a digest (a `u64`, as `wasi:keyvalue@0.2.0-draft` wants its cursor), and a
//! page never ends between two digests that share those bytes, so a position stays meaningful
//! across runs and processes: listing from the start to the end with no concurrent writer
//! returns every key exactly once.
//!
//! ```
//! use filecache_store::kv::Bucket;
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

pub mod record;

use std::io::Read;

use crate::namespace::kv::{KvTxn, kv_rel};
use crate::{Key, Namespace};

/// The longest key, in bytes (so that a page of [`MAX_PAGE`] keys stays under 8 MiB). Keys count
/// against the quota with their value.
pub const MAX_KEY_LEN: usize = 8 << 10;
/// The most keys one page of [`Bucket::list_keys`] returns.
pub const MAX_PAGE: usize = 1000;

/// Why a key-value operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store failed, or refused (read-only, over a limit, a damaged record).
    #[error(transparent)]
    Store(#[from] crate::Error),
    /// A key longer than [`MAX_KEY_LEN`].
    #[error("key too long: a key has at most {limit} bytes, this one has {len}")]
    KeyTooLong {
        /// The key's length.
        len: usize,
        /// [`MAX_KEY_LEN`].
        limit: usize,
    },
    /// `increment` on a value that is not a decimal integer of the right kind.
    #[error("cannot increment key {key:?}: its value is not a decimal integer ({reason})")]
    NotANumber {
        /// The key (cut to 64 characters).
        key: String,
        /// What parsing found.
        reason: String,
    },
    /// `increment` would leave the integer range.
    #[error("cannot increment key {key:?}: {value} + {delta} overflows")]
    Overflow {
        /// The key (cut to 64 characters).
        key: String,
        /// The stored value.
        value: String,
        /// The delta asked for.
        delta: String,
    },
}

impl Error {
    /// The message with every underlying cause, `outer: inner: …`.
    pub fn full_message(&self) -> String {
        match self {
            Error::Store(e) => e.full_message(),
            e => e.to_string(),
        }
    }
}

/// `Result<T, kv::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One page of keys from [`Bucket::list_keys`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyPage {
    /// The keys, in digest order.
    pub keys: Vec<String>,
    /// Where the next page starts; `None` at the end.
    pub next: Option<u64>,
}

/// What [`Bucket::cas`] read: the value of a key and the write it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cas {
    key: String,
    current: Option<Vec<u8>>,
    generation: Option<u64>,
}

impl Cas {
    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }
    /// The value as read (`None`: the key had no value).
    pub fn current(&self) -> Option<&[u8]> {
        self.current.as_deref()
    }
}

/// A record as read: key and value checked.
struct Record {
    value: Vec<u8>,
    generation: u64,
}

fn short(key: &str) -> String {
    key.chars().take(64).collect()
}

fn prefix(digest: &Key) -> u64 {
    u64::from_be_bytes(digest.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// A namespace seen as a key-value bucket. Cheap to clone; clones share state.
#[derive(Debug, Clone)]
pub struct Bucket {
    ns: Namespace,
}

impl Bucket {
    /// The bucket of namespace `ns` (its limits, read-only mode and durability apply).
    pub fn new(ns: Namespace) -> Bucket {
        Bucket { ns }
    }

    /// The namespace it lives in.
    pub fn namespace(&self) -> &Namespace {
        &self.ns
    }

    /// Refuses a key over [`MAX_KEY_LEN`].
    fn check_key_len(key: &str) -> Result<()> {
        if key.len() > MAX_KEY_LEN {
            return Err(Error::KeyTooLong {
                len: key.len(),
                limit: MAX_KEY_LEN,
            });
        }
        Ok(())
    }

    fn digest(key: &str) -> Result<Key> {
        Self::check_key_len(key)?;
        Ok(Key::digest(key.as_bytes()))
    }

    /// Reads and checks the record at `rel` for `key` (`None` for the key when only the digest
    /// is known: the key found is then checked against the digest). A damaged record is removed
    /// and reported as [`crate::Error::Corrupt`] (under `txn`'s lock when the caller holds it).
    fn read(&self, digest: &Key, rel: &str, mut txn: Option<&mut KvTxn<'_>>) -> Result<Option<(String, Record)>> {
        let Some((file, meta)) = self.ns.kv_open(rel, txn.as_deref_mut())? else {
            return Ok(None);
        };
        // Never allocate past what this handle's limits allow: a larger record (written under
        // larger limits, or planted) is refused, not removed.
        let limit = self.ns.options().max_entry_size;
        let most = limit.saturating_add((record::HEADER_LEN + MAX_KEY_LEN) as u64);
        let len = match usize::try_from(meta.len()) {
            Ok(len) if meta.len() <= most => len,
            _ => return Err(crate::Error::TooLarge { limit }.into()),
        };
        let mut buf = Vec::with_capacity(len);
        // One read for a small record (records are never rewritten in place, only replaced).
        (&file)
            .take(len as u64)
            .read_to_end(&mut buf)
            .map_err(|e| crate::Error::io(format!("cannot read key-value record {rel}"), e))?;
        let checked = record::check(&buf).and_then(|h| {
            let key_end = record::HEADER_LEN + h.key_len as usize;
            if Key::digest(&buf[record::HEADER_LEN..key_end]) != *digest {
                return Err("written under another key");
            }
            let key = std::str::from_utf8(&buf[record::HEADER_LEN..key_end]).map_err(|_| "key is not UTF-8")?;
            Ok((key.to_string(), key_end, h.generation))
        });
        match checked {
            Ok((key, key_end, generation)) => {
                buf.drain(..key_end);
                Ok(Some((key, Record { value: buf, generation })))
            }
            Err(reason) => {
                self.ns.kv_discard(rel, Some((&file, &meta)), reason, txn);
                Err(crate::Error::Corrupt {
                    key: format!("kv/{digest}"),
                    reason,
                }
                .into())
            }
        }
    }

    fn read_key(&self, key: &str) -> Result<Option<Record>> {
        let digest = Self::digest(key)?;
        Ok(self.read(&digest, &kv_rel(&digest), None)?.map(|(_, r)| r))
    }

    /// The value of `key` through the handle's read cache: `hit` maps a cached answer, `miss`
    /// one read (and checked) from disk, which is then remembered if the bucket generation
    /// allows it (see [the module docs](self#the-read-cache)).
    fn read_cached<R>(
        &self,
        key: &str,
        hit: impl FnOnce(Option<&[u8]>) -> R,
        miss: impl FnOnce(Option<Vec<u8>>) -> R,
    ) -> Result<R> {
        // Before the cache, which holds only keys that were hashed (a hit hashes nothing).
        Self::check_key_len(key)?;
        let generation = self.ns.kv_generation();
        if let Some(g) = generation
            && let Some(r) = self.ns.kv_cached(key, g, hit)
        {
            return Ok(r);
        }
        let digest = Self::digest(key)?;
        let rel = kv_rel(&digest);
        let mut value = self.read(&digest, &rel, None)?.map(|(_, r)| r.value);
        let mut settled = true;
        if value.is_none() && crate::sys::REPLACE_MAY_HIDE {
            (value, settled) = self.read_after_changes(&digest, &rel, generation)?;
        }
        if let (Some(g), true) = (generation, settled) {
            self.ns.kv_remember(key, g, value.as_deref());
        }
        Ok(miss(value))
    }

    /// Where replacing a file can leave its name briefly absent (Windows, when a reader holds
    /// the old record open: it is moved aside before the new one takes its name), a record found
    /// missing may be one being replaced. The bucket generation tells: unchanged since `before`
    /// (read before the miss), the key has no value; odd, a change is under way, so wait (up to
    /// a second: a writer that died leaves it odd) for it to end and read again. Returns the
    /// value and whether it is the one at `before` (only then may it be cached).
    fn read_after_changes(&self, digest: &Key, rel: &str, before: Option<u64>) -> Result<(Option<Vec<u8>>, bool)> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        let mut pause = std::time::Duration::from_micros(20);
        let mut seen = before;
        loop {
            let now = self.ns.kv_generation_now();
            match now {
                // Nothing changed since the miss was read: the key has no value.
                Some(g) if g % 2 == 0 && now == seen => return Ok((None, seen == before)),
                // A change ended since: read again.
                Some(g) if g % 2 == 0 => seen = now,
                // A change under way: let it end.
                Some(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_millis(1));
                    continue;
                }
                // No generation to tell by, or a change that never ends: the miss stands.
                _ => return Ok((None, false)),
            }
            if let Some((_, r)) = self.read(digest, rel, None)? {
                return Ok((Some(r.value), false));
            }
        }
    }

    /// The value of `key`, checked; `None` if it has none. A damaged record is removed and
    /// reported as an error (never served). Its removal takes the namespace lock without
    /// waiting long (a read made within [`update`](Self::update), on this handle or another,
    /// runs while the calling thread holds the lock, which no wait would outlast): when the lock
    /// is not free, the damage is reported at once and a later read removes the record. Served
    /// from the handle's read cache while no process has changed the bucket since it was read
    /// (see [the module docs](self#the-read-cache)).
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.read_cached(key, |v| v.map(<[u8]>::to_vec), |v| v)
    }

    /// Whether `key` has a value (the record is read and checked, so a damaged one is removed
    /// and reported rather than counted). Served from the read cache as [`get`](Self::get) is.
    pub fn exists(&self, key: &str) -> Result<bool> {
        self.read_cached(key, |v| v.is_some(), |v| v.is_some())
    }

    /// Bytes held by the read cache of this bucket's namespace handle (all its clones share it).
    #[doc(hidden)]
    pub fn cache_bytes(&self) -> usize {
        self.ns.kv_cache_bytes()
    }

    /// The error for a value of `len` bytes under a key of `key_len` bytes, if it breaks a limit.
    fn limit_error(&self, key_len: usize, len: usize) -> Option<Error> {
        let opts = self.ns.options();
        let (len, charged) = (len as u64, (key_len + len) as u64);
        if len > opts.max_entry_size {
            Some(
                crate::Error::TooLarge {
                    limit: opts.max_entry_size,
                }
                .into(),
            )
        } else if charged > opts.quota {
            Some(
                crate::Error::QuotaExceeded {
                    needed: charged,
                    quota: opts.quota,
                }
                .into(),
            )
        } else {
            None
        }
    }

    /// Writes the record for `key` (digest `digest`) under the lock held by `txn`.
    fn write_locked(
        &self,
        txn: &mut crate::namespace::kv::KvTxn<'_>,
        key: &str,
        digest: &Key,
        value: &[u8],
    ) -> Result<()> {
        if let Some(e) = self.limit_error(key.len(), value.len()) {
            return Err(e);
        }
        let tmp = self
            .ns
            .kv_write_tmp(&record::encode(key.as_bytes(), value, generation()))?;
        txn.publish(tmp, key, &kv_rel(digest), (key.len() + value.len()) as u64)?;
        Ok(())
    }

    /// Sets the value of `key`, atomically: a reader sees the old value or the new one. Evicts
    /// cache entries of the namespace if needed to fit; fails with
    /// [`crate::Error::TooLarge`] or [`crate::Error::QuotaExceeded`] (storing nothing) when
    /// the value is over the limit or cannot fit even then.
    pub fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        let digest = Self::digest(key)?;
        if let Some(e) = self.limit_error(key.len(), value.len()) {
            return Err(e);
        }
        // The file is written before the lock is taken; only the rename happens under it.
        let tmp = self
            .ns
            .kv_write_tmp(&record::encode(key.as_bytes(), value, generation()))?;
        let rel = kv_rel(&digest);
        let charged = (key.len() + value.len()) as u64;
        self.ns.kv_transaction(|txn| txn.publish(tmp, key, &rel, charged))?;
        Ok(())
    }

    /// Removes `key`; a key without a value is not an error.
    pub fn delete(&self, key: &str) -> Result<()> {
        let digest = Self::digest(key)?;
        let rel = kv_rel(&digest);
        self.ns.kv_transaction(|txn| txn.remove(key, &rel))?;
        Ok(())
    }

    /// Reads the value of `key` and writes `f(value)` in its place, under the namespace lock:
    /// atomic across processes.
    pub fn update<R>(&self, key: &str, f: impl FnOnce(Option<&[u8]>) -> Result<(Vec<u8>, R)>) -> Result<R> {
        let digest = Self::digest(key)?;
        let rel = kv_rel(&digest);
        self.ns.kv_transaction(|txn| {
            let current = self.read(&digest, &rel, Some(&mut *txn))?.map(|(_, r)| r.value);
            let (new, out) = f(current.as_deref())?;
            self.write_locked(txn, key, &digest, &new)?;
            Ok(out)
        })
    }

    /// Adds `delta` to the decimal integer stored under `key` (a missing key counts as 0) and
    /// stores the sum as decimal ASCII; returns it. Atomic across processes.
    pub fn increment_u64(&self, key: &str, delta: u64) -> Result<u64> {
        self.update(key, |cur| {
            let value = match cur {
                None => 0,
                Some(b) => parse::<u64>(key, b)?,
            };
            let sum = value.checked_add(delta).ok_or_else(|| Error::Overflow {
                key: short(key),
                value: value.to_string(),
                delta: delta.to_string(),
            })?;
            Ok((sum.to_string().into_bytes(), sum))
        })
    }

    /// As [`increment_u64`](Self::increment_u64), for signed integers (`-` allowed).
    pub fn increment_i64(&self, key: &str, delta: i64) -> Result<i64> {
        self.update(key, |cur| {
            let value = match cur {
                None => 0,
                Some(b) => parse::<i64>(key, b)?,
            };
            let sum = value.checked_add(delta).ok_or_else(|| Error::Overflow {
                key: short(key),
                value: value.to_string(),
                delta: delta.to_string(),
            })?;
            Ok((sum.to_string().into_bytes(), sum))
        })
    }

    /// Reads `key` for a compare-and-swap: what [`swap`](Self::swap) compares against.
    pub fn cas(&self, key: &str) -> Result<Cas> {
        let record = self.read_key(key)?;
        Ok(Cas {
            key: key.to_string(),
            generation: record.as_ref().map(|r| r.generation),
            current: record.map(|r| r.value),
        })
    }

    /// Writes `value` under the key of `cas` if no write (by any process) replaced or removed
    /// the value `cas` read, atomically. `Ok(Err(fresh))` when one did: `fresh` holds the value
    /// now stored, for a retry.
    pub fn swap(&self, cas: &Cas, value: &[u8]) -> Result<std::result::Result<(), Cas>> {
        let digest = Self::digest(&cas.key)?;
        let rel = kv_rel(&digest);
        self.ns.kv_transaction(|txn| {
            let now = self.read(&digest, &rel, Some(&mut *txn))?.map(|(_, r)| r);
            if now.as_ref().map(|r| r.generation) != cas.generation {
                return Ok(Err(Cas {
                    key: cas.key.clone(),
                    generation: now.as_ref().map(|r| r.generation),
                    current: now.map(|r| r.value),
                }));
            }
            self.write_locked(txn, &cas.key, &digest, value)?;
            Ok(Ok(()))
        })
    }

    /// Up to `limit` keys (at most [`MAX_PAGE`]; 0 means [`MAX_PAGE`]) whose digests start at
    /// or after position `from` (0 for the first page), in digest order, and where the next
    /// page starts. A record found damaged is removed and left out.
    pub fn list_keys(&self, from: u64, limit: usize) -> Result<KeyPage> {
        let limit = if limit == 0 { MAX_PAGE } else { limit.min(MAX_PAGE) };
        let mut digests: Vec<Key> = Vec::new();
        let first_shard = (from >> 56) as u8;
        for shard in first_shard..=255u8 {
            let mut in_shard = self.ns.kv_digests_in(shard)?;
            in_shard.retain(|d| prefix(d) >= from);
            in_shard.sort_unstable();
            digests.extend(in_shard);
            if digests.len() > limit {
                break;
            }
        }
        let mut cut = digests.len().min(limit);
        if cut < digests.len() {
            // Never end a page between two digests with the same position.
            let boundary = prefix(&digests[cut]);
            while cut > 0 && prefix(&digests[cut - 1]) == boundary {
                cut -= 1;
            }
            if cut == 0 {
                // More than `limit` digests share 8 bytes: not going to happen, but stay exact.
                cut = digests.iter().take_while(|d| prefix(d) == boundary).count();
            }
        }
        let next = digests.get(cut).map(prefix);
        let mut keys = Vec::with_capacity(cut);
        for digest in &digests[..cut] {
            match self.read(digest, &kv_rel(digest), None) {
                Ok(Some((key, _))) => keys.push(key),
                // Deleted meanwhile.
                Ok(None) => {}
                Err(Error::Store(crate::Error::Corrupt { .. })) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(KeyPage { keys, next })
    }

    /// Every key, in digest order (pages of [`MAX_PAGE`]).
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

    /// Reads and checks every record: how many were sound, and the digests and reasons of
    /// those found damaged (and removed, unless the namespace is read-only).
    pub fn verify(&self) -> crate::Result<(u64, Vec<(Key, &'static str)>)> {
        let mut digests = Vec::new();
        self.ns.kv_for_each(|d, _| {
            digests.push(d);
            Ok(())
        })?;
        let (mut ok, mut damaged) = (0, Vec::new());
        for d in digests {
            match self.read(&d, &kv_rel(&d), None) {
                Ok(_) => ok += 1,
                Err(Error::Store(crate::Error::Corrupt { reason, .. })) => damaged.push((d, reason)),
                Err(Error::Store(e)) => return Err(e),
                Err(e) => {
                    return Err(crate::Error::io(
                        "cannot verify a key-value record",
                        std::io::Error::other(e.to_string()),
                    ));
                }
            }
        }
        Ok((ok, damaged))
    }
}

fn parse<T: std::str::FromStr<Err = std::num::ParseIntError>>(key: &str, bytes: &[u8]) -> Result<T> {
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

/// A fresh generation for a record: random, so that a `swap` detects any write since its read.
fn generation() -> u64 {
    let mut b = [0u8; 8];
    // Without the OS RNG, the clock still tells writes apart.
    if getrandom::fill(&mut b).is_err() {
        return std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
    }
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests;
