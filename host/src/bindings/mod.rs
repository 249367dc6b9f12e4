//! The wasmtime host implementation of `filecache:cache/cache`.
//!
//! Shaped like wasmtime's own `wasmtime-wasi-*` crates: the per-instance state is a plain
//! [`FileCacheCtx`] (built with [`FileCacheCtxBuilder`]), a [`FileCacheView`] borrows it together
//! with the store's [`ResourceTable`], and [`add_to_linker`] takes a function from the store's data
//! to that view. Readers and writers are resources in the table.
//!
//! The functions are synchronous host functions, which serve both kinds of embedder: one that
//! instantiates and calls synchronously (`wasmtime_wasi::p2::add_to_linker_sync`,
//! `Command::instantiate`) and one that does it asynchronously (`add_to_linker_async`,
//! `instantiate_async`, `call_run(..).await`).
//!
//! Every guest input is checked and answered with an error value; nothing a guest passes can
//! make the host panic. A read returns at most 1 MiB whatever length the guest asks for, so a
//! guest cannot make the host allocate more than that per call.

use std::sync::Arc;

use cap_std::fs::Dir;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use crate::store::{EntryReader, EntryWriter, MAX_READ_CHUNK};
use crate::{Key, Namespace, NamespaceOptions, Store};

mod generated {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "filecache:cache/plugin",
        imports: { default: trappable },
        with: {
            "filecache:cache/cache.reader": super::ReaderHandle,
            "filecache:cache/cache.writer": super::WriterHandle,
        },
    });
}

use generated::filecache::cache::cache as wit;

/// The default number of readers and writers one instance may hold open at once.
pub const DEFAULT_MAX_HANDLES: usize = 64;

/// A reader resource: the host side of a guest's `reader` handle.
pub struct ReaderHandle(Box<dyn EntryReader>);

/// A writer resource: the host side of a guest's `writer` handle.
pub struct WriterHandle(Box<dyn EntryWriter>);

/// The state the cache interface keeps per instance: which store it serves (a namespace, or
/// any [`Store`]) and how many handles are open.
pub struct FileCacheCtx {
    store: Arc<dyn Store>,
    max_handles: usize,
    open_handles: usize,
}

impl FileCacheCtx {
    /// A builder; see [`FileCacheCtxBuilder`].
    pub fn builder() -> FileCacheCtxBuilder {
        FileCacheCtxBuilder::new()
    }

    /// How many readers and writers the instance holds now.
    pub fn open_handles(&self) -> usize {
        self.open_handles
    }
}

enum Source {
    Namespace(Namespace),
    Dir(Dir),
    Store(Arc<dyn Store>),
}

/// Builds a [`FileCacheCtx`].
///
/// ```no_run
/// use filecache_host::{FileCache, FileCacheCtx, NamespaceOptions};
/// let cache = FileCache::open("/var/cache/my-host")?;
/// let ctx = FileCacheCtx::builder()
///     .namespace(cache.namespace("my-plugin", NamespaceOptions::default())?)
///     .max_handles(16)
///     .build()?;
/// # Ok::<(), filecache_host::Error>(())
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
pub struct FileCacheCtxBuilder {
    source: Option<Source>,
    options: NamespaceOptions,
    max_handles: usize,
}

impl Default for FileCacheCtxBuilder {
    fn default() -> Self {
        FileCacheCtxBuilder::new()
    }
}

impl FileCacheCtxBuilder {
    /// A builder with the default limits and no store yet.
    pub fn new() -> Self {
        FileCacheCtxBuilder {
            source: None,
            options: NamespaceOptions::default(),
            max_handles: DEFAULT_MAX_HANDLES,
        }
    }

    /// Serves an opened namespace (its own options apply; the limit setters here are ignored).
    pub fn namespace(&mut self, namespace: Namespace) -> &mut Self {
        self.source = Some(Source::Namespace(namespace));
        self
    }

    /// Serves the namespace whose directory is `dir`, with the limits set on this builder.
    pub fn namespace_dir(&mut self, dir: Dir) -> &mut Self {
        self.source = Some(Source::Dir(dir));
        self
    }

    /// Serves any [`Store`] (a tiered store, say); the limit setters here are ignored.
    pub fn store(&mut self, store: Arc<dyn Store>) -> &mut Self {
        self.source = Some(Source::Store(store));
        self
    }

    /// The largest entry, in bytes of content (for [`namespace_dir`](Self::namespace_dir)).
    pub fn max_entry_size(&mut self, bytes: u64) -> &mut Self {
        self.options.max_entry_size = bytes;
        self
    }

    /// The namespace's quota in bytes on disk (for [`namespace_dir`](Self::namespace_dir)).
    pub fn quota(&mut self, bytes: u64) -> &mut Self {
        self.options.quota = bytes;
        self
    }

    /// Refuses writes (for [`namespace_dir`](Self::namespace_dir)).
    pub fn read_only(&mut self, read_only: bool) -> &mut Self {
        self.options.read_only = read_only;
        self
    }

    /// Whether writes are fsynced (for [`namespace_dir`](Self::namespace_dir)).
    pub fn durability(&mut self, durability: crate::Durability) -> &mut Self {
        self.options.durability = durability;
        self
    }

    /// How many readers and writers one instance may hold open at once (default 64).
    pub fn max_handles(&mut self, max: usize) -> &mut Self {
        self.max_handles = max;
        self
    }

    /// Builds the context. Fails if no store was given, or the namespace directory cannot be
    /// opened.
    pub fn build(&mut self) -> crate::Result<FileCacheCtx> {
        let store: Arc<dyn Store> = match self.source.take() {
            Some(Source::Namespace(ns)) => Arc::new(ns),
            Some(Source::Dir(dir)) => Arc::new(Namespace::open_dir(dir, self.options)?),
            Some(Source::Store(store)) => store,
            None => {
                return Err(crate::Error::io(
                    "FileCacheCtxBuilder::build",
                    std::io::Error::other("no namespace or store was given to the builder"),
                ));
            }
        };
        Ok(FileCacheCtx {
            store,
            max_handles: self.max_handles,
            open_handles: 0,
        })
    }
}

/// A borrow of an instance's [`FileCacheCtx`] and its [`ResourceTable`]: what the host functions
/// work on. Return one from the getter given to [`add_to_linker`].
pub struct FileCacheView<'a> {
    ctx: &'a mut FileCacheCtx,
    table: &'a mut ResourceTable,
}

impl<'a> FileCacheView<'a> {
    /// Borrows the context and the table.
    pub fn new(ctx: &'a mut FileCacheCtx, table: &'a mut ResourceTable) -> Self {
        FileCacheView { ctx, table }
    }
}

/// Adds the `filecache:cache/cache` interface to `linker`.
///
/// `getter` returns the view of the store's data; see the crate docs for a complete example.
pub fn add_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    getter: fn(&mut T) -> FileCacheView<'_>,
) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, HasFileCache>(linker, getter)
}

struct HasFileCache;

impl HasData for HasFileCache {
    type Data<'a> = FileCacheView<'a>;
}

impl From<crate::Error> for wit::Error {
    fn from(e: crate::Error) -> wit::Error {
        use crate::Error as E;
        match e {
            E::InvalidKey { .. } => wit::Error::InvalidKey,
            E::TooLarge { limit } => wit::Error::TooLarge(limit),
            E::QuotaExceeded { .. } => wit::Error::QuotaExceeded,
            E::ReadOnly => wit::Error::ReadOnly,
            E::Corrupt { .. } => wit::Error::Corrupt,
            e @ (E::Io { .. } | E::InvalidNamespace { .. }) => {
                let message = e.full_message();
                tracing::warn!(error = %message, "cache storage error");
                wit::Error::Io(message)
            }
        }
    }
}

type WitResult<T> = Result<T, wit::Error>;

fn key(bytes: &[u8]) -> WitResult<Key> {
    Key::try_from(bytes).map_err(wit::Error::from)
}

impl FileCacheView<'_> {
    /// Takes a handle slot, or answers `too-many-handles`.
    fn take_slot(&mut self) -> WitResult<()> {
        if self.ctx.open_handles >= self.ctx.max_handles {
            return Err(wit::Error::TooManyHandles);
        }
        self.ctx.open_handles += 1;
        Ok(())
    }

    fn give_slot(&mut self) {
        self.ctx.open_handles = self.ctx.open_handles.saturating_sub(1);
    }

    fn push<H: Send + 'static>(&mut self, handle: H) -> WitResult<Resource<H>> {
        self.table.push(handle).map_err(|e| {
            self.give_slot();
            wit::Error::Io(format!("cannot hold another handle: {e}"))
        })
    }
}

impl wit::Host for FileCacheView<'_> {
    fn get(&mut self, k: Vec<u8>) -> wasmtime::Result<WitResult<Option<Vec<u8>>>> {
        Ok(key(&k).and_then(|k| Ok(self.ctx.store.get(&k)?)))
    }

    fn open(&mut self, k: Vec<u8>) -> wasmtime::Result<WitResult<Option<Resource<ReaderHandle>>>> {
        let k = match key(&k) {
            Ok(k) => k,
            Err(e) => return Ok(Err(e)),
        };
        // A miss holds no handle, so it is answered as a miss even when every slot is taken.
        match self.ctx.store.open(&k) {
            Ok(Some(reader)) => {
                if let Err(e) = self.take_slot() {
                    return Ok(Err(e));
                }
                Ok(self.push(ReaderHandle(reader)).map(Some))
            }
            Ok(None) => Ok(Ok(None)),
            Err(e) => Ok(Err(e.into())),
        }
    }

    fn add(&mut self, k: Vec<u8>, content: Vec<u8>) -> wasmtime::Result<WitResult<()>> {
        Ok(key(&k).and_then(|k| Ok(self.ctx.store.add(&k, &content)?)))
    }

    fn create(&mut self, k: Vec<u8>) -> wasmtime::Result<WitResult<Resource<WriterHandle>>> {
        let k = match key(&k) {
            Ok(k) => k,
            Err(e) => return Ok(Err(e)),
        };
        if let Err(e) = self.take_slot() {
            return Ok(Err(e));
        }
        match self.ctx.store.create(&k) {
            Ok(writer) => Ok(self.push(WriterHandle(writer))),
            Err(e) => {
                self.give_slot();
                Ok(Err(e.into()))
            }
        }
    }

    fn delete(&mut self, k: Vec<u8>) -> wasmtime::Result<WitResult<()>> {
        Ok(key(&k).and_then(|k| Ok(self.ctx.store.delete(&k)?)))
    }

    fn contains(&mut self, k: Vec<u8>) -> wasmtime::Result<WitResult<bool>> {
        Ok(key(&k).and_then(|k| Ok(self.ctx.store.contains(&k)?)))
    }
}

impl wit::HostReader for FileCacheView<'_> {
    fn size(&mut self, this: Resource<ReaderHandle>) -> wasmtime::Result<u64> {
        Ok(self.table.get(&this)?.0.size())
    }

    fn read(&mut self, this: Resource<ReaderHandle>, len: u64) -> wasmtime::Result<WitResult<Vec<u8>>> {
        let max = usize::try_from(len).unwrap_or(usize::MAX).min(MAX_READ_CHUNK);
        let reader = self.table.get_mut(&this)?;
        Ok(reader.0.read_chunk(max).map_err(wit::Error::from))
    }

    fn drop(&mut self, this: Resource<ReaderHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        self.give_slot();
        Ok(())
    }
}

impl wit::HostWriter for FileCacheView<'_> {
    fn write(&mut self, this: Resource<WriterHandle>, bytes: Vec<u8>) -> wasmtime::Result<WitResult<()>> {
        let writer = self.table.get_mut(&this)?;
        Ok(writer.0.write(&bytes).map_err(wit::Error::from))
    }

    fn commit(&mut self, this: Resource<WriterHandle>) -> wasmtime::Result<WitResult<()>> {
        let writer = self.table.delete(this)?;
        self.give_slot();
        Ok(writer.0.commit().map_err(wit::Error::from))
    }

    fn drop(&mut self, this: Resource<WriterHandle>) -> wasmtime::Result<()> {
        // Dropping the writer discards its temporary file: nothing becomes visible.
        self.table.delete(this)?;
        self.give_slot();
        Ok(())
    }
}
