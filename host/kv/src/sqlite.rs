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

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use cap_fs_ext::{DirExt, FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::{Dir, OpenOptions};
use filecache_store::entry::Checksum;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, params};

use crate::fault::{self, Point};
use crate::import;
#[cfg(test)]
pub(crate) use read_cache::{CACHE_BYTES, MAX_CACHED_VALUE};
use read_cache::{ReadCache, WalHeader};

/// How many `get`s this thread answered from a read cache so far (tests).
#[cfg(test)]
pub(crate) fn read_cache_hits() -> u64 {
    read_cache::HITS.with(|h| h.get())
}

mod read_cache;
use crate::{
    Engine, Error, KeyPage, Namespace, Result, Usage, VerifyReport, Version, Versioned, overflow, parse, short,
};

/// The database's file name in the namespace directory (SQLite adds `-wal` and `-shm`).
pub const DATABASE_FILE: &str = "kv.sqlite3";
const FILES: [&str; 3] = [DATABASE_FILE, "kv.sqlite3-wal", "kv.sqlite3-shm"];

/// How long a writer waits for another process's transaction (as long as the namespace lock's
/// wait: a stopped process stalls writers that long, not forever).
#[cfg(not(test))]
const BUSY_WAIT: Duration = Duration::from_secs(30);
#[cfg(test)]
const BUSY_WAIT: Duration = Duration::from_secs(10);

/// SQLite's busy handler: how long to wait before trying again for a lock another connection
/// holds. SQLite's own (`busy_timeout`) sleeps up to 100 ms at a time, so a waiter sleeps
/// through many short transactions of the holder: here waits start at 20 µs and grow to 1 ms,
/// until about [`BUSY_WAIT`] has passed.
fn busy(attempt: i32) -> bool {
    #[cfg(test)]
    BUSY_WAITS.with(|n| n.set(n.get() + 1));
    let attempt = attempt.max(0) as u32;
    let pause = Duration::from_micros(20u64 << attempt.min(6)).min(Duration::from_millis(1));
    // Past the first few, every wait is 1 ms.
    if u128::from(attempt) > BUSY_WAIT.as_millis() + 6 {
        return false;
    }
    std::thread::sleep(pause);
    true
}

#[cfg(test)]
thread_local! {
    /// How many times this thread waited for another connection's lock (tests of contention).
    pub(crate) static BUSY_WAITS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kv (
    key BLOB PRIMARY KEY NOT NULL,
    version INTEGER NOT NULL,
    crc INTEGER NOT NULL,
    key_crc INTEGER NOT NULL,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL);
";

const IMPORTED: &str = "imported-records";

/// Writes a row, keeping its `rowid` (its listing position) when the key has one already.
const UPSERT_SQL: &str = "INSERT INTO kv (key, version, crc, key_crc, value) VALUES (?1, ?2, ?3, ?4, ?5) \
     ON CONFLICT(key) DO UPDATE SET version = excluded.version, crc = excluded.crc, \
     key_crc = excluded.key_crc, value = excluded.value";

/// How many keys one [`SIZES_SQL`] statement sizes.
const SIZES_CHUNK: usize = 64;

/// The bytes the rows of [`SIZES_CHUNK`] keys hold (`length` reads a value's size, not the value).
static SIZES_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let params: Vec<String> = (1..=SIZES_CHUNK).map(|i| format!("?{i}")).collect();
    format!(
        "SELECT coalesce(sum(length(key) + length(value)), 0) FROM kv WHERE key IN ({})",
        params.join(", ")
    )
});

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
        let opts = self.ns.options();
        if opts.read_only {
            return Err(filecache_store::Error::ReadOnly.into());
        }
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

    /// Refuses any file of the database that is not a regular file (a planted symlink).
    fn check_files(&self, dir: &Dir) -> Result<bool> {
        let mut exists = false;
        for name in FILES {
            match dir.symlink_metadata(name) {
                Ok(m) if m.is_file() => exists |= name == DATABASE_FILE,
                Ok(_) => {
                    return Err(Error::NotAFile {
                        namespace: self.name(),
                        name: name.to_string(),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.io("cannot look at the key-value database", e)),
            }
        }
        Ok(exists)
    }

    fn open(&self) -> Result<Option<Connection>> {
        let Some(dir) = self.ns.directory() else {
            return Ok(None);
        };
        let read_only = self.ns.options().read_only;
        let exists = self.check_files(dir)?;
        if !exists {
            if read_only {
                if import::has_old_records(dir) {
                    tracing::warn!(namespace = %self.ns.name(), "key-value records of an earlier version are imported by the first writable open: read as empty until then");
                }
                return Ok(None);
            }
            // Created owner-only, never through a symlink; SQLite gives its log and index the
            // same mode.
            let mut oo = OpenOptions::new();
            oo.write(true).create(true).follow(FollowSymlinks::No);
            #[cfg(unix)]
            {
                use cap_std::fs::OpenOptionsExt;
                oo.mode(0o600);
            }
            dir.open_with(DATABASE_FILE, &oo)
                .map_err(|e| self.io("cannot create the key-value database", e))?;
        }
        let path = crate::path::dir_path(dir).map_err(|e| self.io("cannot find the directory", e))?;
        if !crate::path::is_same_dir(dir, &path) {
            return Err(self.io(
                "cannot open the key-value database",
                std::io::Error::other("the namespace directory was moved"),
            ));
        }
        // A read-only namespace still opens the file for writing where it may (SQLite falls back to
        // reading only where it may not), and refuses writes with `query_only`: a connection
        // opened SQLITE_OPEN_READ_ONLY creates the -wal and -shm files a WAL database needs and,
        // unable to checkpoint, leaves them behind; this one, the last to close, removes them, so
        // that looking at a bucket (`filecache kv get`, `stats`) leaves no file behind.
        let flags =
            OpenFlags::SQLITE_OPEN_NOFOLLOW | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_READ_WRITE;
        let conn = Connection::open_with_flags(path.join(DATABASE_FILE), flags).map_err(|e| self.db(e))?;
        if read_only {
            conn.pragma_update(None, "query_only", true).map_err(|e| self.db(e))?;
        }
        // Checked again now that it is open: nothing was swapped in meanwhile.
        self.check_files(dir)?;
        if !crate::path::is_same_dir(dir, &path) {
            return Err(self.io(
                "cannot open the key-value database",
                std::io::Error::other("the namespace directory was moved"),
            ));
        }
        conn.busy_handler(Some(busy)).map_err(|e| self.db(e))?;
        let durable = self.ns.options().durability == filecache_store::Durability::Sync;
        if !read_only {
            let mode: String = conn
                .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
                .map_err(|e| self.db(e))?;
            if !mode.eq_ignore_ascii_case("wal") {
                tracing::warn!(namespace = %self.ns.name(), mode, "the key-value database is not in WAL mode");
            }
        }
        conn.pragma_update(None, "synchronous", if durable { "FULL" } else { "NORMAL" })
            .map_err(|e| self.db(e))?;
        if !read_only {
            conn.execute_batch(SCHEMA).map_err(|e| self.db(e))?;
        }
        let mut conn = conn;
        if !read_only && import::has_old_records(dir) {
            self.import(&mut conn, dir)?;
        }
        Ok(Some(conn))
    }

    /// Imports the records of an earlier version (see [`crate::import`]).
    fn import(&self, conn: &mut Connection, dir: &Dir) -> Result<()> {
        let records = import::old_records(dir).map_err(|e| self.io("cannot list old key-value records", e))?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.db(e))?;
        let done: Option<i64> = tx
            .query_row("SELECT value FROM meta WHERE name = ?1", [IMPORTED], |r| r.get(0))
            .optional()
            .map_err(|e| self.db(e))?;
        if done.is_none() {
            let (mut imported, mut damaged) = (0u64, 0u64);
            for r in &records {
                let bytes = import::read_old(dir, &r.rel, 1 << 30)
                    .map_err(|e| self.io("cannot read an old key-value record", e))?;
                let decoded = bytes
                    .as_deref()
                    .map_err(|e| *e)
                    .and_then(|b| import::decode_record(&r.digest, b));
                match decoded {
                    Ok((key, value)) => {
                        tx.execute(
                            "INSERT INTO kv (key, version, crc, key_crc, value) VALUES (?1, ?2, ?3, ?4, ?5) \
                             ON CONFLICT(key) DO NOTHING",
                            params![
                                key.as_bytes(),
                                Version::fresh().0 as i64,
                                crc_of(key.as_bytes(), value),
                                Checksum::of(key.as_bytes()),
                                value
                            ],
                        )
                        .map_err(|e| self.db(e))?;
                        imported += 1;
                    }
                    Err(reason) => {
                        damaged += 1;
                        tracing::warn!(namespace = %self.ns.name(), record = r.rel, reason, "old key-value record damaged: not imported");
                    }
                }
            }
            tx.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?1, 1)", [IMPORTED])
                .map_err(|e| self.db(e))?;
            fault::check(Point::BeforeCommit).map_err(|e| self.io("cannot import old key-value records", e))?;
            tx.commit().map_err(|e| self.db(e))?;
            tracing::info!(namespace = %self.ns.name(), imported, damaged, "imported key-value records of an earlier version");
        } else {
            drop(tx);
        }
        fault::check(Point::ImportCommitted).map_err(|e| self.io("cannot import old key-value records", e))?;
        // The data charge becomes what the database holds (the old files were counted by the
        // scans of earlier versions; this scan no longer counts them)...
        self.recount(conn)?;
        // ...and only then do the files go.
        import::remove_old(dir, &records).map_err(|e| self.io("cannot remove old key-value records", e))?;
        Ok(())
    }

    /// Sets the namespace's data charge to what the database holds, under the database's write
    /// lock (so that no write changes it meanwhile).
    fn recount(&self, conn: &mut Connection) -> Result<Usage> {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.db(e))?;
        let usage = usage_of(&tx).map_err(|e| self.db(e))?;
        self.ns.set_data_bytes(usage.bytes)?;
        drop(tx);
        Ok(usage)
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

    /// One write transaction: `f` makes the change and says how the data charge goes (old and
    /// new bytes); the quota is charged, then it commits, all or nothing.
    fn write<R>(&self, conn: &mut Connection, f: impl FnOnce(&Transaction<'_>) -> Result<(u64, u64, R)>) -> Result<R> {
        self.invalidate();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.db(e))?;
        let (old, new, out) = f(&tx)?;
        let commit = || -> Result<()> {
            fault::check(Point::BeforeCommit).map_err(|e| self.io("cannot commit a key-value write", e))?;
            tx.commit().map_err(|e| self.db(e))
        };
        if old == new {
            commit()?;
        } else {
            self.ns.charge_data(old, new, commit)?;
        }
        Ok(out)
    }

    /// Runs a write on the connection (opened, created if needed).
    fn writing<R>(&self, f: impl FnOnce(&mut Connection) -> Result<R>) -> Result<R> {
        self.check_writable()?;
        match self.with_conn(f)? {
            Some(r) => Ok(r),
            // Writable namespaces always have a database (it is created on open).
            None => Err(filecache_store::Error::ReadOnly.into()),
        }
    }

    fn size_of(&self, tx: &Transaction<'_>, key: &str) -> Result<u64> {
        let mut stmt = tx
            .prepare_cached("SELECT length(value) FROM kv WHERE key = ?1")
            .map_err(|e| self.db(e))?;
        let len: Option<i64> = stmt
            .query_row([key.as_bytes()], |r| r.get(0))
            .optional()
            .map_err(|e| self.db(e))?;
        Ok(len.map_or(0, |l| key.len() as u64 + l as u64))
    }

    /// The bytes (keys and values) the rows of `keys` (distinct) hold now: one statement per
    /// [`SIZES_CHUNK`] keys, rather than one per key.
    fn sizes_of(&self, tx: &Transaction<'_>, keys: &[&str]) -> Result<u64> {
        let mut stmt = tx.prepare_cached(&SIZES_SQL).map_err(|e| self.db(e))?;
        let mut total = 0u64;
        for chunk in keys.chunks(SIZES_CHUNK) {
            // A short chunk repeats its first key: a key listed twice matches its row once.
            for i in 0..SIZES_CHUNK {
                let key = chunk.get(i).unwrap_or(&chunk[0]);
                stmt.raw_bind_parameter(i + 1, key.as_bytes()).map_err(|e| self.db(e))?;
            }
            let mut rows = stmt.raw_query();
            let row = rows.next().map_err(|e| self.db(e))?;
            let bytes: i64 = match row {
                Some(r) => r.get(0).map_err(|e| self.db(e))?,
                None => 0,
            };
            total += bytes as u64;
        }
        Ok(total)
    }

    fn upsert(&self, tx: &Transaction<'_>, key: &str, value: &[u8], version: Version) -> Result<()> {
        let mut stmt = tx.prepare_cached(UPSERT_SQL).map_err(|e| self.db(e))?;
        self.upsert_with(&mut stmt, key, value, version)
    }

    /// Writes one row with `stmt`, the prepared [`UPSERT_SQL`] (a batch keeps it for all its
    /// rows).
    fn upsert_with(&self, stmt: &mut rusqlite::Statement<'_>, key: &str, value: &[u8], version: Version) -> Result<()> {
        stmt.execute(params![
            key.as_bytes(),
            version.0 as i64,
            crc_of(key.as_bytes(), value),
            Checksum::of(key.as_bytes()),
            value
        ])
        .map_err(|e| self.db(e))?;
        Ok(())
    }

    fn remove(&self, tx: &Transaction<'_>, key: &str) -> Result<u64> {
        let size = self.size_of(tx, key)?;
        // Always deleted: a row of 0 bytes (the empty key with an empty value) is a row too.
        let mut stmt = tx
            .prepare_cached("DELETE FROM kv WHERE key = ?1")
            .map_err(|e| self.db(e))?;
        stmt.execute([key.as_bytes()]).map_err(|e| self.db(e))?;
        Ok(size)
    }

    /// Both increments: the value read as a decimal integer of `T` (a missing key is 0), `delta`
    /// added with overflow checked, the sum written back as decimal, in one transaction.
    fn increment<T>(&self, key: &str, delta: T, checked_add: fn(T, T) -> Option<T>) -> Result<T>
    where
        T: Copy + Default + ToString + std::str::FromStr<Err = std::num::ParseIntError>,
    {
        self.update(key, |cur| {
            let value = match cur {
                None => T::default(),
                Some((b, _)) => parse::<T>(key, b)?,
            };
            let sum = checked_add(value, delta).ok_or_else(|| overflow(key, value, delta))?;
            Ok(Outcome::Write(sum.to_string().into_bytes(), sum))
        })
    }

    /// Reads, checks and (if `f` says so) rewrites `key` in one `BEGIN IMMEDIATE` transaction.
    fn update<R>(&self, key: &str, f: impl FnOnce(Option<(&[u8], Version)>) -> Result<Outcome<R>>) -> Result<R> {
        self.writing(|conn| {
            self.invalidate();
            // A damaged row is reported (and removed) after the transaction that found it.
            let damaged = {
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(|e| self.db(e))?;
                match self.read_row(&tx, key)? {
                    Some(row) if !row.is_sound(key.as_bytes()) => row,
                    row => {
                        let old = row.as_ref().map_or(0, |r| (key.len() + r.value.len()) as u64);
                        let (new_value, out) = match f(row.as_ref().map(|r| (&r.value[..], Version(r.version as u64))))?
                        {
                            Outcome::Keep(out) => return Ok(out),
                            Outcome::Write(v, out) => (v, out),
                        };
                        self.check_write(key, &new_value)?;
                        self.upsert(&tx, key, &new_value, Version::fresh())?;
                        let new = (key.len() + new_value.len()) as u64;
                        let commit = || -> Result<()> {
                            fault::check(Point::BeforeCommit)
                                .map_err(|e| self.io("cannot commit a key-value write", e))?;
                            tx.commit().map_err(|e| self.db(e))
                        };
                        if old == new {
                            commit()?;
                        } else {
                            self.ns.charge_data(old, new, commit)?;
                        }
                        return Ok(out);
                    }
                }
            };
            Err(self.discard(conn, key, &damaged))
        })
    }
}

/// What a read-modify-write does: write a new value, or keep the old one.
enum Outcome<R> {
    Write(Vec<u8>, R),
    Keep(R),
}

fn usage_of(conn: &Connection) -> rusqlite::Result<Usage> {
    conn.query_row(
        "SELECT count(*), coalesce(sum(length(key) + length(value)), 0) FROM kv",
        [],
        |r| {
            Ok(Usage {
                keys: r.get::<_, i64>(0)? as u64,
                bytes: r.get::<_, i64>(1)? as u64,
            })
        },
    )
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
                let len = {
                    let mut stmt = tx
                        .prepare_cached("SELECT length(value) FROM kv WHERE key = ?1")
                        .map_err(|e| self.db(e))?;
                    let len: Option<i64> = stmt
                        .query_row([key.as_bytes()], |r| r.get(0))
                        .optional()
                        .map_err(|e| self.db(e))?;
                    len
                };
                let Some(len) = len else {
                    out.push(None);
                    continue;
                };
                total = total.saturating_add(len as u64);
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
        let page = self.with_conn(|conn| {
            let from = i64::try_from(from).unwrap_or(i64::MAX);
            let mut rows: Vec<(i64, Vec<u8>, i64)> = Vec::with_capacity(limit + 1);
            {
                let mut stmt = conn
                    .prepare_cached("SELECT rowid, key, key_crc FROM kv WHERE rowid >= ?1 ORDER BY rowid LIMIT ?2")
                    .map_err(|e| self.db(e))?;
                let mut q = stmt.query(params![from, limit as i64 + 1]).map_err(|e| self.db(e))?;
                while let Some(r) = q.next().map_err(|e| self.db(e))? {
                    rows.push((r.get(0).map_err(|e| self.db(e))?, r.get(1).map_err(|e| self.db(e))?, r.get(2).map_err(|e| self.db(e))?));
                }
            }
            let next = (rows.len() > limit).then(|| rows[limit].0 as u64);
            rows.truncate(limit);
            let mut keys = Vec::with_capacity(rows.len());
            for (rowid, key, key_crc) in rows {
                let sound = i64::from(Checksum::of(&key)) == key_crc;
                match (sound, String::from_utf8(key)) {
                    (true, Ok(k)) => keys.push(k),
                    (_, key) => {
                        let key = key.unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
                        tracing::warn!(namespace = %self.ns.name(), key = %short(&key), "removing damaged key-value row found by a listing");
                        if !self.ns.options().read_only {
                            let removed = self.write(conn, |tx| {
                                let len: Option<i64> = tx
                                    .query_row(
                                        "SELECT length(key) + length(value) FROM kv WHERE rowid = ?1 AND key_crc = ?2",
                                        params![rowid, key_crc],
                                        |r| r.get(0),
                                    )
                                    .optional()
                                    .map_err(|e| self.db(e))?;
                                tx.execute("DELETE FROM kv WHERE rowid = ?1 AND key_crc = ?2", params![rowid, key_crc])
                                    .map_err(|e| self.db(e))?;
                                Ok((len.unwrap_or(0) as u64, 0, ()))
                            });
                            if let Err(e) = removed {
                                tracing::warn!(error = %e.full_message(), "cannot remove a damaged key-value row");
                            }
                        }
                    }
                }
            }
            Ok(KeyPage { keys, next })
        })?;
        Ok(page.unwrap_or(KeyPage {
            keys: Vec::new(),
            next: None,
        }))
    }

    fn usage(&self) -> Result<Usage> {
        Ok(self
            .with_conn(|conn| usage_of(conn).map_err(|e| self.db(e)))?
            .unwrap_or_default())
    }

    fn verify(&self) -> Result<VerifyReport> {
        let report = self.with_conn(|conn| {
            let mut report = VerifyReport::default();
            let check: Vec<String> = {
                let mut stmt = conn.prepare("PRAGMA quick_check").map_err(|e| self.db(e))?;
                let rows = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(|e| self.db(e))?;
                rows.collect::<rusqlite::Result<_>>().map_err(|e| self.db(e))?
            };
            if check != ["ok"] {
                report.database = Some(check.join("; "));
                return Ok(report);
            }
            let mut damaged_rows = Vec::new();
            {
                let mut stmt = conn
                    .prepare("SELECT key, version, crc, key_crc, value FROM kv")
                    .map_err(|e| self.db(e))?;
                let mut q = stmt.query([]).map_err(|e| self.db(e))?;
                while let Some(r) = q.next().map_err(|e| self.db(e))? {
                    let key: Vec<u8> = r.get(0).map_err(|e| self.db(e))?;
                    let row = Row {
                        version: r.get(1).map_err(|e| self.db(e))?,
                        crc: r.get(2).map_err(|e| self.db(e))?,
                        value: r.get(4).map_err(|e| self.db(e))?,
                    };
                    let key_crc: i64 = r.get(3).map_err(|e| self.db(e))?;
                    let reason = if i64::from(Checksum::of(&key)) != key_crc {
                        Some("key checksum mismatch")
                    } else if !row.is_sound(&key) {
                        Some("key-value checksum mismatch")
                    } else if std::str::from_utf8(&key).is_err() {
                        Some("key is not UTF-8")
                    } else {
                        None
                    };
                    match reason {
                        None => report.ok += 1,
                        Some(reason) => {
                            let shown = short(&String::from_utf8_lossy(&key));
                            report.damaged.push((shown, reason));
                            damaged_rows.push((key, row.version, row.crc));
                        }
                    }
                }
            }
            if !self.ns.options().read_only {
                for (key, version, crc) in &damaged_rows {
                    self.write(conn, |tx| {
                        let len: Option<i64> = tx
                            .query_row(
                                "SELECT length(key) + length(value) FROM kv WHERE key = ?1 AND version = ?2 AND crc = ?3",
                                params![key, version, crc],
                                |r| r.get(0),
                            )
                            .optional()
                            .map_err(|e| self.db(e))?;
                        tx.execute(
                            "DELETE FROM kv WHERE key = ?1 AND version = ?2 AND crc = ?3",
                            params![key, version, crc],
                        )
                        .map_err(|e| self.db(e))?;
                        Ok((len.unwrap_or(0) as u64, 0, ()))
                    })?;
                }
                // The charge becomes exact (a crash may have left it too high).
                self.recount(conn)?;
            }
            Ok(report)
        });
        match report {
            Ok(r) => Ok(r.unwrap_or_default()),
            Err(Error::DamagedDatabase { message, .. }) => Ok(VerifyReport {
                database: Some(message),
                ..VerifyReport::default()
            }),
            Err(e) => Err(e),
        }
    }

    fn clear(&self) -> Result<u64> {
        self.check_writable()?;
        let cleared = self.with_conn(|conn| {
            self.write(conn, |tx| {
                let usage = usage_of(tx).map_err(|e| self.db(e))?;
                tx.execute("DELETE FROM kv", []).map_err(|e| self.db(e))?;
                Ok((usage.bytes, 0, usage.keys))
            })
        });
        match cleared {
            Ok(n) => Ok(n.unwrap_or(0)),
            Err(Error::DamagedDatabase { .. } | Error::NotAFile { .. }) => {
                // Its data cannot be read: the files go whole (the connection was dropped).
                let mut guard = self.lock();
                *guard = None;
                self.invalidate();
                drop(guard);
                let Some(dir) = self.ns.directory() else { return Ok(0) };
                for name in FILES {
                    match dir.remove_file_or_symlink(name) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(self.io("cannot remove the key-value database", e)),
                    }
                }
                self.ns.set_data_bytes(0)?;
                Ok(0)
            }
            Err(e) => Err(e),
        }
    }
}
