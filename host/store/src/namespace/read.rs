//! The read path: finding an entry file, checking its header, serving its content verified, and removing what fails.

use super::*;
use crate::entry::{CRC_LEN, FileHeader, block_count, table_len};

/// An entry file opened with its header checked: its name, the open file, its metadata, the
/// header, and where the file keeps it.
pub(super) type CheckedEntry = (HexKey, File, std::fs::Metadata, (FileHeader, Layout));

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
    /// and where the file keeps it. An error of the disk is [`Unreadable::Io`], never damage: it
    /// proves nothing about the entry (issue 28: a transient `EIO` removed good entries).
    pub(super) fn check_header(
        &self,
        key: &Key,
        file: &File,
        meta: &std::fs::Metadata,
    ) -> std::result::Result<(FileHeader, Layout), Unreadable> {
        let file_len = meta.len();
        if file_len < HEADER_LEN as u64 {
            return Err(Unreadable::Damaged("shorter than a header"));
        }
        let mut b = [0u8; HEADER_LEN];
        sys::read_exact_at(file, &mut b, 0).map_err(Unreadable::from_read)?;
        let layout = Layout::of_file_starting_with(&b);
        if layout == Layout::Trailing {
            sys::read_exact_at(file, &mut b, layout.header_start(file_len)).map_err(Unreadable::from_read)?;
        }
        let fh = check_header_bytes(key, &b, layout, file_len).map_err(Unreadable::Damaged)?;
        Ok((fh, layout))
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
            Err(Unreadable::Damaged(reason)) => Ok(self.discard_path(&hk, Some((&file, &meta)), reason)),
            Err(Unreadable::Io(e)) => Err(Error::io(format!("cannot read entry {}", hk.as_str()), e)),
        }
    }

    /// Opens the entry for `key` for direct use of its file (a memory map, say), with its
    /// header checked but not its content: the caller checks the content its own way (the
    /// compiled-component cache authenticates it). Counts as a use for LRU. `None` on a miss.
    pub fn open_raw(&self, key: &Key) -> Result<Option<RawEntry>> {
        let Some((_, file, meta, (fh, layout))) = self.open_checked(key)? else {
            return Ok(None);
        };
        self.touch(&file, &meta);
        Ok(Some(RawEntry {
            file,
            meta,
            header: fh.header,
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
            let _ = lk.store_used(used.saturating_sub(entry_charged(&now)));
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

    /// Reads a whole entry and checks it (header against key and size, the block table against
    /// the header, every block of the content against the table): the content, or why the entry
    /// is damaged.
    pub(super) fn read_verified(
        &self,
        key: &Key,
        hk: &HexKey,
        file: &File,
        meta: &std::fs::Metadata,
    ) -> Result<std::result::Result<Vec<u8>, &'static str>> {
        let file_len = meta.len();
        if file_len < HEADER_LEN as u64 {
            return Ok(Err("shorter than a header"));
        }
        let read_error = |e| Error::io(format!("cannot read entry {}", hk.as_str()), e);
        // The buffer is sized from the header, checked against the file's size, which another
        // host (with a larger limit) or a damaged disk may have made any size: never allocate past
        // this namespace's limit. Such an entry is not damaged; it is too large to be read whole
        // here (`open` streams it).
        let limit = self.inner.options.max_entry_size;
        if file_len <= SMALL_FILE as u64 {
            // Header, content and block table in one read; moving the content down is cheaper
            // than more system calls at this size.
            let want = file_len as usize;
            let mut buf = Vec::with_capacity(want);
            while buf.len() < want {
                let at = buf.len() as u64;
                let n = sys::read_spare(file, &mut buf, at).map_err(read_error)?;
                if n == 0 {
                    break;
                }
            }
            if buf.len() < want {
                // Shorter than its size said: a damaged header says so first.
                return match self.check_header(key, file, meta) {
                    Ok(_) => Ok(Err("truncated")),
                    Err(Unreadable::Damaged(reason)) => Ok(Err(reason)),
                    Err(Unreadable::Io(e)) => Err(read_error(e)),
                };
            }
            let layout = Layout::of_file_starting_with(&buf);
            let at = layout.header_start(file_len) as usize;
            let head = buf[at..at + HEADER_LEN].try_into().expect("HEADER_LEN bytes");
            let fh = match check_header_bytes(key, head, layout, file_len) {
                Ok(h) => h,
                Err(reason) => return Ok(Err(reason)),
            };
            if fh.header.len > limit {
                return Err(Error::TooLarge { limit });
            }
            let (start, len) = (layout.content_start() as usize, fh.header.len as usize);
            let (content, table) = buf[start..start + len + fh.table_len() as usize].split_at(len);
            if let Err(reason) = check_blocks(content, table, &fh) {
                return Ok(Err(reason));
            }
            buf.truncate(start + len);
            buf.drain(..start);
            return Ok(Ok(buf));
        }
        let (fh, layout) = match self.check_header(key, file, meta) {
            Ok(found) => found,
            Err(Unreadable::Damaged(reason)) => return Ok(Err(reason)),
            Err(Unreadable::Io(e)) => return Err(read_error(e)),
        };
        let len = match usize::try_from(fh.header.len) {
            Ok(len) if fh.header.len <= limit => len,
            _ => return Err(Error::TooLarge { limit }),
        };
        let table_len = fh.table_len() as usize;
        if len + table_len <= CHECKED_CHUNK {
            // Content and block table in one read (they are adjacent), checked once read, while
            // still in the CPU's cache: one system call fewer than reading the table first.
            let want = len + table_len;
            let mut buf = Vec::with_capacity(want);
            while buf.len() < want {
                let at = layout.content_start() + buf.len() as u64;
                let n = sys::read_spare(file, &mut buf, at).map_err(read_error)?;
                if n == 0 {
                    return Ok(Err("truncated"));
                }
            }
            let (content, table) = buf.split_at(len);
            if let Err(reason) = check_blocks(content, table, &fh) {
                return Ok(Err(reason));
            }
            buf.truncate(len);
            return Ok(Ok(buf));
        }
        let mut table = vec![0u8; table_len];
        match sys::read_exact_at(file, &mut table, layout.table_start(fh.header.len)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Err("truncated")),
            Err(e) => return Err(read_error(e)),
        }
        if Checksum::of(&table) != fh.header.crc {
            return Ok(Err(TABLE_MISMATCH));
        }
        // Each block is checked as soon as it is read, while it is still in the CPU's cache (a
        // second pass over the whole content after the kernel's copy costs as much again).
        let block = fh.block_len() as usize;
        let chunk = block * (CHECKED_CHUNK / block).max(1);
        let mut content = Vec::with_capacity(len);
        let mut checked = 0;
        while content.len() < len {
            let start = content.len();
            let n = sys::read_spare_upto(file, &mut content, layout.content_start() + start as u64, chunk)
                .map_err(read_error)?;
            if n == 0 {
                break;
            }
            while checked < content.len() && (content.len() - checked >= block || content.len() == len) {
                let end = (checked + block).min(content.len());
                if !block_matches(&content[checked..end], &table, checked / block) {
                    return Ok(Err(CONTENT_MISMATCH));
                }
                checked = end;
            }
        }
        if content.len() < len {
            return Ok(Err("truncated"));
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
    /// The header and the whole block table are checked before the reader is returned.
    pub(super) fn lookup_reader(&self, key: &Key, is_use: bool) -> Result<Lookup<FileReader>> {
        let (hk, file, meta, (fh, layout)) = match self.lookup_checked(key)? {
            Lookup::Found(found) => found,
            Lookup::Missing => return Ok(Lookup::Missing),
            Lookup::Discarded(reason) => return Ok(Lookup::Discarded(reason)),
        };
        let mut reader = FileReader {
            ns: self.for_operation(),
            key: *key,
            file,
            meta,
            start: layout.content_start(),
            table_start: layout.table_start(fh.header.len),
            len: fh.header.len,
            shift: fh.block_shift,
            block: Vec::new(),
            block_at: 0,
            served: 0,
            crcs: Vec::new(),
            crcs_from: 0,
            first: None,
            failed: None,
        };
        match reader.check_table(fh.header.crc) {
            Ok(()) => {}
            Err(Unreadable::Damaged(reason)) => {
                return Ok(self.discard_path(&hk, Some((&reader.file, &reader.meta)), reason));
            }
            Err(Unreadable::Io(e)) => return Err(Error::io(format!("cannot read entry {}", hk.as_str()), e)),
        }
        if is_use {
            self.touch(&reader.file, &reader.meta);
        }
        Ok(Lookup::Found(reader))
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

const CONTENT_MISMATCH: &str = "content checksum mismatch";
const TABLE_MISMATCH: &str = "block table checksum mismatch";
/// How much of the block table a reader holds at a time: the CRCs of 1,024 blocks (64 MiB of
/// content at 64 KiB blocks).
const TABLE_WINDOW: usize = 4096;
/// `get` reads an entry file of at most this many bytes (16 KiB of content, with its header and
/// block table) in one call.
const SMALL_FILE: usize = SMALL_ENTRY + HEADER_LEN + CRC_LEN;

/// Checks `content` against its block `table`, and the table against the header.
fn check_blocks(content: &[u8], table: &[u8], fh: &FileHeader) -> std::result::Result<(), &'static str> {
    if Checksum::of(table) != fh.header.crc {
        return Err(TABLE_MISMATCH);
    }
    let block = fh.block_len() as usize;
    match content
        .chunks(block)
        .enumerate()
        .all(|(i, b)| block_matches(b, table, i))
    {
        true => Ok(()),
        false => Err(CONTENT_MISMATCH),
    }
}

/// Whether block `i`, `block`, matches its CRC in `table`.
fn block_matches(block: &[u8], table: &[u8], i: usize) -> bool {
    table
        .get(i * CRC_LEN..(i + 1) * CRC_LEN)
        .is_some_and(|crc| u32::from_le_bytes(crc.try_into().expect("4 bytes")) == Checksum::of(block))
}

/// Why part of an entry (its header, its block table) could not be used: proven damage, which
/// removes the entry, or an error of the disk, which is reported and removes nothing.
pub(super) enum Unreadable {
    Damaged(&'static str),
    Io(io::Error),
}

impl Unreadable {
    /// A failed read of bytes the file's size says are there: an end of file that comes early is
    /// damage (entries are never rewritten in place); any other error is the disk's.
    fn from_read(e: io::Error) -> Unreadable {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Unreadable::Damaged("truncated")
        } else {
            Unreadable::Io(e)
        }
    }
}

/// A verifying reader over one entry, from [`Namespace::open`]. Also an [`io::Read`].
///
/// The entry's header and block table are checked when it is opened. Each block of the content
/// (64 KiB) is read whole and checked against its CRC32C before any byte of it is returned: a
/// block that does not match ends the read with [`Error::Corrupt`] (and the entry is removed),
/// and none of its bytes is ever returned, so every byte a reader returns is a byte that was
/// written. A reader holds at most one block (a partly returned one, or the only block of a small
/// entry, read at open with its table and checked by the first read) and a 4 KiB window of the
/// block table, whatever the entry's size.
pub struct FileReader {
    ns: Namespace,
    key: Key,
    file: File,
    meta: std::fs::Metadata,
    /// Where the content starts in the file.
    start: u64,
    /// Where the block table starts in the file.
    table_start: u64,
    len: u64,
    /// The block size, as its base-2 logarithm.
    shift: u8,
    /// The checked block being returned (empty when blocks go straight to the caller), at
    /// `block_at` in the content, of which `served` bytes have been returned.
    block: Vec<u8>,
    block_at: u64,
    served: usize,
    /// A window of the block table: the CRCs of the blocks from `crcs_from`.
    crcs: Vec<u8>,
    crcs_from: u64,
    /// The content of a small entry of one block (at most 16 KiB), read at open together with
    /// its table (they are adjacent: one system call instead of two), not yet checked: it is checked against its CRC
    /// by the first read, before any byte of it is returned.
    first: Option<Vec<u8>>,
    failed: Option<&'static str>,
}

impl FileReader {
    /// The content's length in bytes.
    pub fn size(&self) -> u64 {
        self.len
    }

    /// How many bytes of content have been returned.
    fn pos(&self) -> u64 {
        self.block_at + self.served as u64
    }

    fn fail(&mut self, reason: &'static str) -> Error {
        self.failed = Some(reason);
        self.ns.corrupt(&self.key.hex(), &self.file, &self.meta, reason)
    }

    /// Reads the whole block table a window at a time, checks it against the header's CRC
    /// (`expected`), and keeps its first window.
    fn check_table(&mut self, expected: u32) -> std::result::Result<(), Unreadable> {
        let table_len = table_len(self.len, self.shift);
        if self.len > 0 && self.len <= (1u64 << self.shift).min(SMALL_ENTRY as u64) {
            // A small entry of one block: the content and its CRC in one read (larger, the copy
            // out of the reader would cost more than the system call it saves).
            let mut both = vec![0u8; (self.len + table_len) as usize];
            sys::read_exact_at(&self.file, &mut both, self.start).map_err(Unreadable::from_read)?;
            let table = both.split_off(self.len as usize);
            if Checksum::of(&table) != expected {
                return Err(Unreadable::Damaged(TABLE_MISMATCH));
            }
            self.crcs = table;
            self.crcs_from = 0;
            self.first = Some(both);
            return Ok(());
        }
        let read = |buf: &mut [u8], at: u64| {
            sys::read_exact_at(&self.file, buf, self.table_start + at).map_err(Unreadable::from_read)
        };
        let mut first = vec![0u8; table_len.min(TABLE_WINDOW as u64) as usize];
        read(&mut first, 0)?;
        let mut crc = Checksum::default();
        crc.update(&first);
        let mut at = first.len() as u64;
        let mut rest = Vec::new();
        while at < table_len {
            rest.resize((table_len - at).min(TABLE_WINDOW as u64) as usize, 0);
            read(&mut rest, at)?;
            crc.update(&rest);
            at += rest.len() as u64;
        }
        if crc.value() != expected {
            return Err(Unreadable::Damaged(TABLE_MISMATCH));
        }
        self.crcs = first;
        self.crcs_from = 0;
        Ok(())
    }

    /// The CRC of block `index`, from the table window (read again where it does not hold it).
    fn crc_of(&mut self, index: u64) -> Result<u32> {
        let held = (self.crcs.len() / CRC_LEN) as u64;
        if index < self.crcs_from || index >= self.crcs_from + held {
            let blocks = block_count(self.len, self.shift);
            let n = blocks.saturating_sub(index).min((TABLE_WINDOW / CRC_LEN) as u64) as usize;
            self.crcs.resize(n * CRC_LEN, 0);
            self.crcs_from = index;
            if let Err(e) = sys::read_exact_at(&self.file, &mut self.crcs, self.table_start + index * CRC_LEN as u64) {
                self.crcs.clear();
                return Err(self.read_failed(e));
            }
        }
        let i = (index - self.crcs_from) as usize * CRC_LEN;
        match self.crcs.get(i..i + CRC_LEN) {
            Some(crc) => Ok(u32::from_le_bytes(crc.try_into().expect("4 bytes"))),
            None => Err(self.fail("truncated")),
        }
    }

    fn read_failed(&mut self, e: io::Error) -> Error {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            self.fail("truncated")
        } else {
            Error::io(format!("cannot read entry {}", self.key), e)
        }
    }

    /// Reads the whole blocks of content at `at` (a block boundary) into `dst`, and checks each
    /// against its CRC. On failure `dst` is zeroed: nothing unchecked is left in it.
    fn read_blocks(&mut self, at: u64, dst: &mut [u8]) -> Result<()> {
        if let Err(e) = sys::read_exact_at(&self.file, dst, self.start + at) {
            dst.fill(0);
            return Err(self.read_failed(e));
        }
        let block_len = 1usize << self.shift;
        let first = at >> self.shift;
        let mut result = Ok(());
        for (i, block) in dst.chunks(block_len).enumerate() {
            match self.crc_of(first + i as u64) {
                Ok(crc) if crc == Checksum::of(block) => {}
                Ok(_) => {
                    result = Err(self.fail(CONTENT_MISMATCH));
                    break;
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_err() {
            dst.fill(0);
        }
        result
    }

    /// Reads into `buf`, returning how many bytes: as many as it holds, fewer only at the end of
    /// the content; 0 at the end. Every byte returned is from a block that was checked whole
    /// against its CRC before any byte of it was returned; a block that fails ends the read with
    /// [`Error::Corrupt`] (and every later call answers the same).
    pub fn read_into(&mut self, buf: &mut [u8]) -> Result<usize> {
        if let Some(reason) = self.failed {
            return Err(Error::Corrupt {
                key: self.key.to_string(),
                reason,
            });
        }
        let want = (buf.len() as u64).min(self.len - self.pos()) as usize;
        let block_len = 1usize << self.shift;
        let mut got = 0;
        while got < want {
            if self.served < self.block.len() {
                let n = (self.block.len() - self.served).min(want - got);
                buf[got..got + n].copy_from_slice(&self.block[self.served..self.served + n]);
                self.served += n;
                got += n;
                continue;
            }
            if let Some(mut first) = self.first.take() {
                // The one block, read at open: checked before any byte of it is returned.
                if Checksum::of(&first) != self.crc_of(0)? {
                    first.fill(0);
                    return Err(self.fail(CONTENT_MISMATCH));
                }
                self.block = first;
                self.block_at = 0;
                self.served = 0;
                continue;
            }
            let next = self.pos();
            let left = self.len - next;
            let room = (want - got) as u64;
            if room >= left.min(block_len as u64) {
                // Whole blocks, straight into the caller's buffer (no copy).
                let n = if room >= left {
                    left
                } else {
                    room >> self.shift << self.shift
                } as usize;
                self.read_blocks(next, &mut buf[got..got + n])?;
                self.block.clear();
                self.block_at = next + n as u64;
                self.served = 0;
                got += n;
                continue;
            }
            // Part of a block: it is read whole into the reader, checked, and returned from there.
            let mut block = std::mem::take(&mut self.block);
            block.resize(left.min(block_len as u64) as usize, 0);
            let read = self.read_blocks(next, &mut block);
            self.block = block;
            if let Err(e) = read {
                self.block.clear();
                return Err(e);
            }
            self.block_at = next;
            self.served = 0;
        }
        Ok(got)
    }

    /// Reads at most `max` bytes (never more than 1 MiB); an empty vector at the end.
    pub fn read_chunk(&mut self, max: usize) -> Result<Vec<u8>> {
        let want = (max.min(MAX_READ_CHUNK) as u64).min(self.len - self.pos()) as usize;
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
