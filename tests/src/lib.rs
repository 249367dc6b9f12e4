//! The guest components built for the end-to-end tests (by `build.rs`), and helpers the tests
//! share.

use std::path::Path;

mod redis;
pub use redis::RedisServer;

/// A model test's seed: `PROPTEST_RNG_SEED` when set (to replay a failure), else a new one,
/// printed (with `name`) so that any failure can be replayed exactly.
pub fn model_test_seed(name: &str) -> u64 {
    let seed = std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("{name} seed: {seed} (replay with PROPTEST_RNG_SEED={seed})");
    seed
}

/// The demo plugin: pre-compresses a folder of assets with Brotli, memoized in the cache.
pub fn brotli_assets_wasm() -> &'static Path {
    Path::new(env!("FILECACHE_WASM_BROTLI_ASSETS"))
}

/// The contract driver: exercises every function and error of the WIT interface.
pub fn contract_wasm() -> &'static Path {
    Path::new(env!("FILECACHE_WASM_CONTRACT"))
}

/// A hostile guest: handle exhaustion, huge inputs, misuse.
pub fn hostile_wasm() -> &'static Path {
    Path::new(env!("FILECACHE_WASM_HOSTILE"))
}

/// A plain command component (no filecache import) of realistic size, for start-up benchmarks.
pub fn markdown_wasm() -> &'static Path {
    Path::new(env!("FILECACHE_WASM_MARKDOWN"))
}

/// A `wasi:keyvalue@0.2.0-draft` guest (as `wasmtime run -S keyvalue` runs them), with
/// wasmtime's own key-value test program as its `wasmtime-main` scenario.
pub fn keyvalue_wasm() -> &'static Path {
    Path::new(env!("FILECACHE_WASM_KEYVALUE"))
}

/// A `wasi:keyvalue@0.2.0-draft2` guest (the version Spin speaks): cursors, cas.
pub fn keyvalue_draft2_wasm() -> &'static Path {
    Path::new(env!("FILECACHE_WASM_KEYVALUE_DRAFT2"))
}

/// The demo's sample input.
pub fn demo_assets_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../guest/demo/assets"))
}

/// The benchmark guest: exports `prepare` and `run` (see `tests/programs/wit/bench.wit`).
pub fn bench_wasm() -> &'static Path {
    Path::new(env!("FILECACHE_WASM_BENCH"))
}

/// A `wasi:http` handler using only `wasi:keyvalue@0.2.0-draft`, as written for `wasmtime serve
/// -S keyvalue`: a counter, values, a plain route, a trapping route.
pub fn http_keyvalue_wasm() -> &'static Path {
    Path::new(env!("FILECACHE_WASM_HTTP_KEYVALUE"))
}

/// A `wasi:http` handler using `filecache:cache` and a granted bucket, with misbehaving routes.
pub fn http_cache_wasm() -> &'static Path {
    Path::new(env!("FILECACHE_WASM_HTTP_CACHE"))
}

/// The Rust kit's HTTP handler example (`guest/src/bin/http-hello.rs`).
pub fn http_hello_wasm() -> &'static Path {
    Path::new(env!("FILECACHE_WASM_HTTP_HELLO"))
}
