//! The wasmtime host implementation of `filecache:cache/cache`.
//!
//! Shaped like wasmtime's own `wasmtime-wasi-*` crates: the per-instance state is a plain
//! [`FileCacheCtx`] (built with [`FileCacheCtxBuilder`]), a [`FileCacheView`] borrows it
//! (immutably) together with the store's [`ResourceTable`], and [`add_to_linker`] (synchronous
//! host functions) or [`add_to_linker_async`] (asynchronous ones) take a function from the store's
//! data to that view. Readers and writers are resources in the table.
//!
//! # Sync or async
//!
//! [`add_to_linker`] is for an embedder that calls guests synchronously
//! (`wasmtime_wasi::p2::add_to_linker_sync`, `Command::instantiate`, `call_run`): every call does
//! its storage work, and with a remote tier its Redis round trips, on the calling thread.
//!
//! [`add_to_linker_async`] is for an embedder on tokio (`wasmtime_wasi::p2::add_to_linker_async`,
//! `instantiate_async`, `call_run(..).await`): every
//! function that touches storage (all of them but `reader.size`) runs that work on tokio's
//! blocking pool (`spawn_blocking`), so a guest waiting on a slow disk or a remote that does not
//! answer never blocks the executor's worker threads, and many guests wait at once. Called outside
//! a tokio runtime, the work runs on the calling thread instead. The guest sees the same answers
//! either way.
//!
//! # Limits
//!
//! Every guest input is checked and answered with an error value; nothing a guest passes can
//! make the host panic. A read returns at most 1 MiB whatever length the guest asks for, so a
//! guest cannot make the host allocate more than that per `read`.
//!
//! The handle limit ([`FileCacheCtxBuilder::max_handles`]) counts the readers and writers held
//! through one [`FileCacheCtx`], and the buckets and cas handles of a `wasi:keyvalue` context
//! given the same [`HandleBudget`] ([`FileCacheCtx::handle_budget`]). wasmtime cannot tell a host function which instance called it, so
//! instances that share a `Store` (and so its data and context) share one budget; give each
//! instance its own `Store`, as usual, and the limit is per instance.

mod host;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cap_std::fs::Dir;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use crate::store::{EntryReader, EntryWriter};
use crate::{Durability, Key, Namespace, NamespaceOptions, Store};

mod generated {
    pub(super) mod sync {
        wasmtime::component::bindgen!({
            path: "wit",
            world: "filecache:cache/plugin",
            imports: { default: trappable },
            trappable_error_type: {
                "filecache:cache/cache.error" => crate::bindings::CacheError,
            },
            with: {
                "filecache:cache/cache.reader": crate::bindings::ReaderHandle,
                "filecache:cache/cache.writer": crate::bindings::WriterHandle,
            },
        });
    }
    pub(super) mod asynchronous {
        wasmtime::component::bindgen!({
            path: "wit",
            world: "filecache:cache/plugin",
            imports: { default: async | trappable },
            trappable_error_type: {
                "filecache:cache/cache.error" => crate::bindings::CacheError,
            },
            with: {
                "filecache:cache/cache.reader": crate::bindings::ReaderHandle,
                "filecache:cache/cache.writer": crate::bindings::WriterHandle,
            },
            require_store_data_send: true,
        });
    }
}

/// The default number of readers and writers one context may hold open at once.
pub const DEFAULT_MAX_HANDLES: usize = 64;

/// A reader resource: the host side of a guest's `reader` handle. Shared with the blocking task
/// that reads it (async host functions).
#[doc(hidden)]
pub struct ReaderHandle {
    size: u64,
    reader: Arc<Mutex<Box<dyn EntryReader>>>,
}

/// A writer resource: the host side of a guest's `writer` handle. `None` once committed.
#[doc(hidden)]
pub struct WriterHandle {
    writer: Arc<Mutex<Option<Box<dyn EntryWriter>>>>,
}

impl ReaderHandle {
    fn new(reader: Box<dyn EntryReader>) -> ReaderHandle {
        ReaderHandle {
            size: reader.size(),
            reader: Arc::new(Mutex::new(reader)),
        }
    }
}

impl WriterHandle {
    fn new(writer: Box<dyn EntryWriter>) -> WriterHandle {
        WriterHandle {
            writer: Arc::new(Mutex::new(Some(writer))),
        }
    }
}

/// Locks a handle's mutex. A panic while it was held (only a bug could cause one) leaves the
/// reader or writer in the state the store's own error handling left it in, so it is used as is.
fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The error type of the host functions: an answer the guest sees as the WIT `error` (a store
/// error, or too many handles), or a trap.
///
/// This is `filecache:cache/cache.error`'s `trappable_error_type`: the host functions return
/// `Result<T, CacheError>`, and the bindings turn each into the guest's error value or a trap.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The store refused or failed; the guest gets the matching WIT error.
    #[error(transparent)]
    Store(#[from] crate::Error),
    /// The context already holds as many readers and writers as it may (`too-many-handles`).
    #[error("too many handles: at most {max} handles (readers, writers, buckets, cas) may be open at once")]
    TooManyHandles {
        /// The limit.
        max: usize,
    },
    /// Not an answer: the guest traps (a handle that is not in the table, say).
    #[error("{0:#}")]
    Trap(wasmtime::Error),
}

impl From<wasmtime::component::ResourceTableError> for CacheError {
    fn from(e: wasmtime::component::ResourceTableError) -> CacheError {
        CacheError::Trap(e.into())
    }
}

impl CacheError {
    /// The guest's view of the error; a trap stays a trap.
    fn into_answer(self) -> wasmtime::Result<Answer> {
        use crate::Error as S;
        Ok(match self {
            CacheError::Trap(e) => return Err(e),
            CacheError::TooManyHandles { .. } => Answer::TooManyHandles,
            CacheError::Store(e) => match e {
                S::InvalidKey { .. } => Answer::InvalidKey,
                S::TooLarge { limit } => Answer::TooLarge(limit),
                S::QuotaExceeded { .. } => Answer::QuotaExceeded,
                S::ReadOnly => Answer::ReadOnly,
                S::Corrupt { .. } => Answer::Corrupt,
                e => {
                    let message = e.full_message();
                    tracing::warn!(error = %message, "cache storage error");
                    Answer::Io(message)
                }
            },
        })
    }
}

/// The WIT `error` variant, once: the sync and async bindings each generate their own type.
enum Answer {
    InvalidKey,
    TooLarge(u64),
    QuotaExceeded,
    ReadOnly,
    TooManyHandles,
    Corrupt,
    Io(String),
}

/// `From<Answer>` for one instantiation's generated `error` type.
macro_rules! answer_into {
    ($wit:ty) => {
        impl From<super::Answer> for $wit {
            fn from(a: super::Answer) -> $wit {
                use super::Answer as A;
                match a {
                    A::InvalidKey => <$wit>::InvalidKey,
                    A::TooLarge(limit) => <$wit>::TooLarge(limit),
                    A::QuotaExceeded => <$wit>::QuotaExceeded,
                    A::ReadOnly => <$wit>::ReadOnly,
                    A::TooManyHandles => <$wit>::TooManyHandles,
                    A::Corrupt => <$wit>::Corrupt,
                    A::Io(message) => <$wit>::Io(message),
                }
            }
        }
    };
}
use answer_into;

/// Why [`FileCacheCtxBuilder::build`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// No store was given.
    #[error(
        "no store was given to the FileCacheCtx builder: call namespace(), namespace_dir() or store() before build()"
    )]
    NoStore,
    /// Two stores were given.
    #[error("the FileCacheCtx builder was given two stores ({first}() and then {second}()); give it one")]
    TwoStores {
        /// The method that gave the first.
        first: &'static str,
        /// The method that gave the second.
        second: &'static str,
    },
    /// A limit was set that only applies to a namespace the builder opens itself.
    #[error(
        "{setting}() applies only to a namespace the builder opens (namespace_dir()); the store given to \
         {source_method}() keeps its own settings: set them where it is opened (NamespaceOptions)"
    )]
    SettingIgnored {
        /// The builder method whose setting would have been ignored.
        setting: &'static str,
        /// The method that gave the store.
        source_method: &'static str,
    },
    /// The namespace directory could not be opened.
    #[error(transparent)]
    Store(#[from] crate::Error),
}

/// The state the cache interface keeps per instance: the store it serves (a namespace, or any
/// [`Store`]), and how many handles are open.
pub struct FileCacheCtx {
    store: Arc<dyn Store>,
    handles: HandleBudget,
}

/// How many handles an instance may hold at once, and how many it holds: shared by the
/// interfaces it imports (this one's readers and writers, `wasi:keyvalue`'s buckets and cas
/// handles: see [`crate::keyvalue::KeyValueCtxBuilder::handle_budget`]), so that the limit is
/// one per instance. Cheap to clone; clones share the count.
#[derive(Debug, Clone)]
pub struct HandleBudget(Arc<BudgetInner>);

#[derive(Debug)]
struct BudgetInner {
    max: usize,
    open: AtomicUsize,
}

impl HandleBudget {
    /// A budget of at most `max` handles.
    pub fn new(max: usize) -> HandleBudget {
        HandleBudget(Arc::new(BudgetInner {
            max,
            open: AtomicUsize::new(0),
        }))
    }

    /// The most handles that may be held at once.
    pub fn max(&self) -> usize {
        self.0.max
    }

    /// How many are held now.
    pub fn open(&self) -> usize {
        self.0.open.load(Ordering::Relaxed)
    }

    /// Takes a slot; `false` when every slot is taken.
    pub fn take(&self) -> bool {
        self.0
            .open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.0.max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives a slot back.
    pub fn give(&self) {
        let _ = self
            .0
            .open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }
}

impl std::fmt::Debug for FileCacheCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileCacheCtx")
            .field("max_handles", &self.max_handles())
            .field("open_handles", &self.open_handles())
            .finish_non_exhaustive()
    }
}

impl FileCacheCtx {
    /// A builder; see [`FileCacheCtxBuilder`].
    pub fn builder() -> FileCacheCtxBuilder {
        FileCacheCtxBuilder::new()
    }

    /// How many handles are held through this context's budget now (readers and writers, and
    /// the key-value handles of a context sharing the budget).
    pub fn open_handles(&self) -> usize {
        self.handles.open()
    }

    /// The most handles that may be held through this context's budget at once.
    pub fn max_handles(&self) -> usize {
        self.handles.max()
    }

    /// The handle budget, to share with the instance's other interfaces (give it to
    /// [`crate::keyvalue::KeyValueCtxBuilder::handle_budget`]).
    pub fn handle_budget(&self) -> HandleBudget {
        self.handles.clone()
    }

    /// Takes a handle slot, or answers `too-many-handles`.
    fn take_slot(&self) -> Result<(), CacheError> {
        if self.handles.take() {
            Ok(())
        } else {
            Err(CacheError::TooManyHandles {
                max: self.handles.max(),
            })
        }
    }

    fn give_slot(&self) {
        self.handles.give();
    }
}

enum Source {
    Namespace(Namespace),
    Dir(Dir),
    Store(Arc<dyn Store>),
}

impl Source {
    fn method(&self) -> &'static str {
        match self {
            Source::Namespace(_) => "namespace",
            Source::Dir(_) => "namespace_dir",
            Source::Store(_) => "store",
        }
    }
}

/// Builds a [`FileCacheCtx`].
///
/// Give it exactly one store: an opened [`Namespace`] ([`namespace`](Self::namespace)), any
/// [`Store`] ([`store`](Self::store)), or a namespace directory it opens itself
/// ([`namespace_dir`](Self::namespace_dir)). The limit setters ([`max_entry_size`](Self::max_entry_size),
/// [`quota`](Self::quota), [`read_only`](Self::read_only), [`durability`](Self::durability)) apply
/// only to the last: with another store, [`build`](Self::build) fails naming the setting, rather
/// than ignore it. [`max_handles`](Self::max_handles) applies to every kind.
///
/// ```no_run
/// use filecache_host::{FileCache, FileCacheCtx, NamespaceOptions};
/// let cache = FileCache::open("/var/cache/my-host")?;
/// let ctx = FileCacheCtx::builder()
///     .namespace(cache.namespace("my-plugin", NamespaceOptions::default())?)
///     .max_handles(16)
///     .build()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// Or directly on a namespace directory, with limits:
///
/// ```no_run
/// use cap_std::{ambient_authority, fs::Dir};
/// use filecache_host::FileCacheCtx;
/// let dir = Dir::open_ambient_dir("/var/cache/my-host/my-plugin", ambient_authority())?;
/// let ctx = FileCacheCtx::builder()
///     .namespace_dir(dir)
///     .max_entry_size(1 << 20)
///     .quota(100 << 20)
///     .read_only(true)
///     .build()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// What `build` refuses:
///
/// ```
/// use filecache_host::FileCacheCtx;
/// use filecache_host::bindings::BuildError;
/// let err = FileCacheCtx::builder().max_handles(4).build().unwrap_err();
/// assert!(matches!(err, BuildError::NoStore));
/// assert!(err.to_string().contains("namespace_dir()"));
/// ```
pub struct FileCacheCtxBuilder {
    source: Option<Source>,
    /// A second store, remembered so that `build` can say so.
    extra_source: Option<&'static str>,
    options: NamespaceOptions,
    /// The limit setters called, in order.
    limits_set: Vec<&'static str>,
    max_handles: usize,
}

impl Default for FileCacheCtxBuilder {
    fn default() -> Self {
        FileCacheCtxBuilder::new()
    }
}

impl std::fmt::Debug for FileCacheCtxBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileCacheCtxBuilder")
            .field("source", &self.source.as_ref().map(Source::method))
            .field("options", &self.options)
            .field("max_handles", &self.max_handles)
            .finish_non_exhaustive()
    }
}

impl FileCacheCtxBuilder {
    /// A builder with the default limits and no store yet.
    pub fn new() -> Self {
        FileCacheCtxBuilder {
            source: None,
            extra_source: None,
            options: NamespaceOptions::default(),
            limits_set: Vec::new(),
            max_handles: DEFAULT_MAX_HANDLES,
        }
    }

    fn set_source(&mut self, source: Source) -> &mut Self {
        if self.source.is_some() {
            self.extra_source.get_or_insert(source.method());
        } else {
            self.source = Some(source);
        }
        self
    }

    /// Serves an opened namespace, with the options it was opened with.
    pub fn namespace(&mut self, namespace: Namespace) -> &mut Self {
        self.set_source(Source::Namespace(namespace))
    }

    /// Serves the namespace whose directory is `dir`, opened by [`build`](Self::build) with the
    /// limits set on this builder.
    pub fn namespace_dir(&mut self, dir: Dir) -> &mut Self {
        self.set_source(Source::Dir(dir))
    }

    /// Serves any [`Store`] (a tiered store, say), with its own settings.
    pub fn store(&mut self, store: Arc<dyn Store>) -> &mut Self {
        self.set_source(Source::Store(store))
    }

    fn limit(&mut self, name: &'static str) -> &mut Self {
        self.limits_set.push(name);
        self
    }

    /// The largest entry, in bytes of content (only with [`namespace_dir`](Self::namespace_dir)).
    pub fn max_entry_size(&mut self, bytes: u64) -> &mut Self {
        self.options.max_entry_size = bytes;
        self.limit("max_entry_size")
    }

    /// The namespace's quota in bytes (only with [`namespace_dir`](Self::namespace_dir)).
    pub fn quota(&mut self, bytes: u64) -> &mut Self {
        self.options.quota = bytes;
        self.limit("quota")
    }

    /// Refuses writes (only with [`namespace_dir`](Self::namespace_dir)).
    pub fn read_only(&mut self, read_only: bool) -> &mut Self {
        self.options.read_only = read_only;
        self.limit("read_only")
    }

    /// Whether writes are fsynced (only with [`namespace_dir`](Self::namespace_dir)).
    pub fn durability(&mut self, durability: Durability) -> &mut Self {
        self.options.durability = durability;
        self.limit("durability")
    }

    /// How many readers and writers may be held through the context at once (default
    /// [`DEFAULT_MAX_HANDLES`]); see the [module docs](self#limits) on what that means per instance.
    pub fn max_handles(&mut self, max: usize) -> &mut Self {
        self.max_handles = max;
        self
    }

    /// Builds the context. Fails if no store or two stores were given, if a limit was set that
    /// the given store would ignore, or if the namespace directory cannot be opened. The builder
    /// is left empty (its store is moved into the context).
    pub fn build(&mut self) -> Result<FileCacheCtx, BuildError> {
        let source = self.source.take().ok_or(BuildError::NoStore)?;
        if let Some(second) = self.extra_source.take() {
            return Err(BuildError::TwoStores {
                first: source.method(),
                second,
            });
        }
        if !matches!(source, Source::Dir(_))
            && let Some(setting) = self.limits_set.first()
        {
            return Err(BuildError::SettingIgnored {
                setting,
                source_method: source.method(),
            });
        }
        let store: Arc<dyn Store> = match source {
            Source::Namespace(ns) => Arc::new(ns),
            Source::Dir(dir) => Arc::new(Namespace::open_dir(dir, self.options)?),
            Source::Store(store) => store,
        };
        Ok(FileCacheCtx {
            store,
            handles: HandleBudget::new(self.max_handles),
        })
    }
}

/// A borrow of an instance's [`FileCacheCtx`] and its [`ResourceTable`]: what the host functions
/// work on. Return one from the getter given to [`add_to_linker`] or [`add_to_linker_async`].
pub struct FileCacheView<'a> {
    ctx: &'a FileCacheCtx,
    table: &'a mut ResourceTable,
}

impl<'a> FileCacheView<'a> {
    /// Borrows the context and the table.
    pub fn new(ctx: &'a FileCacheCtx, table: &'a mut ResourceTable) -> Self {
        FileCacheView { ctx, table }
    }

    /// Puts a new handle in the table; its slot is already taken (and given back on failure).
    fn push<H: Send + 'static>(&mut self, handle: H) -> Result<Resource<H>, CacheError> {
        self.table.push(handle).map_err(|e| {
            self.ctx.give_slot();
            CacheError::Store(crate::Error::io(
                "cannot hold another handle",
                std::io::Error::other(e.to_string()),
            ))
        })
    }
}

/// Adds `filecache:cache/cache` to `linker`, with synchronous host functions: for an embedder
/// that instantiates and calls guests synchronously.
///
/// `getter` returns the view of the store's data; see the crate docs for a complete example.
pub fn add_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    getter: fn(&mut T) -> FileCacheView<'_>,
) -> wasmtime::Result<()> {
    generated::sync::filecache::cache::cache::add_to_linker::<T, HasFileCache>(linker, getter)
}

/// Adds `filecache:cache/cache` to `linker`, with asynchronous host functions whose storage and
/// remote work runs on tokio's blocking pool (see the [module docs](self#sync-or-async)): for an
/// embedder that calls guests with `call_async` on tokio.
///
/// `getter` returns the view of the store's data; see the crate docs for a complete example.
pub fn add_to_linker_async<T: Send + 'static>(
    linker: &mut Linker<T>,
    getter: fn(&mut T) -> FileCacheView<'_>,
) -> wasmtime::Result<()> {
    generated::asynchronous::filecache::cache::cache::add_to_linker::<T, HasFileCache>(linker, getter)
}

struct HasFileCache;

impl HasData for HasFileCache {
    type Data<'a> = FileCacheView<'a>;
}

fn key(bytes: &[u8]) -> Result<Key, CacheError> {
    Ok(Key::try_from(bytes)?)
}

/// The most bytes one `read` returns, for a guest's `len`.
fn read_len(len: u64) -> usize {
    usize::try_from(len)
        .unwrap_or(usize::MAX)
        .min(crate::store::MAX_READ_CHUNK)
}

/// A writer that is still open, or the error for one already committed.
fn committed() -> CacheError {
    CacheError::Trap(wasmtime::Error::msg("the writer was already committed"))
}
