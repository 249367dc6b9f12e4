//! `wasi:keyvalue` from a guest, against the stores it can be served from: this crate's
//! (`filecache_host::keyvalue` over `filecache-kv`: SQLite per namespace, a CRC per row checked
//! on every read, quota charged, atomic across processes), wasmtime's own
//! `wasmtime-wasi-keyvalue` (a `HashMap` in memory, per instance, nothing persisted), and SQLite
//! through `rusqlite` (the way Spin persists its key-value store; WAL, `synchronous=NORMAL`, one
//! table keyed by (store, key), increment in an immediate transaction). The table has a rowid, as
//! filecache's has: `WITHOUT ROWID` would keep 1 KiB values inside its key's b-tree, interior
//! pages included, which made that baseline several times slower than either.
//!
//! The guest (`keyvalue bench OP SIZE ITERS`, `tests/programs/src/bin/keyvalue.rs`) times ITERS
//! operations from inside the component, host calls included, and prints nanoseconds per
//! operation; each configuration runs 7 times in fresh instances and the median is reported.
//! The three stores get the same guest and the same `wasi:keyvalue@0.2.0-draft` import.
//!
//! The three stores take turns run by run (filecache, in-memory, SQLite, then again), so that a
//! machine whose speed drifts during the run slows all three alike: quote the ratios.
//!
//! `cargo bench -p filecache-host --bench keyvalue` (about a minute). `FILECACHE_BENCH_DIR`
//! chooses where the on-disk stores live (default: the system's temporary directory);
//! `FILECACHE_BENCH_CASES` (`op:size:iters,...`) and `FILECACHE_BENCH_BACKENDS` (any of
//! `filecache,memory,sqlite`) narrow the run, and `FILECACHE_BENCH_RUNS` sets the runs per cell
//! (default 7): one backend and one case under `valgrind --tool=callgrind` count instructions
//! (the CPU-time column is left out there).

use filecache_host::keyvalue::{KeyValueCtx, KeyValueView};
use filecache_host::kv::Bucket;
use filecache_host::{FileCache, NamespaceOptions};
use wasmtime::component::{Component, HasData, Linker, Resource, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi_keyvalue::{WasiKeyValue, WasiKeyValueCtx, WasiKeyValueCtxBuilder};

/// Runs per cell, unless `FILECACHE_BENCH_RUNS` says otherwise.
const RUNS: usize = 7;

#[path = "../tests/common/mod.rs"]
mod common;

/// The store data: the context of the store the guest runs against.
type Host = common::Host<Stores>;

#[derive(Default)]
struct Stores {
    filecache: Option<KeyValueCtx>,
    memory: Option<WasiKeyValueCtx>,
    sqlite: Option<rusqlite::Connection>,
}

/// `wasi:keyvalue@0.2.0-draft` over SQLite, as a host would write it with rusqlite.
mod sqlite {
    use super::*;

    mod generated {
        wasmtime::component::bindgen!({
            path: "wit/deps/keyvalue-0.2.0-draft",
            world: "wasi:keyvalue/imports",
            imports: { default: trappable },
            with: { "wasi:keyvalue/store.bucket": super::SqliteBucket },
        });
    }
    use generated::wasi::keyvalue::{atomics, batch, store};

    pub struct SqliteBucket;

    pub struct View<'a> {
        conn: &'a rusqlite::Connection,
        table: &'a mut ResourceTable,
    }

    struct HasSqlite;
    impl HasData for HasSqlite {
        type Data<'a> = View<'a>;
    }

    pub fn open(path: &std::path::Path) -> rusqlite::Connection {
        let conn = rusqlite::Connection::open(path).expect("sqlite opens");
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS kv (store TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
                                            PRIMARY KEY (store, key));",
        )
        .expect("schema");
        conn
    }

    fn err(e: rusqlite::Error) -> store::Error {
        store::Error::Other(e.to_string())
    }

    type R<T> = wasmtime::Result<Result<T, store::Error>>;

    impl View<'_> {
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, store::Error> {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT value FROM kv WHERE store = '' AND key = ?1")
                .map_err(err)?;
            let mut rows = stmt.query([key]).map_err(err)?;
            match rows.next().map_err(err)? {
                Some(row) => Ok(Some(row.get(0).map_err(err)?)),
                None => Ok(None),
            }
        }
        fn set(&self, key: &str, value: &[u8]) -> Result<(), store::Error> {
            self.conn
                .prepare_cached("INSERT INTO kv (store, key, value) VALUES ('', ?1, ?2) ON CONFLICT DO UPDATE SET value = excluded.value")
                .and_then(|mut s| s.execute(rusqlite::params![key, value]))
                .map(|_| ())
                .map_err(err)
        }
    }

    impl store::Host for View<'_> {
        fn open(&mut self, _identifier: String) -> R<Resource<SqliteBucket>> {
            Ok(Ok(self.table.push(SqliteBucket)?))
        }
    }

    impl store::HostBucket for View<'_> {
        fn get(&mut self, _b: Resource<SqliteBucket>, key: String) -> R<Option<Vec<u8>>> {
            Ok(View::get(self, &key))
        }
        fn set(&mut self, _b: Resource<SqliteBucket>, key: String, value: Vec<u8>) -> R<()> {
            Ok(View::set(self, &key, &value))
        }
        fn delete(&mut self, _b: Resource<SqliteBucket>, key: String) -> R<()> {
            Ok(self
                .conn
                .execute("DELETE FROM kv WHERE store = '' AND key = ?1", [key])
                .map(|_| ())
                .map_err(err))
        }
        fn exists(&mut self, _b: Resource<SqliteBucket>, key: String) -> R<bool> {
            Ok(View::get(self, &key).map(|v| v.is_some()))
        }
        fn list_keys(&mut self, _b: Resource<SqliteBucket>, _cursor: Option<u64>) -> R<store::KeyResponse> {
            let mut stmt = self.conn.prepare("SELECT key FROM kv WHERE store = ''")?;
            let keys = stmt.query_map([], |r| r.get(0))?.collect::<Result<Vec<String>, _>>()?;
            Ok(Ok(store::KeyResponse { keys, cursor: None }))
        }
        fn drop(&mut self, b: Resource<SqliteBucket>) -> wasmtime::Result<()> {
            self.table.delete(b)?;
            Ok(())
        }
    }

    impl atomics::Host for View<'_> {
        fn increment(&mut self, _b: Resource<SqliteBucket>, key: String, delta: u64) -> R<u64> {
            let result = (|| {
                self.conn.execute_batch("BEGIN IMMEDIATE").map_err(err)?;
                let current = match View::get(self, &key)? {
                    Some(v) => String::from_utf8_lossy(&v)
                        .parse::<u64>()
                        .map_err(|e| store::Error::Other(e.to_string()))?,
                    None => 0,
                };
                let new = current + delta;
                View::set(self, &key, new.to_string().as_bytes())?;
                self.conn.execute_batch("COMMIT").map_err(err)?;
                Ok(new)
            })();
            if result.is_err() {
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            Ok(result)
        }
    }

    impl batch::Host for View<'_> {
        fn get_many(&mut self, _b: Resource<SqliteBucket>, keys: Vec<String>) -> R<Vec<Option<(String, Vec<u8>)>>> {
            Ok(keys
                .into_iter()
                .map(|k| Ok(View::get(self, &k)?.map(|v| (k, v))))
                .collect())
        }
        fn set_many(&mut self, _b: Resource<SqliteBucket>, kvs: Vec<(String, Vec<u8>)>) -> R<()> {
            // One transaction for the batch, as filecache's is.
            let tx = match self.conn.unchecked_transaction() {
                Ok(tx) => tx,
                Err(e) => return Ok(Err(err(e))),
            };
            if let Err(e) = kvs.iter().try_for_each(|(k, v)| View::set(self, k, v)) {
                return Ok(Err(e));
            }
            Ok(tx.commit().map_err(err))
        }
        fn delete_many(&mut self, b: Resource<SqliteBucket>, keys: Vec<String>) -> R<()> {
            for k in keys {
                let r = store::HostBucket::delete(self, Resource::new_borrow(b.rep()), k)?;
                if r.is_err() {
                    return Ok(r);
                }
            }
            Ok(Ok(()))
        }
    }

    pub fn add_to_linker(linker: &mut Linker<Host>) -> wasmtime::Result<()> {
        fn view(h: &mut Host) -> View<'_> {
            View {
                conn: h.ctx.sqlite.as_ref().expect("a connection"),
                table: &mut h.table,
            }
        }
        store::add_to_linker::<Host, HasSqlite>(linker, view)?;
        atomics::add_to_linker::<Host, HasSqlite>(linker, view)?;
        batch::add_to_linker::<Host, HasSqlite>(linker, view)
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Backend {
    Filecache,
    Memory,
    Sqlite,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Filecache => "filecache",
            Backend::Memory => "wasmtime in-memory",
            Backend::Sqlite => "SQLite (rusqlite)",
        }
    }
}

struct Bench {
    engine: Engine,
    component: Component,
    linkers: Vec<(Backend, Linker<Host>)>,
    dir: tempfile::TempDir,
}

impl Bench {
    fn new() -> Bench {
        let engine = Engine::default();
        let component = Component::from_file(&engine, filecache_tests::keyvalue_wasm()).expect("the guest compiles");
        let mut linkers = Vec::new();
        for backend in [Backend::Filecache, Backend::Memory, Backend::Sqlite] {
            let mut linker = Linker::<Host>::new(&engine);
            wasmtime_wasi::p2::add_to_linker_sync(&mut linker).expect("WASI links");
            match backend {
                Backend::Filecache => filecache_host::keyvalue::add_to_linker(&mut linker, |h: &mut Host| {
                    KeyValueView::new(h.ctx.filecache.as_ref().expect("a context"), &mut h.table)
                }),
                Backend::Memory => wasmtime_wasi_keyvalue::add_to_linker(&mut linker, |h: &mut Host| {
                    WasiKeyValue::new(h.ctx.memory.as_ref().expect("a context"), &mut h.table)
                }),
                Backend::Sqlite => sqlite::add_to_linker(&mut linker),
            }
            .expect("keyvalue links");
            linkers.push((backend, linker));
        }
        let dir = match std::env::var_os("FILECACHE_BENCH_DIR") {
            Some(d) => tempfile::tempdir_in(d),
            None => tempfile::tempdir(),
        }
        .expect("a temporary directory");
        Bench {
            engine,
            component,
            linkers,
            dir,
        }
    }

    /// One run of the guest: nanoseconds per operation as the guest timed them (wall clock), and
    /// the CPU time this thread spent per operation over the whole run (see [`cpu_ns`]).
    fn run(&self, backend: Backend, args: &[&str]) -> (u64, Option<u64>) {
        let linker = &self.linkers.iter().find(|(b, _)| *b == backend).expect("linked").1;
        let stdout = MemoryOutputPipe::new(1 << 10);
        let mut wasi = WasiCtx::builder();
        wasi.arg("keyvalue").args(args).stdout(stdout.clone()).inherit_stderr();
        let mut host = Host::new(wasi.build(), Stores::default());
        match backend {
            Backend::Filecache => {
                let cache = FileCache::open(self.dir.path().join("filecache")).expect("a cache");
                let ns = cache
                    .namespace("bench", NamespaceOptions::default())
                    .expect("a namespace");
                host.ctx.filecache = Some(KeyValueCtx::builder().bucket(Bucket::new(ns)).build());
            }
            Backend::Memory => host.ctx.memory = Some(WasiKeyValueCtxBuilder::new().build()),
            Backend::Sqlite => host.ctx.sqlite = Some(sqlite::open(&self.dir.path().join("kv.sqlite"))),
        }
        let mut store = Store::new(&self.engine, host);
        let command = wasmtime_wasi::p2::bindings::sync::Command::instantiate(&mut store, &self.component, linker)
            .expect("instantiates");
        let cpu_before = cpu_ns();
        command
            .wasi_cli_run()
            .call_run(&mut store)
            .expect("runs")
            .expect("succeeds");
        let cpu = cpu_before.zip(cpu_ns()).map(|(a, b)| b.saturating_sub(a));
        let wall = String::from_utf8_lossy(&stdout.contents())
            .trim()
            .parse()
            .expect("nanoseconds");
        // `first-get` writes its keys first, untimed by the guest but not by this clock.
        let iters: u64 = args[3].parse().expect("ITERS");
        let cpu = cpu.filter(|_| args[1] != "first-get").map(|c| c / iters.max(1));
        (wall, cpu)
    }
}

/// The CPU time this thread has run, in nanoseconds (`CLOCK_THREAD_CPUTIME_ID`): on a loaded
/// machine the guest's wall-clock times include the waits for a CPU; this does not.
/// Not under valgrind (rustix's vDSO lookup faults there) nor with `FILECACHE_BENCH_CPU=0`.
#[cfg(unix)]
fn cpu_ns() -> Option<u64> {
    static ENABLED: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
        let valgrind = std::env::var("LD_PRELOAD").is_ok_and(|p| p.contains("vgpreload"));
        !valgrind && std::env::var("FILECACHE_BENCH_CPU").map_or(true, |v| v != "0")
    });
    if !*ENABLED {
        return None;
    }
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    u64::try_from(t.tv_sec)
        .ok()?
        .checked_mul(1_000_000_000)?
        .checked_add(u64::try_from(t.tv_nsec).ok()?)
}

#[cfg(not(unix))]
fn cpu_ns() -> Option<u64> {
    None
}

fn median(mut times: Vec<u64>) -> u64 {
    times.sort_unstable();
    times[times.len() / 2]
}

fn main() {
    // `cargo test --benches` runs this with `--bench` absent: once, briefly, as a smoke test.
    let quick = !std::env::args().any(|a| a == "--bench");
    let bench = Bench::new();
    let default_cases: &[(&str, &str, &str)] = if quick {
        &[
            ("get", "1024", "10"),
            ("first-get", "1024", "10"),
            ("set", "1024", "10"),
            ("set-many", "1024", "100"),
            ("increment", "0", "10"),
        ]
    } else {
        &[
            ("set-distinct", "1024", "10000"),
            ("first-get", "1024", "10000"),
            ("get", "1024", "20000"),
            ("get", "65536", "5000"),
            ("set", "1024", "5000"),
            ("set", "65536", "2000"),
            ("set-many", "1024", "10000"),
            ("increment", "0", "5000"),
        ]
    };
    let chosen = std::env::var("FILECACHE_BENCH_CASES").unwrap_or_default();
    let cases: Vec<[String; 3]> = if chosen.is_empty() {
        default_cases
            .iter()
            .map(|(o, s, i)| [o.to_string(), s.to_string(), i.to_string()])
            .collect()
    } else {
        chosen
            .split(',')
            .map(|c| {
                let parts: Vec<&str> = c.split(':').collect();
                match parts[..] {
                    [o, s, i] => [o.to_string(), s.to_string(), i.to_string()],
                    _ => panic!("FILECACHE_BENCH_CASES: op:size:iters, not {c:?}"),
                }
            })
            .collect()
    };
    let backends: Vec<Backend> = match std::env::var("FILECACHE_BENCH_BACKENDS") {
        Ok(list) if !list.is_empty() => list
            .split(',')
            .map(|b| match b {
                "filecache" => Backend::Filecache,
                "memory" => Backend::Memory,
                "sqlite" => Backend::Sqlite,
                _ => panic!("FILECACHE_BENCH_BACKENDS: filecache, memory or sqlite, not {b:?}"),
            })
            .collect(),
        _ => vec![Backend::Filecache, Backend::Memory, Backend::Sqlite],
    };
    let runs = match std::env::var("FILECACHE_BENCH_RUNS") {
        Ok(n) => n.parse().expect("FILECACHE_BENCH_RUNS: a number"),
        Err(_) if quick => 1,
        Err(_) => RUNS,
    };
    println!(
        "{:<20} {:>7} {:>12} {:>20} {:>20} {:>9} {:>9}",
        "op (clock)", "value", "filecache", "wasmtime in-memory", "SQLite (rusqlite)", "vs mem", "vs SQLite"
    );
    for [op, size, iters] in &cases {
        let args = ["bench", op.as_str(), size.as_str(), iters.as_str()];
        // Interleaved: each run goes through every backend before the next run starts.
        let mut times = vec![Vec::new(); backends.len()];
        for _ in 0..runs {
            for (i, b) in backends.iter().enumerate() {
                times[i].push(bench.run(*b, &args));
            }
        }
        let show = |t: Option<u64>| t.map_or("-".to_string(), |t| format!("{t} ns"));
        let ratio = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => format!("{:.2}x", a as f64 / b.max(1) as f64),
            _ => "-".to_string(),
        };
        // The guest's wall-clock times, then this thread's CPU time per operation.
        for (what, cpu) in [("wall", false), ("cpu", true)] {
            let cell = |b: Backend| -> Option<u64> {
                let i = backends.iter().position(|x| *x == b)?;
                let runs: Vec<u64> = if cpu {
                    times[i]
                        .iter()
                        .map(|t: &(u64, Option<u64>)| t.1)
                        .collect::<Option<_>>()?
                } else {
                    times[i].iter().map(|t| t.0).collect()
                };
                let t = median(runs.clone());
                eprintln!("{op} {size} {what}: {}: {t} ns (runs: {runs:?})", b.name());
                Some(t)
            };
            let (f, m, s) = (cell(Backend::Filecache), cell(Backend::Memory), cell(Backend::Sqlite));
            if f.is_none() && m.is_none() && s.is_none() {
                continue;
            }
            println!(
                "{:<20} {:>7} {:>12} {:>20} {:>20} {:>9} {:>9}",
                format!("{op} ({what})"),
                size,
                show(f),
                show(m),
                show(s),
                ratio(f, m),
                ratio(f, s)
            );
        }
    }
}
