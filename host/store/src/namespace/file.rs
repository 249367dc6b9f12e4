//! One entry file on disk: opening it (never through a symlink, never a FIFO or a hard link),
//! checking its header against the key and the file's size, what it is charged, and the answer
//! of a lookup ([`Lookup`]). The verbs (`get`, `reader`, `put`, `rm`, `walk`) work over this.

use std::fs::File;
use std::io;
use std::time::SystemTime;

use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::{Dir, OpenOptions};

use super::{Namespace, is_not_found, now};
use crate::entry::{CRC_LEN, Checksum, FileHeader, HEADER_LEN, Header, Layout};
use crate::error::IoContext;
use crate::key::HexKey;
use crate::sys;
use crate::{Error, Key, Result};

/// `get` reads an entry of at most this much content together with its header, in one call;
/// a reader reads a one-block entry of at most this much with its block table.
pub(super) const SMALL_ENTRY: usize = 16 << 10;
pub(super) const CONTENT_MISMATCH: &str = "content checksum mismatch";
pub(super) const TABLE_MISMATCH: &str = "block table checksum mismatch";

/// What looking an entry up found: it, nothing, or a damaged entry that was removed (and why).
/// A read path answers `Result<Lookup<T>>`: an error of the disk is the `Err`, and removes
/// nothing.
pub(super) enum Lookup<T> {
    Found(T),
    Missing,
    Discarded(&'static str),
}

impl<T> Lookup<T> {
    /// The entry, if there was a usable one.
    pub(super) fn found(self) -> Option<T> {
        match self {
            Lookup::Found(t) => Some(t),
            Lookup::Missing | Lookup::Discarded(_) => None,
        }
    }

    /// Goes on with what was found: `next` answers for it; a miss or a removed entry stays what
    /// it was.
    pub(super) fn then<U>(self, next: impl FnOnce(T) -> Result<Lookup<U>>) -> Result<Lookup<U>> {
        match self {
            Lookup::Found(t) => next(t),
            Lookup::Missing => Ok(Lookup::Missing),
            Lookup::Discarded(reason) => Ok(Lookup::Discarded(reason)),
        }
    }
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
    pub(super) fn from_read(e: io::Error) -> Unreadable {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Unreadable::Damaged("truncated")
        } else {
            Unreadable::Io(e)
        }
    }
}

/// An entry's open file, its header checked (see [`Namespace::open_raw`]). The content starts at
/// [`content_start`](Self::content_start) and is [`content_len`](Self::content_len) bytes long.
/// Entries are never rewritten in place (only replaced by rename), so the file's bytes do not
/// change under a reader.
#[derive(Debug)]
pub struct RawEntry {
    pub(super) file: File,
    pub(super) meta: std::fs::Metadata,
    pub(super) header: FileHeader,
    pub(super) layout: Layout,
}

impl RawEntry {
    /// The open entry file (header and content).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The length of the content.
    pub fn content_len(&self) -> u64 {
        self.header.header.len
    }

    /// Where the entry file keeps its header (see [`Layout`]).
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The offset of the content in the file: after the header, or 0 for a trailing header.
    pub fn content_start(&self) -> u64 {
        self.layout.content_start()
    }

    /// The file's metadata, as checked when it was opened.
    pub fn metadata(&self) -> &std::fs::Metadata {
        &self.meta
    }

    /// The key it was checked for (its header's).
    pub(super) fn key(&self) -> &Key {
        &self.header.header.key
    }

    /// The file, with its metadata, as `Namespace::discard` wants it.
    pub(super) fn checked(&self) -> Option<(&File, &std::fs::Metadata)> {
        Some((&self.file, &self.meta))
    }
}

impl Namespace {
    /// Opens the entry file for `key`, not yet checked: [`Lookup::Missing`] when there is none,
    /// [`Lookup::Discarded`] when it was not an acceptable file (and has been removed).
    pub(super) fn lookup_file(&self, hk: &HexKey) -> Result<Lookup<(File, std::fs::Metadata)>> {
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
                    return Ok(self.discard(hk, None, "a symlink, not an entry file"));
                }
                return Err(Error::io(format!("cannot open entry {}", hk.as_str()), e));
            }
        };
        let meta = file
            .metadata()
            .context(|| format!("cannot stat entry {}", hk.as_str()))?;
        if !meta.file_type().is_file() {
            return Ok(self.discard(hk, Some((&file, &meta)), "not a regular file"));
        }
        if sys::link_count(&file, &meta).context(|| format!("cannot stat entry {}", hk.as_str()))? > 1 {
            return Ok(self.discard(hk, Some((&file, &meta)), "a hard link (entries have exactly one name)"));
        }
        Ok(Lookup::Found((file, meta)))
    }

    /// Opens the entry for `key` and checks its header (not its content).
    pub(super) fn lookup_checked(&self, key: &Key) -> Result<Lookup<RawEntry>> {
        let hk = key.hex();
        self.lookup_file(&hk)?
            .then(|(file, meta)| match check_header(key, &file, &meta) {
                Ok((header, layout)) => Ok(Lookup::Found(RawEntry {
                    file,
                    meta,
                    header,
                    layout,
                })),
                Err(Unreadable::Damaged(reason)) => Ok(self.discard(&hk, Some((&file, &meta)), reason)),
                Err(Unreadable::Io(e)) => Err(read_error(&hk, e)),
            })
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
}

/// The error for a read of entry `hk` that the disk failed.
pub(super) fn read_error(hk: &HexKey, e: io::Error) -> Error {
    Error::io(format!("cannot read entry {}", hk.as_str()), e)
}

/// Reads and checks the header of an open entry file against its key and size: the header, and
/// where the file keeps it. An error of the disk is [`Unreadable::Io`], never damage: it proves
/// nothing about the entry (issue 28: a transient `EIO` removed good entries).
pub(super) fn check_header(
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

/// Checks the header bytes of an entry file of `file_len` bytes and layout `layout` against the
/// key it is read for.
pub(super) fn check_header_bytes(
    key: &Key,
    b: &[u8; HEADER_LEN],
    layout: Layout,
    file_len: u64,
) -> std::result::Result<FileHeader, &'static str> {
    let fh = Header::decode_as(b, layout).map_err(|e| e.describe())?;
    if fh.header.key != *key {
        return Err("written under another key");
    }
    if fh.file_len() != Some(file_len) {
        return Err("length does not match the file's size");
    }
    Ok(fh)
}

/// Checks `content` against its block `table`, and the table against the header.
pub(super) fn check_blocks(content: &[u8], table: &[u8], fh: &FileHeader) -> std::result::Result<(), &'static str> {
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
pub(super) fn block_matches(block: &[u8], table: &[u8], i: usize) -> bool {
    table
        .get(i * CRC_LEN..(i + 1) * CRC_LEN)
        .is_some_and(|crc| u32::from_le_bytes(crc.try_into().expect("4 bytes")) == Checksum::of(block))
}

/// What an entry file counts against the quota.
pub(super) fn charged(meta: &cap_std::fs::Metadata) -> u64 {
    crate::entry::charge_for_file(meta.len())
}

/// What the entry file at `rel` counts against the quota; 0 when there is none.
pub(super) fn charged_at(dir: &Dir, rel: &str) -> u64 {
    match dir.symlink_metadata(rel) {
        Ok(m) if m.file_type().is_file() => charged(&m),
        _ => 0,
    }
}
