//! filecache: a persistent cache for WebAssembly component plugins.
//!
//! Plugins (components importing `filecache:cache/cache`) keep expensive results across runs,
//! keyed by SHA-256 digests, without any filesystem access of their own. This crate is the host
//! side, shaped like wasmtime's own `wasmtime-wasi-*` crates: a plain [`FileCacheCtx`] per
//! instance (built with [`FileCacheCtx::builder`]), a [`FileCacheView`] that borrows it with the
//! store's `ResourceTable`, and [`add_to_linker`] (synchronous host functions) or
//! [`add_to_linker_async`] (asynchronous ones, whose storage and Redis work runs off the
//! executor).
//!
//! # Embedding, synchronously
//!
//! ```no_run
//! use filecache_host::{FileCache, FileCacheCtx, FileCacheView, NamespaceOptions};
//! use wasmtime::component::{Component, Linker, ResourceTable};
//! use wasmtime::{Engine, Store};
//! use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
//!
//! struct Host {
//!     wasi: WasiCtx,
//!     cache: FileCacheCtx,
//!     table: ResourceTable,
//! }
//!
//! impl WasiView for Host {
//!     fn ctx(&mut self) -> WasiCtxView<'_> {
//!         WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
//!     }
//! }
//!
//! fn main() -> wasmtime::Result<()> {
//!     let engine = Engine::default();
//!     let mut linker = Linker::<Host>::new(&engine);
//!     wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
//!     filecache_host::add_to_linker(&mut linker, |h: &mut Host| FileCacheView::new(&h.cache, &mut h.table))?;
//!
//!     let cache = FileCache::open("/var/cache/my-host")?;
//!     let namespace = cache.namespace("my-plugin", NamespaceOptions::default())?;
//!     let host = Host {
//!         wasi: WasiCtx::builder().inherit_stdio().build(),
//!         cache: FileCacheCtx::builder().namespace(namespace).max_handles(64).build()?,
//!         table: ResourceTable::new(),
//!     };
//!     let mut store = Store::new(&engine, host);
//!     let component = Component::from_file(&engine, "plugin.wasm")?;
//!     let command = wasmtime_wasi::p2::bindings::sync::Command::instantiate(&mut store, &component, &linker)?;
//!     let _ = command.wasi_cli_run().call_run(&mut store)?;
//!     Ok(())
//! }
//! ```
//!
//! # Embedding on tokio
//!
//! The same host, with asynchronous host functions: a guest waiting on the disk or on a remote
//! tier (module `remote`, feature `remote`) holds a thread of tokio's blocking pool, never an
//! executor thread, so other tasks and other guests carry on.
//!
//! ```no_run
//! use std::sync::Arc;
//! use filecache_host::{FileCache, FileCacheCtx, FileCacheView, NamespaceOptions};
//! use wasmtime::component::{Component, Linker, ResourceTable};
//! use wasmtime::{Engine, Store};
//! use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
//!
//! struct Host {
//!     wasi: WasiCtx,
//!     cache: FileCacheCtx,
//!     table: ResourceTable,
//! }
//!
//! impl WasiView for Host {
//!     fn ctx(&mut self) -> WasiCtxView<'_> {
//!         WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> wasmtime::Result<()> {
//!     let engine = Engine::default();
//!     let mut linker = Linker::<Host>::new(&engine);
//!     wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
//!     filecache_host::add_to_linker_async(&mut linker, |h: &mut Host| FileCacheView::new(&h.cache, &mut h.table))?;
//!     let component = Component::from_file(&engine, "plugin.wasm")?;
//!     let cache = FileCache::open("/var/cache/my-host")?;
//!     let namespace = cache.namespace("my-plugin", NamespaceOptions::default())?;
//!
//!     // Many instances at once, each with its own `Store` (and so its own handle budget),
//!     // sharing one namespace.
//!     let mut tasks = Vec::new();
//!     for _ in 0..16 {
//!         let (engine, linker, component) = (engine.clone(), linker.clone(), component.clone());
//!         let cache = FileCacheCtx::builder().namespace(namespace.clone()).build()?;
//!         tasks.push(tokio::spawn(async move {
//!             let host = Host { wasi: WasiCtx::builder().build(), cache, table: ResourceTable::new() };
//!             let mut store = Store::new(&engine, host);
//!             let command = wasmtime_wasi::p2::bindings::Command::instantiate_async(&mut store, &component, &linker).await?;
//!             command.wasi_cli_run().call_run(&mut store).await
//!         }));
//!     }
//!     for task in tasks {
//!         let _ = task.await??;
//!     }
//!     Ok(())
//! }
//! ```
//!
//! # Modules
//!
//! - [`store`]: [`FileCache`], a capability-scoped store over a [`cap_std::fs::Dir`], with
//!   namespaces, integrity-checked entries, atomic writes, quotas and LRU eviction (the
//!   `filecache-store` crate, re-exported).
//! - [`bindings`]: the host implementation of the WIT interface, sync and async.
//! - [`compiled`] (feature `compiled`): [`compiled::ComponentCache`], compiled code of components
//!   kept in the cache.
//! - `remote` (feature `remote`): a shared tier in Redis for a fleet of hosts (`RemoteTier`) and
//!   a `TieredStore` that puts a local namespace in front of it; give it to the context with
//!   [`FileCacheCtxBuilder::store`].
//! - [`size`]: parsing sizes such as `64MiB` (for command lines and configuration).
//!
//! # Cargo features
//!
//! - `compiled` (default): [`compiled::ComponentCache`]; enables wasmtime's `cranelift`.
//! - `incremental`: `compiled::IncrementalCache`; enables wasmtime's `incremental-cache`.
//! - `remote`: the `remote` module (`filecache-store`'s), over the `redis` crate.
//!
//! Without them, the crate needs only wasmtime's `runtime`, `component-model` and `async`.
#![deny(missing_docs)]

pub mod bindings;
#[cfg(feature = "compiled")]
pub mod compiled;
#[cfg(feature = "keyvalue")]
pub mod keyvalue;
mod run;

pub use bindings::{
    BuildError, CacheError, FileCacheCtx, FileCacheCtxBuilder, FileCacheView, HandleBudget, add_to_linker,
    add_to_linker_async,
};
/// Key-value buckets ([`filecache_kv`], re-exported): the engine `wasi:keyvalue` serves.
#[cfg(feature = "keyvalue")]
pub use filecache_kv as kv;
/// The store this crate serves: [`filecache_store`], re-exported.
pub use filecache_store as store;
#[cfg(feature = "remote")]
pub use filecache_store::remote;
pub use filecache_store::{
    Durability, EntryStore, Error, FileCache, Key, Namespace, NamespaceOptions, Result, entry, size,
};

/// The Rust examples of the README and of `docs/`, compiled as doctests so that they stay true.
#[cfg(any(test, doctest))]
mod doctests;
