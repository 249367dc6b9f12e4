//! Reading whole entries: `get` (every block checked before the content is returned),
//! `contains`, raw access for a consumer that checks content its own way, and `verify`.
//! (Streamed reads are `reader`.)

use std::fs::File;
use std::io;

use super::Namespace;
use super::file::{
    CONTENT_MISMATCH, Lookup, RawEntry, SMALL_ENTRY, TABLE_MISMATCH, Unreadable, block_matches, check_blocks,
    check_header, check_header_bytes, read_error,
};
use super::reader::MAX_READ_CHUNK;
use crate::entry::{CRC_LEN, Checksum, HEADER_LEN, Layout};
use crate::key::HexKey;
use crate::sys;
use crate::{Error, Key, Result};

/// How much of a large entry is read before it is checked (about a core's L2 cache).
const CHECKED_CHUNK: usize = 256 << 10;
/// `get` reads an entry file of at most this many bytes (16 KiB of content, with its header and
/// block table) in one call.
const SMALL_FILE: usize = SMALL_ENTRY + HEADER_LEN + CRC_LEN;

impl Namespace {
    /// The content stored under `key`, verified. A damaged entry is removed and answered as a
    /// miss; the returned error is then `None`, and the reason is logged.
    pub fn get(&self, key: &Key) -> Result<Option<Vec<u8>>> {
        let found = self.lookup_content(key).map(Lookup::found);
        if let Ok(found) = &found {
            self.count_use(found.is_some());
        }
        found
    }

    fn lookup_content(&self, key: &Key) -> Result<Lookup<Vec<u8>>> {
        let hk = key.hex();
        self.lookup_file(&hk)?.then(|(file, meta)| {
            let content = self.read_verified(key, &hk, &file, &meta)?;
            if let Lookup::Found(_) = content {
                self.touch(&file, &meta);
            }
            Ok(content)
        })
    }

    /// Reads a whole entry and checks it (header against key and size, the block table against
    /// the header, every block of the content against the table): the content, or
    /// [`Lookup::Discarded`] when the entry is damaged (it is then removed).
    fn read_verified(&self, key: &Key, hk: &HexKey, file: &File, meta: &std::fs::Metadata) -> Result<Lookup<Vec<u8>>> {
        let damaged = |reason| Ok(self.discard(hk, Some((file, meta)), reason));
        let read_error = |e| read_error(hk, e);
        let file_len = meta.len();
        if file_len < HEADER_LEN as u64 {
            return damaged("shorter than a header");
        }
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
                return match check_header(key, file, meta) {
                    Ok(_) => damaged("truncated"),
                    Err(Unreadable::Damaged(reason)) => damaged(reason),
                    Err(Unreadable::Io(e)) => Err(read_error(e)),
                };
            }
            let layout = Layout::of_file_starting_with(&buf);
            let at = layout.header_start(file_len) as usize;
            let head = buf[at..at + HEADER_LEN].try_into().expect("HEADER_LEN bytes");
            let fh = match check_header_bytes(key, head, layout, file_len) {
                Ok(h) => h,
                Err(reason) => return damaged(reason),
            };
            if fh.header.len > limit {
                return Err(Error::TooLarge { limit });
            }
            let (start, len) = (layout.content_start() as usize, fh.header.len as usize);
            let (content, table) = buf[start..start + len + fh.table_len() as usize].split_at(len);
            if let Err(reason) = check_blocks(content, table, &fh) {
                return damaged(reason);
            }
            buf.truncate(start + len);
            buf.drain(..start);
            return Ok(Lookup::Found(buf));
        }
        let (fh, layout) = match check_header(key, file, meta) {
            Ok(found) => found,
            Err(Unreadable::Damaged(reason)) => return damaged(reason),
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
                    return damaged("truncated");
                }
            }
            let (content, table) = buf.split_at(len);
            if let Err(reason) = check_blocks(content, table, &fh) {
                return damaged(reason);
            }
            buf.truncate(len);
            return Ok(Lookup::Found(buf));
        }
        let mut table = vec![0u8; table_len];
        match sys::read_exact_at(file, &mut table, layout.table_start(fh.header.len)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return damaged("truncated"),
            Err(e) => return Err(read_error(e)),
        }
        if Checksum::of(&table) != fh.header.crc {
            return damaged(TABLE_MISMATCH);
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
                    return damaged(CONTENT_MISMATCH);
                }
                checked = end;
            }
        }
        if content.len() < len {
            return damaged("truncated");
        }
        Ok(Lookup::Found(content))
    }

    /// Whether an entry is stored under `key`; its header is checked, its content is not.
    pub fn contains(&self, key: &Key) -> Result<bool> {
        let found = self.is_stored(key)?;
        self.count_use(found);
        Ok(found)
    }

    /// Like [`contains`](Self::contains), but not counted as a use: for the host's own checks
    /// (the compiled cache counts its loads itself).
    pub fn is_stored(&self, key: &Key) -> Result<bool> {
        Ok(self.lookup_checked(key)?.found().is_some())
    }

    /// Opens the entry for `key` for direct use of its file (a memory map, say), with its
    /// header checked but not its content: the caller checks the content its own way (the
    /// compiled-component cache authenticates it). Counts as a use for LRU. `None` on a miss.
    pub fn open_raw(&self, key: &Key) -> Result<Option<RawEntry>> {
        let raw = self.lookup_checked(key)?.found();
        if let Some(raw) = &raw {
            self.touch(&raw.file, &raw.meta);
        }
        Ok(raw)
    }

    /// Removes an entry opened with [`open_raw`](Self::open_raw) that its user found unusable,
    /// if it is still the same file, and logs why.
    pub fn discard_raw(&self, raw: &RawEntry, reason: &'static str) {
        self.discard::<()>(&raw.key().hex(), raw.checked(), reason);
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
}
