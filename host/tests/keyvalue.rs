//! `wasi:keyvalue` embedded: the guests built against the vendored WIT, run with
//! `filecache_host::keyvalue::add_to_linker` (synchronously) and `add_to_linker_async` (on
//! tokio, the store's work on blocking threads).

use filecache_host::keyvalue::KeyValueCtx;
use filecache_host::kv::Bucket;
use filecache_host::{FileCache, NamespaceOptions};
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

mod common;

type Host = common::Host<KeyValueCtx>;
use common::kv_view as view;

fn host(kv: KeyValueCtx, args: &[&str], stdout: &MemoryOutputPipe) -> Host {
    Host::with_args("keyvalue", args, stdout, kv)
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

/// Runs guest scenario `args` (of `keyvalue-draft2`) in a child process (this test binary, the
/// ignored test `memory_child`), against a bucket holding an 8 MiB value under `big`; answers
/// the guest's output and the child's peak resident memory (VmHWM) in MiB.
#[cfg(target_os = "linux")]
fn in_child(args: &str, max_call_bytes: u64) -> (String, u64) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "memory_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("FILECACHE_KV_MEMORY_CHILD", args)
        .env("FILECACHE_KV_MEMORY_BOUND", max_call_bytes.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |name: &str| {
        stdout
            .lines()
            // The harness may print its "test memory_child ... " first on the same line.
            .find_map(|l| l.split_once(name).map(|(_, rest)| rest))
            .unwrap_or_else(|| panic!("no {name} in {stdout}"))
            .trim()
            .to_string()
    };
    (field("GUEST:"), field("VMHWM:").parse::<u64>().unwrap() / 1024)
}

/// The child of the memory tests: never run on its own (it fails without its instructions).
#[test]
#[ignore = "a child process of the memory tests"]
fn memory_child() {
    let args = std::env::var("FILECACHE_KV_MEMORY_CHILD").expect("started by a memory test");
    let bound: u64 = std::env::var("FILECACHE_KV_MEMORY_BOUND").unwrap().parse().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let cache = FileCache::open(tmp.path()).unwrap();
    let ns = cache.namespace("embedded", NamespaceOptions::default()).unwrap();
    Bucket::new(ns.clone()).set("big", &vec![7u8; 8 << 20]).unwrap();
    let engine = Engine::default();
    let mut linker = Linker::<Host>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).unwrap();
    filecache_host::keyvalue::add_to_linker(&mut linker, view).unwrap();
    let component = Component::from_file(&engine, filecache_tests::keyvalue_draft2_wasm()).unwrap();
    let kv = KeyValueCtx::builder()
        .bucket(Bucket::new(ns))
        .max_call_bytes(bound)
        .build();
    let stdout = MemoryOutputPipe::new(1 << 16);
    let args: Vec<&str> = args.split(' ').collect();
    let mut store = Store::new(&engine, host(kv, &args, &stdout));
    let command = wasmtime_wasi::p2::bindings::sync::Command::instantiate(&mut store, &component, &linker).unwrap();
    assert_eq!(command.wasi_cli_run().call_run(&mut store).unwrap(), Ok(()));
    drop(store);
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .to_string();
    println!("GUEST: {}", String::from_utf8_lossy(&stdout.contents()).trim());
    println!("VMHWM: {hwm}");
}

/// Issue 22 finding 2: one `get-many` asking 200 times for an 8 MiB value made the host gather
/// 1.6 GiB. It is bounded now: past 64 MiB of values the call answers `other`, and the host's
/// peak memory stays far below what the guest asked for.
#[cfg(target_os = "linux")]
#[test]
fn get_many_is_bounded_in_what_the_host_gathers() {
    let bound = filecache_host::keyvalue::DEFAULT_MAX_CALL_BYTES;
    let (guest, peak) = in_child("get-many-same big 200", bound);
    assert!(
        guest.starts_with("error other:") && guest.contains("get-many"),
        "{guest}"
    );
    assert!(peak < 700, "peak {peak} MiB");
    // Within the bound, the call answers.
    let (guest, _) = in_child("get-many-same big 4", bound);
    assert_eq!(guest, "ok 4");
}

/// Issue 22 finding 2: cas handles held the whole value each (100 on an 8 MiB value: 833 MiB),
/// and nothing bounded cas or bucket handles. A cas handle holds its key and version only, and
/// both kinds count against the instance's handle budget.
#[cfg(target_os = "linux")]
#[test]
fn cas_and_bucket_handles_are_bounded_and_hold_no_values() {
    let max = filecache_host::bindings::DEFAULT_MAX_HANDLES;
    let (guest, peak) = in_child("hold-cas big 100", u64::MAX);
    // One slot is the bucket's.
    assert!(
        guest.starts_with(&format!("held {} then error other: too many handles", max - 1)),
        "{guest}"
    );
    assert!(peak < 700, "peak {peak} MiB");
    let (guest, _) = in_child("hold-buckets 100", u64::MAX);
    assert!(
        guest.starts_with(&format!("held {max} then error other: too many handles")),
        "{guest}"
    );
}

/// A bucket shares the cache interface's budget when given it: handles of both kinds count
/// against one limit.
#[test]
fn a_shared_budget_counts_every_kind_of_handle() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = FileCache::open(tmp.path()).unwrap();
    let budget = filecache_host::FileCacheCtx::builder()
        .namespace(cache.namespace("y", NamespaceOptions::default()).unwrap())
        .max_handles(3)
        .build()
        .unwrap()
        .handle_budget();
    // Two readers or writers of the cache interface are held.
    assert!(budget.take() && budget.take());
    let engine = Engine::default();
    let mut linker = Linker::<Host>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).unwrap();
    filecache_host::keyvalue::add_to_linker(&mut linker, view).unwrap();
    let component = Component::from_file(&engine, filecache_tests::keyvalue_draft2_wasm()).unwrap();
    let kv = KeyValueCtx::builder()
        .bucket(Bucket::new(cache.namespace("x", NamespaceOptions::default()).unwrap()))
        .handle_budget(budget.clone())
        .build();
    let stdout = MemoryOutputPipe::new(1 << 16);
    let mut store = Store::new(&engine, host(kv, &["hold-buckets", "5"], &stdout));
    let command = wasmtime_wasi::p2::bindings::sync::Command::instantiate(&mut store, &component, &linker).unwrap();
    assert_eq!(command.wasi_cli_run().call_run(&mut store).unwrap(), Ok(()));
    let out = String::from_utf8_lossy(&stdout.contents()).into_owned();
    assert!(out.starts_with("held 1 then error other: too many handles"), "{out}");
    // The guest dropped its handles when it ended: their slots are back.
    assert_eq!(budget.open(), 2);
}
