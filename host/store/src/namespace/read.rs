//! The read path: finding an entry file, checking its header, serving its content verified, and removing what fails.

use super::*;

impl Namespace {
    /// Opens the entry file for `key`: `None` when there is none (or it was not an acceptable
    /// file and has been removed).
    pub(super) fn open_entry_file(&self, hk: &HexKey) -> Result<Option<(File, std::fs::Metadata)>> {
        let Some(dir) = self.dir() else { return Ok(None) };
        let mut oo = OpenOptions::new();
        // O_NONBLOCK: opening a planted FIFO must not hang; it has no effect on regular files.
        // O_NOATIME: the cache keeps recency in the modification time, which a hit sets; without
        // it, the next read would find the access time older than that and write the inode a
        // second time (relatime). Only the file's owner may ask for it: others open without.
        oo.read(true)
            .follow(FollowSymlinks::No)
            .custom_flags((rustix::fs::OFlags::NONBLOCK | NOATIME).bits() as i32);
        let rel = hk.rel_path();
        let opened = match dir.open_with(&rel, &oo) {
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied && !NOATIME.is_empty() => {
                oo.custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32);
                dir.open_with(&rel, &oo)
            }
            r => r,
        };
        let file = match opened {
            Ok(f) => f.into_std(),
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => {
                // A symlink where an entry should be: never followed, removed.
                if let Ok(meta) = dir.symlink_metadata(&rel)
                    && meta.file_type().is_symlink()
                {
                    self.discard_path(hk, None, "a symlink, not an entry file");
                    return Ok(None);
                }
                return Err(Error::io(format!("cannot open entry {}", hk.as_str()), e));
            }
        };
        let meta = file
            .metadata()
            .context(|| format!("cannot stat entry {}", hk.as_str()))?;
        if !meta.file_type().is_file() {
            self.discard_path(hk, Some(&meta), "not a regular file");
            return Ok(None);
        }
        if meta.nlink() > 1 {
            self.discard_path(hk, Some(&meta), "a hard link (entries have exactly one name)");
            return Ok(None);
        }
        Ok(Some((file, meta)))
    }

    /// Reads and checks the header of an open entry file against its key and size.
    pub(super) fn check_header(
        &self,
        key: &Key,
        file: &File,
        meta: &std::fs::Metadata,
    ) -> std::result::Result<Header, &'static str> {
        if meta.len() < HEADER_LEN as u64 {
            return Err("shorter than a header");
        }
        let mut b = [0u8; HEADER_LEN];
        match file.read_exact_at(&mut b, 0) {
            Ok(()) => {}
            Err(_) => return Err("unreadable header"),
        }
        check_header_bytes(key, &b, meta.len())
    }

    /// Opens the entry for `key` and checks its header: `None` on a miss, or when the entry was
    /// damaged (it is then removed).
    pub(super) fn open_checked(&self, key: &Key) -> Result<Option<(HexKey, File, std::fs::Metadata, Header)>> {
        let hk = key.hex();
        let Some((file, meta)) = self.open_entry_file(&hk)? else {
            return Ok(None);
        };
        match self.check_header(key, &file, &meta) {
            Ok(header) => Ok(Some((hk, file, meta, header))),
            Err(reason) => {
                self.discard_path(&hk, Some(&meta), reason);
                Ok(None)
            }
        }
    }

    /// Opens the entry for `key` for direct use of its file (a memory map, say), with its
    /// header checked but not its content: the caller checks the content its own way (the
    /// compiled-component cache authenticates it). Counts as a use for LRU. `None` on a miss.
    pub fn open_raw(&self, key: &Key) -> Result<Option<RawEntry>> {
        let Some((_, file, meta, header)) = self.open_checked(key)? else {
            return Ok(None);
        };
        self.touch(&file);
        Ok(Some(RawEntry { file, meta, header }))
    }

    /// Removes an entry opened with [`open_raw`](Self::open_raw) that its user found unusable,
    /// if it is still the same file, and logs why.
    pub fn discard_raw(&self, raw: &RawEntry, reason: &'static str) {
        self.discard_path(&raw.header.key.hex(), Some(&raw.meta), reason);
    }

    /// Removes a damaged entry if it is still the file that was checked, and logs it.
    pub(super) fn discard_path(&self, hk: &HexKey, checked: Option<&std::fs::Metadata>, reason: &'static str) {
        tracing::warn!(namespace = %self.inner.name, key = hk.as_str(), reason, "removing damaged cache entry");
        LAST_DISCARD.with(|d| d.set(Some(reason)));
        let (Some(dir), Ok(mut lk)) = (self.dir(), self.lock()) else {
            return;
        };
        let rel = hk.rel_path();
        let Ok(now) = dir.symlink_metadata(&rel) else { return };
        let same = match checked {
            Some(m) => now.dev() == m.dev() && now.ino() == m.ino(),
            None => now.file_type().is_symlink(),
        };
        if same
            && dir.remove_file_or_symlink(&rel).is_ok()
            && now.file_type().is_file()
            && let Some(used) = lk.used
        {
            let _ = lk.store_used(used.saturating_sub(charged(&now)));
        }
    }

    pub(super) fn corrupt(&self, hk: &HexKey, meta: &std::fs::Metadata, reason: &'static str) -> Error {
        self.discard_path(hk, Some(meta), reason);
        Error::Corrupt {
            key: hk.as_str().to_string(),
            reason,
        }
    }

    /// Marks an entry as just used, for LRU eviction. Best effort, and never in read-only mode.
    pub(super) fn touch(&self, file: &File) {
        if !self.inner.options.read_only {
            let _ = file.set_modified(now());
        }
    }

    /// The content stored under `key`, verified. A damaged entry is removed and answered as a
    /// miss; the returned error is then `None`, and the reason is logged.
    pub fn get(&self, key: &Key) -> Result<Option<Vec<u8>>> {
        let hk = key.hex();
        let Some((file, meta)) = self.open_entry_file(&hk)? else {
            return Ok(None);
        };
        match self.read_verified(key, &hk, &file, &meta)? {
            Ok(content) => {
                self.touch(&file);
                Ok(Some(content))
            }
            Err(reason) => {
                self.discard_path(&hk, Some(&meta), reason);
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
        // The entry's size was bounded when it was written (by the writer's limit, which the
        // reader's may be smaller than: it is still served whole; `open` streams it instead).
        let len = usize::try_from(content_len).map_err(|_| Error::TooLarge {
            limit: self.inner.options.max_entry_size,
        })?;
        let read_all = |buf: &mut Vec<u8>, want: usize, mut offset: u64| -> Result<()> {
            while buf.len() < want {
                let n = rustix::io::pread(file, rustix::buffer::spare_capacity(buf), offset)
                    .map_err(|e| Error::io(format!("cannot read entry {}", hk.as_str()), e.into()))?;
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
            let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
                return Ok(Err("unreadable header"));
            };
            let header = match check_header_bytes(key, head, meta.len()) {
                Ok(h) => h,
                Err(reason) => return Ok(Err(reason)),
            };
            if buf.len() < HEADER_LEN + len {
                return Ok(Err("truncated"));
            }
            if Checksum::of(&buf[HEADER_LEN..]) != header.crc {
                return Ok(Err("content checksum mismatch"));
            }
            buf.drain(..HEADER_LEN);
            return Ok(Ok(buf));
        }
        let header = match self.check_header(key, file, meta) {
            Ok(h) => h,
            Err(reason) => return Ok(Err(reason)),
        };
        let mut content = Vec::with_capacity(len);
        read_all(&mut content, len, HEADER_LEN as u64)?;
        if content.len() < len {
            return Ok(Err("truncated"));
        }
        if Checksum::of(&content) != header.crc {
            return Ok(Err("content checksum mismatch"));
        }
        Ok(Ok(content))
    }

    /// A reader over the content stored under `key`, or `None` on a miss.
    pub fn open(&self, key: &Key) -> Result<Option<FileReader>> {
        self.open_reader(key, true)
    }

    /// Opens a reader; `is_use` tells whether this counts as a use for LRU (`verify` does not).
    pub(super) fn open_reader(&self, key: &Key, is_use: bool) -> Result<Option<FileReader>> {
        let Some((hk, file, meta, header)) = self.open_checked(key)? else {
            return Ok(None);
        };
        if header.len == 0 && header.crc != Checksum::of(&[]) {
            self.discard_path(&hk, Some(&meta), "content checksum mismatch");
            return Ok(None);
        }
        if is_use {
            self.touch(&file);
        }
        Ok(Some(FileReader {
            ns: self.clone(),
            key: *key,
            file,
            meta,
            len: header.len,
            pos: 0,
            crc: Checksum::default(),
            expected: header.crc,
            failed: None,
        }))
    }

    /// Whether an entry is stored under `key`; its header is checked, its content is not.
    pub fn contains(&self, key: &Key) -> Result<bool> {
        Ok(self.open_checked(key)?.is_some())
    }
}

/// A verifying reader over one entry, from [`Namespace::open`]. Also an [`io::Read`].
pub struct FileReader {
    ns: Namespace,
    key: Key,
    file: File,
    meta: std::fs::Metadata,
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
        self.ns.corrupt(&self.key.hex(), &self.meta, reason)
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
            let n = self
                .file
                .read_at(&mut buf[got..want], HEADER_LEN as u64 + self.pos + got as u64)
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
