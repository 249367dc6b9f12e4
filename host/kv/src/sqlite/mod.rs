//! The SQLite engine: one database per namespace, in its directory.
//!
//! ```sql
//! CREATE TABLE kv (
//!     key     BLOB PRIMARY KEY NOT NULL, -- the key's UTF-8 bytes (any string: NUL, '/', '..')
//!     version INTEGER NOT NULL,          -- random per write: what compare-and-swap compares
//!     crc     INTEGER NOT NULL,          -- CRC32C of key and value, checked on every read
//!     key_crc INTEGER NOT NULL,          -- CRC32C of the key alone: a listing reads no value
//!     value   BLOB NOT NULL              -- last, so that reading the others never loads it
//! );
//! CREATE TABLE meta (name TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL);
//! ```
//!
//! The database is opened in WAL mode (readers never wait for a writer), `synchronous=NORMAL`
//! (`FULL` in durable mode), with a busy timeout so that processes sharing it wait for each
//! other rather than fail, and with `SQLITE_OPEN_NOFOLLOW` (and no file of it may be a symlink:
//! a planted one is refused). Every write is one `BEGIN IMMEDIATE` transaction that also
//! charges the namespace's quota ([`Namespace::charge_data`]) just before it commits. Prepared
//! statements are cached per connection ([`rusqlite::Connection::prepare_cached`]); a bucket
//! and its clones share one connection.
//!
//! A read cache per engine ([`read_cache`]) answers a repeated `get` without a statement: it
//! holds checked values while the WAL index header, which every commit by any process rewrites,
//! stays the same; it is bounded ([`read_cache::CACHE_BYTES`]) and needs no signal handler.

mod maintenance;
mod open;
mod read_cache;
mod write;

use std::sync::{Mutex, MutexGuard};

use filecache_store::entry::Checksum;
use rusqlite::{Connection, ErrorCode, OptionalExtension, params};

#[cfg(test)]
pub(crate) use open::BUSY_WAITS;
use open::usage_of;
#[cfg(test)]
pub(crate) use read_cache::{CACHE_BYTES, MAX_CACHED_VALUE};
use read_cache::{ReadCache, WalHeader};
use write::{Outcome, UPSERT_SQL};

/// How many `get`s this thread answered from a read cache so far (tests).
#[cfg(test)]
pub(crate) fn read_cache_hits() -> u64 {
    read_cache::HITS.with(|h| h.get())
}

use crate::{Engine, Error, KeyPage, Namespace, Result, Usage, VerifyReport, Version, Versioned, short};

/// The database's file name in the namespace directory (SQLite adds `-wal` and `-shm`).
pub const DATABASE_FILE: &str = "kv.sqlite3";

/// The key-value engine of one namespace, over its SQLite database (see the module docs). The
/// database is opened on first use.
pub struct SqliteEngine {
    ns: Namespace,
    conn: Mutex<Option<Db>>,
    /// Locked after `conn`, never before, and never held while the connection writes.
    cache: Mutex<ReadCache>,
}

/// The open database: the connection, and the header of its WAL index (the read cache's
/// check; `None`: nothing is cached).
struct Db {
    conn: Connection,
    wal: Option<WalHeader>,
}

impl std::fmt::Debug for SqliteEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteEngine")
            .field("namespace", &self.ns.name())
            .finish()
    }
}

fn crc_of(key: &[u8], value: &[u8]) -> u32 {
    let mut c = Checksum::default();
    c.update(key);
    c.update(value);
    c.value()
}

/// A row as read for a key: checked or not yet.
struct Row {
    version: i64,
    crc: i64,
    value: Vec<u8>,
}

impl Row {
    fn is_sound(&self, key: &[u8]) -> bool {
        i64::from(crc_of(key, &self.value)) == self.crc
    }
}

impl SqliteEngine {
    /// The engine of namespace `ns` (its limits, read-only mode and durability apply).
    pub fn new(ns: Namespace) -> SqliteEngine {
        SqliteEngine {
            ns,
            conn: Mutex::new(None),
            cache: Mutex::new(ReadCache::default()),
        }
    }

    /// The namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.ns
    }

    /// The read cache's bytes (as counted against its bound) and entries.
    #[cfg(test)]
    pub(crate) fn read_cache_usage(&self) -> (usize, usize) {
        let cache = self.cache();
        (cache.bytes(), cache.len())
    }

    /// Sets the namespace's data charge to exactly what the database holds (a crash may have
    /// left it too high).
    pub fn recount_charge(&self) -> Result<Usage> {
        self.check_writable()?;
        Ok(self.with_conn(|conn| self.recount(conn))?.unwrap_or_default())
    }

    fn name(&self) -> String {
        self.ns.name().to_string()
    }

    /// An SQLite error, as ours: damage of the file is told apart (and the connection dropped,
    /// so that a cleared database is opened afresh).
    fn db(&self, e: rusqlite::Error) -> Error {
        let damaged = matches!(
            e.sqlite_error_code(),
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
        );
        if damaged {
            Error::DamagedDatabase {
                namespace: self.name(),
                message: e.to_string(),
            }
        } else {
            Error::Database {
                namespace: self.name(),
                message: e.to_string(),
            }
        }
    }

    fn io(&self, what: &str, e: std::io::Error) -> Error {
        filecache_store::Error::io(format!("{what} of namespace {:?}", self.ns.name()), e).into()
    }

    fn lock(&self) -> MutexGuard<'_, Option<Db>> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cache(&self) -> MutexGuard<'_, ReadCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Empties the read cache: every write path calls it (the WAL index header moves with each
    /// commit anyway; this does not rely on it).
    fn invalidate(&self) {
        self.cache().clear();
    }

    /// Runs `f` on the connection, opening it first if needed; `None` when there is no database
    /// to read (a read-only namespace that has none).
    fn with_conn<R>(&self, f: impl FnOnce(&mut Connection) -> Result<R>) -> Result<Option<R>> {
        self.with_db(|db| f(&mut db.conn))
    }

    /// As [`with_conn`](Self::with_conn), with the WAL index header next to the connection.
    fn with_db<R>(&self, f: impl FnOnce(&mut Db) -> Result<R>) -> Result<Option<R>> {
        let mut guard = self.lock();
        if guard.is_none() {
            self.invalidate();
            match self.open()? {
                Some(conn) => {
                    // Only a connection that writes is sure to have its WAL index mapped; a
                    // read-only one may read through a private copy of it.
                    let wal = if self.ns.options().read_only {
                        None
                    } else {
                        WalHeader::of(&conn)
                    };
                    *guard = Some(Db { conn, wal })
                }
                None => return Ok(None),
            }
        }
        let db = guard.as_mut().expect("opened above");
        let out = f(db);
        if let Err(Error::DamagedDatabase { .. }) = &out {
            self.invalidate();
            *guard = None;
        }
        out.map(Some)
    }

    /// Refuses a write on a read-only namespace, and a key and value over the limits.
    fn check_write(&self, key: &str, value: &[u8]) -> Result<()> {
        self.check_writable()?;
        let opts = self.ns.options();
        if value.len() as u64 > opts.max_entry_size {
            return Err(filecache_store::Error::TooLarge {
                limit: opts.max_entry_size,
            }
            .into());
        }
        let charged = (key.len() + value.len()) as u64;
        if charged > opts.quota {
            return Err(filecache_store::Error::QuotaExceeded {
                needed: charged,
                quota: opts.quota,
            }
            .into());
        }
        Ok(())
    }

    fn check_writable(&self) -> Result<()> {
        if self.ns.options().read_only {
            return Err(filecache_store::Error::ReadOnly.into());
        }
        Ok(())
    }

    /// Reads the row of `key` (not checked).
    fn read_row(&self, conn: &Connection, key: &str) -> Result<Option<Row>> {
        let mut stmt = conn
            .prepare_cached("SELECT version, crc, value FROM kv WHERE key = ?1")
            .map_err(|e| self.db(e))?;
        stmt.query_row([key.as_bytes()], |r| {
            Ok(Row {
                version: r.get(0)?,
                crc: r.get(1)?,
                value: r.get(2)?,
            })
        })
        .optional()
        .map_err(|e| self.db(e))
    }

    /// Reads and checks the row of `key`. A damaged row is removed (when the namespace is
    /// writable) and reported.
    fn read_checked(&self, conn: &mut Connection, key: &str) -> Result<Option<Row>> {
        match self.read_row(conn, key)? {
            Some(row) if !row.is_sound(key.as_bytes()) => Err(self.discard(conn, key, &row)),
            row => Ok(row),
        }
    }

    /// Removes the damaged row `row` of `key` if it is still there, and answers the error that
    /// reports it.
    fn discard(&self, conn: &mut Connection, key: &str, row: &Row) -> Error {
        tracing::warn!(namespace = %self.ns.name(), key = %short(key), "removing damaged key-value row");
        if !self.ns.options().read_only {
            let removed = self.write(conn, |tx| {
                let len = key.len() as u64 + row.value.len() as u64;
                let n = tx
                    .execute(
                        "DELETE FROM kv WHERE key = ?1 AND version = ?2 AND crc = ?3",
                        params![key.as_bytes(), row.version, row.crc],
                    )
                    .map_err(|e| self.db(e))?;
                Ok((if n > 0 { len } else { 0 }, 0, ()))
            });
            if let Err(e) = removed {
                tracing::warn!(namespace = %self.ns.name(), error = %e.full_message(), "cannot remove a damaged key-value row");
            }
        }
        filecache_store::Error::Corrupt {
            key: format!("kv:{}", short(key)),
            reason: "key-value checksum mismatch",
        }
        .into()
    }
}

impl Engine for SqliteEngine {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.get_versioned(key)?.map(|(v, _)| v))
    }

    fn get_versioned(&self, key: &str) -> Result<Option<Versioned>> {
        let got = self.with_db(|db| {
            // The header before the read: a commit between the two makes the tag older than
            // the value, which only costs a miss later.
            let now = db.wal.as_ref().and_then(WalHeader::read);
            if let Some(hit) = self.cache().lookup(now, key) {
                return Ok(hit);
            }
            let got = self
                .read_checked(&mut db.conn, key)?
                .map(|r| (r.value, Version(r.version as u64)));
            if let Some(now) = now {
                self.cache().insert(now, key, got.as_ref());
            }
            Ok(got)
        })?;
        Ok(got.flatten())
    }

    fn exists(&self, key: &str) -> Result<bool> {
        Ok(self.get_versioned(key)?.is_some())
    }

    fn get_many(&self, keys: &[String], max_bytes: u64) -> Result<Vec<Option<Vec<u8>>>> {
        let got = self.with_conn(|conn| {
            // One snapshot for the whole call.
            let tx = conn.transaction().map_err(|e| self.db(e))?;
            let mut total = 0u64;
            let mut out = Vec::with_capacity(keys.len());
            for key in keys {
                let Some(len) = self.value_len(&tx, key)? else {
                    out.push(None);
                    continue;
                };
                total = total.saturating_add(len);
                if total > max_bytes {
                    return Err(Error::TooMuchAtOnce {
                        what: "get-many",
                        limit: max_bytes,
                    });
                }
                match self.read_row(&tx, key)? {
                    Some(row) if row.is_sound(key.as_bytes()) => out.push(Some(row.value)),
                    Some(row) => {
                        drop(tx);
                        return Err(self.discard(conn, key, &row));
                    }
                    None => out.push(None),
                }
            }
            Ok(out)
        })?;
        Ok(got.unwrap_or_else(|| vec![None; keys.len()]))
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        self.check_write(key, value)?;
        self.writing(|conn| {
            self.write(conn, |tx| {
                let old = self.size_of(tx, key)?;
                self.upsert(tx, key, value, Version::fresh())?;
                Ok((old, (key.len() + value.len()) as u64, ()))
            })
        })
    }

    fn set_many(&self, pairs: &[(String, Vec<u8>)]) -> Result<()> {
        // A key given twice takes its last value.
        let mut last = std::collections::HashMap::with_capacity(pairs.len());
        for (i, (k, v)) in pairs.iter().enumerate() {
            self.check_write(k, v)?;
            last.insert(k.as_str(), i);
        }
        let quota = self.ns.options().quota;
        let new: u64 = last.iter().map(|(k, &i)| (k.len() + pairs[i].1.len()) as u64).sum();
        if new > quota {
            return Err(filecache_store::Error::QuotaExceeded { needed: new, quota }.into());
        }
        // The pairs written: each key once, with its last value.
        let written: Vec<(&str, &[u8])> = pairs
            .iter()
            .enumerate()
            .filter(|(i, (k, _))| last.get(k.as_str()) == Some(i))
            .map(|(_, (k, v))| (k.as_str(), &v[..]))
            .collect();
        // One draw for the batch: its rows get consecutive versions, distinct from each other,
        // and as unlikely to equal any other write's as two independent draws are.
        let base = Version::fresh().0;
        self.writing(|conn| {
            self.write(conn, |tx| {
                let keys: Vec<&str> = written.iter().map(|(k, _)| *k).collect();
                let old = self.sizes_of(tx, &keys)?;
                let mut stmt = tx.prepare_cached(UPSERT_SQL).map_err(|e| self.db(e))?;
                for (i, (k, v)) in written.iter().enumerate() {
                    self.upsert_with(&mut stmt, k, v, Version(base.wrapping_add(i as u64)))?;
                }
                Ok((old, new, ()))
            })
        })
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.writing(|conn| self.write(conn, |tx| Ok((self.remove(tx, key)?, 0, ()))))
    }

    fn delete_many(&self, keys: &[String]) -> Result<()> {
        self.writing(|conn| {
            self.write(conn, |tx| {
                let mut old = 0;
                for k in keys {
                    old += self.remove(tx, k)?;
                }
                Ok((old, 0, ()))
            })
        })
    }

    fn increment_u64(&self, key: &str, delta: u64) -> Result<u64> {
        self.increment(key, delta, u64::checked_add)
    }

    fn increment_i64(&self, key: &str, delta: i64) -> Result<i64> {
        self.increment(key, delta, i64::checked_add)
    }

    fn swap(&self, key: &str, expected: Option<Version>, value: &[u8]) -> Result<Result<(), Option<Versioned>>> {
        self.check_write(key, value)?;
        self.update(key, |cur| {
            // Compared inside the transaction: nothing can change the row meanwhile.
            if cur.map(|(_, v)| v) == expected {
                Ok(Outcome::Write(value.to_vec(), Ok(())))
            } else {
                Ok(Outcome::Keep(Err(cur.map(|(b, v)| (b.to_vec(), v)))))
            }
        })
    }

    fn list_keys(&self, from: u64, limit: usize) -> Result<KeyPage> {
        self.list_page(from, limit)
    }

    fn usage(&self) -> Result<Usage> {
        Ok(self
            .with_conn(|conn| usage_of(conn).map_err(|e| self.db(e)))?
            .unwrap_or_default())
    }

    fn verify(&self) -> Result<VerifyReport> {
        self.verify_rows()
    }

    fn clear(&self) -> Result<u64> {
        self.clear_all()
    }
}
