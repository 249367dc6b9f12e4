//! The read path: finding an entry file, checking its header, serving its content verified, and removing what fails.

use super::*;

/// An entry file opened with its header checked: its name, the open file, its metadata, the
/// header, and where the file keeps it.
pub(super) type CheckedEntry = (HexKey, File, std::fs::Metadata, (Header, Layout));

impl Namespace {
    /// Opens the entry file for `key`: `None` when there is none (or it was not an acceptable
    /// file and has been removed).
    pub(super) fn open_entry_file(&self, hk: &HexKey) -> Result<Option<(File, std::fs::Metadata)>> {
        Ok(self.lookup_entry_file(hk)?.found())
    }

    /// Like [`open_entry_file`](Self::open_entry_file), telling a miss from an entry removed as
    /// damaged (and why).
    fn lookup_entry_file(&self, hk: &HexKey) -> Result<Lookup<(File, std::fs::Metadata)>> {
        let Some(dir) = self.dir() else {
            return Ok(Lookup::Missing);
        };
        let mut oo = OpenOptions::new();
        // O_NONBLOCK: opening a planted FIFO must not hang; it has no effect on regular files.
        // O_NOATIME: the cache keeps recency in the modification time, which a hit sets; without
        // it, the next read would find the access time older than that and write the inode a
        // second time (relatime). Only the file's owner may ask for it: others open without.
        oo.read(true).follow(FollowSymlinks::No);
        sys::entry_read_options(&mut oo, true);
        let rel = hk.rel_path();
        let opened = match dir.open_with(&rel, &oo) {
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied && sys::READ_EXTRA_MAY_BE_REFUSED => {
                sys::entry_read_options(&mut oo, false);
                dir.open_with(&rel, &oo)
            }
            r => r,
        };
        let file = match opened {
            Ok(f) => f.into_std(),
            Err(e) if is_not_found(&e) => return Ok(Lookup::Missing),
            Err(e) => {
                // A symlink where an entry should be: never followed, removed.
                if let Ok(meta) = dir.symlink_metadata(&rel)
                    && meta.file_type().is_symlink()
                {
                    return Ok(self.discard_path(hk, None, "a symlink, not an entry file"));
                }
                return Err(Error::io(format!("cannot open entry {}", hk.as_str()), e));
            }
        };
        let meta = file
            .metadata()
            .context(|| format!("cannot stat entry {}", hk.as_str()))?;
        if !meta.file_type().is_file() {
            return Ok(self.discard_path(hk, Some((&file, &meta)), "not a regular file"));
        }
        if sys::link_count(&file, &meta).context(|| format!("cannot stat entry {}", hk.as_str()))? > 1 {
            return Ok(self.discard_path(hk, Some((&file, &meta)), "a hard link (entries have exactly one name)"));
        }
        Ok(Lookup::Found((file, meta)))
    }

    /// Reads and checks the header of an open entry file against its key and size: the header,
    /// and where the file keeps it.
    pub(super) fn check_header(
        &self,
        key: &Key,
        file: &File,
        meta: &std::fs::Metadata,
    ) -> std::result::Result<(Header, Layout), &'static str> {
        let file_len = meta.len();
        if file_len < HEADER_LEN as u64 {
            return Err("shorter than a header");
        }
        let mut b = [0u8; HEADER_LEN];
        if sys::read_exact_at(file, &mut b, 0).is_err() {
            return Err("unreadable header");
        }
        let layout = Layout::of_file_starting_with(&b);
        if layout == Layout::Trailing && sys::read_exact_at(file, &mut b, layout.header_start(file_len)).is_err() {
            return Err("unreadable header");
        }
        Ok((check_header_bytes(key, &b, layout, file_len)?, layout))
    }

    /// Opens the entry for `key` and checks its header: `None` on a miss, or when the entry was
    /// damaged (it is then removed).
    pub(super) fn open_checked(&self, key: &Key) -> Result<Option<CheckedEntry>> {
        Ok(self.lookup_checked(key)?.found())
    }

    fn lookup_checked(&self, key: &Key) -> Result<Lookup<CheckedEntry>> {
        let hk = key.hex();
        let (file, meta) = match self.lookup_entry_file(&hk)? {
            Lookup::Found(found) => found,
            Lookup::Missing => return Ok(Lookup::Missing),
            Lookup::Discarded(reason) => return Ok(Lookup::Discarded(reason)),
        };
        match self.check_header(key, &file, &meta) {
            Ok(found) => Ok(Lookup::Found((hk, file, meta, found))),
            Err(reason) => Ok(self.discard_path(&hk, Some((&file, &meta)), reason)),
        }
    }

    /// Opens the entry for `key` for direct use of its file (a memory map, say), with its
    /// header checked but not its content: the caller checks the content its own way (the
    /// compiled-component cache authenticates it). Counts as a use for LRU. `None` on a miss.
    pub fn open_raw(&self, key: &Key) -> Result<Option<RawEntry>> {
        let Some((_, file, meta, (header, layout))) = self.open_checked(key)? else {
            return Ok(None);
        };
        self.touch(&file, &meta);
        Ok(Some(RawEntry {
            file,
            meta,
            header,
            layout,
        }))
    }

    /// Removes an entry opened with [`open_raw`](Self::open_raw) that its user found unusable,
    /// if it is still the same file, and logs why.
    pub fn discard_raw(&self, raw: &RawEntry, reason: &'static str) {
        self.discard_path::<()>(&raw.header.key.hex(), Some((&raw.file, &raw.meta)), reason);
    }

    /// Removes a damaged entry if it is still the file that was checked (`checked`: that file,
    /// open, and its metadata; `None` for a symlink), and logs it.
    /// Removes a damaged entry (if it is still the file that was checked) and logs why; returns
    /// the lookup's answer, [`Lookup::Discarded`] with the reason.
    pub(super) fn discard_path<T>(
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

    pub(super) fn corrupt(&self, hk: &HexKey, file: &File, meta: &std::fs::Metadata, reason: &'static str) -> Error {
        self.discard_path::<()>(hk, Some((file, meta)), reason);
        Error::Corrupt {
            key: hk.as_str().to_string(),
            reason,
        }
    }

    /// Marks an entry as just used, for LRU eviction. Best effort, and never in read-only mode.
    /// Refreshes an entry's recency on a hit: its modification time, unless it was set less
    /// than the namespace's [`recency`](crate::NamespaceOptions::recency) ago (so a hot entry
    /// costs no inode write per hit; eviction order is then exact to within that granularity).
    pub(super) fn touch(&self, file: &File, meta: &std::fs::Metadata) {
        if self.inner.options.read_only {
            return;
        }
        let fresh = meta
            .modified()
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_some_and(|age| age < self.inner.options.recency);
        if !fresh {
            let _ = file.set_modified(now());
        }
    }

    /// The content stored under `key`, verified. A damaged entry is removed and answered as a
    /// miss; the returned error is then `None`, and the reason is logged.
    pub fn get(&self, key: &Key) -> Result<Option<Vec<u8>>> {
        let found = self.get_uncounted(key);
        if let Ok(found) = &found {
            self.count_use(found.is_some());
        }
        found
    }

    fn get_uncounted(&self, key: &Key) -> Result<Option<Vec<u8>>> {
        let hk = key.hex();
        let Some((file, meta)) = self.open_entry_file(&hk)? else {
            return Ok(None);
        };
        match self.read_verified(key, &hk, &file, &meta)? {
            Ok(content) => {
                self.touch(&file, &meta);
                Ok(Some(content))
            }
            Err(reason) => {
                self.discard_path::<()>(&hk, Some((&file, &meta)), reason);
                Ok(None)
            }
        }
    }

    /// Reads a whole entry and checks it (header against key and size, content against its
    /// checksum): the content, or why the entry is damaged.
    pub(super) fn read_verified(
        &self,
        key: &Key,
        hk: &HexKey,
        file: &File,
        meta: &std::fs::Metadata,
    ) -> Result<std::result::Result<Vec<u8>, &'static str>> {
        let Some(content_len) = meta.len().checked_sub(HEADER_LEN as u64) else {
            return Ok(Err("shorter than a header"));
        };
        // The buffer is sized from the file, which another host (with a larger limit) or a
        // damaged disk may have made any size: never allocate past this namespace's limit. Such an
        // entry is not damaged; it is too large to be read whole here (`open` streams it).
        let limit = self.inner.options.max_entry_size;
        let len = match usize::try_from(content_len) {
            Ok(len) if content_len <= limit => len,
            _ => {
                // A damaged header is still damage (removed); a whole one is an entry too large.
                if let Err(reason) = self.check_header(key, file, meta) {
                    return Ok(Err(reason));
                }
                return Err(Error::TooLarge { limit });
            }
        };
        let read_all = |buf: &mut Vec<u8>, want: usize, mut offset: u64| -> Result<()> {
            while buf.len() < want {
                let n = sys::read_spare(file, buf, offset)
                    .map_err(|e| Error::io(format!("cannot read entry {}", hk.as_str()), e))?;
                if n == 0 {
                    break;
                }
                offset += n as u64;
            }
            Ok(())
        };
        if len <= SMALL_ENTRY {
            // Header and content in one read; moving the content down is cheaper than a second
            // system call at this size.
            let mut buf = Vec::with_capacity(HEADER_LEN + len);
            read_all(&mut buf, HEADER_LEN + len, 0)?;
            if buf.len() < HEADER_LEN + len {
                // Shorter than its size said: a damaged header says so first.
                return Ok(Err(self.check_header(key, file, meta).err().unwrap_or("truncated")));
            }
            let layout = Layout::of_file_starting_with(&buf);
            let (head, content) = match layout {
                Layout::Leading => (0..HEADER_LEN, HEADER_LEN..HEADER_LEN + len),
                Layout::Trailing => (len..len + HEADER_LEN, 0..len),
            };
            let head = buf[head].try_into().expect("HEADER_LEN bytes");
            let header = match check_header_bytes(key, head, layout, meta.len()) {
                Ok(h) => h,
                Err(reason) => return Ok(Err(reason)),
            };
            if Checksum::of(&buf[content.clone()]) != header.crc {
                return Ok(Err("content checksum mismatch"));
            }
            match layout {
                Layout::Leading => drop(buf.drain(..HEADER_LEN)),
                Layout::Trailing => buf.truncate(len),
            }
            return Ok(Ok(buf));
        }
        let (header, layout) = match self.check_header(key, file, meta) {
            Ok(found) => found,
            Err(reason) => return Ok(Err(reason)),
        };
        // Checked as it is read, a chunk at a time while the chunk is still in the CPU's cache
        // (a second pass over the whole content after the kernel's copy costs as much again).
        let mut content = Vec::with_capacity(len);
        let mut crc = Checksum::default();
        while content.len() < len {
            let start = content.len();
            let n = sys::read_spare_upto(file, &mut content, layout.content_start() + start as u64, CHECKED_CHUNK)
                .map_err(|e| Error::io(format!("cannot read entry {}", hk.as_str()), e))?;
            if n == 0 {
                break;
            }
            crc.update(&content[start..]);
        }
        if content.len() < len {
            return Ok(Err("truncated"));
        }
        if crc.value() != header.crc {
            return Ok(Err("content checksum mismatch"));
        }
        Ok(Ok(content))
    }

    /// A reader over the content stored under `key`, or `None` on a miss.
    pub fn open(&self, key: &Key) -> Result<Option<FileReader>> {
        let found = self.open_reader(key, true);
        if let Ok(found) = &found {
            self.count_use(found.is_some());
        }
        found
    }

    /// Opens a reader; `is_use` tells whether this counts as a use for LRU (`verify` does not).
    pub(super) fn open_reader(&self, key: &Key, is_use: bool) -> Result<Option<FileReader>> {
        Ok(self.lookup_reader(key, is_use)?.found())
    }

    /// Like [`open_reader`](Self::open_reader), telling a miss from an entry removed as damaged.
    pub(super) fn lookup_reader(&self, key: &Key, is_use: bool) -> Result<Lookup<FileReader>> {
        let (hk, file, meta, (header, layout)) = match self.lookup_checked(key)? {
            Lookup::Found(found) => found,
            Lookup::Missing => return Ok(Lookup::Missing),
            Lookup::Discarded(reason) => return Ok(Lookup::Discarded(reason)),
        };
        if header.len == 0 && header.crc != Checksum::of(&[]) {
            return Ok(self.discard_path(&hk, Some((&file, &meta)), "content checksum mismatch"));
        }
        if is_use {
            self.touch(&file, &meta);
        }
        Ok(Lookup::Found(FileReader {
            ns: self.for_operation(),
            key: *key,
            file,
            meta,
            start: layout.content_start(),
            len: header.len,
            pos: 0,
            crc: Checksum::default(),
            expected: header.crc,
            failed: None,
        }))
    }

    /// Whether an entry is stored under `key`; its header is checked, its content is not.
    pub fn contains(&self, key: &Key) -> Result<bool> {
        let found = self.open_checked(key)?.is_some();
        self.count_use(found);
        Ok(found)
    }

    /// Like [`contains`](Self::contains), but not counted as a use: for the host's own checks
    /// (the compiled cache counts its loads itself).
    pub fn is_stored(&self, key: &Key) -> Result<bool> {
        Ok(self.open_checked(key)?.is_some())
    }
}

/// A verifying reader over one entry, from [`Namespace::open`]. Also an [`io::Read`].
pub struct FileReader {
    ns: Namespace,
    key: Key,
    file: File,
    meta: std::fs::Metadata,
    /// Where the content starts in the file.
    start: u64,
    len: u64,
    pos: u64,
    crc: Checksum,
    expected: u32,
    failed: Option<&'static str>,
}

impl FileReader {
    /// The content's length in bytes.
    pub fn size(&self) -> u64 {
        self.len
    }

    fn fail(&mut self, reason: &'static str) -> Error {
        self.failed = Some(reason);
        self.ns.corrupt(&self.key.hex(), &self.file, &self.meta, reason)
    }

    /// Reads into `buf`, returning how many bytes; 0 at the end.
    pub fn read_into(&mut self, buf: &mut [u8]) -> Result<usize> {
        if let Some(reason) = self.failed {
            return Err(Error::Corrupt {
                key: self.key.to_string(),
                reason,
            });
        }
        let want = (buf.len() as u64).min(self.len - self.pos) as usize;
        if want == 0 {
            return Ok(0);
        }
        let mut got = 0;
        while got < want {
            let n = sys::read_at(&self.file, &mut buf[got..want], self.start + self.pos + got as u64)
                .context(|| format!("cannot read entry {}", self.key))?;
            if n == 0 {
                return Err(self.fail("truncated"));
            }
            got += n;
        }
        self.crc.update(&buf[..got]);
        self.pos += got as u64;
        if self.pos == self.len && self.crc.value() != self.expected {
            return Err(self.fail("content checksum mismatch"));
        }
        Ok(got)
    }

    /// Reads at most `max` bytes (never more than 1 MiB); an empty vector at the end.
    pub fn read_chunk(&mut self, max: usize) -> Result<Vec<u8>> {
        let want = (max.min(MAX_READ_CHUNK) as u64).min(self.len - self.pos) as usize;
        let mut buf = vec![0u8; want];
        let n = self.read_into(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }
}

impl EntryReader for FileReader {
    fn size(&self) -> u64 {
        self.len
    }
    fn read_chunk(&mut self, max: usize) -> Result<Vec<u8>> {
        FileReader::read_chunk(self, max)
    }
}

impl io::Read for FileReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_into(buf).map_err(io::Error::from)
    }
}
