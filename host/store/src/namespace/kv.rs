//! The namespace's side of key-value records (see [`crate::kv`]): files under `kv/`, written to
//! `tmp/` and renamed into place under the namespace lock, counted in the usage counter, never
//! among the eviction candidates.
//!
//! ```text
//! <namespace>/kv/00/ … kv/ff/   records, named by the SHA-256 digest of their key in hex
//! ```

use super::*;

/// The records' directory, inside the namespace.
pub(crate) const KV_DIR: &str = "kv";

/// A record being written: a temporary file locked by its writer (so that no reclaimer takes it),
/// removed when dropped unless it was published.
pub(crate) struct KvTmp {
    ns: Namespace,
    name: String,
    _file: File,
}

/// The namespace lock, held for a read-modify-write of records.
pub(crate) struct KvTxn<'a> {
    ns: &'a Namespace,
    w: &'a Writable,
    dir: &'a Dir,
    lk: Locked<'a>,
}

impl Drop for KvTmp {
    fn drop(&mut self) {
        if !self.name.is_empty()
            && let Ok(w) = self.ns.writable()
        {
            let _ = w.tmp.remove_file(&self.name);
        }
    }
}

/// The fan-out directory of a record at `kv/xx/<hex>`.
fn parent(rel: &str) -> &str {
    rel.rsplit_once('/').map_or(".", |(p, _)| p)
}

/// `kv/xx/<hex>` for a record's digest.
pub(crate) fn kv_rel(digest: &Key) -> String {
    let hk = digest.hex();
    format!("{KV_DIR}/{}", hk.rel_path())
}

impl Namespace {
    /// Writes a whole record to a new temporary file (fsynced in durable mode).
    pub(crate) fn kv_write_tmp(&self, bytes: &[u8]) -> Result<KvTmp> {
        let w = self.writable()?;
        let (name, file) = self.create_locked_temp(w, "kv")?;
        let written = fault::check(Point::Write)
            .and_then(|()| sys::write_all_at(&file, bytes, 0))
            .context(|| "cannot write a key-value record".into())
            .and_then(|()| {
                if self.inner.options.durability == Durability::Sync {
                    fault::check(Point::SyncFile)
                        .and_then(|()| file.sync_all())
                        .context(|| "cannot fsync a key-value record".into())
                } else {
                    Ok(())
                }
            });
        if let Err(e) = written {
            let _ = w.tmp.remove_file(&name);
            return Err(e);
        }
        Ok(KvTmp {
            ns: self.clone(),
            name,
            _file: file,
        })
    }

    /// Runs `f` under the namespace lock (in-process mutex and `flock`, so other processes are
    /// excluded too).
    pub(crate) fn kv_transaction<R, E: From<Error>>(
        &self,
        f: impl FnOnce(&mut KvTxn<'_>) -> std::result::Result<R, E>,
    ) -> std::result::Result<R, E> {
        let w = self.writable()?;
        let dir = self.dir().ok_or(Error::ReadOnly)?;
        let lk = self.lock()?;
        let mut txn = KvTxn { ns: self, w, dir, lk };
        f(&mut txn)
    }

    /// Opens the record file at `rel` for reading: `None` when there is none. A symlink or
    /// anything but a regular file with one name is removed and answered as `None`.
    pub(crate) fn kv_open(&self, rel: &str) -> Result<Option<(File, std::fs::Metadata)>> {
        let Some(dir) = self.dir() else { return Ok(None) };
        let mut oo = OpenOptions::new();
        oo.read(true).follow(FollowSymlinks::No);
        sys::nonblocking(&mut oo);
        let file = match dir.open_with(rel, &oo) {
            Ok(f) => f.into_std(),
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => {
                if let Ok(meta) = dir.symlink_metadata(rel)
                    && meta.file_type().is_symlink()
                {
                    self.kv_discard(rel, None, "a symlink, not a record");
                    return Ok(None);
                }
                return Err(Error::io(format!("cannot open key-value record {rel}"), e));
            }
        };
        let meta = file
            .metadata()
            .context(|| format!("cannot stat key-value record {rel}"))?;
        let links = sys::link_count(&file, &meta).context(|| format!("cannot stat key-value record {rel}"))?;
        if !meta.file_type().is_file() || links > 1 {
            self.kv_discard(rel, Some((&file, &meta)), "not a regular file with one name");
            return Ok(None);
        }
        Ok(Some((file, meta)))
    }

    /// Removes a damaged record if it is still the file that was checked, and logs it.
    pub(crate) fn kv_discard(&self, rel: &str, checked: Option<(&File, &std::fs::Metadata)>, reason: &'static str) {
        tracing::warn!(namespace = %self.inner.name, record = rel, reason, "removing damaged key-value record");
        let (Some(dir), Ok(mut lk)) = (self.dir(), self.lock()) else {
            return;
        };
        let Ok(now) = dir.symlink_metadata(rel) else { return };
        let same = match checked {
            Some((file, meta)) => sys::is_same_file_at(dir, rel, file, meta),
            None => now.file_type().is_symlink(),
        };
        if same
            && self.remove_entry_file(dir, rel).is_ok()
            && now.file_type().is_file()
            && let Some(used) = lk.used
        {
            let _ = lk.store_used(used.saturating_sub(charged(&now)));
        }
    }

    /// The digests of the records in fan-out directory `shard` (0..=255), unsorted.
    pub(crate) fn kv_digests_in(&self, shard: u8) -> Result<Vec<Key>> {
        let Some(dir) = self.dir() else { return Ok(Vec::new()) };
        let rel = format!("{KV_DIR}/{shard:02x}");
        let ctx = || format!("cannot list the key-value records of namespace {:?}", self.inner.name);
        // A fan-out directory that cannot be opened fails the listing (a listing that skipped
        // it would silently leave keys out); one that is not there, or is not a directory (a
        // planted file or symlink: nothing of ours is in it), holds no records.
        match dir.symlink_metadata(&rel) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Ok(Vec::new()),
            Err(e) if is_not_found(&e) => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(ctx(), e)),
        }
        let sub = match dir.open_dir_nofollow(&rel) {
            Ok(d) => d,
            Err(e) if is_not_found(&e) => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(ctx(), e)),
        };
        let mut out = Vec::new();
        for entry in sub.entries().context(ctx)? {
            let entry = entry.context(ctx)?;
            if let Some(key) = entry.file_name().to_str().and_then(Key::from_hex) {
                out.push(key);
            }
        }
        Ok(out)
    }

    /// Calls `f` with every record file's digest and metadata (contents are not checked).
    pub(crate) fn kv_for_each(&self, mut f: impl FnMut(Key, &cap_std::fs::Metadata) -> Result<()>) -> Result<()> {
        let Some(dir) = self.dir() else { return Ok(()) };
        let ctx = || format!("cannot list the key-value records of namespace {:?}", self.inner.name);
        // As for the cache entries' scan: what cannot be opened fails the walk (a short usage
        // counter would let the quota be exceeded); what is absent or not a directory is skipped.
        match dir.symlink_metadata(KV_DIR) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Ok(()),
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => return Err(Error::io(ctx(), e)),
        }
        let top = match dir.open_dir_nofollow(KV_DIR) {
            Ok(d) => d,
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => return Err(Error::io(ctx(), e)),
        };
        for shard in top.entries().context(ctx)? {
            let shard = shard.context(ctx)?;
            let name = shard.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.len() != 2 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            if !shard.file_type().context(ctx)?.is_dir() {
                continue;
            }
            let sub = match top.open_dir_nofollow(name) {
                Ok(sub) => sub,
                Err(e) if is_not_found(&e) => continue,
                Err(e) => return Err(Error::io(ctx(), e)),
            };
            for entry in sub.entries().context(ctx)? {
                let entry = entry.context(ctx)?;
                let Some(key) = entry.file_name().to_str().and_then(Key::from_hex) else {
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

    /// Records and bytes (what they count against the quota) of every record file.
    pub(crate) fn kv_usage(&self) -> Result<(u64, u64)> {
        let (mut n, mut bytes) = (0, 0);
        self.kv_for_each(|_, meta| {
            n += 1;
            bytes += charged(meta);
            Ok(())
        })?;
        Ok((n, bytes))
    }

    /// Removes every record (under the lock held by the caller). Returns how many.
    pub(super) fn kv_clear(&self, dir: &Dir) -> Result<u64> {
        let mut rels = Vec::new();
        self.kv_for_each(|key, _| {
            rels.push(kv_rel(&key));
            Ok(())
        })?;
        let mut removed = 0;
        for rel in rels {
            match self.remove_entry_file(dir, &rel) {
                Ok(()) => removed += 1,
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(Error::io("cannot remove a key-value record", e)),
            }
        }
        Ok(removed)
    }
}

impl KvTxn<'_> {
    /// Publishes `tmp` (a whole record whose quota charge is `len` bytes) at `rel`, replacing
    /// any record there. Cache entries of the namespace are evicted if that is what it takes to
    /// fit; records never are. Fails with [`Error::QuotaExceeded`] (and changes nothing) when it
    /// cannot fit even then.
    pub(crate) fn publish(&mut self, mut tmp: KvTmp, rel: &str, len: u64) -> Result<()> {
        self.publish_inner(&mut tmp, rel, len)
    }

    fn publish_inner(&mut self, tmp: &mut KvTmp, rel: &str, len: u64) -> Result<()> {
        let (ns, w, dir) = (self.ns, self.w, self.dir);
        let quota = ns.inner.options.quota;
        let used = match self.lk.used {
            Some(u) => u,
            // No key of a cache entry is all zeros in practice; nothing is kept from eviction.
            None => ns.rescan(w)?.used,
        };
        self.lk.used = Some(used);
        let old = charged_at(dir, rel);
        let mut projected = used.saturating_sub(old) + len;
        if projected > quota {
            projected = ns.evict(w, &mut self.lk, None, rel, old, len)?;
        }
        let before = self.lk.used.unwrap_or(used);
        self.lk.store_used(projected)?;
        let renamed = self.rename_into_place(&tmp.name, rel);
        if let Err(e) = renamed {
            let _ = self.lk.store_used(before);
            return Err(e);
        }
        tmp.name.clear();
        if let Err(e) = ns.durable_sync_dir(parent(rel)) {
            if ns.remove_entry_file(dir, rel).is_ok() {
                let _ = self.lk.store_used(before.saturating_sub(old));
            }
            return Err(e);
        }
        Ok(())
    }

    fn rename_into_place(&self, tmp_name: &str, rel: &str) -> Result<()> {
        let (w, dir) = (self.w, self.dir);
        let rename =
            || fault::check(Point::Rename).and_then(|()| sys::rename_replacing(&w.tmp, tmp_name, dir, rel, &w.tmp));
        match rename() {
            Err(e) if is_not_found(&e) => {
                // The fan-out directory (or kv/ itself) does not exist yet.
                for d in [KV_DIR, parent(rel)] {
                    match fault::check(Point::CreateShard).and_then(|()| dir.create_dir(d)) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(Error::io("cannot create a key-value directory", e)),
                    }
                }
                self.ns.durable_sync_dir(".")?;
                self.ns.durable_sync_dir(KV_DIR)?;
                rename().context(|| format!("cannot publish key-value record {rel}"))
            }
            r => r.context(|| format!("cannot publish key-value record {rel}")),
        }
    }

    /// Removes the record at `rel`. Whether there was one.
    pub(crate) fn remove(&mut self, rel: &str) -> Result<bool> {
        let meta = match self.dir.symlink_metadata(rel) {
            Ok(m) => m,
            Err(e) if is_not_found(&e) => return Ok(false),
            Err(e) => return Err(Error::io(format!("cannot stat key-value record {rel}"), e)),
        };
        match self.ns.remove_entry_file(self.dir, rel) {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => return Ok(false),
            Err(e) => return Err(Error::io(format!("cannot delete key-value record {rel}"), e)),
        }
        if let (Some(used), true) = (self.lk.used, meta.file_type().is_file()) {
            self.lk.store_used(used.saturating_sub(charged(&meta)))?;
        }
        if let Err(e) = self.ns.durable_sync_dir(parent(rel)) {
            tracing::warn!(namespace = %self.ns.inner.name, error = %e.full_message(), "a delete may not survive power loss");
        }
        Ok(meta.file_type().is_file())
    }
}
