//! The per-call cost of the host functions, synchronous (`add_to_linker`) against asynchronous
//! (`add_to_linker_async`, whose storage work goes to tokio's blocking pool and back), and the
//! synchronous functions called from an async store (what an async embedder got before
//! `add_to_linker_async`). The bench guest (`tests/programs/src/bin/bench.rs`) repeats one
//! operation inside one call of `run(op, iters)`, so the time per operation is the host
//! function's, plus the guest's loop: a `get` of a 1 KiB entry, a `miss`, and a 64 KiB `get`.
//!
//! `cargo bench -p filecache-host --bench calls` (about 1 minute).

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use filecache_host::{FileCache, FileCacheCtx, Key, Namespace, NamespaceOptions};
use wasmtime::component::{Component, Linker, TypedFunc};
use wasmtime::{Engine, Store};

#[path = "../tests/common/mod.rs"]
mod common;

type Host = common::Host<FileCacheCtx>;
use common::cache_view as view;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Sync,
    Async,
    SyncInAsyncStore,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Sync => "sync",
            Mode::Async => "async",
            Mode::SyncInAsyncStore => "sync-in-async-store",
        }
    }
}

struct Guest {
    mode: Mode,
    store: Store<Host>,
    prepare: TypedFunc<(u64,), ()>,
    run: TypedFunc<(String, u32), (Result<u64, String>,)>,
}

impl Guest {
    fn new(ns: &Namespace, mode: Mode, rt: &tokio::runtime::Runtime) -> Guest {
        let engine = Engine::default();
        let component = Component::from_file(&engine, filecache_tests::bench_wasm()).expect("the bench guest compiles");
        let mut linker = Linker::<Host>::new(&engine);
        match mode {
            Mode::Sync => {
                wasmtime_wasi::p2::add_to_linker_sync(&mut linker).expect("WASI links");
                filecache_host::add_to_linker(&mut linker, view).expect("the cache links");
            }
            Mode::Async => {
                wasmtime_wasi::p2::add_to_linker_async(&mut linker).expect("WASI links");
                filecache_host::add_to_linker_async(&mut linker, view).expect("the cache links");
            }
            Mode::SyncInAsyncStore => {
                wasmtime_wasi::p2::add_to_linker_async(&mut linker).expect("WASI links");
                filecache_host::add_to_linker(&mut linker, view).expect("the cache links");
            }
        }
        let host = Host::over(ns);
        let mut store = Store::new(&engine, host);
        let instance = if mode == Mode::Sync {
            linker.instantiate(&mut store, &component)
        } else {
            rt.block_on(linker.instantiate_async(&mut store, &component))
        }
        .expect("the bench guest instantiates");
        let prepare = instance
            .get_typed_func(&mut store, "prepare")
            .expect("`prepare` is exported");
        let run = instance.get_typed_func(&mut store, "run").expect("`run` is exported");
        Guest {
            mode,
            store,
            prepare,
            run,
        }
    }

    fn prepare(&mut self, size: u64, rt: &tokio::runtime::Runtime) {
        if self.mode == Mode::Sync {
            self.prepare.call(&mut self.store, (size,)).expect("prepare");
        } else {
            rt.block_on(self.prepare.call_async(&mut self.store, (size,)))
                .expect("prepare");
        }
    }

    /// Times `iters` repetitions of `op` inside the guest.
    fn time(&mut self, op: &str, iters: u64, rt: &tokio::runtime::Runtime) -> Duration {
        let iters = u32::try_from(iters).expect("fewer than 2^32 iterations");
        let args = (op.to_string(), iters);
        let start = Instant::now();
        let (result,) = if self.mode == Mode::Sync {
            self.run.call(&mut self.store, args)
        } else {
            rt.block_on(self.run.call_async(&mut self.store, args))
        }
        .expect("run does not trap");
        let elapsed = start.elapsed();
        result.unwrap_or_else(|e| panic!("the guest failed: {e}"));
        elapsed
    }
}

fn calls(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let cache = FileCache::open(tmp.path()).expect("the cache opens");
    let ns = cache
        .namespace("calls", NamespaceOptions::default())
        .expect("a namespace");
    let mut group = c.benchmark_group("calls");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    for mode in [Mode::Sync, Mode::Async, Mode::SyncInAsyncStore] {
        let mut guest = Guest::new(&ns, mode, &rt);
        for (op, size) in [("get", 1u64 << 10), ("miss", 1 << 10), ("get", 64 << 10)] {
            let key = Key::try_from(&filecache_test_programs::key_for(&format!("bench/{size}"))[..]).expect("32 bytes");
            ns.add(&key, &filecache_test_programs::content("bench", size))
                .expect("add");
            guest.prepare(size, &rt);
            let id = BenchmarkId::new(format!("{op}-{}KiB", size >> 10), mode.name());
            group.bench_function(id, |b| b.iter_custom(|iters| guest.time(op, iters, &rt)));
        }
    }
    group.finish();
}

criterion_group!(benches, calls);
criterion_main!(benches);
