//! One namespace: a directory of entries, fanned out by the key's first byte.
//!
//! ```text
//! <namespace>/
//!   state          usage counter (bytes charged), and the lock that serialises publishing
//!   counters       hits, misses and other events, for `filecache stats`
//!   data-bytes     bytes of data charged beside the entries (key-value buckets; see `data`)
//!   tmp/           entries being written, each locked by its writer while it lives
//!   00/ … ff/      entries, named by their key in hex
//! ```
//!
//! `state` and `tmp/` are created by the first operation that needs them (a write, a delete,
//! removing a damaged entry, counting uses), not by opening: a namespace that is only looked at,
//! even through a writable handle (`verify` finding nothing to remove), is left as it was.
//!
//! Publishing (rename into place), deleting, evicting and removing a corrupt entry all happen
//! under the namespace lock (an in-process mutex plus an `flock` on `state`, so other processes
//! are excluded too); reads take no lock. The usage counter is updated before the rename, so a
//! crash can only make it overestimate; any scan of the namespace recomputes it exactly.
//! Recency is the entry file's modification time, set on add and on a hit when it is older than
//! the namespace's recency granularity ([`RECENCY`], one second, by default).
//!
//! This module is the namespace's core: its directory, its lock and its options. What is done
//! with them is one module per verb (as cacache-rs has `get`, `put` and `rm` over `content`):
//!
//! - `file`: one entry file on disk: opening it, checking its header, removing it when damaged;
//! - `get`: whole reads, `contains`, raw access, `verify`; `reader`: streamed, verified reads;
//! - `put`: writes, publishing under the lock; `rm`: delete, clear, reclaiming temporary files;
//! - `walk`: the one walk over the fan-out directories (scans, listing, verify, clear);
//!   `evict`: least-recently-used eviction from the oldest entries a walk found;
//! - `lock`: the namespace lock and the usage counter; `count`: the event counters (hits and
//!   misses gathered in memory by `uses`); `data`: data charged beside the entries.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cap_fs_ext::{DirExt, FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::{Dir, OpenOptions};

use crate::error::IoContext;
use crate::sys;
use crate::{EntryReader, EntryStore, EntryWriter, Error, Key, NamespaceOptions, Result};

mod count;
mod data;
mod evict;
mod file;
mod get;
mod lock;
mod put;
mod reader;
mod rm;
mod uses;
mod walk;

pub use file::RawEntry;
#[cfg(test)]
pub(crate) use lock::{LOCK_WAIT, hold_elsewhere as hold_lock_elsewhere};
pub use put::FileWriter;
pub use reader::{FileReader, MAX_READ_CHUNK};
pub use walk::EntryInfo;

const STATE_FILE: &str = "state";
const TMP_DIR: &str = "tmp";
/// The name shown for a namespace opened by [`Namespace::open_dir`] (never a valid name).
const UNNAMED: &str = "(directory)";

/// The default granularity of recency ([`NamespaceOptions::recency`](crate::NamespaceOptions::recency)): a hit refreshes an entry's modification time only when it was set
/// longer ago than this, so least-recently-used order is exact to within it. (An hour in this
/// crate's tests and fuzzers, longer than any of their runs, so that their model of the order is
/// exact; tests of refreshing make entries older than that.)
#[cfg(not(any(test, feature = "fuzzing")))]
pub(crate) const RECENCY: Duration = Duration::from_secs(1);
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) const RECENCY: Duration = Duration::from_secs(3600);

/// A namespace of the cache. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct Namespace {
    inner: Arc<Inner>,
    /// Whether dropping this handle flushes the uses counted in memory: true for the handles
    /// users hold (and their clones), false for the store's own short-lived ones (a reader, a
    /// writer, a key-value temporary file), which would otherwise write the counters file at
    /// the end of every streamed read.
    flushes: bool,
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Every user's handle flushes what it can see, so the uses of a process that ends
        // normally (or of a plugin instance whose handle goes) reach the counters file whichever
        // handle goes last. Only the last may wait for the lock: another handle may be dropped
        // by the thread holding it (no handle is left to hold it when the last goes, and none
        // can be made).
        let last = Arc::strong_count(&self.inner) == 1;
        if (self.flushes || last) && self.inner.uses.peek() != (0, 0) {
            self.flush_uses(last);
        }
    }
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
    /// Made by the first operation that writes ([`Namespace::writable`]), which creates `state`
    /// and `tmp/`; never for a read-only namespace.
    writable: OnceLock<Writable>,
    options: NamespaceOptions,
    /// How many temporary files of dead writers opening the namespace reclaimed.
    reclaimed_at_open: AtomicU64,
    /// Hits and misses of `get`, `open` and `contains` not yet added to the counters file:
    /// counted in memory (an add to the calling thread's own shard: no lock, no file write and
    /// no memory shared with other threads on the hit path), flushed once a thread's shard holds
    /// `USES_PER_FLUSH` uses, and when a handle is dropped.
    uses: uses::Uses,
    /// What the temporary files of this handle's uncommitted writers are charged (each as its
    /// entry would be): together at most the quota (a write past it answers `QuotaExceeded`),
    /// given back when a writer commits or is dropped.
    uncommitted: AtomicU64,
}

/// What only a writable namespace has.
struct Writable {
    tmp: Dir,
    state: Mutex<File>,
    /// The oldest entries seen by the last scan, oldest first.
    candidates: Mutex<evict::Candidates>,
}

impl Namespace {
    /// Opens a namespace directly on its directory handle (see also
    /// [`FileCache::namespace`](super::FileCache::namespace), which checks the name and creates
    /// the directory). Reclaims temporary files left by writers that died.
    ///
    /// Such a namespace has no name of its own (it is shown as `(directory)`), so it cannot be
    /// put in front of a remote tier, where entries are kept by namespace name; use
    /// [`open_dir_named`](Self::open_dir_named) for that.
    pub fn open_dir(dir: Dir, options: NamespaceOptions) -> Result<Namespace> {
        Namespace::with_dir(String::from(UNNAMED), Some(dir), options)
    }

    /// [`open_dir`](Self::open_dir), with a name: a plugin namespace name (see
    /// [`validate_namespace_name`](crate::validate_namespace_name)) or a reserved one (starting
    /// with `.`). The name is what a remote tier keeps its entries under, so two namespaces that
    /// share a remote must have different names.
    pub fn open_dir_named(name: &str, dir: Dir, options: NamespaceOptions) -> Result<Namespace> {
        crate::validate_any_name(name)?;
        Namespace::with_dir(name.to_string(), Some(dir), options)
    }

    /// Whether the namespace has a name of its own (it was not opened by
    /// [`open_dir`](Self::open_dir)).
    pub fn is_named(&self) -> bool {
        self.inner.name != UNNAMED
    }

    pub(super) fn with_dir(name: String, dir: Option<Dir>, options: NamespaceOptions) -> Result<Namespace> {
        let ns = Namespace {
            flushes: true,
            inner: Arc::new(Inner {
                name,
                dir,
                writable: OnceLock::new(),
                options,
                reclaimed_at_open: AtomicU64::new(0),
                uses: uses::Uses::default(),
                uncommitted: AtomicU64::new(0),
            }),
        };
        let reclaimed = ns.reclaim_temporary_files()?;
        ns.inner.reclaimed_at_open.store(reclaimed, Ordering::Relaxed);
        Ok(ns)
    }

    /// A handle for one of the store's own short-lived objects (a reader, a writer): dropping
    /// it flushes no uses unless it is the last handle.
    fn for_operation(&self) -> Namespace {
        Namespace {
            inner: self.inner.clone(),
            flushes: false,
        }
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

    /// The namespace's directory handle (`None` for a read-only namespace that does not exist
    /// on disk), for a crate that keeps its own files in it beside the entries (the key-value
    /// crate's database). Names of two hex digits, `tmp`, `state`, `counters` and `data-bytes`
    /// are the store's.
    pub fn directory(&self) -> Option<&Dir> {
        self.inner.dir.as_ref()
    }

    /// What writing needs (the lock, `tmp/`), made on first use: [`Error::ReadOnly`] for a
    /// read-only namespace.
    fn writable(&self) -> Result<&Writable> {
        if let Some(w) = self.inner.writable.get() {
            return Ok(w);
        }
        let dir = match (self.dir(), self.inner.options.read_only) {
            (Some(dir), false) => dir,
            _ => return Err(Error::ReadOnly),
        };
        // Two threads may both get here: both create (or find) the same `state` and `tmp/`, and
        // the handles of the one that loses are dropped before anything was locked through them.
        let w = Writable::open(&self.inner.name, dir)?;
        Ok(self.inner.writable.get_or_init(|| w))
    }

    /// The namespace's `tmp/` if it exists, without creating it: where a writable handle that
    /// has not written yet looks for temporary files of dead writers.
    fn existing_tmp(&self) -> Result<Option<Dir>> {
        let Some(dir) = self.dir() else { return Ok(None) };
        match dir.open_dir_nofollow(TMP_DIR) {
            Ok(tmp) => Ok(Some(tmp)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(Error::io(
                format!("cannot open the temporary directory of namespace {:?}", self.inner.name),
                e,
            )),
        }
    }

    fn dir(&self) -> Option<&Dir> {
        self.inner.dir.as_ref()
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
            candidates: Mutex::new(evict::Candidates::default()),
        })
    }
}

/// Read-write, created owner-only if missing, never through a symlink: the namespace's own files.
fn private_rw_options() -> OpenOptions {
    let mut oo = OpenOptions::new();
    oo.read(true).write(true).create(true).follow(FollowSymlinks::No);
    sys::owner_only(&mut oo);
    oo
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

fn is_not_found(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

impl EntryStore for Namespace {
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
