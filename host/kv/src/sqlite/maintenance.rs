//! The operations of the SQLite engine over the whole bucket: listing, verifying, clearing.

use cap_fs_ext::DirExt;
use filecache_store::entry::Checksum;
use rusqlite::{OptionalExtension, params};

use super::open::{FILES, usage_of};
use super::{Row, SqliteEngine};
use crate::{Error, KeyPage, Result, VerifyReport, short};

impl SqliteEngine {
    /// [`Engine::list_keys`](crate::Engine::list_keys): a page of keys in `rowid` order; a row
    /// whose key fails its checksum (or is not UTF-8) is removed, not listed.
    pub(super) fn list_page(&self, from: u64, limit: usize) -> Result<KeyPage> {
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

    /// [`Engine::verify`](crate::Engine::verify): SQLite's own check, then every row's checksums;
    /// damaged rows are removed and the charge recounted (unless the namespace is read-only).
    pub(super) fn verify_rows(&self) -> Result<VerifyReport> {
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

    /// [`Engine::clear`](crate::Engine::clear): every row deleted in one transaction; a database
    /// whose data cannot be read goes whole, with its log and index.
    pub(super) fn clear_all(&self) -> Result<u64> {
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
