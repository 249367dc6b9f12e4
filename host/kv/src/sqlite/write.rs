//! The SQLite engine's writes: one `BEGIN IMMEDIATE` transaction each, which charges the
//! namespace's quota just before it commits; the rows' sizes, upserts and removals.

use filecache_store::entry::Checksum;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::{SqliteEngine, crc_of};
use crate::fault::{self, Point};
use crate::{Result, Version, overflow, parse};

/// Writes a row, keeping its `rowid` (its listing position) when the key has one already.
pub(super) const UPSERT_SQL: &str = "INSERT INTO kv (key, version, crc, key_crc, value) VALUES (?1, ?2, ?3, ?4, ?5) \
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

impl SqliteEngine {
    /// One write transaction: `f` makes the change and says how the data charge goes (old and
    /// new bytes); the quota is charged, then it commits, all or nothing.
    pub(super) fn write<R>(
        &self,
        conn: &mut Connection,
        f: impl FnOnce(&Transaction<'_>) -> Result<(u64, u64, R)>,
    ) -> Result<R> {
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
    pub(super) fn writing<R>(&self, f: impl FnOnce(&mut Connection) -> Result<R>) -> Result<R> {
        self.check_writable()?;
        match self.with_conn(f)? {
            Some(r) => Ok(r),
            // Writable namespaces always have a database (it is created on open).
            None => Err(filecache_store::Error::ReadOnly.into()),
        }
    }

    /// The length of the value of `key` (`length` reads a value's size, not the value); `None`:
    /// the key has no row.
    pub(super) fn value_len(&self, tx: &Transaction<'_>, key: &str) -> Result<Option<u64>> {
        let mut stmt = tx
            .prepare_cached("SELECT length(value) FROM kv WHERE key = ?1")
            .map_err(|e| self.db(e))?;
        let len: Option<i64> = stmt
            .query_row([key.as_bytes()], |r| r.get(0))
            .optional()
            .map_err(|e| self.db(e))?;
        Ok(len.map(|l| l as u64))
    }

    /// The bytes (key and value) the row of `key` holds; 0 if it has none.
    pub(super) fn size_of(&self, tx: &Transaction<'_>, key: &str) -> Result<u64> {
        Ok(self.value_len(tx, key)?.map_or(0, |l| key.len() as u64 + l))
    }

    /// The bytes (keys and values) the rows of `keys` (distinct) hold now: one statement per
    /// [`SIZES_CHUNK`] keys, rather than one per key.
    pub(super) fn sizes_of(&self, tx: &Transaction<'_>, keys: &[&str]) -> Result<u64> {
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

    pub(super) fn upsert(&self, tx: &Transaction<'_>, key: &str, value: &[u8], version: Version) -> Result<()> {
        let mut stmt = tx.prepare_cached(UPSERT_SQL).map_err(|e| self.db(e))?;
        self.upsert_with(&mut stmt, key, value, version)
    }

    /// Writes one row with `stmt`, the prepared [`UPSERT_SQL`] (a batch keeps it for all its
    /// rows).
    pub(super) fn upsert_with(
        &self,
        stmt: &mut rusqlite::Statement<'_>,
        key: &str,
        value: &[u8],
        version: Version,
    ) -> Result<()> {
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

    pub(super) fn remove(&self, tx: &Transaction<'_>, key: &str) -> Result<u64> {
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
    pub(super) fn increment<T>(&self, key: &str, delta: T, checked_add: fn(T, T) -> Option<T>) -> Result<T>
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
    pub(super) fn update<R>(
        &self,
        key: &str,
        f: impl FnOnce(Option<(&[u8], Version)>) -> Result<Outcome<R>>,
    ) -> Result<R> {
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
pub(super) enum Outcome<R> {
    Write(Vec<u8>, R),
    Keep(R),
}
