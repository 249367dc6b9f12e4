//! The engine's read cache: values read and checked, served again while the database has not
//! changed since, by any connection of any process.
//!
//! **Coherence.** In WAL mode every commit, by any connection of any process, rewrites the
//! header at the start of the write-ahead log's index (the `-shm` file, which SQLite maps into
//! every connection): its change counter, the log's frame count, running checksum and salts.
//! SQLite itself compares this header to decide whether a reader's snapshot is out of date (it is
//! what `PRAGMA data_version` reports; the layout is SQLite's documented WAL-index format,
//! <https://sqlite.org/walformat.html>). Each cached value is tagged with the header as it was
//! *before* the value was read, and served only while the header is still byte for byte the same;
//! anything else (a commit, a writer halfway through updating it, no mapping at all) is a miss,
//! and a miss empties the cache. Checking costs 24 loads from memory the connection maps anyway:
//! no system call, no statement, no file lock, and no signal handler (a `-shm` file truncated
//! under a live connection is a fault for SQLite itself just the same). `PRAGMA data_version`
//! would need a statement, and with it the two `fcntl` locks of a read transaction, per `get`:
//! most of what an uncached `get` costs (see BENCHMARKS.md).
//!
//! **Integrity.** Only values whose checksum was just checked are cached, so a damaged row is
//! never served from here; a row damaged by a write (through SQLite) changes the header, so the
//! next `get` reads and checks it again. The engine also empties the cache on every write path
//! of its own.
//!
//! **Memory.** At most [`CACHE_BYTES`] per engine (a host opens one engine per namespace): keys,
//! values and a fixed overhead per entry count; values over [`MAX_CACHED_VALUE`] are never
//! cached; the oldest entries go first.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use rusqlite::{Connection, ffi};

use crate::{Version, Versioned};

/// The most bytes (keys, values and [`ENTRY_OVERHEAD`] per entry) one engine's cache holds.
pub const CACHE_BYTES: usize = 4 << 20;
/// Values larger than this are never cached.
pub const MAX_CACHED_VALUE: usize = CACHE_BYTES / 8;
/// What an entry costs beyond its key and value (the map's slot, the queue's, the allocations'
/// headers), counted against [`CACHE_BYTES`].
const ENTRY_OVERHEAD: usize = 160;

/// The WAL index header: two copies of 48 bytes (12 words each).
const HEADER_WORDS: usize = 12;
/// The WAL index format SQLite 3.7.0 and every later version write (`WALINDEX_MAX_VERSION`).
const WAL_INDEX_VERSION: u32 = 3007000;
/// The size of one region of the WAL index (`WALINDEX_PGSZ`): what `xShmMap` is asked for.
const WAL_INDEX_REGION: i32 = 32768;

/// The WAL index header as read: what a cached value is tagged with.
pub type Stamp = [u32; HEADER_WORDS];

/// The WAL index header of one connection, as SQLite maps it.
pub struct WalHeader {
    words: *const AtomicU32,
}

// SAFETY: the pointer is to a shared mapping that lives as long as the connection it came from
// (which the engine keeps next to it and drops first), and it is only ever read with atomic
// loads, from any thread.
unsafe impl Send for WalHeader {}

impl WalHeader {
    /// The header of `conn`'s WAL index, if `conn` is in WAL mode with its index mapped (after
    /// its first transaction). `None` otherwise: the engine then caches nothing.
    pub fn of(conn: &Connection) -> Option<WalHeader> {
        // SAFETY: `handle` is the live connection's; SQLITE_FCNTL_FILE_POINTER writes the main
        // database's `sqlite3_file*` (owned by the connection) into `file`. `xShmMap` of region
        // 0 with `bExtend` 0 returns the region already mapped for the connection's WAL index
        // (SQLite maps it on the first read transaction in WAL mode, and unmaps it only when
        // the connection closes its WAL: when it is closed, or leaves WAL mode, which this
        // engine never asks for and no other connection can do while this one holds its shared
        // lock). The engine holds its own mutex around every use of the connection, which was
        // opened with SQLITE_OPEN_NO_MUTEX, so nothing else uses it meanwhile.
        unsafe {
            let db = conn.handle();
            let mut file: *mut ffi::sqlite3_file = std::ptr::null_mut();
            let rc = ffi::sqlite3_file_control(
                db,
                c"main".as_ptr(),
                ffi::SQLITE_FCNTL_FILE_POINTER,
                (&mut file as *mut *mut ffi::sqlite3_file).cast(),
            );
            if rc != ffi::SQLITE_OK || file.is_null() {
                return None;
            }
            let methods = (*file).pMethods;
            if methods.is_null() || (*methods).iVersion < 2 {
                return None;
            }
            let map = (*methods).xShmMap?;
            let mut region: *mut std::ffi::c_void = std::ptr::null_mut();
            if map(file, 0, WAL_INDEX_REGION, 0, &mut region) != ffi::SQLITE_OK || region.is_null() {
                return None;
            }
            let header = WalHeader {
                words: region.cast::<AtomicU32>().cast_const(),
            };
            // A format this code does not know: no cache.
            header.read()?;
            Some(header)
        }
    }

    /// The header now, or `None` if a writer is halfway through updating it (or it is not
    /// initialised): the answer is then a miss.
    pub fn read(&self) -> Option<Stamp> {
        let mut first = [0u32; HEADER_WORDS];
        let mut second = [0u32; HEADER_WORDS];
        // SAFETY: the region is at least 32 KiB, page-aligned, and mapped as long as `self`'s
        // connection is open (see `of`). Other processes write it: atomic loads only.
        unsafe {
            for (i, w) in first.iter_mut().enumerate() {
                *w = (*self.words.add(i)).load(Ordering::Acquire);
            }
            for (i, w) in second.iter_mut().enumerate() {
                *w = (*self.words.add(HEADER_WORDS + i)).load(Ordering::Acquire);
            }
        }
        // SQLite writes the second copy, then the first; a reader that finds them different
        // caught a writer in between (SQLite's own readers take the slow path then too). Byte
        // 12 is `isInit`.
        let initialised = first[3].to_ne_bytes()[0] == 1;
        (first == second && initialised && first[0] == WAL_INDEX_VERSION).then_some(first)
    }
}

/// What one engine caches: checked values (or their absence) and their versions, all valid at
/// one WAL index header.
#[derive(Default)]
pub struct ReadCache {
    stamp: Option<Stamp>,
    entries: HashMap<Arc<str>, Option<Versioned>>,
    /// Keys in the order they were cached: the oldest goes first when the cache is full.
    order: VecDeque<Arc<str>>,
    bytes: usize,
}

fn cost(key: &str, value: Option<&Versioned>) -> usize {
    key.len() + value.map_or(0, |(v, _)| v.len()) + ENTRY_OVERHEAD
}

impl ReadCache {
    /// The cached answer for `key` if the header is still `now`; otherwise `None`, and the
    /// cache is emptied if the header moved.
    pub fn lookup(&mut self, now: Option<Stamp>, key: &str) -> Option<Option<Versioned>> {
        match now {
            Some(now) if self.stamp == Some(now) => {
                let hit = self.entries.get(key)?.clone();
                #[cfg(test)]
                HITS.with(|h| h.set(h.get() + 1));
                Some(hit)
            }
            _ => {
                self.clear();
                None
            }
        }
    }

    /// Caches what was read of `key` (checked) after the header was `before`.
    pub fn insert(&mut self, before: Stamp, key: &str, value: Option<&Versioned>) {
        if self.stamp != Some(before) {
            self.clear();
            self.stamp = Some(before);
        }
        if value.is_some_and(|(v, _)| v.len() > MAX_CACHED_VALUE) || self.entries.contains_key(key) {
            return;
        }
        let cost = cost(key, value);
        if cost > CACHE_BYTES {
            return;
        }
        while self.bytes + cost > CACHE_BYTES {
            let Some(old) = self.order.pop_front() else { break };
            if let Some(v) = self.entries.remove(&old) {
                self.bytes -= self::cost(&old, v.as_ref());
            }
        }
        let key: Arc<str> = Arc::from(key);
        self.order.push_back(Arc::clone(&key));
        self.entries
            .insert(key, value.map(|(v, ver)| (v.clone(), Version(ver.0))));
        self.bytes += cost;
    }

    /// Forgets everything (its memory too).
    pub fn clear(&mut self) {
        if self.stamp.is_some() || !self.entries.is_empty() {
            *self = ReadCache::default();
        }
    }

    /// Bytes counted against [`CACHE_BYTES`] now.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Entries now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
thread_local! {
    /// How many `get`s this thread answered from a read cache (tests of the cache).
    pub(crate) static HITS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}
