//! The namespace's side of key-value records (see [`crate::kv`]): files under `kv/`, written to
//! `tmp/` and renamed into place under the namespace lock, counted in the usage counter, never
//! among the eviction candidates.
//!
//! ```text
//! <namespace>/kv/00/ … kv/ff/   records, named by the SHA-256 digest of their key in hex
//! <namespace>/kv-generation     the bucket generation (see below)
//! ```
//!
//! # The bucket generation and the read cache
//!
//! `kv-generation` holds a `u64` and its bitwise complement (16 bytes, little-endian), so that
//! a torn or damaged read is recognised. Every change of a record by the store (set, delete,
//! increment, swap, clear, the removal of a damaged record) happens under the namespace lock
//! between two writes of it: before the first file is renamed or removed the generation becomes
//! odd ("a change is under way"), and once every change is visible it becomes the next even
//! number. A missing or damaged file is replaced by a random odd number at the next change, so
//! a generation never comes back to a value it once had (in practice: 2^63 even values).
//!
//! A reader reads the generation before anything else: on Linux through a shared mapping of
//! the file's page (two atomic loads, no system call; see `sys::mapped` for what a truncation of
//! the file does then), elsewhere with one `pread`. When it is even (`g`), a
//! value found in the handle's cache for generation `g` is served; otherwise the record is read
//! and checked from disk, and, if the generation was even, remembered for `g`. A value
//! remembered for `g` was read after the generation was `g`, so it was current at some moment
//! since; and while the generation still reads `g`, no change of any record has begun since
//! then (it would have made the generation odd first). So a cached answer is always one that
//! was current at some point during the read that serves it. Odd, damaged or unreadable: no
//! cache, the record is read from disk. A writer that dies mid-change leaves the generation
//! odd, which only costs the caches until the next change.

use std::collections::HashMap;

use super::*;

/// The file holding the bucket generation, in the namespace directory.
pub(crate) const KV_GENERATION_FILE: &str = "kv-generation";
/// The most bytes (keys, values and bookkeeping) one namespace handle's read cache holds.
pub(crate) const KV_CACHE_BYTES: usize = 8 << 20;
/// The largest value kept in the read cache; larger ones are read from disk every time.
pub(crate) const KV_CACHE_MAX_VALUE: usize = 64 << 10;
/// What one cached key is charged on top of its key and value bytes (map slot, allocations).
const KV_CACHE_OVERHEAD: usize = 64;

/// The key-value state a namespace handle shares between its clones: the generation file and
/// the read cache.
#[derive(Default)]
pub(super) struct KvShared {
    generation: std::sync::OnceLock<File>,
    /// The generation file's page, mapped once it holds a generation (Linux), so that a read of
    /// the generation costs no system call. Set once per handle, when the mapping is tried:
    /// `None` elsewhere, or when it could not be made.
    mapped: std::sync::OnceLock<Option<sys::mapped::MappedWords>>,
    /// Whether this handle already tried to write a first generation into a fresh (or damaged)
    /// file (once per handle, so that a file that cannot be fixed costs no lock per read).
    initialised: std::sync::atomic::AtomicBool,
    cache: Mutex<KvCache>,
}

/// Values read at one generation: key → value (`None`: the key had none).
#[derive(Default)]
struct KvCache {
    generation: Option<u64>,
    values: HashMap<String, Option<Box<[u8]>>>,
    bytes: usize,
}

impl KvCache {
    fn clear(&mut self) {
        self.generation = None;
        self.values = HashMap::new();
        self.bytes = 0;
    }

    fn charge(key: &str, value: Option<&[u8]>) -> usize {
        key.len() + value.map_or(0, <[u8]>::len) + KV_CACHE_OVERHEAD
    }

    fn remove(&mut self, key: &str) {
        if let Some(v) = self.values.remove(key) {
            self.bytes -= Self::charge(key, v.as_deref());
        }
    }
}

/// A change of records under way under the lock: the generation before it (when it was a valid
/// even number) and the odd one written.
#[derive(Clone, Copy)]
pub(crate) struct Change {
    before: Option<u64>,
    odd: u64,
}

fn encode_generation(g: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&g.to_le_bytes());
    b[8..].copy_from_slice(&(!g).to_le_bytes());
    b
}

/// The generation in `file`; `None` when it cannot be read or is torn, damaged or missing.
fn read_generation(file: &File) -> Option<u64> {
    let mut b = [0u8; 16];
    match sys::read_at(file, &mut b, 0) {
        Ok(16) => {
            let g = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
            let check = u64::from_le_bytes(b[8..].try_into().expect("8 bytes"));
            (check == !g).then_some(g)
        }
        _ => None,
    }
}

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
    /// The change begun under this lock (the generation made odd), if any.
    change: Option<Change>,
    /// The keys whose records changed; `None` once records of unknown keys did (a damaged
    /// record removed: its key is not known), so that the whole read cache goes.
    keys: Option<Vec<String>>,
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
            ns: self.for_operation(),
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
        self.kv_transaction_with(true, f)
            .map(|done| done.expect("a waiting lock is always taken"))
    }

    /// [`kv_transaction`](Self::kv_transaction); without `wait`, runs nothing and answers
    /// `None` when a thread of this process holds this handle's lock (perhaps the calling one,
    /// which waiting would deadlock).
    fn kv_transaction_with<R, E: From<Error>>(
        &self,
        wait: bool,
        f: impl FnOnce(&mut KvTxn<'_>) -> std::result::Result<R, E>,
    ) -> std::result::Result<Option<R>, E> {
        let w = self.writable()?;
        let dir = self.dir().ok_or(Error::ReadOnly)?;
        // Opened before anything changes: a change must be able to bump the generation.
        self.kv_generation_file()?;
        let lk = if wait {
            self.lock()?
        } else {
            match self.lock_if_free() {
                Some(lk) => lk,
                None => return Ok(None),
            }
        };
        let mut txn = KvTxn {
            ns: self,
            w,
            dir,
            lk,
            change: None,
            keys: Some(Vec::new()),
        };
        let out = f(&mut txn);
        if let Some(change) = txn.change {
            self.kv_end_change(change, txn.keys.as_deref());
        }
        out.map(Some)
    }

    /// The generation file, opened once per handle (created owner-only by a writable one).
    fn kv_generation_file(&self) -> Result<&File> {
        if let Some(f) = self.inner.kv.generation.get() {
            return Ok(f);
        }
        let dir = self.dir().ok_or(Error::ReadOnly)?;
        let oo = if self.inner.writable.is_some() {
            private_rw_options()
        } else {
            let mut oo = OpenOptions::new();
            oo.read(true).follow(FollowSymlinks::No);
            oo
        };
        let file = dir
            .open_with(KV_GENERATION_FILE, &oo)
            .context(|| {
                format!(
                    "cannot open the key-value generation of namespace {:?}",
                    self.inner.name
                )
            })?
            .into_std();
        Ok(self.inner.kv.generation.get_or_init(|| file))
    }

    /// The generation in the generation file `file` (this handle's), read through its mapping
    /// when there is one, else from the file (mapping it, once, after a first good read); `None`
    /// when it cannot be read or is torn, damaged or missing.
    fn kv_read_generation(&self, file: &File) -> Option<u64> {
        let mapped = &self.inner.kv.mapped;
        if let Some((g, check)) = mapped
            .get()
            .and_then(Option::as_ref)
            .and_then(sys::mapped::MappedWords::read)
        {
            return (check == !g).then_some(g);
        }
        let g = read_generation(file);
        if g.is_some() && mapped.get().is_none() {
            mapped.get_or_init(|| sys::mapped::MappedWords::map(file));
        }
        g
    }

    /// The bucket generation as it is now, odd (a change under way) or even; `None` when it
    /// cannot be read or is damaged. Repairs nothing.
    pub(crate) fn kv_generation_now(&self) -> Option<u64> {
        self.kv_read_generation(self.kv_generation_file().ok()?)
    }

    /// The bucket generation as a reader sees it: `Some` only when it is a valid even number
    /// (no change under way), the generation a cached value must have been read at.
    pub(crate) fn kv_generation(&self) -> Option<u64> {
        let file = self.kv_generation_file().ok()?;
        match self.kv_read_generation(file) {
            Some(g) if g % 2 == 0 => Some(g),
            _ => {
                // A fresh file, a damaged one, or a change left unfinished by a writer that
                // died: a writable handle fixes it, once, under the lock (so never while a
                // change is under way). Never waiting for the lock: this thread may hold it
                // already (a read from within `Bucket::update`).
                let first = self.inner.writable.is_some() && !self.inner.kv.initialised.swap(true, Ordering::Relaxed);
                if !first {
                    return None;
                }
                let _lk = self.lock_if_free()?;
                let fixed = match self.kv_read_generation(file) {
                    Some(g) if g % 2 == 0 => return Some(g),
                    // Every file a dead writer renamed or removed is visible by now.
                    Some(odd) => odd.wrapping_add(1),
                    None => random_suffix() & !1,
                };
                self.kv_write_generation(file, fixed).ok()?;
                Some(fixed)
            }
        }
    }

    /// What this handle's cache holds for `key` at generation `generation`: `Some(None)` when
    /// the key had no value, `None` when nothing is cached.
    pub(crate) fn kv_cached<R>(&self, key: &str, generation: u64, f: impl FnOnce(Option<&[u8]>) -> R) -> Option<R> {
        let c = self.inner.kv.cache.lock().unwrap_or_else(|p| p.into_inner());
        if c.generation != Some(generation) {
            return None;
        }
        c.values.get(key).map(|v| f(v.as_deref()))
    }

    /// Remembers `value` (checked, read from disk after the generation read `generation`) for
    /// `key`. Within the cache's bounds: a value over [`KV_CACHE_MAX_VALUE`] is not kept, and a
    /// cache that would grow past [`KV_CACHE_BYTES`] is emptied first.
    pub(crate) fn kv_remember(&self, key: &str, generation: u64, value: Option<&[u8]>) {
        if value.is_some_and(|v| v.len() > KV_CACHE_MAX_VALUE) {
            return;
        }
        let charge = KvCache::charge(key, value);
        let mut c = self.inner.kv.cache.lock().unwrap_or_else(|p| p.into_inner());
        if c.generation != Some(generation) {
            // Values of another generation are of no more use (a generation never comes back).
            c.clear();
            c.generation = Some(generation);
        }
        c.remove(key);
        if c.bytes + charge > KV_CACHE_BYTES {
            c.clear();
            c.generation = Some(generation);
        }
        c.values.insert(key.to_string(), value.map(Box::from));
        c.bytes += charge;
    }

    /// Bytes the read cache of this handle holds (keys, values, bookkeeping).
    #[doc(hidden)]
    pub fn kv_cache_bytes(&self) -> usize {
        self.inner.kv.cache.lock().unwrap_or_else(|p| p.into_inner()).bytes
    }

    /// Writes generation `g` into the generation file `file`.
    fn kv_write_generation(&self, file: &File, g: u64) -> Result<()> {
        sys::write_all_at(file, &encode_generation(g), 0).context(|| {
            format!(
                "cannot update the key-value generation of namespace {:?}",
                self.inner.name
            )
        })
    }

    /// Marks a change of records as under way (an odd generation), before the first file is
    /// renamed or removed; `change` holds what was written, so that this happens once per lock.
    fn kv_begin_change(&self, change: &mut Option<Change>) -> Result<()> {
        if change.is_some() {
            return Ok(());
        }
        let file = self.kv_generation_file()?;
        let now = self.kv_read_generation(file);
        let before = now.filter(|g| g % 2 == 0);
        let odd = match now {
            Some(g) if g % 2 == 0 => g.wrapping_add(1),
            // A change that never finished (its writer died), or no valid generation at all.
            Some(g) => g.wrapping_add(2),
            None => random_suffix() | 1,
        };
        self.kv_write_generation(file, odd)?;
        *change = Some(Change { before, odd });
        Ok(())
    }

    /// Ends a change (every file renamed or removed): the next even generation. The read cache
    /// keeps what it read at the generation before, except the values of `keys` (all of it
    /// when `keys` is `None`). A failure leaves the generation odd, which readers take as "read
    /// from disk": only logged.
    fn kv_end_change(&self, change: Change, keys: Option<&[String]>) {
        let after = change.odd.wrapping_add(1);
        let written = self
            .kv_generation_file()
            .and_then(|file| self.kv_write_generation(file, after));
        let mut c = self.inner.kv.cache.lock().unwrap_or_else(|p| p.into_inner());
        match (&written, keys) {
            (Ok(()), Some(keys)) if c.generation.is_some() && c.generation == change.before => {
                // What was read at the generation before is still current but for `keys`.
                c.generation = Some(after);
                for k in keys {
                    c.remove(k);
                }
            }
            _ => c.clear(),
        }
        drop(c);
        if let Err(e) = written {
            tracing::warn!(namespace = %self.inner.name, error = %e.full_message(),
                "cannot update the key-value generation (readers read from disk until the next change)");
        }
    }

    /// Opens the record file at `rel` for reading: `None` when there is none. A symlink or
    /// anything but a regular file with one name is removed and answered as `None`.
    /// `txn`: the lock, when the caller holds it (a damaged record is then removed under it).
    pub(crate) fn kv_open(&self, rel: &str, txn: Option<&mut KvTxn<'_>>) -> Result<Option<(File, std::fs::Metadata)>> {
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
                    self.kv_discard(rel, None, "a symlink, not a record", txn);
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
            self.kv_discard(rel, Some((&file, &meta)), "not a regular file with one name", txn);
            return Ok(None);
        }
        Ok(Some((file, meta)))
    }

    /// Removes a damaged record if it is still the file that was checked, and logs it. Under
    /// the lock: `txn`'s when the caller holds it, else taken here (and the change of the
    /// generation ended here too).
    pub(crate) fn kv_discard(
        &self,
        rel: &str,
        checked: Option<(&File, &std::fs::Metadata)>,
        reason: &'static str,
        txn: Option<&mut KvTxn<'_>>,
    ) {
        tracing::warn!(namespace = %self.inner.name, record = rel, reason, "removing damaged key-value record");
        match txn {
            Some(txn) => txn.discard(rel, checked),
            None => {
                // Never waiting for this handle's lock: the caller may be reading from within
                // `Bucket::update` on this very thread. When it is held, the record stays (it is
                // reported, never served) and the next read that finds the lock free removes it.
                let done = self.kv_transaction_with(false, |txn| {
                    txn.discard(rel, checked);
                    Ok::<(), Error>(())
                });
                if !matches!(done, Ok(Some(()))) {
                    tracing::debug!(namespace = %self.inner.name, record = rel, "damaged record left for a later read: the lock is held");
                }
            }
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

    /// Removes every record (under the lock held by the caller: `_lk`). Returns how many.
    pub(super) fn kv_clear(&self, dir: &Dir, _lk: &Locked<'_>) -> Result<u64> {
        let mut rels = Vec::new();
        self.kv_for_each(|key, _| {
            rels.push(kv_rel(&key));
            Ok(())
        })?;
        if rels.is_empty() {
            return Ok(0);
        }
        let mut change = None;
        self.kv_begin_change(&mut change)?;
        let removed = self.kv_remove_all(dir, rels);
        if let Some(change) = change {
            self.kv_end_change(change, None);
        }
        removed
    }

    fn kv_remove_all(&self, dir: &Dir, rels: Vec<String>) -> Result<u64> {
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
    /// fit; records never are. Fails with [`Error::QuotaExceeded`] when it cannot fit even then:
    /// no record changes, and the cache entries evicted on the way (by then, all of them) stay
    /// evicted, as the model test expects.
    /// `key` is the record's key (its value leaves the read cache).
    pub(crate) fn publish(&mut self, mut tmp: KvTmp, key: &str, rel: &str, len: u64) -> Result<()> {
        self.publish_inner(&mut tmp, key, rel, len)
    }

    /// Removes a damaged record if it is still the file that was checked (`checked`: that file,
    /// open, and its metadata; `None` for a symlink). Its key is not known, so the whole read
    /// cache goes when the change ends.
    fn discard(&mut self, rel: &str, checked: Option<(&File, &std::fs::Metadata)>) {
        self.keys = None;
        let (ns, dir) = (self.ns, self.dir);
        let Ok(now) = dir.symlink_metadata(rel) else { return };
        let same = match checked {
            Some((file, meta)) => sys::is_same_file_at(dir, rel, file, meta),
            None => now.file_type().is_symlink(),
        };
        if same
            && ns.kv_begin_change(&mut self.change).is_ok()
            && ns.remove_entry_file(dir, rel).is_ok()
            && now.file_type().is_file()
            && let Some(used) = self.lk.used
        {
            let _ = self.lk.store_used(used.saturating_sub(charged(&now)));
        }
    }

    /// Notes that the record of `key` is about to change, and makes sure the generation says so.
    fn changing(&mut self, key: &str) -> Result<()> {
        self.ns.kv_begin_change(&mut self.change)?;
        if let Some(keys) = &mut self.keys {
            keys.push(key.to_string());
        }
        Ok(())
    }

    fn publish_inner(&mut self, tmp: &mut KvTmp, key: &str, rel: &str, len: u64) -> Result<()> {
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
        self.changing(key)?;
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

    /// Removes the record of `key` at `rel`. Whether there was one.
    pub(crate) fn remove(&mut self, key: &str, rel: &str) -> Result<bool> {
        let meta = match self.dir.symlink_metadata(rel) {
            Ok(m) => m,
            Err(e) if is_not_found(&e) => return Ok(false),
            Err(e) => return Err(Error::io(format!("cannot stat key-value record {rel}"), e)),
        };
        self.changing(key)?;
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
