//! Opening the SQLite engine's database: no file of it may be a symlink, WAL mode and the
//! pragmas, the schema, the busy handler, and the import of an earlier version's records.

use std::time::Duration;

use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::{Dir, OpenOptions};
use filecache_store::entry::Checksum;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use super::{DATABASE_FILE, SqliteEngine, crc_of};
use crate::fault::{self, Point};
use crate::{Error, Result, Usage, Version, import};

/// The database's files: the database, its write-ahead log and its index.
pub(super) const FILES: [&str; 3] = [DATABASE_FILE, "kv.sqlite3-wal", "kv.sqlite3-shm"];

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

impl SqliteEngine {
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

    pub(super) fn open(&self) -> Result<Option<Connection>> {
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
    pub(super) fn recount(&self, conn: &mut Connection) -> Result<Usage> {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.db(e))?;
        let usage = usage_of(&tx).map_err(|e| self.db(e))?;
        self.ns.set_data_bytes(usage.bytes)?;
        drop(tx);
        Ok(usage)
    }
}

/// What the database holds: keys, and bytes of keys and values.
pub(super) fn usage_of(conn: &Connection) -> rusqlite::Result<Usage> {
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
