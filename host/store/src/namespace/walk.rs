//! The one walk over a namespace's fan-out directories: every entry file by its name, with its
//! metadata (contents are not read). Scans (exact usage, the oldest entries for eviction,
//! `stats`), `clear` and `verify` all go through it.

use std::time::{SystemTime, UNIX_EPOCH};

use cap_fs_ext::DirExt;
use cap_std::fs::Dir;

use super::file::charged;
use super::{Namespace, is_not_found};
use crate::error::IoContext;
use crate::fault::{self, Point};
use crate::{Error, Key, Result};

/// What a scan learns about one entry file.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EntryInfo {
    /// The entry's key.
    pub key: Key,
    /// What the entry counts against the quota: its file's size rounded up to 4 KiB (see
    /// [`crate::entry::charge_for_file`]).
    pub size: u64,
    /// Last use (add or hit).
    pub mtime: SystemTime,
}

impl EntryInfo {
    /// Whether the entry file at `rel` is still the one this describes (same time and size):
    /// not used, replaced or removed since.
    pub(super) fn is_unchanged(&self, dir: &Dir, rel: &str) -> bool {
        matches!(dir.symlink_metadata(rel),
            Ok(m) if m.file_type().is_file() && mtime_of(&m) == Some(self.mtime) && charged(&m) == self.size)
    }
}

/// The result of walking a namespace.
#[doc(hidden)]
#[non_exhaustive]
pub struct Scan {
    /// What every entry seen (its file, rounded up to 4 KiB) and the data charged beside them
    /// count against the quota: what the usage counter holds.
    pub used: u64,
    /// Bytes of data charged beside the entries (included in `used`; see [`Namespace::data_bytes`]).
    pub data_bytes: u64,
    /// Entries seen.
    pub entries: u64,
    /// The oldest entries, oldest first, at most the limit asked for.
    pub oldest: Vec<EntryInfo>,
    /// Whether `oldest` was cut to the limit.
    pub truncated: bool,
}

impl Namespace {
    /// Walks every entry file: exact usage and count, and the `keep_oldest` oldest entries.
    #[doc(hidden)]
    pub fn scan(&self, keep_oldest: usize) -> Result<Scan> {
        let mut scan = Scan {
            used: 0,
            data_bytes: 0,
            entries: 0,
            oldest: Vec::new(),
            truncated: false,
        };
        // A max-heap on time keeps the oldest `keep_oldest` entries.
        let mut heap: std::collections::BinaryHeap<(SystemTime, u64, Key)> = Default::default();
        self.for_each_entry_file(|key, meta| {
            let charge = charged(meta);
            scan.used += charge;
            scan.entries += 1;
            let mtime = mtime_of(meta).unwrap_or(UNIX_EPOCH);
            if keep_oldest > 0 {
                heap.push((mtime, charge, key));
                if heap.len() > keep_oldest {
                    heap.pop();
                    scan.truncated = true;
                }
            }
            Ok(())
        })?;
        // Data charged beside the entries counts against the quota but is never evicted.
        scan.data_bytes = self.data_bytes()?;
        scan.used += scan.data_bytes;
        scan.oldest = heap
            .into_sorted_vec()
            .into_iter()
            .map(|(mtime, size, key)| EntryInfo { key, size, mtime })
            .collect();
        Ok(scan)
    }

    /// Calls `f` with every entry file (by its name: contents are not checked).
    fn for_each_entry_file(&self, mut f: impl FnMut(Key, &cap_std::fs::Metadata) -> Result<()>) -> Result<()> {
        let Some(dir) = self.dir() else { return Ok(()) };
        let ctx = || format!("cannot list namespace {:?}", self.inner.name);
        for shard in dir.entries().context(ctx)? {
            let shard = shard.context(ctx)?;
            let name = shard.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.len() != 2 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            if !shard.file_type().context(ctx)?.is_dir() {
                continue;
            }
            // A fan-out directory that cannot be opened (EACCES, EMFILE, ...) fails the scan: a
            // scan that skipped it would write a short usage counter (the quota then silently
            // exceeded) and let `verify`/`clear` miss its entries. Only one removed meanwhile
            // is skipped.
            let sub = match fault::check(Point::OpenShard).and_then(|()| dir.open_dir_nofollow(name)) {
                Ok(sub) => sub,
                Err(e) if is_not_found(&e) => continue,
                Err(e) => {
                    return Err(Error::io(
                        format!("cannot list namespace {:?}: cannot open {name}/", self.inner.name),
                        e,
                    ));
                }
            };
            for entry in sub.entries().context(ctx)? {
                let entry = entry.context(ctx)?;
                let file_name = entry.file_name();
                let Some(key) = file_name.to_str().and_then(Key::from_hex) else {
                    continue;
                };
                let meta = match entry.metadata() {
                    Ok(m) => m,
                    Err(e) if is_not_found(&e) => continue,
                    Err(e) => return Err(Error::io(ctx(), e)),
                };
                if meta.file_type().is_file() {
                    f(key, &meta)?;
                }
            }
        }
        Ok(())
    }

    /// The keys of every entry file (by name: contents are not checked).
    pub(crate) fn keys(&self) -> Result<Vec<Key>> {
        let mut keys = Vec::new();
        self.for_each_entry_file(|key, _| {
            keys.push(key);
            Ok(())
        })?;
        Ok(keys)
    }

    /// Recomputes the usage counter from a full scan.
    pub(crate) fn recount(&self) -> Result<Scan> {
        let mut lk = self.lock()?;
        let scan = self.scan(0)?;
        lk.store_used(scan.used)?;
        Ok(scan)
    }
}

fn mtime_of(meta: &cap_std::fs::Metadata) -> Option<SystemTime> {
    meta.modified().ok().map(|t| t.into_std())
}
