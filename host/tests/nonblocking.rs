//! `add_to_linker_async` never blocks the executor: guests waiting on a remote tier that accepts
//! connections but never answers (a `TcpListener` nobody reads) leave tokio's workers free, and
//! many such guests wait at once. A control run with the synchronous host functions shows that
//! the same measurement does see a blocked executor.
//!
//! With the `remote` feature the store is the real `TieredStore` over a `RemoteTier`; without it,
//! a stand-in that does what the tier does on a local miss (connect, send, wait for an answer
//! with a timeout) on the same silent socket, so that a plain `cargo test -p filecache-host` runs
//! these tests too.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use filecache_host::{FileCache, FileCacheCtx, Namespace, NamespaceOptions};
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store};
use wasmtime_wasi::WasiCtx;

mod common;

type Host = common::Host<FileCacheCtx>;
use common::cache_view as view;

/// How long each remote operation waits for the silent server. A blocked worker stalls the
/// ticker for at least this long; the async runs must keep every gap under half of it, a margin
/// (300 ms) that a loaded machine's scheduling does not reach.
const STALL: Duration = Duration::from_millis(600);

/// The real remote tier in front of `local`, on the silent server at `port`.
#[cfg(feature = "remote")]
fn silent_remote(local: Namespace, port: u16) -> Arc<dyn filecache_host::EntryStore> {
    use filecache_host::remote::{RemoteOptions, RemoteTier, TieredStore};
    let mut options = RemoteOptions::new(format!("redis://127.0.0.1:{port}"));
    options.connect_timeout = STALL;
    options.op_timeout = STALL;
    // Every get waits the whole timeout: the breaker would otherwise skip the remote after 3.
    options.breaker_threshold = 10_000;
    Arc::new(TieredStore::new(local, RemoteTier::new(options).unwrap()).unwrap())
}

/// Without the `remote` feature: a store that, on a local miss, does what the remote tier does
/// (a connection, a request, a wait for the answer bounded by the timeout) on the silent server.
#[cfg(not(feature = "remote"))]
fn silent_remote(local: Namespace, port: u16) -> Arc<dyn filecache_host::EntryStore> {
    use std::io::{Read, Write};

    use filecache_host::Key;
    use filecache_host::store::{EntryReader, EntryWriter};

    struct Silent(Namespace, u16);
    impl filecache_host::EntryStore for Silent {
        fn get(&self, key: &Key) -> filecache_host::Result<Option<Vec<u8>>> {
            if let Some(v) = self.0.get(key)? {
                return Ok(Some(v));
            }
            let mut socket = std::net::TcpStream::connect(("127.0.0.1", self.1)).unwrap();
            socket.set_read_timeout(Some(STALL)).unwrap();
            socket.write_all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n").unwrap();
            let mut answer = [0u8; 1];
            assert!(socket.read(&mut answer).is_err(), "the silent server answered");
            Ok(None)
        }
        fn open(&self, key: &Key) -> filecache_host::Result<Option<Box<dyn EntryReader>>> {
            self.0.open(key).map(|r| r.map(|r| Box::new(r) as Box<dyn EntryReader>))
        }
        fn add(&self, key: &Key, content: &[u8]) -> filecache_host::Result<()> {
            self.0.add(key, content)
        }
        fn create(&self, key: &Key) -> filecache_host::Result<Box<dyn EntryWriter>> {
            Ok(Box::new(self.0.create(key)?))
        }
        fn delete(&self, key: &Key) -> filecache_host::Result<()> {
            self.0.delete(key)
        }
        fn contains(&self, key: &Key) -> filecache_host::Result<bool> {
            self.0.contains(key)
        }
    }
    Arc::new(Silent(local, port))
}

/// A remote that accepts connections and never answers, a namespace in front of it, the bench
/// guest compiled once, and a linker with the async (or, for the control, sync) host functions.
struct Setup {
    _listener: TcpListener,
    _tmp: tempfile::TempDir,
    store: Arc<dyn filecache_host::EntryStore>,
    /// The local namespace, whose counters the real tier updates.
    #[cfg_attr(not(feature = "remote"), allow(dead_code))]
    local: Namespace,
    engine: Engine,
    component: Component,
    linker: Linker<Host>,
}

impl Setup {
    fn new(async_functions: bool) -> Setup {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let tmp = tempfile::tempdir().unwrap();
        let local = FileCache::open(tmp.path())
            .unwrap()
            .namespace("plugin", NamespaceOptions::default())
            .unwrap();
        let store = silent_remote(local.clone(), port);

        let engine = Engine::default();
        let component = Component::from_file(&engine, filecache_tests::bench_wasm()).unwrap();
        let mut linker = Linker::<Host>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
        if async_functions {
            filecache_host::add_to_linker_async(&mut linker, view).unwrap();
        } else {
            filecache_host::add_to_linker(&mut linker, view).unwrap();
        }
        Setup {
            _listener: listener,
            _tmp: tmp,
            store,
            local,
            engine,
            component,
            linker,
        }
    }

    /// Instantiates a guest and has it `get` an absent key `gets` times (each a local miss, then
    /// a remote that never answers).
    fn guest(&self, gets: u32) -> impl Future<Output = ()> + Send + 'static {
        let (engine, component, linker) = (self.engine.clone(), self.component.clone(), self.linker.clone());
        let ctx = FileCacheCtx::builder().store(self.store.clone()).build().unwrap();
        async move {
            let host = Host::new(WasiCtx::builder().inherit_stderr().build(), ctx);
            let mut store = Store::new(&engine, host);
            let instance = linker.instantiate_async(&mut store, &component).await.unwrap();
            let prepare = instance.get_typed_func::<(u64,), ()>(&mut store, "prepare").unwrap();
            let run = instance
                .get_typed_func::<(String, u32), (Result<u64, String>,)>(&mut store, "run")
                .unwrap();
            prepare.call_async(&mut store, (16,)).await.unwrap();
            let (result,) = run.call_async(&mut store, ("miss".into(), gets)).await.unwrap();
            assert_eq!(result, Ok(0));
        }
    }
}

/// Runs `test` on a runtime of two workers, one test at a time: the tests measure stalls of
/// their executor and the time their guests take, which another test of this file compiling its
/// guest (on every core) or running its own guests beside them would add to.
fn serially(test: impl Future<Output = ()>) {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(test);
}

/// Runs `guests` guests of `gets` gets each at once, with a task ticking every 10 ms beside
/// them; returns the longest gap the ticker saw and the time the guests took.
async fn run_with_ticker(setup: &Setup, guests: usize, gets: u32) -> (Duration, Duration) {
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ticker = tokio::spawn({
        let done = done.clone();
        async move {
            let mut longest = Duration::ZERO;
            let mut last = Instant::now();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let now = Instant::now();
                longest = longest.max(now - last);
                last = now;
            }
            longest
        }
    });
    // Let the ticker start before the guests take the workers.
    tokio::time::sleep(Duration::from_millis(30)).await;
    let start = Instant::now();
    let tasks: Vec<_> = (0..guests).map(|_| tokio::spawn(setup.guest(gets))).collect();
    for t in tasks {
        t.await.unwrap();
    }
    let took = start.elapsed();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    (ticker.await.unwrap(), took)
}

#[test]
fn a_guest_waiting_on_a_silent_remote_does_not_block_the_executor() {
    serially(async {
        let setup = Setup::new(true);
        // Four guests (twice the workers), each waiting on the remote twice.
        let (gap, took) = run_with_ticker(&setup, 4, 2).await;
        eprintln!("async: longest tick gap {gap:?}, guests took {took:?}");
        assert!(took >= 2 * STALL, "the remote did not stall the guests ({took:?})");
        assert!(gap < STALL / 2, "the ticker stalled for {gap:?}");
        #[cfg(feature = "remote")]
        assert_eq!(setup.local.counts().remote_errors, 8);
    });
}

/// The control: the same run with the synchronous host functions blocks the workers, and the
/// ticker sees it. (So the test above measures something that can fail.)
#[test]
fn control_sync_host_functions_do_block_the_executor() {
    serially(async {
        let setup = Setup::new(false);
        let (gap, took) = run_with_ticker(&setup, 4, 2).await;
        eprintln!("sync: longest tick gap {gap:?}, guests took {took:?}");
        assert!(
            gap >= STALL,
            "the ticker saw no stall ({gap:?}): the measurement cannot tell"
        );
    });
}

#[test]
fn sixteen_guests_wait_at_once() {
    serially(async {
        let setup = Setup::new(true);
        // One guest alone: one get that waits out the timeout.
        let start = Instant::now();
        setup.guest(1).await;
        let one = start.elapsed();
        assert!(one >= STALL, "{one:?}");

        let start = Instant::now();
        let tasks: Vec<_> = (0..16).map(|_| tokio::spawn(setup.guest(1))).collect();
        for t in tasks {
            t.await.unwrap();
        }
        let sixteen = start.elapsed();
        eprintln!("one guest {one:?}, sixteen at once {sixteen:?}");
        // Serialised they would take at least 8 stalls (two workers blocked, each waiting out 8
        // gets in turn) or 16 (queued on one connection); in parallel about as long as one, plus
        // sixteen instantiations. The bound is under 8 stalls, not a multiple of `one`: on a loaded
        // machine the instantiations alone can take several times what one guest's did.
        assert!(
            sixteen < 7 * STALL,
            "sixteen guests took {sixteen:?} (one alone {one:?}): they waited in turn"
        );
        #[cfg(feature = "remote")]
        assert_eq!(setup.local.counts().remote_errors, 17);
    });
}
