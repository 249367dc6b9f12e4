//! Embedding the host bindings in a Rust host, as an embedder would: synchronously
//! (`add_to_linker`), and asynchronously on tokio (`add_to_linker_async`). Both run the contract
//! guest's full scenario.

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use filecache_host::{FileCache, FileCacheCtx, NamespaceOptions};
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

mod common;

type Host = common::Host<FileCacheCtx>;
use common::cache_view as view;

fn host(cache: FileCacheCtx, args: &[&str], stdout: &MemoryOutputPipe) -> Host {
    Host::with_args("contract", args, stdout, cache)
}

#[test]
fn sync_embedding_runs_the_contract() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = FileCache::open(tmp.path()).unwrap();
    let engine = Engine::default();
    let component = Component::from_file(&engine, filecache_tests::contract_wasm()).unwrap();
    let mut linker = Linker::<Host>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).unwrap();
    filecache_host::add_to_linker(&mut linker, view).unwrap();

    for args in [&["all"][..], &["put", "sync", "70000"], &["check", "sync", "70000"]] {
        let ns = cache.namespace("embedded", NamespaceOptions::default()).unwrap();
        let ctx = FileCacheCtx::builder().namespace(ns).build().unwrap();
        let stdout = MemoryOutputPipe::new(1 << 20);
        let mut store = Store::new(&engine, host(ctx, args, &stdout));
        let command = wasmtime_wasi::p2::bindings::sync::Command::instantiate(&mut store, &component, &linker).unwrap();
        let result = command.wasi_cli_run().call_run(&mut store).unwrap();
        assert_eq!(result, Ok(()), "{args:?}");
        let out = String::from_utf8_lossy(&stdout.contents()).into_owned();
        assert!(out.contains(&format!("ok {}", args[0])), "{out}");
        assert_eq!(store.data().ctx.open_handles(), 0, "every handle was given back");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_embedding_runs_the_contract() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = Engine::default();
    let component = Component::from_file(&engine, filecache_tests::contract_wasm()).unwrap();
    let mut linker = Linker::<Host>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
    filecache_host::add_to_linker_async(&mut linker, view).unwrap();

    // This time the context is built on a namespace directory handle, with limits.
    std::fs::create_dir(tmp.path().join("ns")).unwrap();
    for (args, read_only) in [
        (&["all"][..], false),
        (&["put", "async", "2MiB"], false),
        (&["read-only"], true),
        (&["read-only-check", "async", "2MiB"], true),
    ] {
        let dir = Dir::open_ambient_dir(tmp.path().join("ns"), ambient_authority()).unwrap();
        let ctx = FileCacheCtx::builder()
            .namespace_dir(dir)
            .read_only(read_only)
            .build()
            .unwrap();
        let stdout = MemoryOutputPipe::new(1 << 20);
        let mut store = Store::new(&engine, host(ctx, args, &stdout));
        let command = wasmtime_wasi::p2::bindings::Command::instantiate_async(&mut store, &component, &linker)
            .await
            .unwrap();
        let result = command.wasi_cli_run().call_run(&mut store).await.unwrap();
        assert_eq!(result, Ok(()), "{args:?}");
        let out = String::from_utf8_lossy(&stdout.contents()).into_owned();
        assert!(out.contains(&format!("ok {}", args[0])), "{out}");
        assert_eq!(store.data().ctx.open_handles(), 0, "every handle was given back");
    }
}

/// The synchronous host functions also serve an async embedder (each call then does its storage
/// work on the executor's thread; see `nonblocking.rs` for why `add_to_linker_async` is better).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_functions_in_an_async_store_run_the_contract() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = FileCache::open(tmp.path()).unwrap();
    let engine = Engine::default();
    let component = Component::from_file(&engine, filecache_tests::contract_wasm()).unwrap();
    let mut linker = Linker::<Host>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
    filecache_host::add_to_linker(&mut linker, view).unwrap();
    let ns = cache.namespace("mixed", NamespaceOptions::default()).unwrap();
    let ctx = FileCacheCtx::builder().namespace(ns).build().unwrap();
    let stdout = MemoryOutputPipe::new(1 << 20);
    let mut store = Store::new(&engine, host(ctx, &["all"], &stdout));
    let command = wasmtime_wasi::p2::bindings::Command::instantiate_async(&mut store, &component, &linker)
        .await
        .unwrap();
    let result = command.wasi_cli_run().call_run(&mut store).await.unwrap();
    assert_eq!(result, Ok(()), "{}", String::from_utf8_lossy(&stdout.contents()));
}

#[test]
fn many_instances_share_one_namespace_concurrently() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = FileCache::open(tmp.path()).unwrap();
    let ns = cache.namespace("shared", NamespaceOptions::default()).unwrap();
    let engine = Engine::default();
    let component = Component::from_file(&engine, filecache_tests::contract_wasm()).unwrap();
    let mut linker = Linker::<Host>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).unwrap();
    filecache_host::add_to_linker(&mut linker, view).unwrap();
    // Released together; each run's start and end are recorded, to prove that the two threads'
    // instances did run at the same time. Three rounds each, and more (at most 100) until they
    // have: a thread that a loaded machine starts late finds the other still running.
    let start = std::sync::Barrier::new(2);
    let runs = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..2 {
            let (ns, engine, component, linker) = (ns.clone(), &engine, &component, &linker);
            let (start, runs) = (&start, &runs);
            s.spawn(move || {
                start.wait();
                for i in 0..100 {
                    if i >= 3 && overlapping(&runs.lock().unwrap()) >= 2 {
                        break;
                    }
                    let seed = format!("t{t}-{i}");
                    for args in [["put", &seed, "300000"], ["check", &seed, "300000"]] {
                        let began = std::time::Instant::now();
                        let ctx = FileCacheCtx::builder().namespace(ns.clone()).build().unwrap();
                        let stdout = MemoryOutputPipe::new(1 << 16);
                        let mut store = Store::new(engine, host(ctx, &args, &stdout));
                        let command =
                            wasmtime_wasi::p2::bindings::sync::Command::instantiate(&mut store, component, linker)
                                .unwrap();
                        assert_eq!(command.wasi_cli_run().call_run(&mut store).unwrap(), Ok(()));
                        runs.lock().unwrap().push((t, began, std::time::Instant::now()));
                    }
                }
            });
        }
    });
    let runs = runs.into_inner().unwrap();
    assert!(
        overlapping(&runs) >= 2,
        "only {} of {} runs overlapped one of the other thread's",
        overlapping(&runs),
        runs.len()
    );
}

/// How many of `runs` (thread, start, end) ran in part while a run of another thread ran.
fn overlapping(runs: &[(usize, std::time::Instant, std::time::Instant)]) -> usize {
    runs.iter()
        .filter(|a| runs.iter().any(|b| b.0 != a.0 && b.1 < a.2 && a.1 < b.2))
        .count()
}
