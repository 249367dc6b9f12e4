//! Loading a component three ways on one engine configuration: a cold Cranelift compile,
//! wasmtime's built-in `Cache` hit, and this crate's compiled-cache hit. Also what incremental
//! compilation buys on a component that differs from a cached one in one function.
//!
//! `cargo bench -p filecache-host --features incremental --bench compiled`

use std::path::Path;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use filecache_host::FileCache;
use filecache_host::compiled::{CompiledOptions, ComponentCache, IncrementalCache};
use wasmtime::component::Component;
use wasmtime::{Cache, CacheConfig, Config, Engine};

fn engine(builtin_cache: Option<&Path>) -> Engine {
    let mut config = Config::new();
    if let Some(dir) = builtin_cache {
        let mut cc = CacheConfig::new();
        cc.with_directory(dir);
        config.cache(Some(Cache::new(cc).unwrap()));
    }
    Engine::new(&config).unwrap()
}

fn loads(c: &mut Criterion) {
    let components = [
        ("demo brotli-assets", filecache_tests::brotli_assets_wasm()),
        ("contract", filecache_tests::contract_wasm()),
    ];
    for (name, path) in components {
        let wasm = std::fs::read(path).unwrap();
        let label = format!("{name} ({:.1} MB)", wasm.len() as f64 / 1e6);
        let tmp = tempfile::tempdir().unwrap();
        let plain = engine(None);
        let builtin = engine(Some(&tmp.path().join("wasmtime-cache")));
        let cache = FileCache::open(tmp.path().join("filecache")).unwrap();

        let mut g = c.benchmark_group("component load");
        g.sample_size(10);
        g.measurement_time(Duration::from_secs(3));
        g.bench_function(BenchmarkId::new("cold compile", &label), |b| {
            b.iter(|| Component::new(&plain, &wasm).unwrap())
        });
        Component::from_binary(&builtin, &wasm).unwrap(); // fills wasmtime's cache
        g.bench_function(BenchmarkId::new("wasmtime Cache hit", &label), |b| {
            b.iter(|| Component::from_binary(&builtin, &wasm).unwrap())
        });
        ComponentCache::new(&cache, &plain, CompiledOptions::default())
            .load::<Component>(&wasm)
            .unwrap();
        // Let the file's timestamps age past the "racy" window so its digest is remembered.
        std::thread::sleep(Duration::from_millis(2100));
        ComponentCache::new(&cache, &plain, CompiledOptions::default())
            .load_file::<Component>(path)
            .unwrap();
        // A fresh ComponentCache per load: nothing in memory, as in a new process.
        g.bench_function(BenchmarkId::new("filecache hit (file)", &label), |b| {
            b.iter(|| {
                ComponentCache::new(&cache, &plain, CompiledOptions::default())
                    .load_file::<Component>(path)
                    .unwrap()
            })
        });
        g.bench_function(BenchmarkId::new("filecache hit (bytes, hashed)", &label), |b| {
            b.iter(|| {
                ComponentCache::new(&cache, &plain, CompiledOptions::default())
                    .load::<Component>(&wasm)
                    .unwrap()
            })
        });
        g.finish();
    }
}

/// A component of `n` functions; `variant` changes the body of function 0 only.
fn many_functions(n: usize, variant: u32) -> Vec<u8> {
    let mut wat = String::from("(component (core module\n");
    for i in 0..n {
        let k = if i == 0 { variant } else { i as u32 };
        wat.push_str(&format!(
            "(func (export \"f{i}\") (param i32) (result i32) (local i32)
               (loop $l (local.set 1 (i32.add (local.get 1) (i32.mul (local.get 0) (i32.const {k}))))
                 (local.set 0 (i32.sub (local.get 0) (i32.const 1)))
                 (br_if $l (i32.gt_s (local.get 0) (i32.const 0))))
               (i32.xor (local.get 1) (i32.const {k})))\n"
        ));
    }
    wat.push_str("))");
    wat::parse_str(&wat).unwrap()
}

fn incremental(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let cache = FileCache::open(tmp.path()).unwrap();
    let mut config = Config::new();
    config
        .enable_incremental_compilation(IncrementalCache::open(&cache, 1 << 30).unwrap())
        .unwrap();
    let incremental = Engine::new(&config).unwrap();
    let plain = engine(None);
    let original = many_functions(2000, 1);
    Component::new(&incremental, &original).unwrap(); // every function's code cached
    let mut g = c.benchmark_group("one function changed (2000 functions)");
    g.sample_size(10);
    // Each compile gets a variant neither engine has seen (generated outside the timing).
    let variants: Vec<Vec<u8>> = (0..200).map(|v| many_functions(2000, 1000 + v)).collect();
    let mut next = variants.iter().cycle();
    g.bench_function("compile without incremental", |b| {
        b.iter(|| Component::new(&plain, next.next().unwrap()).unwrap())
    });
    let mut next = variants.iter().cycle();
    g.bench_function("compile with --incremental", |b| {
        b.iter(|| Component::new(&incremental, next.next().unwrap()).unwrap())
    });
    g.finish();
}

/// The MAC every hit computes over the whole artifact: keyed BLAKE3 (one thread, and split
/// across threads as the cache does from 1 MiB) against HMAC-SHA256 (SHA-NI where the CPU has it).
fn mac(c: &mut Criterion) {
    use hmac::Mac;
    let key = [7u8; 32];
    let mut g = c.benchmark_group("artifact MAC");
    for size in [64usize << 10, 1 << 20, 8 << 20] {
        let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        g.throughput(criterion::Throughput::Bytes(size as u64));
        let label = format!("{} KiB", size >> 10);
        g.bench_function(BenchmarkId::new("keyed BLAKE3", &label), |b| {
            b.iter(|| blake3::Hasher::new_keyed(&key).update(&data).finalize())
        });
        g.bench_function(BenchmarkId::new("keyed BLAKE3 (rayon)", &label), |b| {
            b.iter(|| blake3::Hasher::new_keyed(&key).update_rayon(&data).finalize())
        });
        g.bench_function(BenchmarkId::new("HMAC-SHA256", &label), |b| {
            b.iter(|| {
                let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
                m.update(&data);
                m.finalize()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, loads, incremental, mac);
criterion_main!(benches);
