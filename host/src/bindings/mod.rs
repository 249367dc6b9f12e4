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

mod builder;
mod host;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub use builder::{BuildError, FileCacheCtxBuilder};

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use crate::store::{EntryReader, EntryWriter};
use crate::{EntryStore, Key};

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

/// The state the cache interface keeps per instance: the store it serves (a namespace, or any
/// [`EntryStore`]), and how many handles are open.
pub struct FileCacheCtx {
    store: Arc<dyn EntryStore>,
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
