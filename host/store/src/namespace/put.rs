//! Writing entries: whole and streamed writes to a locked temporary file, then publishing
//! under the namespace lock (accounting, eviction, the rename, fsyncs in durable mode).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::sync::atomic::Ordering;
use std::time::UNIX_EPOCH;

use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::{Dir, OpenOptions};

use super::file::charged_at;
use super::{Namespace, Writable, is_not_found, now};
use crate::entry::{BLOCK_SHIFT, BlockTable, HEADER_LEN, Header, Layout, charge};
use crate::error::IoContext;
use crate::fault::{self, Point};
use crate::key::HexKey;
use crate::sys;
use crate::{Durability, EntryWriter, Error, Key, Result};

const WRITE_BUFFER: usize = 64 << 10;

impl Namespace {
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
    pub(super) fn limit_error(&self, len: u64) -> Option<Error> {
        let opts = &self.inner.options;
        let charge = charge(len);
        if len > opts.max_entry_size {
            Some(Error::TooLarge {
                limit: opts.max_entry_size,
            })
        } else if charge > opts.quota {
            Some(Error::QuotaExceeded {
                needed: charge,
                quota: opts.quota,
            })
        } else {
            None
        }
    }

    /// Creates a new temporary file `<prefix>.<pid>.<random>.tmp` in the namespace's `tmp/`,
    /// private and locked for as long as it is open (the lock tells a live writer from a dead
    /// one, whose file a reclaimer may remove). Returns its name and the open file.
    pub(super) fn create_locked_temp(&self, w: &Writable, prefix: &str) -> Result<(String, File)> {
        let mut oo = OpenOptions::new();
        oo.write(true).create_new(true).follow(FollowSymlinks::No);
        sys::owner_only(&mut oo);
        loop {
            let name = format!("{prefix}.{}.{:016x}.tmp", std::process::id(), random_suffix());
            let file = fault::check(Point::CreateTemp)
                .and_then(|()| w.tmp.open_with(&name, &oo))
                .context(|| format!("cannot create a temporary file in namespace {:?}", self.inner.name))?
                .into_std();
            if let Err(e) = fault::check(Point::LockTemp).and_then(|()| sys::lock(&file)) {
                let _ = w.tmp.remove_file(&name);
                return Err(Error::io("cannot lock a temporary file", e));
            }
            // A reclaimer may have taken the file in the instant before we locked it.
            if file
                .metadata()
                .and_then(|m| sys::link_count(&file, &m))
                .map(|n| n == 0)
                .unwrap_or(true)
            {
                continue;
            }
            return Ok((name, file));
        }
    }

    /// Starts streaming a new entry for `key`.
    pub fn create(&self, key: &Key) -> Result<FileWriter> {
        self.create_as(key, Layout::Leading)
    }

    /// Starts streaming a new entry for `key` whose content starts at offset 0 of its file, the
    /// header following it ([`Layout::Trailing`]): for content that a consumer maps from the
    /// entry file itself (wasmtime's `deserialize_file`), which must start the file. Read back
    /// like any entry. Content that starts with the header's magic cannot be stored this way
    /// (its commit fails): a reader could not tell where its header is. Empty content is
    /// stored with a leading header (there is nothing to place).
    pub fn create_trailing(&self, key: &Key) -> Result<FileWriter> {
        self.create_as(key, Layout::Trailing)
    }

    fn create_as(&self, key: &Key, layout: Layout) -> Result<FileWriter> {
        let w = self.writable()?;
        let (name, file) = self.create_locked_temp(w, key.hex().as_str())?;
        let mut out = BufWriter::with_capacity(WRITE_BUFFER, TmpFile(file));
        let start = [0u8; HEADER_LEN];
        if let Err(e) = out.write_all(&start[..layout.content_start() as usize]) {
            drop(out);
            let _ = w.tmp.remove_file(&name);
            return Err(Error::io("cannot write a temporary file", e));
        }
        Ok(FileWriter {
            ns: self.for_operation(),
            key: *key,
            layout,
            first: [0; 8],
            tmp_name: Some(name),
            out: Some(out),
            len: 0,
            table: BlockTable::new(BLOCK_SHIFT),
            failed: None,
            reserved: 0,
        })
    }

    /// fsyncs the directory `rel` in durable mode; nothing otherwise.
    pub(super) fn durable_sync_dir(&self, rel: &str) -> Result<()> {
        if self.inner.options.durability != Durability::Sync {
            return Ok(());
        }
        let Some(dir) = self.dir() else { return Ok(()) };
        fault::check(Point::SyncDir)
            .and_then(|()| sys::sync_dir(dir, rel))
            .context(|| format!("cannot fsync a directory of namespace {:?}", self.inner.name))
    }

    /// Publishes a finished temporary file of `len` bytes of content under `key`: accounting,
    /// eviction, rename. (Its writer has already refused anything over the limits.)
    pub(super) fn publish(&self, key: &Key, tmp_name: &str, file: &File, len: u64) -> Result<()> {
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
                .and_then(|()| sys::sync_file(file))
                .context(|| "cannot fsync a new entry".into())?;
        }
        let mut lk = self.lock()?;
        let used = match lk.used {
            Some(u) => u,
            None => self.rescan(w)?.used,
        };
        lk.used = Some(used);
        let old = charged_at(dir, &rel);
        let charge = charge(len);
        let mut projected = used.saturating_sub(old) + charge;
        if projected > quota {
            projected = self.evict(w, &mut lk, Some(key), &rel, old, charge)?;
        }
        // What the counter must say if the entry is not published after all (eviction may have
        // lowered it).
        let before = lk.used.unwrap_or(used);
        lk.store_used(projected)?;
        if let Err(e) = self.rename_into_place(w, dir, tmp_name, &hk) {
            // A rename may happen and still report an error: then the entry is there, and the
            // counter must not go below it.
            if w.tmp.symlink_metadata(tmp_name).is_ok() {
                let _ = lk.store_used(before);
            }
            return Err(e);
        }
        // Durable mode promises that a committed entry survives power loss; when that cannot be
        // made true, the entry is taken back (under the lock still) and the commit fails.
        if let Err(e) = self.durable_sync_dir(hk.shard()) {
            if self.remove_entry_file(dir, &rel).is_ok() {
                let _ = lk.store_used(before.saturating_sub(old));
            }
            return Err(e);
        }
        Ok(())
    }

    /// Renames the temporary file `tmp_name` to the entry's name, creating its fan-out directory
    /// if needed.
    pub(super) fn rename_into_place(&self, w: &Writable, dir: &Dir, tmp_name: &str, hk: &HexKey) -> Result<()> {
        let rel = hk.rel_path();
        let rename =
            || fault::check(Point::Rename).and_then(|()| sys::rename_replacing(&w.tmp, tmp_name, dir, &rel, &w.tmp));
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
}

/// A new entry being streamed to a temporary file, from [`Namespace::create`].
/// Also an [`io::Write`]; finish it with [`FileWriter::commit`].
pub struct FileWriter {
    ns: Namespace,
    key: Key,
    /// Where the header goes.
    layout: Layout,
    /// The content's first bytes (as many as there are, up to 8), which tell the layouts apart.
    first: [u8; 8],
    tmp_name: Option<String>,
    out: Option<BufWriter<TmpFile>>,
    len: u64,
    /// The CRC32C of each block of the content so far.
    table: BlockTable,
    failed: Option<Error>,
    /// What this writer counts in the namespace's `uncommitted` total: the charge of its entry so
    /// far.
    reserved: u64,
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

    /// Gives this writer's bytes back to the namespace's uncommitted total.
    fn release(&mut self) {
        let n = std::mem::take(&mut self.reserved);
        if n > 0 {
            self.ns.inner.uncommitted.fetch_sub(n, Ordering::Relaxed);
        }
    }

    fn discard(&mut self) {
        self.release();
        self.out = None;
        if let (Some(name), Some(w)) = (self.tmp_name.take(), self.ns.inner.writable.get()) {
            let _ = w.tmp.remove_file(name);
        }
    }

    /// Appends bytes to the entry.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(replay(e));
        }
        self.check_size(self.len.saturating_add(bytes.len() as u64))?;
        // Uncommitted entries count against the quota, each charged as it would be once
        // committed (its file, rounded up to 4 KiB): a guest holding many writers open cannot fill
        // the disk with temporary files past it.
        let n = charge(self.len + bytes.len() as u64).saturating_sub(self.reserved);
        let quota = self.ns.inner.options.quota;
        let before = self.ns.inner.uncommitted.fetch_add(n, Ordering::Relaxed);
        self.reserved += n;
        if before.saturating_add(n) > quota {
            let needed = before.saturating_add(n);
            return Err(self.spend(Error::QuotaExceeded { needed, quota }));
        }
        let out = self.out.as_mut().expect("a writer that has not failed has its file");
        if let Err(e) = out.write_all(bytes) {
            return Err(self.spend(Error::io("cannot write a new entry", e)));
        }
        self.table.update(bytes);
        if let Some(free) = self.first.get_mut(self.len as usize..) {
            let n = free.len().min(bytes.len());
            free[..n].copy_from_slice(&bytes[..n]);
        }
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
        let mut out = self.out.take().expect("a writer that has not failed has its file");
        let layout = match self.layout {
            // Nothing to place: an empty file takes a leading header.
            Layout::Trailing if self.len == 0 => Layout::Leading,
            Layout::Trailing => {
                let n = self.first.len().min(self.len as usize);
                if Layout::of_file_starting_with(&self.first[..n]) != Layout::Trailing {
                    return Err(Error::io(
                        "cannot write a new entry",
                        io::Error::new(
                            io::ErrorKind::InvalidInput,
                            "content that starts with the entry header's magic cannot have a trailing header",
                        ),
                    ));
                }
                Layout::Trailing
            }
            Layout::Leading => Layout::Leading,
        };
        let (table, crc) = std::mem::replace(&mut self.table, BlockTable::new(BLOCK_SHIFT)).finish();
        let header = Header {
            len: self.len,
            crc,
            key: self.key,
        }
        .encode_as(layout, BLOCK_SHIFT);
        // The block table follows the content; a trailing header follows the table.
        out.write_all(&table)
            .and_then(|()| match layout {
                Layout::Trailing => fault::check(Point::WriteHeader).and_then(|()| out.write_all(&header)),
                Layout::Leading => Ok(()),
            })
            .context(|| "cannot write a new entry".into())?;
        let TmpFile(file) = out
            .into_inner()
            .map_err(|e| Error::io("cannot write a new entry", e.into_error()))?;
        if layout == Layout::Leading {
            fault::check(Point::WriteHeader)
                .and_then(|()| sys::write_all_at(&file, &header, 0))
                .context(|| "cannot write a new entry".into())?;
        }
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
        self.0.write(&buf[..fault::len(Point::Write, buf.len())?])
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl Drop for FileWriter {
    fn drop(&mut self) {
        // After a commit there is no temporary file left; the reservation goes either way.
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

fn random_suffix() -> u64 {
    let mut b = [0u8; 8];
    // A failure of the OS RNG only weakens uniqueness, which O_EXCL still guarantees.
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b) ^ (now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64)
}
