//! `filecache serve` end to end: the real binary, real TCP on 127.0.0.1 (a port the kernel
//! picks, read from the start-up line), the handler test programs `http-keyvalue` (written for
//! `wasmtime serve -S keyvalue`, nothing of filecache) and `http-cache` (the cache, a granted
//! bucket, and routes that misbehave), and the kits' HTTP examples: Rust's `http-hello`, and the
//! Python kit's `guest/python/example/handler.py`, built from source with the pinned
//! componentize-py (`guest/python/build.sh --world http-handler`, which installs it into the
//! target folder the first time; without Python 3 with venv, or without PyPI, that test fails
//! saying so).

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::serve::{Server, request};
use common::*;
use filecache_tests::{http_cache_wasm, http_keyvalue_wasm};

/// A cache directory whose `.compiled` already holds both test handlers' code as `serve`
/// compiles it, made once: the tests copy it instead of each compiling.
fn warm_cache() -> PathBuf {
    static WARM: std::sync::OnceLock<(tempfile::TempDir, PathBuf)> = std::sync::OnceLock::new();
    let (_, dir) = WARM.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cache");
        for wasm in [http_keyvalue_wasm(), http_cache_wasm()] {
            let server = Server::start(&dir, wasm, &["--namespace", "warmup"]);
            assert_eq!(server.get("/plain").status, 200);
        }
        (tmp, dir)
    });
    dir.clone()
}

/// A fresh cache directory with the handlers' compiled code in it.
fn cache_with_code() -> TestCache {
    cache_with_code_of(&warm_cache())
}

/// A fresh cache directory with the compiled code of the cache directory `warm`.
fn cache_with_code_of(warm: &Path) -> TestCache {
    let cache = TestCache::new();
    copy_dir(&warm.join(".compiled"), &cache.dir().join(".compiled"));
    for file in std::fs::read_dir(warm).unwrap() {
        let file = file.unwrap();
        if file.file_type().unwrap().is_file() {
            std::fs::copy(file.path(), cache.dir().join(file.file_name())).unwrap();
        }
    }
    cache
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn an_unmodified_wasmtime_keyvalue_handler_keeps_its_state_and_counts_exactly() {
    let cache = cache_with_code();
    let server = Server::start(&cache.dir(), http_keyvalue_wasm(), &[]);
    let plain = server.get("/plain");
    assert_eq!((plain.status, plain.text().as_str()), (200, "hello\n"));
    assert_eq!(server.get("/kv/get/greeting").status, 404);
    let set = request(server.addr, "PUT", "/kv/set/greeting", b"hi there");
    assert_eq!((set.status, set.text().as_str()), (200, "stored 8 bytes\n"));
    let got = server.get("/kv/get/greeting");
    assert_eq!((got.status, got.text().as_str()), (200, "hi there"));

    // 8 clients x 50 increments of one key, each on its own connection: every count is handed
    // out exactly once.
    let counts = counts_from_clients(server.addr, "/kv/incr/hits", 8, 50);
    assert_eq!(counts, (1..=400).collect::<Vec<_>>());
    assert_eq!(server.post("/kv/incr/hits", b"").text(), "401\n");

    // One line per request at FILECACHE_LOG=info: method, path, status, time.
    let log = server.log_when(|log| log.matches("POST /kv/incr/hits 200 ").count() >= 401);
    assert!(log.contains("GET /kv/get/greeting 404 "), "{log}");
    assert!(log.contains("PUT /kv/set/greeting 200 "), "{log}");
    assert_eq!(log.matches("POST /kv/incr/hits 200 ").count(), 401, "{log}");
}

#[test]
fn what_a_response_said_was_stored_survives_kill_9_and_the_code_is_not_recompiled() {
    let cache = cache_with_code();
    let compiles = |c: &TestCache| c.namespace_stats(".compiled")["misses"].clone();
    let compiled_before = compiles(&cache);
    let mut server = Server::start(&cache.dir(), http_cache_wasm(), &["--bucket", "shared"]);
    let put = request(server.addr, "PUT", "/cache/put/kept", b"cached bytes");
    assert_eq!((put.status, put.text().as_str()), (200, "stored 12 bytes\n"));
    for n in 1..=3 {
        assert_eq!(server.post("/bucket/shared/incr/visits", b"").text(), format!("{n}\n"));
    }
    let status = server.signal_and_wait(libc::SIGKILL, Duration::from_secs(10));
    assert!(!status.success());

    let server = Server::start(&cache.dir(), http_cache_wasm(), &["--bucket", "shared"]);
    let read = server.get("/cache/read/kept");
    assert_eq!((read.status, read.text().as_str()), (200, "cached bytes"));
    assert_eq!(server.post("/bucket/shared/incr/visits", b"").text(), "4\n");
    drop(server);
    // Both starts loaded the compiled code from the cache: no compile.
    assert_eq!(compiles(&cache), compiled_before);
}

#[test]
fn failures_answer_5xx_and_the_server_goes_on() {
    let cache = cache_with_code();
    let server = Server::start(
        &cache.dir(),
        http_cache_wasm(),
        &[
            "--request-timeout",
            "1s",
            "--max-memory-size",
            "32MiB",
            "--max-resources",
            "100",
            // Longer than --request-timeout: it is not the limit that fires, nor the one named.
            "-W",
            "timeout=60s",
        ],
    );
    let check = |path: &str, status: u16, says: &str| {
        let r = server.get(path);
        assert_eq!(r.status, status, "{path}: {}", r.text());
        assert!(r.text().contains(says), "{path}: {:?} does not say {says:?}", r.text());
        // The server goes on.
        assert_eq!(server.get("/plain").text(), "hello\n");
    };
    check("/trap", 500, "the handler failed");
    let start = Instant::now();
    check("/spin", 504, "within --request-timeout (1s)");
    check("/sleep/5000", 504, "within --request-timeout (1s)");
    assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
    check("/alloc/64", 500, "--max-memory-size");
    check("/alloc/4", 200, "");
    check("/resources/1000", 500, "--max-resources");
    check("/resources/10", 200, "held 10");
    check("/bucket/not-granted/incr/x", 403, "access-denied");
    let log = server.log_when(|log| log.contains("GET /trap 500 ") && log.contains("GET /spin 504 "));
    assert!(log.contains("GET /trap 500 "), "{log}");
    assert!(log.contains("GET /spin 504 "), "{log}");
}

/// `-W` limits (issue 26 item 6) apply to each request as `run` applies them to a run, through
/// the same limiter; with --max-memory-size the smaller wins.
#[test]
fn w_limits_apply_to_each_request() {
    let cache = TestCache::new();
    let server = Server::start(
        &cache.dir(),
        http_cache_wasm(),
        &[
            "-W",
            "fuel=100000000,max-memory-size=32MiB",
            "--max-memory-size",
            "1GiB",
        ],
    );
    let r = server.get("/spin");
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.text().contains("used up its fuel"), "{}", r.text());
    let r = server.get("/alloc/64");
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.text().contains("over -W max-memory-size"), "{}", r.text());
    // Within both, a request is served.
    assert_eq!(server.get("/plain").text(), "hello\n");
    assert_eq!(server.get("/alloc/4").status, 200);
}

/// A `-W timeout` shorter than --request-timeout is the limit that stops a request, whether the
/// handler computes (epoch interruption) or waits in a host call (the request's task is dropped),
/// and the 504 and the log line name it, not --request-timeout.
#[test]
fn a_w_timeout_shorter_than_the_request_timeout_is_the_one_named() {
    let cache = cache_with_code();
    let server = Server::start(
        &cache.dir(),
        http_cache_wasm(),
        &["-W", "timeout=1s", "--request-timeout", "30s"],
    );
    let start = Instant::now();
    for path in ["/spin", "/sleep/30000"] {
        let r = server.get(path);
        assert_eq!(r.status, 504, "{path}: {}", r.text());
        assert_eq!(
            r.text(),
            "the handler did not finish within -W timeout (1s)\n",
            "{path}"
        );
    }
    // Cut at the limit, not at the request timeout or the end of the sleep (30 s).
    assert!(start.elapsed() < Duration::from_secs(20), "{:?}", start.elapsed());
    assert_eq!(server.get("/sleep/10").text(), "slept\n");
    let log = server.log_when(|log| log.contains("GET /sleep/30000 504 "));
    for path in ["/spin", "/sleep/30000"] {
        assert!(
            log.contains(&format!(
                "GET {path}: the handler did not finish within -W timeout (1s)"
            )),
            "{log}"
        );
        assert!(log.contains(&format!("GET {path} 504 ")), "{log}");
    }
    assert!(!log.contains("within --request-timeout"), "{log}");
}

/// A request cut by its timeout while WASI waits in a read that cannot be cancelled (a FIFO with
/// no writer, in a --dir: a blocked thread of tokio's blocking pool) is answered 504, the server
/// goes on, and SIGTERM still stops it (the shutdown leaves the stuck thread behind).
#[test]
fn a_request_stuck_in_a_blocking_read_is_cut_and_does_not_hold_up_the_shutdown() {
    let cache = cache_with_code();
    let fifo_dir = cache.tmp.path().join("fifo");
    std::fs::create_dir(&fifo_dir).unwrap();
    let fifo = std::ffi::CString::new(fifo_dir.join("fifo").into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: mkfifo(3) with a NUL-terminated path that lives across the call.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let dir = format!("{}::/data", fifo_dir.display());
    let mut server = Server::start(&cache.dir(), http_cache_wasm(), &["--dir", &dir, "-W", "timeout=1s"]);
    let r = server.get("/read-file/data/fifo");
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.text().contains("within -W timeout (1s)"), "{}", r.text());
    assert_eq!(server.get("/plain").text(), "hello\n");
    let status = server.signal_and_wait(libc::SIGTERM, Duration::from_secs(15));
    assert!(status.success(), "{status:?}\n{}", server.log());
}

#[test]
fn a_64k_cache_route_hits_after_its_first_miss_and_stats_sees_it() {
    let cache = cache_with_code();
    let mut server = Server::start(&cache.dir(), http_cache_wasm(), &["--namespace", "web"]);
    let expected = filecache_test_programs::content("http 65536", 65536);
    let first = server.get("/cache/get/65536");
    assert_eq!((first.status, first.header("x-cache")), (200, Some("miss")));
    assert_eq!(first.body, expected);
    for _ in 0..3 {
        let again = server.get("/cache/get/65536");
        assert_eq!((again.status, again.header("x-cache")), (200, Some("hit")));
        assert_eq!(again.body, expected);
    }
    // While it runs (counts are written every second) and after it stops.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let web = cache.namespace_stats("web");
        if web["hits"] == 3 {
            assert_eq!(web["misses"], 1);
            assert_eq!(web["entries"], 1);
            break;
        }
        assert!(Instant::now() < deadline, "stats never saw the hits: {web:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(server.signal_and_wait(libc::SIGTERM, Duration::from_secs(10)).success());
}

#[test]
fn a_component_that_is_not_an_http_handler_is_refused_before_anything_opens() {
    let cache = TestCache::new();
    let out = cache.cli("serve", &["--addr", "127.0.0.1:0", contract_wasm().to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("is a wasi:cli command"), "{err}");
    assert!(err.contains("wasi:http/incoming-handler"), "{err}");
    assert!(err.contains("filecache run"), "{err}");
    assert!(!err.contains("Serving HTTP"), "{err}");
    assert!(!cache.dir().exists(), "a refused serve created the cache directory");

    // And the other way round: `run` says a handler is one, and to serve it.
    let out = cache.run(http_keyvalue_wasm(), &[], &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("is a wasi:http handler"), "{err}");
    assert!(err.contains("filecache serve"), "{err}");
    assert!(!cache.dir().exists(), "a refused run created the cache directory");
}

#[test]
fn shutdown_finishes_the_requests_in_flight_and_a_gone_client_costs_nothing() {
    let cache = cache_with_code();
    let mut server = Server::start(&cache.dir(), http_cache_wasm(), &[]);

    // Clients that send half a body and go, many times: the server answers the next request.
    for _ in 0..20 {
        let mut stream = TcpStream::connect(server.addr).unwrap();
        write!(
            stream,
            "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n{}",
            "x".repeat(1000)
        )
        .unwrap();
        drop(stream);
    }
    assert_eq!(server.post("/echo", &[7u8; 300_000]).text(), "300000\n");

    // A request in flight when SIGTERM comes is answered; the process then exits cleanly.
    let addr = server.addr;
    let in_flight = std::thread::spawn(move || request(addr, "GET", "/sleep/1500", b""));
    // The signal comes once the handler has the request, however long the thread took to send it.
    let log = server.log_when(|log| log.contains("GET /sleep/1500 started"));
    assert!(log.contains("GET /sleep/1500 started"), "{log}");
    std::thread::sleep(Duration::from_millis(200));
    let status = server.signal_and_wait(libc::SIGTERM, Duration::from_secs(10));
    assert!(status.success(), "{status:?}\n{}", server.log());
    let answered = in_flight.join().unwrap();
    assert_eq!((answered.status, answered.text().as_str()), (200, "slept\n"));
    assert!(TcpStream::connect(addr).is_err(), "still listening after shutdown");
}

#[test]
fn the_rust_kit_http_example_caches_its_pages_and_counts_visits_in_a_bucket() {
    let cache = TestCache::new();
    let server = Server::start(
        &cache.dir(),
        filecache_tests::http_hello_wasm(),
        &["--bucket", "visits"],
    );
    let first = server.get("/hello/ada");
    assert_eq!((first.status, first.header("x-cache")), (200, Some("miss")));
    assert_eq!(first.text(), "<h1>Hello, ada!</h1>\n");
    let again = server.get("/hello/ada");
    assert_eq!((again.status, again.header("x-cache")), (200, Some("hit")));
    assert_eq!(again.text(), first.text());
    assert_eq!(server.post("/visit", b"").text(), "1\n");
    assert_eq!(server.post("/visit", b"").text(), "2\n");
    assert_eq!(server.get("/nowhere").status, 404);
}

/// The Python kit's HTTP example (`guest/python/example/handler.py`), built from source into
/// `target/tmp/python-http/` under a hash of every input (a rerun with nothing changed reuses
/// it), and a cache directory beside it holding its code as `serve` compiles it (the 19 MB
/// component is compiled once per build, not once per run).
fn python_http_example() -> &'static (PathBuf, PathBuf) {
    use std::collections::hash_map::DefaultHasher;
    use std::hash::{Hash, Hasher};
    static EXAMPLE: std::sync::OnceLock<(PathBuf, PathBuf)> = std::sync::OnceLock::new();
    EXAMPLE.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut inputs: Vec<PathBuf> = files_under(&root.join("guest/python"))
            .into_iter()
            .filter(|p| !p.components().any(|c| c.as_os_str() == "__pycache__"))
            .chain(files_under(&root.join("wit")))
            .chain([root.join("guest/kit-wit.sh"), root.join("Cargo.lock")])
            .collect();
        inputs.sort();
        let mut hasher = DefaultHasher::new();
        for path in &inputs {
            path.strip_prefix(&root).unwrap().hash(&mut hasher);
            std::fs::read(path).unwrap().hash(&mut hasher);
        }
        let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-http");
        let wasm = work.join(format!("handler-{:016x}.wasm", hasher.finish()));
        let warm = work.join(format!("cache-{:016x}", hasher.finish()));
        if !wasm.exists() {
            let start = Instant::now();
            let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap();
            let out = std::process::Command::new("bash")
                .arg(root.join("guest/python/build.sh"))
                .args(["--world", "http-handler"])
                .arg(&wasm)
                .arg(root.join("guest/python/example"))
                .arg("handler")
                .env("CARGO_TARGET_DIR", target)
                .output()
                .expect("cannot run bash for guest/python/build.sh");
            assert!(
                out.status.success(),
                "building the Python HTTP example failed ({:?}). guest/python/build.sh installs \
                 componentize-py from PyPI (guest/python/requirements.txt) into target/python-kit/venv: \
                 it needs python3 with venv and pip, and access to PyPI.\n--- stderr\n{}",
                out.status,
                stderr(&out)
            );
            eprintln!("built the Python HTTP example in {:?}", start.elapsed());
        }
        if !warm.join(".compiled").exists() {
            let start = Instant::now();
            let server = Server::start(&warm, &wasm, &["--namespace", "warmup"]);
            assert_eq!(server.get("/nowhere").status, 404, "{}", server.log());
            eprintln!("compiled the Python HTTP example in {:?}", start.elapsed());
        }
        (wasm, warm)
    })
}

#[test]
fn the_python_kit_http_example_keeps_its_state_across_requests_and_restarts() {
    let (wasm, warm) = python_http_example();
    let cache = cache_with_code_of(warm);
    let flags = ["--bucket", "visits"];
    let mut server = Server::start(&cache.dir(), wasm, &flags);

    // The cache: rendered on a miss, then read back.
    let first = server.get("/hello/ada");
    assert_eq!(
        (first.status, first.header("x-cache")),
        (200, Some("miss")),
        "{}",
        first.text()
    );
    assert_eq!(first.text(), "<h1>Hello, ada!</h1>\n");
    let again = server.get("/hello/ada");
    assert_eq!((again.status, again.header("x-cache")), (200, Some("hit")));
    assert_eq!(again.text(), first.text());
    let page = "# Serving\n\nState that *outlives* the request.\n";
    let html = "<h1 id=\"serving\">Serving</h1>\n<p>State that <em>outlives</em> the request.</p>\n";
    let rendered = server.post("/render", page.as_bytes());
    assert_eq!((rendered.status, rendered.header("x-cache")), (200, Some("miss")));
    assert_eq!(rendered.text(), html);

    // The handler's own bucket, and a counter in the granted one, from 4 clients at once: every
    // count handed out exactly once.
    let put = request(server.addr, "PUT", "/notes/greeting", b"hi from python");
    assert_eq!((put.status, put.text().as_str()), (200, "stored 14 bytes\n"));
    let counts = counts_from_clients(server.addr, "/visit", 4, 5);
    assert_eq!(counts, (1..=20).collect::<Vec<_>>());
    assert_eq!(server.get("/notes/nothing").status, 404);
    assert_eq!(server.get("/nowhere").status, 404);

    // kill -9 and a restart: everything a response said was stored is there.
    assert!(!server.signal_and_wait(libc::SIGKILL, Duration::from_secs(10)).success());
    let server = Server::start(&cache.dir(), wasm, &flags);
    assert_eq!(server.post("/visit", b"").text(), "21\n");
    let note = server.get("/notes/greeting");
    assert_eq!((note.status, note.text().as_str()), (200, "hi from python"));
    let cached = server.get("/hello/ada");
    assert_eq!((cached.header("x-cache"), cached.text()), (Some("hit"), first.text()));
    let rendered = server.post("/render", page.as_bytes());
    assert_eq!(
        (rendered.header("x-cache"), rendered.text().as_str()),
        (Some("hit"), html)
    );
    let log = server.log_when(|log| log.contains("POST /visit 200 "));
    assert!(log.contains("POST /visit 200 "), "{log}");
}

/// `clients` clients at once, each on its own connections, each POSTing `path` `each` times and
/// reading the count it was handed: every count, sorted.
fn counts_from_clients(addr: SocketAddr, path: &'static str, clients: usize, each: usize) -> Vec<u64> {
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            std::thread::spawn(move || {
                (0..each)
                    .map(|_| {
                        let r = request(addr, "POST", path, b"");
                        assert_eq!(r.status, 200, "{}", r.text());
                        r.text().trim().parse::<u64>().unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut counts: Vec<u64> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    counts.sort_unstable();
    counts
}
