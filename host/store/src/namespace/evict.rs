//! Eviction and scans: walking the fan-out directories to recount usage, find the oldest entries, verify, clear and reclaim temporary files.

use super::*;

impl Namespace {
    /// Removes temporary files whose writer is gone (not holding its lock). Returns how many.
    pub fn reclaim_temporary_files(&self) -> Result<u64> {
        let Some(w) = &self.inner.writable else { return Ok(0) };
        let mut removed = 0;
        for entry in w.tmp.entries().context(|| "cannot list temporary files".into())? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name();
            let mut oo = OpenOptions::new();
            oo.read(true).follow(FollowSymlinks::No);
            sys::nonblocking(&mut oo);
            match w.tmp.open_with(&name, &oo) {
                Ok(f) => {
                    let f = f.into_std();
                    // A live writer holds the lock for as long as its file exists.
                    if sys::try_lock(&f).is_ok() && w.tmp.remove_file(&name).is_ok() {
                        removed += 1;
                    }
                }
                // Not a regular file we can open (a symlink, say): it is not ours to keep.
                Err(_) => {
                    if w.tmp.remove_file_or_symlink(&name).is_ok() {
                        removed += 1;
                    }
                }
            }
        }
        Ok(removed)
    }

    /// Evicts least recently used entries (never `keep`) until a file of `size` bytes at `rel`,
    /// replacing one of `old` bytes, fits. Returns the usage once it does.
    pub(super) fn evict(
        &self,
        w: &Writable,
        lk: &mut Locked<'_>,
        keep: Option<&Key>,
        rel: &str,
        mut old: u64,
        size: u64,
    ) -> Result<u64> {
        let keep = keep.unwrap_or(&NO_KEY);
        let dir = self.dir().ok_or(Error::ReadOnly)?;
        let quota = self.inner.options.quota;
        let mut used = lk.used.unwrap_or(0);
        let mut scanned = false;
        loop {
            let mut candidates = w.candidates.lock().unwrap_or_else(|p| p.into_inner());
            // The entry being replaced is not evicted for itself, but stays a candidate (in its
            // place) for the writes after this one, even when this eviction fails part way.
            let mut kept = None;
            let mut evicting = || -> Result<()> {
                while used.saturating_sub(old) + size > quota {
                    let Some(c) = candidates.queue.pop_front() else { break };
                    if c.key == *keep {
                        kept = Some(c);
                        continue;
                    }
                    let rel = c.key.hex().rel_path();
                    // Skip an entry used (or replaced) since the scan: it is no longer among the
                    // oldest.
                    if !c.is_unchanged(dir, &rel) {
                        continue;
                    }
                    match self.remove_entry_file(dir, &rel) {
                        Ok(()) => {
                            tracing::debug!(namespace = %self.inner.name, key = %c.key, "evicted");
                            used = used.saturating_sub(c.size);
                            lk.store_used(used)?;
                        }
                        Err(e) if is_not_found(&e) => {}
                        Err(e) => {
                            // Still there, and still the oldest.
                            candidates.queue.push_front(c);
                            return Err(Error::io("cannot evict an entry", e));
                        }
                    }
                }
                Ok(())
            };
            let evicted = evicting();
            if let Some(c) = kept {
                candidates.queue.push_front(c);
            }
            evicted?;
            if used.saturating_sub(old) + size <= quota {
                return Ok(used.saturating_sub(old) + size);
            }
            if scanned && !candidates.truncated {
                return Err(Error::QuotaExceeded { needed: size, quota });
            }
            drop(candidates);
            let scan = self.rescan(w)?;
            used = scan.used;
            // The entry being replaced may have changed meanwhile; data charged beside the
            // entries (`rel` is then the data file) replaces nothing.
            if rel != super::data::DATA_FILE {
                old = entry_charged_at(dir, rel);
            }
            lk.store_used(used)?;
            scanned = true;
        }
    }

    /// Walks the namespace (under its lock), refreshing the eviction candidates.
    pub(super) fn rescan(&self, w: &Writable) -> Result<Scan> {
        let scan = self.scan(CANDIDATES_PER_SCAN)?;
        let mut c = w.candidates.lock().unwrap_or_else(|p| p.into_inner());
        // (The entry being written stays in the queue: evict() steps over it.)
        c.queue = scan.oldest.iter().cloned().collect();
        c.truncated = scan.truncated;
        Ok(scan)
    }

    /// Removes every entry (and leftover temporary file). Returns how many entries were removed.
    /// Data charged beside the entries ([`data_bytes`](Self::data_bytes)) is not the store's to
    /// remove, and stays charged.
    pub fn clear(&self) -> Result<u64> {
        let w = self.writable()?;
        let Some(dir) = self.dir() else { return Ok(0) };
        let mut lk = self.lock()?;
        let mut removed = 0;
        let mut keys = Vec::new();
        self.for_each_entry_file(|key, _| {
            keys.push(key);
            Ok(())
        })?;
        for key in keys {
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
            let charge = entry_charged(meta);
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
    pub(crate) fn for_each_entry_file(
        &self,
        mut f: impl FnMut(Key, &cap_std::fs::Metadata) -> Result<()>,
    ) -> Result<()> {
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

    /// Reads and checks one entry completely. `Some(reason)` when it was damaged (and removed,
    /// unless the namespace is read-only); a file that vanished meanwhile counts as sound.
    #[doc(hidden)]
    pub fn verify_entry(&self, key: &Key) -> Result<Option<&'static str>> {
        let mut reader = match self.lookup_reader(key, false)? {
            Lookup::Found(reader) => reader,
            Lookup::Missing => return Ok(None),
            Lookup::Discarded(reason) => return Ok(Some(reason)),
        };
        loop {
            match reader.read_chunk(MAX_READ_CHUNK) {
                Ok(chunk) if chunk.is_empty() => return Ok(None),
                Ok(_) => {}
                Err(Error::Corrupt { reason, .. }) => return Ok(Some(reason)),
                Err(e) => return Err(e),
            }
        }
    }

    /// Recomputes the usage counter from a full scan.
    pub(crate) fn recount(&self) -> Result<Scan> {
        let mut lk = self.lock()?;
        let scan = self.scan(0)?;
        lk.store_used(scan.used)?;
        Ok(scan)
    }
}
