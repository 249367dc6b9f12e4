//! The guest path against the host-native store, in one run: the benchmark component
//! (`tests/programs/src/bin/bench.rs`) repeats one cache operation through the WIT interface
//! (whole `get` / `add`, streamed `open` / `create` in 1 MiB pieces, a miss), and the host times
//! the call with criterion (`iter_custom`: one call of `run(op, iters)` per sample, so the
//! per-call overhead of entering the component is amortised and the time per operation remains).
//! The same operations made directly on the same namespace from the host are measured beside
//! them (`host-get`, `host-add`, `host-miss`).
//!
//! `cargo bench -p filecache-host --bench guest` (about 4 minutes).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use filecache_host::{FileCache, FileCacheCtx, Key, Namespace, NamespaceOptions};
use wasmtime::component::{Component, Linker, TypedFunc};
use wasmtime::{Engine, Store};

#[path = "../tests/common/mod.rs"]
mod common;

type Host = common::Host<FileCacheCtx>;
use common::cache_view as view;

const SIZES: [u64; 4] = [1 << 10, 64 << 10, 1 << 20, 64 << 20];

struct Guest {
    store: Store<Host>,
    prepare: TypedFunc<(u64,), ()>,
    run: TypedFunc<(String, u32), (Result<u64, String>,)>,
}

impl Guest {
    fn new(ns: &Namespace) -> Guest {
        let engine = Engine::default();
        let mut linker = Linker::<Host>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).expect("WASI links");
        filecache_host::add_to_linker(&mut linker, view).expect("the cache links");
        let component = Component::from_file(&engine, filecache_tests::bench_wasm()).expect("the bench guest compiles");
        let host = Host::over(ns);
        let mut store = Store::new(&engine, host);
        let instance = linker
            .instantiate(&mut store, &component)
            .expect("the bench guest instantiates");
        let prepare = instance
            .get_typed_func(&mut store, "prepare")
            .expect("`prepare` is exported");
        let run = instance.get_typed_func(&mut store, "run").expect("`run` is exported");
        Guest { store, prepare, run }
    }

    fn prepare(&mut self, size: u64) {
        self.prepare.call(&mut self.store, (size,)).expect("prepare");
    }

    /// Times `iters` repetitions of `op` inside the guest.
    fn time(&mut self, op: &str, iters: u64) -> Duration {
        let iters = u32::try_from(iters).expect("fewer than 2^32 iterations");
        let op = op.to_string();
        let start = Instant::now();
        let (result,) = self.run.call(&mut self.store, (op, iters)).expect("run does not trap");
        let elapsed = start.elapsed();
        result.unwrap_or_else(|e| panic!("the guest failed: {e}"));
        elapsed
    }
}

/// The guest's key and content for `size` (as `filecache_test_programs` derives them).
fn entry(size: u64) -> (Key, Vec<u8>) {
    let key = Key::try_from(&filecache_test_programs::key_for(&format!("bench/{size}"))[..]).expect("32 bytes");
    (key, filecache_test_programs::content("bench", size))
}

fn guest(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let cache = FileCache::open(tmp.path()).expect("the cache opens");
    let ns = cache
        .namespace(
            "bench",
            NamespaceOptions::default().quota(u64::MAX).max_entry_size(u64::MAX),
        )
        .expect("a namespace");
    let mut g = Guest::new(&ns);
    let mut group = c.benchmark_group("guest");
    group.warm_up_time(Duration::from_secs(1));
    for size in SIZES {
        let (key, data) = entry(size);
        ns.add(&key, &data).expect("add");
        g.prepare(size);
        if size >= 64 << 20 {
            group.sample_size(10).measurement_time(Duration::from_secs(8));
        } else {
            group.sample_size(30).measurement_time(Duration::from_secs(3));
        }
        group.throughput(Throughput::Bytes(size));
        for op in ["get", "open", "add", "create"] {
            group.bench_function(BenchmarkId::new(format!("guest-{op}"), size), |b| {
                b.iter_custom(|iters| g.time(op, iters))
            });
        }
        group.bench_function(BenchmarkId::new("host-get", size), |b| {
            b.iter(|| ns.get(black_box(&key)).expect("get").expect("a hit"))
        });
        group.bench_function(BenchmarkId::new("host-add", size), |b| {
            b.iter(|| ns.add(black_box(&key), black_box(&data)).expect("add"))
        });
    }
    group.throughput(Throughput::Elements(1));
    group.sample_size(50).measurement_time(Duration::from_secs(3));
    let absent = Key::try_from(&filecache_test_programs::key_for("bench/absent")[..]).expect("32 bytes");
    group.bench_function("guest-miss", |b| b.iter_custom(|iters| g.time("miss", iters)));
    group.bench_function("host-miss", |b| {
        b.iter(|| assert!(ns.get(black_box(&absent)).expect("get").is_none()))
    });
    group.finish();
}

criterion_group!(benches, guest);
criterion_main!(benches);
