//! `wasi:keyvalue` from a guest, against the stores it can be served from: this crate's
//! (`filecache_host::keyvalue` over `filecache-kv`: SQLite per namespace, a CRC per row checked
//! on every read, quota charged, atomic across processes), wasmtime's own
//! `wasmtime-wasi-keyvalue` (a `HashMap` in memory, per instance, nothing persisted), and SQLite
//! through `rusqlite` (the way Spin persists its key-value store; WAL, `synchronous=NORMAL`, one
//! table keyed by (store, key), increment in an immediate transaction).
//!
//! The guest (`keyvalue bench OP SIZE ITERS`, `tests/programs/src/bin/keyvalue.rs`) times ITERS
//! operations from inside the component, host calls included, and prints nanoseconds per
//! operation; each configuration runs 7 times in fresh instances and the median is reported.
//! The three stores get the same guest and the same `wasi:keyvalue@0.2.0-draft` import.
//!
//! `cargo bench -p filecache-host --bench keyvalue` (about a minute). `FILECACHE_BENCH_DIR`
//! chooses where the on-disk stores live (default: the system's temporary directory).

use filecache_host::keyvalue::{KeyValueCtx, KeyValueView};
use filecache_host::kv::Bucket;
use filecache_host::{FileCache, NamespaceOptions};
use wasmtime::component::{Component, HasData, Linker, Resource, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi_keyvalue::{WasiKeyValue, WasiKeyValueCtx, WasiKeyValueCtxBuilder};

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
                                            PRIMARY KEY (store, key)) WITHOUT ROWID;",
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

    /// One run of the guest: nanoseconds per operation.
    fn run(&self, backend: Backend, args: &[&str]) -> u64 {
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
        command
            .wasi_cli_run()
            .call_run(&mut store)
            .expect("runs")
            .expect("succeeds");
        String::from_utf8_lossy(&stdout.contents())
            .trim()
            .parse()
            .expect("nanoseconds")
    }

    fn median(&self, backend: Backend, args: &[&str]) -> u64 {
        let mut times: Vec<u64> = (0..RUNS).map(|_| self.run(backend, args)).collect();
        times.sort_unstable();
        times[RUNS / 2]
    }
}

fn main() {
    // `cargo test --benches` runs this with `--bench` absent: once, briefly, as a smoke test.
    let quick = !std::env::args().any(|a| a == "--bench");
    let bench = Bench::new();
    let cases: &[(&str, &str, &str)] = if quick {
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
    println!(
        "{:<10} {:>7} {:>12} {:>20} {:>20} {:>9} {:>9}",
        "op", "value", "filecache", "wasmtime in-memory", "SQLite (rusqlite)", "vs mem", "vs SQLite"
    );
    for (op, size, iters) in cases {
        let args = ["bench", op, size, iters];
        let t: Vec<u64> = [Backend::Filecache, Backend::Memory, Backend::Sqlite]
            .into_iter()
            .map(|b| {
                let t = bench.median(b, &args);
                eprintln!("{op} {size}: {}: {t} ns", b.name());
                t
            })
            .collect();
        println!(
            "{:<10} {:>7} {:>9} ns {:>17} ns {:>17} ns {:>8.2}x {:>8.2}x",
            op,
            size,
            t[0],
            t[1],
            t[2],
            t[0] as f64 / t[1].max(1) as f64,
            t[0] as f64 / t[2].max(1) as f64
        );
    }
}
