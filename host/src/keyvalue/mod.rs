//! The wasmtime host implementation of `wasi:keyvalue`, over [`filecache_kv`]'s buckets (SQLite,
//! one database per namespace): persistent, integrity-checked, quota-bounded, with `increment`,
//! compare-and-swap and the batch operations atomic across processes.
//!
//! Two versions of the proposal are served side by side, each its own import (wasmtime never
//! treats two pre-release versions as compatible): `wasi:keyvalue@0.2.0-draft` (as wasmtime 48
//! vendors it; `wasmtime run -S keyvalue` and wasmCloud speak it) and
//! `wasi:keyvalue@0.2.0-draft2` (the proposal's main branch; Spin speaks it, see `docs/keyvalue.md` for
//! where Spin's copy differs). Their WIT is vendored under `wit/deps/`.
//!
//! Shaped like wasmtime's `wasmtime-wasi-keyvalue`: the per-instance state is a plain
//! [`KeyValueCtx`] (built with [`KeyValueCtxBuilder`]), a [`KeyValueView`] borrows it together
//! with the store's [`ResourceTable`], and [`add_to_linker`] (synchronous host functions) or
//! [`add_to_linker_async`] (asynchronous ones, which do the store's work on
//! [`tokio::task::spawn_blocking`] so that a file system call never blocks the executor) takes a
//! function from the store's data to that view. Both add both versions.
//!
//! Buckets: `open("")` opens the instance's own bucket (the namespace it runs in); any other
//! identifier opens a bucket the host granted by that name ([`KeyValueCtxBuilder::grant`]), and
//! anything else is `access-denied`. A write to a read-only namespace is `access-denied`; every
//! other failure (a value over the limit, a full quota, a damaged record, which is removed, an
//! I/O error) is `other` with a message that says what happened.
//!
//! Limits per instance: buckets and cas handles count against the instance's handle budget
//! ([`KeyValueCtxBuilder::handle_budget`]: share the cache interface's, and one limit covers
//! every handle); one `get-many` gathers at most [`KeyValueCtxBuilder::max_call_bytes`] bytes of
//! values (past it, `other`); a cas handle holds its key and the version it read, never the
//! value, which `current` reads again.
//!
//! ```no_run
//! use filecache_host::keyvalue::{KeyValueCtx, KeyValueView};
//! use filecache_host::kv::Bucket;
//! use filecache_host::{FileCache, NamespaceOptions};
//! use wasmtime::component::{Linker, ResourceTable};
//! use wasmtime::{Engine, Store};
//!
//! struct Host {
//!     kv: KeyValueCtx,
//!     table: ResourceTable,
//! }
//!
//! fn main() -> wasmtime::Result<()> {
//!     let engine = Engine::default();
//!     let mut linker = Linker::<Host>::new(&engine);
//!     filecache_host::keyvalue::add_to_linker(&mut linker, |h: &mut Host| KeyValueView::new(&h.kv, &mut h.table))?;
//!
//!     let cache = FileCache::open("/var/cache/my-host")?;
//!     let options = NamespaceOptions::default();
//!     let kv = KeyValueCtx::builder()
//!         .bucket(Bucket::new(cache.namespace("my-plugin", options)?))
//!         .grant("shared-config", Bucket::new(cache.namespace("shared-config", options)?))
//!         .build();
//!     let mut store = Store::new(&engine, Host { kv, table: ResourceTable::new() });
//!     // ... instantiate a component with `linker` in `store` and call it ...
//!     # let _ = &mut store;
//!     Ok(())
//! }
//! ```

use std::collections::HashMap;

use filecache_kv::{self as kv, Bucket};

use crate::bindings::HandleBudget;
use wasmtime::component::{HasData, Linker, ResourceTable, ResourceTableError};

// Each host function is written once, for both kinds of bindings (`crate::run`); `host` holds
// what both drafts share.
mod draft;
mod draft2;
mod host;

/// The answer of `get-many`: each key asked for with its value, or `None` where it has none.
pub(crate) type KeyValues = Vec<Option<(String, Vec<u8>)>>;

/// The most keys one `list-keys` page returns.
pub const PAGE_SIZE: usize = kv::MAX_PAGE;

/// A bucket resource: the host side of a guest's `bucket` handle.
#[doc(hidden)]
pub struct BucketHandle(Bucket);

/// A `cas` resource (`wasi:keyvalue@0.2.0-draft2`): the key and the version of its value that
/// the guest last saw (not the value: `current` reads it again, so that a handle holds no more
/// than its key).
#[doc(hidden)]
pub struct CasHandle {
    bucket: Bucket,
    key: String,
    version: Option<kv::Version>,
}

/// The most bytes of values one `get-many` gathers by default.
pub const DEFAULT_MAX_CALL_BYTES: u64 = 64 << 20;

/// The store error of `wasi:keyvalue`, or a trap. (Public only because the generated bindings
/// name it.)
#[doc(hidden)]
#[derive(Debug)]
#[non_exhaustive]
pub enum KeyValueError {
    NoSuchStore,
    AccessDenied,
    Other(String),
    Trap(wasmtime::Error),
}

impl From<ResourceTableError> for KeyValueError {
    fn from(e: ResourceTableError) -> Self {
        KeyValueError::Trap(e.into())
    }
}

impl From<crate::run::TaskFailed> for KeyValueError {
    fn from(e: crate::run::TaskFailed) -> Self {
        KeyValueError::Trap(wasmtime::Error::new(e))
    }
}

impl From<kv::Error> for KeyValueError {
    fn from(e: kv::Error) -> Self {
        match e {
            kv::Error::Store(filecache_store::Error::ReadOnly) => KeyValueError::AccessDenied,
            e => {
                let message = e.full_message();
                match e {
                    kv::Error::Store(filecache_store::Error::Io { .. } | filecache_store::Error::Corrupt { .. }) => {
                        tracing::warn!(error = %message, "key-value storage error");
                    }
                    // The shared server (Redis) failed: the call fails, with no local fallback.
                    kv::Error::Remote { .. } => {
                        tracing::warn!(error = %message, "key-value call failed; the guest got `other` (no local fallback)");
                    }
                    _ => {}
                }
                KeyValueError::Other(message)
            }
        }
    }
}

/// The state `wasi:keyvalue` keeps per instance: its own bucket, the buckets granted to it, and
/// its limits.
pub struct KeyValueCtx {
    own: Option<Bucket>,
    granted: HashMap<String, Bucket>,
    handles: HandleBudget,
    max_call_bytes: u64,
}

impl KeyValueCtx {
    /// A builder; see [`KeyValueCtxBuilder`].
    pub fn builder() -> KeyValueCtxBuilder {
        KeyValueCtxBuilder::default()
    }

    fn open(&self, identifier: &str) -> Result<Bucket, KeyValueError> {
        let found = if identifier.is_empty() {
            self.own.as_ref()
        } else {
            self.granted.get(identifier)
        };
        // Not granted and not granted are the same answer: the guest learns nothing of what
        // exists.
        found.cloned().ok_or(KeyValueError::AccessDenied)
    }

    /// The handle budget this context counts its buckets and cas handles against.
    pub fn handle_budget(&self) -> &HandleBudget {
        &self.handles
    }

    /// Takes a handle slot, or answers `other` (the interface has no error of its own for it).
    fn take_slot(&self) -> Result<(), KeyValueError> {
        if self.handles.take() {
            Ok(())
        } else {
            Err(KeyValueError::Other(format!(
                "too many handles: at most {} handles (buckets, cas handles, cache readers and writers) may be open at once; drop some",
                self.handles.max()
            )))
        }
    }
}

/// Builds a [`KeyValueCtx`].
pub struct KeyValueCtxBuilder {
    own: Option<Bucket>,
    granted: HashMap<String, Bucket>,
    handles: Option<HandleBudget>,
    max_handles: usize,
    max_call_bytes: u64,
}

impl Default for KeyValueCtxBuilder {
    fn default() -> Self {
        KeyValueCtxBuilder {
            own: None,
            granted: HashMap::new(),
            handles: None,
            max_handles: crate::bindings::DEFAULT_MAX_HANDLES,
            max_call_bytes: DEFAULT_MAX_CALL_BYTES,
        }
    }
}

impl KeyValueCtxBuilder {
    /// The bucket `open("")` opens: the instance's own (the namespace it runs in). Without one,
    /// `open("")` is `access-denied`.
    pub fn bucket(mut self, bucket: Bucket) -> Self {
        self.own = Some(bucket);
        self
    }

    /// Lets the instance open `bucket` by `identifier` (any string but the empty one, which is
    /// its own bucket).
    pub fn grant(mut self, identifier: impl Into<String>, bucket: Bucket) -> Self {
        let identifier = identifier.into();
        if identifier.is_empty() {
            self.own = Some(bucket);
        } else {
            self.granted.insert(identifier, bucket);
        }
        self
    }

    /// Counts buckets and cas handles against `budget` (the cache interface's:
    /// [`crate::FileCacheCtx::handle_budget`]), so that one limit covers every handle of the
    /// instance. Without it, the context has a budget of its own of
    /// [`max_handles`](Self::max_handles).
    pub fn handle_budget(mut self, budget: HandleBudget) -> Self {
        self.handles = Some(budget);
        self
    }

    /// The most buckets and cas handles held at once when no shared budget is given (default
    /// [`DEFAULT_MAX_HANDLES`](crate::bindings::DEFAULT_MAX_HANDLES)).
    pub fn max_handles(mut self, max: usize) -> Self {
        self.max_handles = max;
        self
    }

    /// The most bytes of values one `get-many` gathers (default [`DEFAULT_MAX_CALL_BYTES`]):
    /// past it the call answers `other`, so that a guest cannot make the host hold more.
    pub fn max_call_bytes(mut self, bytes: u64) -> Self {
        self.max_call_bytes = bytes;
        self
    }

    /// Builds the context.
    pub fn build(self) -> KeyValueCtx {
        KeyValueCtx {
            own: self.own,
            granted: self.granted,
            handles: self.handles.unwrap_or_else(|| HandleBudget::new(self.max_handles)),
            max_call_bytes: self.max_call_bytes,
        }
    }
}

/// A borrow of an instance's [`KeyValueCtx`] and its [`ResourceTable`]: what the host functions
/// work on. Return one from the getter given to [`add_to_linker`].
pub struct KeyValueView<'a> {
    ctx: &'a KeyValueCtx,
    table: &'a mut ResourceTable,
}

impl<'a> KeyValueView<'a> {
    /// Borrows the context and the table.
    pub fn new(ctx: &'a KeyValueCtx, table: &'a mut ResourceTable) -> Self {
        KeyValueView { ctx, table }
    }
}

struct HasKeyValue;

impl HasData for HasKeyValue {
    type Data<'a> = KeyValueView<'a>;
}

/// Adds `wasi:keyvalue@0.2.0-draft` and `@0.2.0-draft2` (interfaces `store`, `atomics`,
/// `batch`) to `linker`, with synchronous host functions (for an engine without async support).
///
/// `getter` returns the view of the store's data; see the module docs for a complete example.
pub fn add_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    getter: fn(&mut T) -> KeyValueView<'_>,
) -> wasmtime::Result<()> {
    draft::add_to_linker_sync(linker, getter)?;
    draft2::add_to_linker_sync(linker, getter)
}

/// As [`add_to_linker`], with asynchronous host functions (for an engine with async support):
/// the store's work runs on [`tokio::task::spawn_blocking`] (on the calling thread outside a
/// tokio runtime).
pub fn add_to_linker_async<T: Send + 'static>(
    linker: &mut Linker<T>,
    getter: fn(&mut T) -> KeyValueView<'_>,
) -> wasmtime::Result<()> {
    draft::add_to_linker_async(linker, getter)?;
    draft2::add_to_linker_async(linker, getter)
}

/// Store work shared by both versions (and by the sync and async host functions).
mod work {
    use super::*;

    /// At most `max_bytes` bytes of values in all (past it: `other`).
    pub fn get_many(bucket: &Bucket, keys: Vec<String>, max_bytes: u64) -> Result<KeyValues, KeyValueError> {
        let values = bucket.get_many(&keys, max_bytes)?;
        Ok(keys.into_iter().zip(values).map(|(k, v)| v.map(|v| (k, v))).collect())
    }

    /// The draft's `u64` cursor as a position.
    pub fn position(cursor: Option<u64>) -> Result<u64, KeyValueError> {
        Ok(cursor.unwrap_or(0))
    }

    /// The draft2 string cursor: 16 lowercase hex digits (the draft's `u64` position).
    pub fn parse_cursor(cursor: Option<String>) -> Result<u64, KeyValueError> {
        match cursor {
            None => Ok(0),
            Some(c) if c.len() == 16 && c.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) => {
                u64::from_str_radix(&c, 16).map_err(|_| KeyValueError::Other(format!("invalid cursor {c:?}")))
            }
            Some(c) => Err(KeyValueError::Other(format!(
                "invalid cursor {:?}: pass back a cursor returned by list-keys",
                c.chars().take(40).collect::<String>()
            ))),
        }
    }

    pub fn format_cursor(next: u64) -> String {
        format!("{next:016x}")
    }
}

impl KeyValueView<'_> {
    fn open_bucket(&mut self, identifier: &str) -> Result<wasmtime::component::Resource<BucketHandle>, KeyValueError> {
        let bucket = self.ctx.open(identifier)?;
        self.push(BucketHandle(bucket))
    }

    fn bucket(&self, b: &wasmtime::component::Resource<BucketHandle>) -> Result<Bucket, KeyValueError> {
        Ok(self.table.get(b)?.0.clone())
    }

    /// Puts a new handle in the table, taking a slot of the budget for it.
    fn push<H: Send + 'static>(&mut self, handle: H) -> Result<wasmtime::component::Resource<H>, KeyValueError> {
        self.ctx.take_slot()?;
        self.table.push(handle).map_err(|e| {
            self.ctx.handles.give();
            KeyValueError::Other(format!("cannot hold another handle: {e}"))
        })
    }

    /// Removes a handle from the table and gives its slot back.
    fn remove<H: 'static>(&mut self, r: wasmtime::component::Resource<H>) -> Result<H, KeyValueError> {
        let h = self.table.delete(r)?;
        self.ctx.handles.give();
        Ok(h)
    }
}

#[cfg(test)]
mod tests;
