//! filecache: a persistent cache for WebAssembly component plugins.
//!
//! Plugins (components importing `filecache:cache/cache`) keep expensive results across runs,
//! keyed by SHA-256 digests, without any filesystem access of their own. This crate is the host
//! side:
//!
//! - [`store`]: [`FileCache`], a capability-scoped store over a [`cap_std::fs::Dir`], with
//!   namespaces, integrity-checked entries, atomic writes, quotas and LRU eviction.
//! - [`bindings`]: the wasmtime host implementation of the WIT interface, in the style of
//!   wasmtime's own `wasmtime-wasi-*` crates: a [`FileCacheCtx`] built by a builder, a
//!   [`FileCacheView`] borrowing it, and [`add_to_linker`].
//! - [`remote`]: a shared tier in Redis for a fleet of hosts ([`remote::RemoteTier`]) and a
//!   [`remote::TieredStore`] that puts a local namespace in front of it.
//! - [`size`]: parsing sizes such as `64MiB` (for command lines and configuration).
//!
//! # Embedding
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
//!     filecache_host::add_to_linker(&mut linker, |h: &mut Host| FileCacheView::new(&mut h.cache, &mut h.table))?;
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
#![deny(missing_docs)]

pub mod bindings;
#[cfg(feature = "compiled")]
pub mod compiled;

pub use bindings::{FileCacheCtx, FileCacheCtxBuilder, FileCacheView, add_to_linker};
/// The store this crate serves: [`filecache_store`], re-exported.
pub use filecache_store as store;
#[cfg(feature = "remote")]
pub use filecache_store::remote;
pub use filecache_store::{Durability, Error, FileCache, Key, Namespace, NamespaceOptions, Result, Store, entry, size};

/// The README's Rust examples, compiled as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
