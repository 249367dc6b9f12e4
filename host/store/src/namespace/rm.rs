//! Removing entries: delete, clear, removing a damaged entry (only if it is still the file that
//! was found damaged), and reclaiming the temporary files of writers that died.

use std::fs::File;
use std::io;

use cap_fs_ext::{DirExt, FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::{Dir, OpenOptions};

use super::evict::Candidates;
use super::file::{Lookup, RawEntry, charged};
use super::walk::EntryInfo;
use super::{Namespace, is_not_found};
use crate::error::IoContext;
use crate::key::HexKey;
use crate::sys;
use crate::{Error, Key, Result};

impl Namespace {
    /// Removes the entry under `key`.
    pub fn delete(&self, key: &Key) -> Result<()> {
        self.writable()?;
        let Some(dir) = self.dir() else { return Ok(()) };
        let hk = key.hex();
        let rel = hk.rel_path();
        let mut lk = self.lock()?;
        let meta = match dir.symlink_metadata(&rel) {
            Ok(m) => m,
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => return Err(Error::io(format!("cannot stat entry {}", hk.as_str()), e)),
        };
        match self.remove_entry_file(dir, &rel) {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => return Err(Error::io(format!("cannot delete entry {}", hk.as_str()), e)),
        }
        if let (Some(used), true) = (lk.used, meta.file_type().is_file()) {
            lk.store_used(used.saturating_sub(charged(&meta)))?;
        }
        // The entry is gone either way; should it come back after a power loss, it is whole.
        if let Err(e) = self.durable_sync_dir(hk.shard()) {
            tracing::warn!(namespace = %self.inner.name, error = %e.full_message(), "a delete may not survive power loss");
        }
        Ok(())
    }

    /// Removes every entry (and leftover temporary file). Returns how many entries were removed.
    /// Data charged beside the entries ([`data_bytes`](Self::data_bytes)) is not the store's to
    /// remove, and stays charged.
    pub fn clear(&self) -> Result<u64> {
        let w = self.writable()?;
        let Some(dir) = self.dir() else { return Ok(0) };
        let mut lk = self.lock()?;
        let mut removed = 0;
        for key in self.keys()? {
            match self.remove_entry_file(dir, &key.hex().rel_path()) {
                Ok(()) => removed += 1,
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(Error::io("cannot remove an entry", e)),
            }
        }
        lk.store_used(self.scan(0)?.used)?;
        drop(lk);
        *w.candidates.lock().unwrap_or_else(|p| p.into_inner()) = Candidates::default();
        self.reclaim_temporary_files()?;
        Ok(removed)
    }

    /// Removes entries in the order given while they are unchanged since `info` was taken
    /// (same time and size). Returns the entries and bytes removed.
    pub(crate) fn remove_if_unchanged(&self, infos: &[EntryInfo]) -> Result<(u64, u64)> {
        let Some(dir) = self.dir() else { return Ok((0, 0)) };
        let mut lk = self.lock()?;
        let (mut removed, mut freed) = (0, 0);
        for info in infos {
            let rel = info.key.hex().rel_path();
            if !info.is_unchanged(dir, &rel) {
                continue;
            }
            match self.remove_entry_file(dir, &rel) {
                Ok(()) => {
                    removed += 1;
                    freed += info.size;
                }
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(Error::io("cannot remove an entry", e)),
            }
        }
        if let Some(used) = lk.used {
            lk.store_used(used.saturating_sub(freed))?;
        }
        Ok((removed, freed))
    }

    /// Removes temporary files whose writer is gone (not holding its lock). Returns how many.
    pub fn reclaim_temporary_files(&self) -> Result<u64> {
        if self.inner.options.read_only {
            return Ok(0);
        }
        // Before this handle's first write, `tmp/` is only opened, never created: there is
        // nothing to reclaim where there is none.
        let opened;
        let tmp = match self.inner.writable.get() {
            Some(w) => &w.tmp,
            None => match self.existing_tmp()? {
                Some(tmp) => {
                    opened = tmp;
                    &opened
                }
                None => return Ok(0),
            },
        };
        let mut removed = 0;
        for entry in tmp.entries().context(|| "cannot list temporary files".into())? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name();
            let mut oo = OpenOptions::new();
            oo.read(true).follow(FollowSymlinks::No);
            sys::nonblocking(&mut oo);
            match tmp.open_with(&name, &oo) {
                Ok(f) => {
                    let f = f.into_std();
                    // A live writer holds the lock for as long as its file exists.
                    if sys::try_lock(&f).is_ok() && tmp.remove_file(&name).is_ok() {
                        removed += 1;
                    }
                }
                // Not a regular file we can open (a symlink, say): it is not ours to keep.
                Err(_) => {
                    if tmp.remove_file_or_symlink(&name).is_ok() {
                        removed += 1;
                    }
                }
            }
        }
        Ok(removed)
    }

    /// Removes the entry file (or planted symlink) at `rel`. On Windows, where a file that is
    /// open cannot lose its name, it is first renamed into `tmp/` (see `crate::sys::remove_file`),
    /// so that the entry's name is free at once.
    pub(super) fn remove_entry_file(&self, dir: &Dir, rel: &str) -> io::Result<()> {
        // Called under the lock, so a writable handle has made its `tmp/` by now.
        match self.inner.writable.get() {
            Some(w) => sys::remove_file(dir, rel, &w.tmp),
            None => dir.remove_file_or_symlink(rel),
        }
    }

    /// Removes a damaged entry if it is still the file that was checked (`checked`: that file,
    /// open, and its metadata; `None` for a symlink), and logs why; returns the lookup's answer,
    /// [`Lookup::Discarded`] with the reason.
    pub(super) fn discard<T>(
        &self,
        hk: &HexKey,
        checked: Option<(&File, &std::fs::Metadata)>,
        reason: &'static str,
    ) -> Lookup<T> {
        tracing::warn!(namespace = %self.inner.name, key = hk.as_str(), reason, "removing damaged cache entry");
        self.remove_damaged(hk, checked);
        Lookup::Discarded(reason)
    }

    fn remove_damaged(&self, hk: &HexKey, checked: Option<(&File, &std::fs::Metadata)>) {
        let (Some(dir), Ok(mut lk)) = (self.dir(), self.lock()) else {
            return;
        };
        let rel = hk.rel_path();
        let Ok(now) = dir.symlink_metadata(&rel) else { return };
        let same = match checked {
            Some((file, meta)) => sys::is_same_file_at(dir, &rel, file, meta),
            None => now.file_type().is_symlink(),
        };
        if same
            && self.remove_entry_file(dir, &rel).is_ok()
            && now.file_type().is_file()
            && let Some(used) = lk.used
        {
            let _ = lk.store_used(used.saturating_sub(charged(&now)));
        }
    }

    /// Removes an entry a reader found damaged part way, and the error that reader answers.
    pub(super) fn corrupt(&self, entry: &RawEntry, reason: &'static str) -> Error {
        let hk = entry.key().hex();
        self.discard::<()>(&hk, entry.checked(), reason);
        Error::Corrupt {
            key: hk.as_str().to_string(),
            reason,
        }
    }
}
