//! What this crate's test files and benches share: the data of a guest's `Store`, written once.
//! Test files include it with `mod common;`, benches with
//! `#[path = "../tests/common/mod.rs"] mod common;`.
#![allow(dead_code)] // each includer uses what it needs

use filecache_host::keyvalue::{KeyValueCtx, KeyValueView};
use filecache_host::{FileCacheCtx, FileCacheView, Namespace};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// A guest's store data: WASI, the context of the interface under test (`C`), and the table.
pub struct Host<C> {
    pub wasi: WasiCtx,
    pub ctx: C,
    pub table: ResourceTable,
}

impl<C> Host<C> {
    pub fn new(wasi: WasiCtx, ctx: C) -> Host<C> {
        Host {
            wasi,
            ctx,
            table: ResourceTable::new(),
        }
    }

    /// A guest run as `program args..`, its standard output into `stdout`.
    pub fn with_args(program: &str, args: &[&str], stdout: &MemoryOutputPipe, ctx: C) -> Host<C> {
        let mut wasi = WasiCtx::builder();
        wasi.arg(program).args(args).stdout(stdout.clone()).inherit_stderr();
        Host::new(wasi.build(), ctx)
    }
}

impl<C: Send> WasiView for Host<C> {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl Host<FileCacheCtx> {
    /// A guest of the cache interface over `namespace`, its standard error inherited.
    pub fn over(namespace: &Namespace) -> Host<FileCacheCtx> {
        let ctx = FileCacheCtx::builder()
            .namespace(namespace.clone())
            .build()
            .expect("a context");
        Host::new(WasiCtx::builder().inherit_stderr().build(), ctx)
    }
}

/// The getter of `filecache:cache` (`filecache_host::add_to_linker`).
pub fn cache_view(h: &mut Host<FileCacheCtx>) -> FileCacheView<'_> {
    FileCacheView::new(&h.ctx, &mut h.table)
}

/// The getter of `wasi:keyvalue` (`filecache_host::keyvalue::add_to_linker`).
pub fn kv_view(h: &mut Host<KeyValueCtx>) -> KeyValueView<'_> {
    KeyValueView::new(&h.ctx, &mut h.table)
}
