//! Data kept beside the cache entries: bytes the quota counts that eviction never removes.
//!
//! The store does not hold such data itself: the key-value crate (`filecache-kv`) keeps its
//! buckets in its own database in the namespace directory and charges what they hold here, so
//! that one quota bounds a namespace's entries and its key-value data together, and cache
//! entries are evicted to make room for data (never the reverse).
//!
//! ```text
//! <namespace>/data-bytes   "FCDATA01", then the bytes charged (u64, little-endian)
//! ```
//!
//! The charge is part of the usage counter (`state`) and is read by every scan, so a rescan
//! keeps it. Both are changed under the namespace lock, and in an order that lets a crash leave
//! them only too high, never too low: a charge that grows is written before the holder commits
//! its change, one that shrinks after. [`Namespace::set_data_bytes`] puts back the exact figure
//! (the key-value crate's `verify` recounts its buckets).

use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::{Dir, OpenOptions};

use super::{Namespace, is_not_found, private_rw_options};
use crate::error::IoContext;
use crate::fault::{self, Point};
use crate::sys;
use crate::{Durability, Error, Result};

/// The file holding the data charge, in the namespace directory.
pub(crate) const DATA_FILE: &str = "data-bytes";
const DATA_MAGIC: [u8; 8] = *b"FCDATA01";

impl Namespace {
    /// Bytes of data charged to this namespace beside its entries (0 when none, or when the
    /// namespace does not exist).
    ///
    /// A damaged charge file reads as 0 (and is logged): run the key-value crate's `verify` to
    /// put back the exact figure.
    pub fn data_bytes(&self) -> Result<u64> {
        let Some(dir) = self.dir() else { return Ok(0) };
        let mut oo = OpenOptions::new();
        oo.read(true).follow(FollowSymlinks::No);
        let file = match dir.open_with(DATA_FILE, &oo) {
            Ok(f) => f.into_std(),
            Err(e) if is_not_found(&e) => return Ok(0),
            Err(e) => {
                return Err(Error::io(
                    format!("cannot open the data charge of namespace {:?}", self.inner.name),
                    e,
                ));
            }
        };
        let mut b = [0u8; 16];
        match sys::read_at(&file, &mut b, 0) {
            Ok(16) if b[..8] == DATA_MAGIC => Ok(u64::from_le_bytes(b[8..].try_into().expect("8 bytes"))),
            Ok(0) => Ok(0),
            Ok(_) => {
                tracing::warn!(namespace = %self.inner.name, "the data charge file is damaged: counted as 0 until the key-value data is verified");
                Ok(0)
            }
            Err(e) => Err(Error::io(
                format!("cannot read the data charge of namespace {:?}", self.inner.name),
                e,
            )),
        }
    }

    fn write_data_bytes(&self, dir: &Dir, bytes: u64) -> Result<()> {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&DATA_MAGIC);
        b[8..].copy_from_slice(&bytes.to_le_bytes());
        let ctx = || format!("cannot update the data charge of namespace {:?}", self.inner.name);
        let file = dir.open_with(DATA_FILE, &private_rw_options()).context(ctx)?.into_std();
        fault::check(Point::UpdateCounter)
            .and_then(|()| sys::write_all_at(&file, &b, 0))
            .context(ctx)?;
        if self.inner.options.durability == Durability::Sync {
            file.sync_all().context(ctx)?;
        }
        Ok(())
    }

    /// Changes the data charged to this namespace from `old` to `new` bytes (a part of it: one
    /// value being replaced, say) around `commit`, the holder's own change, all under the
    /// namespace lock (other processes' writers are excluded meanwhile).
    ///
    /// When the charge grows, room is made first: least recently used cache entries are evicted
    /// until the namespace fits its quota; when even that is not enough, `commit` is not run and
    /// the answer is [`Error::QuotaExceeded`] (the entries evicted on the way stay evicted). The
    /// charge is written before `commit` runs, and taken back if it fails. When it shrinks, it is
    /// written after `commit` succeeds. So a crash at any point leaves the charge at least what
    /// the data holds.
    ///
    /// Fails with [`Error::ReadOnly`] on a read-only namespace (without running `commit`).
    pub fn charge_data<R, E: From<Error>>(
        &self,
        old: u64,
        new: u64,
        commit: impl FnOnce() -> std::result::Result<R, E>,
    ) -> std::result::Result<R, E> {
        let w = self.writable()?;
        let dir = self.dir().ok_or(Error::ReadOnly)?;
        let mut lk = self.lock()?;
        let used = match lk.used {
            Some(u) => u,
            None => self.rescan(w)?.used,
        };
        lk.used = Some(used);
        let data = self.data_bytes()?;
        if new > old {
            let grow = new - old;
            let quota = self.inner.options.quota;
            let projected = match used.checked_add(grow) {
                Some(p) if p <= quota => p,
                // The name of the data file is never an entry's: nothing is kept from eviction
                // and nothing is replaced.
                _ => self.evict(w, &mut lk, None, DATA_FILE, 0, grow)?,
            };
            self.write_data_bytes(dir, data.saturating_add(grow))?;
            if let Err(e) = lk.store_used(projected) {
                let _ = self.write_data_bytes(dir, data);
                return Err(e.into());
            }
            let out = commit();
            if out.is_err() {
                // Best effort: a charge left too high only costs room until the next recount.
                let _ = self.write_data_bytes(dir, data);
                let _ = lk.store_used(projected - grow);
            }
            out
        } else {
            let out = commit()?;
            let shrink = old - new;
            if shrink > 0 {
                // The change is made: a failure here leaves the charge too high, never too low.
                let updated = self
                    .write_data_bytes(dir, data.saturating_sub(shrink))
                    .and_then(|()| lk.store_used(used.saturating_sub(shrink)));
                if let Err(e) = updated {
                    tracing::warn!(namespace = %self.inner.name, error = %e.full_message(),
                        "cannot lower the data charge (the namespace counts more than it holds until the key-value data is verified)");
                }
            }
            Ok(out)
        }
    }

    /// Sets the data charge to exactly `bytes` (what the data holds, recounted by its holder
    /// under its own lock), and the usage counter with it.
    pub fn set_data_bytes(&self, bytes: u64) -> Result<()> {
        self.writable()?;
        let dir = self.dir().ok_or(Error::ReadOnly)?;
        let mut lk = self.lock()?;
        self.write_data_bytes(dir, bytes)?;
        let scan = self.scan(0)?;
        lk.store_used(scan.used)
    }
}
