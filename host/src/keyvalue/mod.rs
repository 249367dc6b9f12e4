//! The wasmtime host implementation of `wasi:keyvalue`, over the store's key-value buckets
//! ([`filecache_store::kv`]): persistent, integrity-checked, quota-bounded, with `increment` and
//! compare-and-swap atomic across processes.
//!
//! Two versions of the proposal are served side by side, each its own import (wasmtime never
//! treats two pre-release versions as compatible): `wasi:keyvalue@0.2.0-draft` (as wasmtime 48
//! vendors it; `wasmtime run -S keyvalue` and wasmCloud speak it) and
//! `wasi:keyvalue@0.2.0-draft2` (the proposal's main branch; Spin speaks it, see the README for
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
//! ```no_run
//! use filecache_host::keyvalue::{KeyValueCtx, KeyValueView};
//! use filecache_host::store::kv::Bucket;
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

use filecache_store::kv::{self, Bucket};
use wasmtime::component::{HasData, Linker, ResourceTable, ResourceTableError};

// How the bindings of both drafts run store work: inline (`run_sync`), or off the async
// executor on a blocking thread (`run_async`). Defined before the modules that use them.
macro_rules! run_sync {
    ($f:expr) => {
        inline($f)
    };
    // Store work on the bucket behind resource `$b`: borrowed from the table, not cloned.
    ($self:ident, $b:ident, |$bucket:ident| $body:expr) => {{
        let $bucket = &$self.table.get(&$b)?.0;
        inline(|| $body)
    }};
}

macro_rules! run_async {
    ($f:expr) => {
        blocking($f).await
    };
    // Store work on the bucket behind resource `$b`: a clone, moved to the blocking thread.
    ($self:ident, $b:ident, |$bucket:ident| $body:expr) => {{
        let $bucket = $self.bucket(&$b)?;
        blocking(move || {
            let $bucket = &$bucket;
            $body
        })
        .await
    }};
}

mod draft;
mod draft2;

/// The answer of `get-many`: each key asked for with its value, or `None` where it has none.
pub(crate) type KeyValues = Vec<Option<(String, Vec<u8>)>>;

/// The most keys one `list-keys` page returns.
pub const PAGE_SIZE: usize = kv::MAX_PAGE;

/// A bucket resource: the host side of a guest's `bucket` handle.
#[doc(hidden)]
pub struct BucketHandle(Bucket);

/// A `cas` resource (`wasi:keyvalue@0.2.0-draft2`): the value read and the write it came from.
#[doc(hidden)]
pub struct CasHandle {
    bucket: Bucket,
    cas: kv::Cas,
}

/// The store error of `wasi:keyvalue`, or a trap. (Public only because the generated bindings
/// name it.)
#[doc(hidden)]
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    NoSuchStore,
    AccessDenied,
    Other(String),
    Trap(wasmtime::Error),
}

impl From<ResourceTableError> for Error {
    fn from(e: ResourceTableError) -> Self {
        Error::Trap(e.into())
    }
}

impl From<kv::Error> for Error {
    fn from(e: kv::Error) -> Self {
        match e {
            kv::Error::Store(filecache_store::Error::ReadOnly) => Error::AccessDenied,
            e => {
                let message = e.full_message();
                if let kv::Error::Store(filecache_store::Error::Io { .. } | filecache_store::Error::Corrupt { .. }) = e
                {
                    tracing::warn!(error = %message, "key-value storage error");
                }
                Error::Other(message)
            }
        }
    }
}

/// The state `wasi:keyvalue` keeps per instance: its own bucket and the buckets granted to it.
pub struct KeyValueCtx {
    own: Option<Bucket>,
    granted: HashMap<String, Bucket>,
}

impl KeyValueCtx {
    /// A builder; see [`KeyValueCtxBuilder`].
    pub fn builder() -> KeyValueCtxBuilder {
        KeyValueCtxBuilder::default()
    }

    fn open(&self, identifier: &str) -> Result<Bucket, Error> {
        let found = if identifier.is_empty() {
            self.own.as_ref()
        } else {
            self.granted.get(identifier)
        };
        // Not granted and not granted are the same answer: the guest learns nothing of what
        // exists.
        found.cloned().ok_or(Error::AccessDenied)
    }
}

/// Builds a [`KeyValueCtx`].
#[derive(Default)]
pub struct KeyValueCtxBuilder {
    own: Option<Bucket>,
    granted: HashMap<String, Bucket>,
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

    /// Builds the context.
    pub fn build(self) -> KeyValueCtx {
        KeyValueCtx {
            own: self.own,
            granted: self.granted,
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
/// the store's work runs on [`tokio::task::spawn_blocking`], so it must be called within a tokio
/// runtime.
pub fn add_to_linker_async<T: Send + 'static>(
    linker: &mut Linker<T>,
    getter: fn(&mut T) -> KeyValueView<'_>,
) -> wasmtime::Result<()> {
    draft::add_to_linker_async(linker, getter)?;
    draft2::add_to_linker_async(linker, getter)
}

/// Runs store work here (for the synchronous host functions).
fn inline<R>(f: impl FnOnce() -> Result<R, Error>) -> Result<R, Error> {
    f()
}

/// Runs store work off the executor.
async fn blocking<R: Send + 'static>(f: impl FnOnce() -> Result<R, Error> + Send + 'static) -> Result<R, Error> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(Error::Trap(wasmtime::Error::msg(format!(
            "key-value host task failed: {e}"
        )))),
    }
}

/// Store work shared by both versions (and by the sync and async host functions).
mod work {
    use super::*;

    pub fn get_many(bucket: &Bucket, keys: Vec<String>) -> Result<KeyValues, Error> {
        keys.into_iter().map(|k| Ok(bucket.get(&k)?.map(|v| (k, v)))).collect()
    }

    /// Each key's write is atomic; the batch is not (the proposal allows it): a failure stops
    /// the batch, leaving the keys before it written.
    pub fn set_many(bucket: &Bucket, key_values: Vec<(String, Vec<u8>)>) -> Result<(), Error> {
        for (k, v) in key_values {
            bucket.set(&k, &v)?;
        }
        Ok(())
    }

    pub fn delete_many(bucket: &Bucket, keys: Vec<String>) -> Result<(), Error> {
        for k in keys {
            bucket.delete(&k)?;
        }
        Ok(())
    }

    /// The draft2 string cursor: 16 lowercase hex digits (the draft's `u64` position).
    pub fn parse_cursor(cursor: Option<String>) -> Result<u64, Error> {
        match cursor {
            None => Ok(0),
            Some(c) if c.len() == 16 && c.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) => {
                u64::from_str_radix(&c, 16).map_err(|_| Error::Other(format!("invalid cursor {c:?}")))
            }
            Some(c) => Err(Error::Other(format!(
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
    fn open_bucket(&mut self, identifier: &str) -> Result<wasmtime::component::Resource<BucketHandle>, Error> {
        let bucket = self.ctx.open(identifier)?;
        Ok(self.table.push(BucketHandle(bucket))?)
    }

    fn bucket(&self, b: &wasmtime::component::Resource<BucketHandle>) -> Result<Bucket, Error> {
        Ok(self.table.get(b)?.0.clone())
    }
}

#[cfg(test)]
mod tests;
