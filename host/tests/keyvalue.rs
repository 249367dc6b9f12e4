//! `wasi:keyvalue` embedded: the guests built against the vendored WIT, run with
//! `filecache_host::keyvalue::add_to_linker` (synchronously) and `add_to_linker_async` (on
//! tokio, the store's work on blocking threads).

use filecache_host::keyvalue::{KeyValueCtx, KeyValueView};
use filecache_host::store::kv::Bucket;
use filecache_host::{FileCache, NamespaceOptions};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

struct Host {
    wasi: WasiCtx,
    kv: KeyValueCtx,
    table: ResourceTable,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

fn view(h: &mut Host) -> KeyValueView<'_> {
    KeyValueView::new(&h.kv, &mut h.table)
}

fn host(kv: KeyValueCtx, args: &[&str], stdout: &MemoryOutputPipe) -> Host {
    let mut wasi = WasiCtx::builder();
    wasi.arg("keyvalue").args(args).stdout(stdout.clone()).inherit_stderr();
    Host {
        wasi: wasi.build(),
        kv,
        table: ResourceTable::new(),
    }
}

fn ctx_in(cache: &FileCache, namespace: &str) -> KeyValueCtx {
    let ns = cache.namespace(namespace, NamespaceOptions::default()).unwrap();
    KeyValueCtx::builder().bucket(Bucket::new(ns)).build()
}

fn ctx(cache: &FileCache) -> KeyValueCtx {
    let ns = cache.namespace("embedded", NamespaceOptions::default()).unwrap();
    KeyValueCtx::builder().bucket(Bucket::new(ns)).build()
}

#[test]
fn sync_embedding_runs_both_versions() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = FileCache::open(tmp.path()).unwrap();
    Bucket::new(cache.namespace("embedded", NamespaceOptions::default()).unwrap())
        .set("atomics_key", b"5")
        .unwrap();
    let engine = Engine::default();
    let mut linker = Linker::<Host>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).unwrap();
    filecache_host::keyvalue::add_to_linker(&mut linker, view).unwrap();
    for (wasm, args, namespace) in [
        (filecache_tests::keyvalue_wasm(), "wasmtime-main", "embedded"),
        (filecache_tests::keyvalue_draft2_wasm(), "basics", "draft2"),
    ] {
        let component = Component::from_file(&engine, wasm).unwrap();
        let stdout = MemoryOutputPipe::new(1 << 20);
        let mut store = Store::new(&engine, host(ctx_in(&cache, namespace), &[args], &stdout));
        let command = wasmtime_wasi::p2::bindings::sync::Command::instantiate(&mut store, &component, &linker).unwrap();
        assert_eq!(command.wasi_cli_run().call_run(&mut store).unwrap(), Ok(()));
        let out = String::from_utf8_lossy(&stdout.contents()).into_owned();
        assert_eq!(out, format!("ok {args}\n"));
    }
}

/// Eight instances at once on a two-thread runtime, each incrementing one counter 50 times: the
/// store's work runs on blocking threads, and the sum is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_embedding_runs_both_versions_and_concurrent_instances_add_up() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = FileCache::open(tmp.path()).unwrap();
    let engine = Engine::default();
    let mut linker = Linker::<Host>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
    filecache_host::keyvalue::add_to_linker_async(&mut linker, view).unwrap();
    let draft = Component::from_file(&engine, filecache_tests::keyvalue_wasm()).unwrap();
    let draft2 = Component::from_file(&engine, filecache_tests::keyvalue_draft2_wasm()).unwrap();

    let stdout = MemoryOutputPipe::new(1 << 20);
    let mut store = Store::new(&engine, host(ctx(&cache), &["basics"], &stdout));
    let command = wasmtime_wasi::p2::bindings::Command::instantiate_async(&mut store, &draft2, &linker)
        .await
        .unwrap();
    assert_eq!(command.wasi_cli_run().call_run(&mut store).await.unwrap(), Ok(()));
    assert_eq!(String::from_utf8_lossy(&stdout.contents()), "ok basics\n");

    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (engine, linker, draft) = (engine.clone(), linker.clone(), draft.clone());
            let kv = ctx(&cache);
            tokio::spawn(async move {
                let stdout = MemoryOutputPipe::new(1 << 10);
                let mut store = Store::new(&engine, host(kv, &["increment", "counter", "1", "50"], &stdout));
                let command = wasmtime_wasi::p2::bindings::Command::instantiate_async(&mut store, &draft, &linker)
                    .await
                    .unwrap();
                assert_eq!(command.wasi_cli_run().call_run(&mut store).await.unwrap(), Ok(()));
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let bucket = Bucket::new(cache.namespace("embedded", NamespaceOptions::default()).unwrap());
    assert_eq!(bucket.get("counter").unwrap().as_deref(), Some(&b"400"[..]));
}

#[test]
fn only_granted_buckets_open() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = FileCache::open(tmp.path()).unwrap();
    let engine = Engine::default();
    let mut linker = Linker::<Host>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).unwrap();
    filecache_host::keyvalue::add_to_linker(&mut linker, view).unwrap();
    let component = Component::from_file(&engine, filecache_tests::keyvalue_wasm()).unwrap();
    let shared = Bucket::new(cache.namespace("shared", NamespaceOptions::default()).unwrap());
    for (id, granted, expected) in [
        ("", false, "error access-denied\n"),
        ("shared", false, "error access-denied\n"),
        ("shared", true, "ok\n"),
        ("", true, "error access-denied\n"),
    ] {
        // No own bucket at all: `open("")` is denied too.
        let mut kv = KeyValueCtx::builder();
        if granted {
            kv = kv.grant("shared", shared.clone());
        }
        let stdout = MemoryOutputPipe::new(1 << 10);
        let mut store = Store::new(&engine, host(kv.build(), &["open", id], &stdout));
        let command = wasmtime_wasi::p2::bindings::sync::Command::instantiate(&mut store, &component, &linker).unwrap();
        assert_eq!(command.wasi_cli_run().call_run(&mut store).unwrap(), Ok(()));
        assert_eq!(
            String::from_utf8_lossy(&stdout.contents()),
            expected,
            "{id:?} granted={granted}"
        );
    }
}
