//! One namespace: a directory of entries, fanned out by the key's first byte.
//!
//! ```text
//! <namespace>/
//!   state          usage counter (bytes of content), and the lock that serialises publishing
//!   counters       hits, misses and other events, for `filecache stats`
//!   tmp/           entries being written, each locked by its writer while it lives
//!   00/ … ff/      entries, named by their key in hex
//! ```
//!
//! Publishing (rename into place), deleting, evicting and removing a corrupt entry all happen
//! under the namespace lock (an in-process mutex plus an `flock` on `state`, so other processes
//! are excluded too); reads take no lock. The usage counter is updated before the rename, so a
//! crash can only make it overestimate; any scan of the namespace recomputes it exactly.
//! Recency is the entry file's modification time, set on add and on every hit.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cap_fs_ext::{DirExt, FollowSymlinks, MetadataExt, OpenOptionsFollowExt};
use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt};

use super::counters::{self, COUNTERS_FILE, Counter, Counts};
use super::{Durability, EntryReader, EntryWriter, NamespaceOptions, Store};
use crate::entry::{Checksum, HEADER_LEN, Header};
use crate::error::IoContext;
use crate::fault::{self, Point};
use crate::key::HexKey;
use crate::{Error, Key, Result};

/// The most a single read returns, whatever the caller asks for.
pub const MAX_READ_CHUNK: usize = 1 << 20;
const STATE_FILE: &str = "state";
const STATE_MAGIC: [u8; 8] = *b"FCUSAGE1";
const TMP_DIR: &str = "tmp";
/// How many eviction candidates one scan keeps (the oldest entries).
const CANDIDATES_PER_SCAN: usize = 8192;
const WRITE_BUFFER: usize = 64 << 10;
/// `get` reads an entry of at most this much content together with its header, in one call.
const SMALL_ENTRY: usize = 16 << 10;
#[cfg(any(target_os = "linux", target_os = "android"))]
const NOATIME: rustix::fs::OFlags = rustix::fs::OFlags::NOATIME;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const NOATIME: rustix::fs::OFlags = rustix::fs::OFlags::empty();

/// A namespace of the cache. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct Namespace {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Namespace")
            .field("name", &self.inner.name)
            .field("options", &self.inner.options)
            .finish()
    }
}

struct Inner {
    name: String,
    /// `None` only for a read-only namespace that does not exist on disk: every key misses.
    dir: Option<Dir>,
    /// `None` when read-only.
    writable: Option<Writable>,
    options: NamespaceOptions,
    /// How many temporary files of dead writers opening the namespace reclaimed.
    reclaimed_at_open: AtomicU64,
}

struct Writable {
    tmp: Dir,
    state: Mutex<File>,
    /// The oldest entries seen by the last scan, oldest first.
    candidates: Mutex<Candidates>,
}

#[derive(Default)]
struct Candidates {
    queue: VecDeque<EntryInfo>,
    /// Whether the scan that filled `queue` saw more entries than it kept.
    truncated: bool,
}

/// What a scan learns about one entry file.
#[derive(Debug, Clone)]
pub struct EntryInfo {
    /// The entry's key.
    pub key: Key,
    /// Bytes of content (what the entry counts against the quota).
    pub size: u64,
    /// Last use (add or hit).
    pub mtime: SystemTime,
}

/// An entry's open file, its header checked (see [`Namespace::open_raw`]). The content starts at
/// [`HEADER_LEN`] and is [`content_len`](Self::content_len) bytes long. Entries are never
/// rewritten in place (only replaced by rename), so the file's bytes do not change under a reader.
#[derive(Debug)]
pub struct RawEntry {
    file: File,
    meta: std::fs::Metadata,
    header: Header,
}

impl RawEntry {
    /// The open entry file (header and content).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The length of the content, after the header.
    pub fn content_len(&self) -> u64 {
        self.header.len
    }

    /// The file's metadata, as checked when it was opened.
    pub fn metadata(&self) -> &std::fs::Metadata {
        &self.meta
    }
}

/// The result of walking a namespace.
pub(crate) struct Scan {
    pub(crate) used: u64,
    pub(crate) entries: u64,
    /// The oldest entries, oldest first, at most the limit asked for.
    pub(crate) oldest: Vec<EntryInfo>,
    pub(crate) truncated: bool,
}

/// A strictly increasing wall clock for recency: two uses in one process never tie.
fn now() -> SystemTime {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let mut prev = LAST.load(Ordering::Relaxed);
    loop {
        let next = wall.max(prev + 1);
        match LAST.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return UNIX_EPOCH + Duration::from_nanos(next),
            Err(p) => prev = p,
        }
    }
}

fn mtime_of(meta: &cap_std::fs::Metadata) -> Option<SystemTime> {
    meta.modified().ok().map(|t| t.into_std())
}

/// What an entry file counts against the quota: its content (the header is not counted, so an
/// entry of exactly the quota fits, as a plugin would expect).
fn charged(meta: &cap_std::fs::Metadata) -> u64 {
    meta.len().saturating_sub(HEADER_LEN as u64)
}

/// What the entry file at `rel` counts against the quota; 0 when there is none.
fn charged_at(dir: &Dir, rel: &str) -> u64 {
    match dir.symlink_metadata(rel) {
        Ok(m) if m.file_type().is_file() => charged(&m),
        _ => 0,
    }
}

impl EntryInfo {
    /// Whether the entry file at `rel` is still the one this describes (same time and size):
    /// not used, replaced or removed since.
    fn is_unchanged(&self, dir: &Dir, rel: &str) -> bool {
        matches!(dir.symlink_metadata(rel),
            Ok(m) if m.file_type().is_file() && mtime_of(&m) == Some(self.mtime) && charged(&m) == self.size)
    }
}

/// Read-write, created owner-only if missing, never through a symlink: the namespace's own files.
fn private_rw_options() -> OpenOptions {
    let mut oo = OpenOptions::new();
    oo.read(true)
        .write(true)
        .create(true)
        .follow(FollowSymlinks::No)
        .mode(0o600);
    oo
}

fn is_not_found(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

/// Checks the header bytes of an entry file of `file_len` bytes against the key it is read for.
fn check_header_bytes(key: &Key, b: &[u8; HEADER_LEN], file_len: u64) -> std::result::Result<Header, &'static str> {
    let header = Header::decode(b).map_err(|e| e.describe())?;
    if header.key != *key {
        return Err("written under another key");
    }
    if Some(header.len) != file_len.checked_sub(HEADER_LEN as u64) {
        return Err("length does not match the file's size");
    }
    Ok(header)
}

fn random_suffix() -> u64 {
    let mut b = [0u8; 8];
    // A failure of the OS RNG only weakens uniqueness, which O_EXCL still guarantees.
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b) ^ (now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64)
}

thread_local! {
    /// Why the last entry this thread found damaged was refused (see `verify_entry`).
    static LAST_DISCARD: std::cell::Cell<Option<&'static str>> = const { std::cell::Cell::new(None) };
}

/// The namespace lock, with the usage counter read under it.
struct Locked<'a> {
    file: MutexGuard<'a, File>,
    used: Option<u64>,
}

impl Locked<'_> {
    fn store_used(&mut self, used: u64) -> Result<()> {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&STATE_MAGIC);
        b[8..].copy_from_slice(&used.to_le_bytes());
        fault::check(Point::UpdateCounter)
            .and_then(|()| self.file.write_all_at(&b, 0))
            .context(|| "cannot update the namespace's usage counter".into())?;
        self.used = Some(used);
        Ok(())
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

impl Namespace {
    /// Opens a namespace directly on its directory handle (see also
    /// [`FileCache::namespace`](super::FileCache::namespace), which checks the name and creates
    /// the directory). Reclaims temporary files left by writers that died.
    pub fn open_dir(dir: Dir, options: NamespaceOptions) -> Result<Namespace> {
        Namespace::with_dir(String::from("(directory)"), Some(dir), options)
    }

    pub(super) fn with_dir(name: String, dir: Option<Dir>, options: NamespaceOptions) -> Result<Namespace> {
        let writable = match (&dir, options.read_only) {
            (Some(dir), false) => Some(Writable::open(&name, dir)?),
            _ => None,
        };
        let ns = Namespace {
            inner: Arc::new(Inner {
                name,
                dir,
                writable,
                options,
                reclaimed_at_open: AtomicU64::new(0),
            }),
        };
        let reclaimed = ns.reclaim_temporary_files()?;
        ns.inner.reclaimed_at_open.store(reclaimed, Ordering::Relaxed);
        Ok(ns)
    }

    /// How many temporary files of dead writers were reclaimed when this handle was opened.
    pub(crate) fn reclaimed_at_open(&self) -> u64 {
        self.inner.reclaimed_at_open.load(Ordering::Relaxed)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The options it was opened with.
    pub fn options(&self) -> &NamespaceOptions {
        &self.inner.options
    }

    fn writable(&self) -> Result<&Writable> {
        self.inner.writable.as_ref().ok_or(Error::ReadOnly)
    }

    fn dir(&self) -> Option<&Dir> {
        self.inner.dir.as_ref()
    }

    /// Removes temporary files whose writer is gone (not holding its lock). Returns how many.
    pub fn reclaim_temporary_files(&self) -> Result<u64> {
        let Some(w) = &self.inner.writable else { return Ok(0) };
        let mut removed = 0;
        for entry in w.tmp.entries().context(|| "cannot list temporary files".into())? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name();
            let mut oo = OpenOptions::new();
            oo.read(true)
                .follow(FollowSymlinks::No)
                .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32);
            match w.tmp.open_with(&name, &oo) {
                Ok(f) => {
                    let f = f.into_std();
                    // A live writer holds the lock for as long as its file exists.
                    if f.try_lock().is_ok() && w.tmp.remove_file(&name).is_ok() {
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

    fn lock(&self) -> Result<Locked<'_>> {
        let w = self.writable()?;
        let file = w.state.lock().unwrap_or_else(|p| p.into_inner());
        fault::check(Point::LockNamespace)
            .and_then(|()| file.lock())
            .context(|| format!("cannot lock namespace {:?}", self.inner.name))?;
        let mut b = [0u8; 16];
        let used = match file.read_at(&mut b, 0) {
            Ok(16) if b[..8] == STATE_MAGIC => Some(u64::from_le_bytes(b[8..].try_into().expect("8 bytes"))),
            _ => None,
        };
        Ok(Locked { file, used })
    }

    /// Adds to this namespace's event counters on disk (see [`Counter`]), under the namespace
    /// lock so that processes add up exactly. A read-only namespace counts nothing.
    pub fn count(&self, deltas: &[(Counter, u64)]) -> Result<()> {
        let (Some(dir), Some(_)) = (self.dir(), &self.inner.writable) else {
            return Ok(());
        };
        let _lk = self.lock()?;
        let ctx = || format!("cannot update the counters of namespace {:?}", self.inner.name);
        let file = dir
            .open_with(COUNTERS_FILE, &private_rw_options())
            .context(ctx)?
            .into_std();
        counters::add(&file, deltas).context(ctx)
    }

    /// This namespace's event counters as last written (zeros when there are none).
    pub fn counts(&self) -> Counts {
        let mut oo = OpenOptions::new();
        oo.read(true).follow(FollowSymlinks::No);
        match self.dir().map(|d| d.open_with(COUNTERS_FILE, &oo)) {
            Some(Ok(file)) => counters::counts(&file.into_std()),
            _ => Counts::default(),
        }
    }

    /// Opens the entry file for `key`: `None` when there is none (or it was not an acceptable
    /// file and has been removed).
    fn open_entry_file(&self, hk: &HexKey) -> Result<Option<(File, std::fs::Metadata)>> {
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
    fn check_header(
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
    fn open_checked(&self, key: &Key) -> Result<Option<(HexKey, File, std::fs::Metadata, Header)>> {
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
    fn discard_path(&self, hk: &HexKey, checked: Option<&std::fs::Metadata>, reason: &'static str) {
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

    fn corrupt(&self, hk: &HexKey, meta: &std::fs::Metadata, reason: &'static str) -> Error {
        self.discard_path(hk, Some(meta), reason);
        Error::Corrupt {
            key: hk.as_str().to_string(),
            reason,
        }
    }

    /// Marks an entry as just used, for LRU eviction. Best effort, and never in read-only mode.
    fn touch(&self, file: &File) {
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
    fn read_verified(
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
    fn open_reader(&self, key: &Key, is_use: bool) -> Result<Option<FileReader>> {
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

    /// Stores `content` under `key`, atomically.
    pub fn add(&self, key: &Key, content: &[u8]) -> Result<()> {
        self.writable()?;
        if let Some(e) = self.limit_error(content.len() as u64) {
            return Err(e);
        }
        let mut w = self.create(key)?;
        w.write(content)?;
        w.commit()
    }

    /// The error for an entry of `len` bytes of content, if it breaks a limit.
    fn limit_error(&self, len: u64) -> Option<Error> {
        let opts = &self.inner.options;
        if len > opts.max_entry_size {
            Some(Error::TooLarge {
                limit: opts.max_entry_size,
            })
        } else if len > opts.quota {
            Some(Error::QuotaExceeded {
                needed: len,
                quota: opts.quota,
            })
        } else {
            None
        }
    }

    /// Starts streaming a new entry for `key`.
    pub fn create(&self, key: &Key) -> Result<FileWriter> {
        let w = self.writable()?;
        let hk = key.hex();
        let mut oo = OpenOptions::new();
        oo.write(true).create_new(true).follow(FollowSymlinks::No).mode(0o600);
        loop {
            let name = format!("{}.{}.{:016x}.tmp", hk.as_str(), std::process::id(), random_suffix());
            let file = fault::check(Point::CreateTemp)
                .and_then(|()| w.tmp.open_with(&name, &oo))
                .context(|| format!("cannot create a temporary file in namespace {:?}", self.inner.name))?
                .into_std();
            if let Err(e) = fault::check(Point::LockTemp).and_then(|()| file.lock()) {
                let _ = w.tmp.remove_file(&name);
                return Err(Error::io("cannot lock a temporary file", e));
            }
            // A reclaimer may have taken the file in the instant before we locked it.
            if file.metadata().map(|m| m.nlink() == 0).unwrap_or(true) {
                continue;
            }
            let mut out = BufWriter::with_capacity(WRITE_BUFFER, TmpFile(file));
            if let Err(e) = out.write_all(&[0u8; HEADER_LEN]) {
                drop(out);
                let _ = w.tmp.remove_file(&name);
                return Err(Error::io("cannot write a temporary file", e));
            }
            return Ok(FileWriter {
                ns: self.clone(),
                key: *key,
                tmp_name: Some(name),
                out: Some(out),
                len: 0,
                crc: Checksum::default(),
                failed: None,
            });
        }
    }

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
        match dir.remove_file_or_symlink(&rel) {
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

    /// Whether an entry is stored under `key`; its header is checked, its content is not.
    pub fn contains(&self, key: &Key) -> Result<bool> {
        Ok(self.open_checked(key)?.is_some())
    }

    /// fsyncs the directory `rel` in durable mode; nothing otherwise.
    fn durable_sync_dir(&self, rel: &str) -> Result<()> {
        if self.inner.options.durability != Durability::Sync {
            return Ok(());
        }
        let Some(dir) = self.dir() else { return Ok(()) };
        // Not `open_dir_nofollow`: its `O_PATH` handle cannot be fsynced (EBADF).
        let mut oo = OpenOptions::new();
        oo.read(true)
            .follow(FollowSymlinks::No)
            .custom_flags(rustix::fs::OFlags::DIRECTORY.bits() as i32);
        dir.open_with(rel, &oo)
            .and_then(|d| fault::check(Point::SyncDir).and_then(|()| d.sync_all()))
            .context(|| format!("cannot fsync a directory of namespace {:?}", self.inner.name))
    }

    /// Publishes a finished temporary file of `len` bytes of content under `key`: accounting,
    /// eviction, rename. (Its writer has already refused anything over the limits.)
    fn publish(&self, key: &Key, tmp_name: &str, file: &File, len: u64) -> Result<()> {
        let w = self.writable()?;
        let dir = self.dir().ok_or(Error::ReadOnly)?;
        let quota = self.inner.options.quota;
        let hk = key.hex();
        let rel = hk.rel_path();
        fault::check(Point::SetTime)
            .and_then(|()| file.set_modified(now()))
            .context(|| "cannot set a temporary file's time".into())?;
        if self.inner.options.durability == Durability::Sync {
            fault::check(Point::SyncFile)
                .and_then(|()| file.sync_all())
                .context(|| "cannot fsync a new entry".into())?;
        }
        let mut lk = self.lock()?;
        let used = match lk.used {
            Some(u) => u,
            None => self.rescan(w, key)?.used,
        };
        lk.used = Some(used);
        let old = charged_at(dir, &rel);
        let mut projected = used.saturating_sub(old) + len;
        if projected > quota {
            projected = self.evict(w, &mut lk, key, old, len)?;
        }
        // What the counter must say if the entry is not published after all (eviction may have
        // lowered it).
        let before = lk.used.unwrap_or(used);
        lk.store_used(projected)?;
        if let Err(e) = self.rename_into_place(w, dir, tmp_name, &hk) {
            let _ = lk.store_used(before);
            return Err(e);
        }
        // Durable mode promises that a committed entry survives power loss; when that cannot be
        // made true, the entry is taken back (under the lock still) and the commit fails.
        if let Err(e) = self.durable_sync_dir(hk.shard()) {
            if dir.remove_file(&rel).is_ok() {
                let _ = lk.store_used(before.saturating_sub(old));
            }
            return Err(e);
        }
        Ok(())
    }

    /// Renames the temporary file `tmp_name` to the entry's name, creating its fan-out directory
    /// if needed.
    fn rename_into_place(&self, w: &Writable, dir: &Dir, tmp_name: &str, hk: &HexKey) -> Result<()> {
        let rel = hk.rel_path();
        let rename = || fault::check(Point::Rename).and_then(|()| w.tmp.rename(tmp_name, dir, &rel));
        let renamed = match rename() {
            Err(e) if is_not_found(&e) => {
                // The fan-out directory does not exist yet.
                match fault::check(Point::CreateShard).and_then(|()| dir.create_dir(hk.shard())) {
                    Ok(()) => self.durable_sync_dir(".")?,
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(Error::io("cannot create a fan-out directory", e)),
                }
                rename()
            }
            r => r,
        };
        renamed.context(|| format!("cannot publish entry {}", hk.as_str()))
    }

    /// Evicts least recently used entries (never `keep`) until an entry of `size` bytes,
    /// replacing one of `old` bytes, fits. Returns the usage once it does.
    fn evict(&self, w: &Writable, lk: &mut Locked<'_>, keep: &Key, mut old: u64, size: u64) -> Result<u64> {
        let dir = self.dir().ok_or(Error::ReadOnly)?;
        let quota = self.inner.options.quota;
        let mut used = lk.used.unwrap_or(0);
        let mut scanned = false;
        loop {
            let mut candidates = w.candidates.lock().unwrap_or_else(|p| p.into_inner());
            while used.saturating_sub(old) + size > quota {
                let Some(c) = candidates.queue.pop_front() else { break };
                if c.key == *keep {
                    continue;
                }
                let rel = c.key.hex().rel_path();
                // Skip an entry used (or replaced) since the scan: it is no longer among the oldest.
                if !c.is_unchanged(dir, &rel) {
                    continue;
                }
                match dir.remove_file(&rel) {
                    Ok(()) => {
                        tracing::debug!(namespace = %self.inner.name, key = %c.key, "evicted");
                        used = used.saturating_sub(c.size);
                        lk.store_used(used)?;
                    }
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(Error::io("cannot evict an entry", e)),
                }
            }
            if used.saturating_sub(old) + size <= quota {
                return Ok(used.saturating_sub(old) + size);
            }
            if scanned && !candidates.truncated {
                return Err(Error::QuotaExceeded { needed: size, quota });
            }
            drop(candidates);
            let scan = self.rescan(w, keep)?;
            used = scan.used;
            old = charged_at(dir, &keep.hex().rel_path());
            lk.store_used(used)?;
            scanned = true;
        }
    }

    /// Walks the namespace (under its lock), refreshing the eviction candidates.
    fn rescan(&self, w: &Writable, keep: &Key) -> Result<Scan> {
        let scan = self.scan(CANDIDATES_PER_SCAN)?;
        let mut c = w.candidates.lock().unwrap_or_else(|p| p.into_inner());
        c.queue = scan.oldest.iter().filter(|e| e.key != *keep).cloned().collect();
        c.truncated = scan.truncated;
        Ok(scan)
    }

    /// Walks every entry file: exact usage and count, and the `keep_oldest` oldest entries.
    pub(crate) fn scan(&self, keep_oldest: usize) -> Result<Scan> {
        let mut scan = Scan {
            used: 0,
            entries: 0,
            oldest: Vec::new(),
            truncated: false,
        };
        // A max-heap on time keeps the oldest `keep_oldest` entries.
        let mut heap: std::collections::BinaryHeap<(SystemTime, u64, Key)> = Default::default();
        self.for_each_entry_file(|key, meta| {
            scan.used += charged(meta);
            scan.entries += 1;
            let mtime = mtime_of(meta).unwrap_or(UNIX_EPOCH);
            if keep_oldest > 0 {
                heap.push((mtime, charged(meta), key));
                if heap.len() > keep_oldest {
                    heap.pop();
                    scan.truncated = true;
                }
            }
            Ok(())
        })?;
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
            let Ok(sub) = dir.open_dir_nofollow(name) else { continue };
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

    /// Removes every entry (and leftover temporary file). Returns how many entries were removed.
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
            match dir.remove_file(key.hex().rel_path()) {
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
            match dir.remove_file(&rel) {
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
    pub(crate) fn verify_entry(&self, key: &Key) -> Result<Option<&'static str>> {
        LAST_DISCARD.with(|d| d.set(None));
        let Some(mut reader) = self.open_reader(key, false)? else {
            return Ok(LAST_DISCARD.with(|d| d.take()));
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

impl Writable {
    fn open(name: &str, dir: &Dir) -> Result<Writable> {
        match dir.create_dir(TMP_DIR) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(Error::io(
                    format!("cannot create the temporary directory of namespace {name:?}"),
                    e,
                ));
            }
        }
        let tmp = dir
            .open_dir_nofollow(TMP_DIR)
            .context(|| format!("cannot open the temporary directory of namespace {name:?}"))?;
        let state = dir
            .open_with(STATE_FILE, &private_rw_options())
            .context(|| format!("cannot open the state file of namespace {name:?}"))?
            .into_std();
        Ok(Writable {
            tmp,
            state: Mutex::new(state),
            candidates: Mutex::new(Candidates::default()),
        })
    }
}

impl Store for Namespace {
    fn get(&self, key: &Key) -> Result<Option<Vec<u8>>> {
        Namespace::get(self, key)
    }
    fn open(&self, key: &Key) -> Result<Option<Box<dyn EntryReader>>> {
        Ok(Namespace::open(self, key)?.map(|r| Box::new(r) as Box<dyn EntryReader>))
    }
    fn add(&self, key: &Key, content: &[u8]) -> Result<()> {
        Namespace::add(self, key, content)
    }
    fn create(&self, key: &Key) -> Result<Box<dyn EntryWriter>> {
        Ok(Box::new(Namespace::create(self, key)?))
    }
    fn delete(&self, key: &Key) -> Result<()> {
        Namespace::delete(self, key)
    }
    fn contains(&self, key: &Key) -> Result<bool> {
        Namespace::contains(self, key)
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

/// A new entry being streamed to a temporary file, from [`Namespace::create`].
/// Also an [`io::Write`]; finish it with [`FileWriter::commit`].
pub struct FileWriter {
    ns: Namespace,
    key: Key,
    tmp_name: Option<String>,
    out: Option<BufWriter<TmpFile>>,
    len: u64,
    crc: Checksum,
    failed: Option<Error>,
}

fn replay(e: &Error) -> Error {
    match e {
        Error::TooLarge { limit } => Error::TooLarge { limit: *limit },
        Error::QuotaExceeded { needed, quota } => Error::QuotaExceeded {
            needed: *needed,
            quota: *quota,
        },
        Error::ReadOnly => Error::ReadOnly,
        Error::Io { context, source } => Error::io(format!("this writer failed earlier: {context}"), copy_io(source)),
        other => Error::io("this writer failed earlier", io::Error::other(other.full_message())),
    }
}

/// A copy of an I/O error: the same OS error where there is one, else the same kind and message.
fn copy_io(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

impl FileWriter {
    /// Fails (and spends the writer) if the entry would exceed a limit at `total` bytes.
    fn check_size(&mut self, total: u64) -> Result<()> {
        match self.ns.limit_error(total) {
            None => Ok(()),
            Some(err) => Err(self.spend(err)),
        }
    }

    /// Records `err` as the writer's fate and throws the temporary file away.
    fn spend(&mut self, err: Error) -> Error {
        self.discard();
        let ret = match &err {
            // The first report is the error itself, OS error included.
            Error::Io { context, source } => Error::io(context.clone(), copy_io(source)),
            other => replay(other),
        };
        self.failed = Some(err);
        ret
    }

    fn discard(&mut self) {
        self.out = None;
        if let (Some(name), Some(w)) = (self.tmp_name.take(), self.ns.inner.writable.as_ref()) {
            let _ = w.tmp.remove_file(name);
        }
    }

    /// Appends bytes to the entry.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(replay(e));
        }
        self.check_size(self.len.saturating_add(bytes.len() as u64))?;
        let out = self.out.as_mut().expect("a writer that has not failed has its file");
        if let Err(e) = out.write_all(bytes) {
            return Err(self.spend(Error::io("cannot write a new entry", e)));
        }
        self.crc.update(bytes);
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Makes the entry visible under its key, atomically, replacing any earlier one.
    pub fn commit(mut self) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(replay(e));
        }
        let result = self.finish();
        if let Err(e) = result {
            return Err(self.spend(e));
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        let out = self.out.take().expect("a writer that has not failed has its file");
        let TmpFile(file) = out
            .into_inner()
            .map_err(|e| Error::io("cannot write a new entry", e.into_error()))?;
        let header = Header {
            len: self.len,
            crc: self.crc.value(),
            key: self.key,
        };
        fault::check(Point::WriteHeader)
            .and_then(|()| file.write_all_at(&header.encode(), 0))
            .context(|| "cannot write a new entry".into())?;
        let name = self
            .tmp_name
            .clone()
            .expect("a writer that has not failed has its name");
        let published = self.ns.publish(&self.key, &name, &file, self.len);
        if published.is_ok() {
            self.tmp_name = None;
        } else {
            self.out = Some(BufWriter::new(TmpFile(file)));
        }
        published
    }
}

/// A temporary file being written (a newtype only so that writes pass the fault-injection hook,
/// which costs nothing in a normal build).
struct TmpFile(File);

impl Write for TmpFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        fault::check(Point::Write)?;
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl Drop for FileWriter {
    fn drop(&mut self) {
        self.discard();
    }
}

impl EntryWriter for FileWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        FileWriter::write(self, bytes)
    }
    fn commit(self: Box<Self>) -> Result<()> {
        FileWriter::commit(*self)
    }
}

impl io::Write for FileWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        FileWriter::write(self, buf).map_err(io::Error::from)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
