//! The store, host-native, against its best-regarded Rust peer and against the raw filesystem, in
//! one run on one machine:
//!
//! - `filecache`: [`Namespace::get`] / [`Namespace::add`] (default durability: no fsync), header
//!   and CRC32C checks included; `filecache-sync` is `add` with [`Durability::Sync`].
//! - `cacache`: `cacache` 13's sync API (`read_sync` / `write_sync`), with its default SHA-256
//!   integrity checking; it does not fsync.
//! - `std-fs`: `std::fs::write` of a temporary file and `std::fs::rename` into place, and
//!   `std::fs::read`, with no integrity check at all.
//!
//! Every `get` reads an entry written once before timing starts (page cache warm); every `add`
//! writes a new entry (as a cache fill does), and the entries are removed after each sample,
//! outside the timed region. A miss asks for a key that was never written: the same one every
//! time (`filecache`, …), or one never asked for before (`filecache-fresh`, …).
//!
//! `parallel/{threads,processes}/{1,2}`: 1 KiB gets of one namespace by one or two readers at once
//! (threads of one process, or processes), one get per reader per iteration: on two idle cores,
//! two readers take as long per iteration as one when nothing on the hit path is shared.
//!
//! `cargo bench -p filecache-store --bench store` (about 7 minutes; add `-- --quick` for a rough
//! run, or a filter such as `-- get/` for one group). Results land in `target/criterion/`;
//! `python3 scripts/plot.py` turns them into `docs/throughput.svg`.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, measurement::WallTime};
use filecache_store::{Durability, FileCache, Key, Namespace, NamespaceOptions};

/// The entry sizes measured, in bytes.
const SIZES: [usize; 4] = [1 << 10, 64 << 10, 1 << 20, 64 << 20];
/// How many keys never written a fresh-miss benchmark has (more than it uses in a run).
const FRESH_MISSES: usize = 1_000_000;

fn content(size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
        .collect()
}

struct Peers {
    _tmp: tempfile::TempDir,
    ns: Namespace,
    ns_sync: Namespace,
    cacache: PathBuf,
    raw: PathBuf,
}

impl Peers {
    fn new() -> Peers {
        let tmp = tempfile::tempdir().expect("a temporary directory");
        let cache = FileCache::open(tmp.path().join("filecache")).expect("the cache opens");
        let options = NamespaceOptions::default().quota(u64::MAX).max_entry_size(u64::MAX);
        let ns = cache.namespace("bench", options).expect("a namespace");
        let ns_sync = cache
            .namespace("bench-sync", options.durability(Durability::Sync))
            .expect("a namespace");
        let raw = tmp.path().join("raw");
        std::fs::create_dir(&raw).expect("a directory");
        Peers {
            cacache: tmp.path().join("cacache"),
            raw,
            ns,
            ns_sync,
            _tmp: tmp,
        }
    }
}

fn fs_add(dir: &Path, name: &str, data: &[u8]) {
    let tmp = dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, data).expect("write");
    std::fs::rename(&tmp, dir.join(name)).expect("rename");
}

/// Fewer, longer samples for the large sizes, so that a full run stays affordable on 2 cores.
fn configure(group: &mut BenchmarkGroup<'_, WallTime>, size: usize) {
    if size >= 64 << 20 {
        group.sample_size(10).measurement_time(Duration::from_secs(8));
    } else if size >= 1 << 20 {
        group.sample_size(30).measurement_time(Duration::from_secs(4));
    } else {
        group.sample_size(50).measurement_time(Duration::from_secs(3));
    }
}

fn get(c: &mut Criterion) {
    let p = Peers::new();
    let mut group = c.benchmark_group("get");
    group.warm_up_time(Duration::from_secs(1));
    for size in SIZES {
        let data = content(size);
        let key = Key::digest(format!("get/{size}"));
        p.ns.add(&key, &data).expect("add");
        cacache::write_sync(&p.cacache, key.to_string(), &data).expect("cacache write");
        fs_add(&p.raw, &key.to_string(), &data);
        let raw_path = p.raw.join(key.to_string());
        configure(&mut group, size);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::new("filecache", size), |b| {
            b.iter(|| {
                let got = p.ns.get(black_box(&key)).expect("get").expect("a hit");
                assert_eq!(got.len(), size);
                got
            })
        });
        group.bench_function(BenchmarkId::new("cacache", size), |b| {
            b.iter(|| {
                let got = cacache::read_sync(&p.cacache, black_box(key.to_string())).expect("a hit");
                assert_eq!(got.len(), size);
                got
            })
        });
        group.bench_function(BenchmarkId::new("std-fs", size), |b| {
            b.iter(|| {
                let got = std::fs::read(black_box(&raw_path)).expect("a hit");
                assert_eq!(got.len(), size);
                got
            })
        });
    }
    group.finish();
}

/// Times `iters` calls of `add(i)`, each for a new entry, then runs `clean` (not timed), so that
/// the disk does not fill up however many iterations criterion asks for.
fn fresh_adds(iters: u64, mut add: impl FnMut(u64), clean: impl FnOnce()) -> Duration {
    let start = Instant::now();
    for i in 0..iters {
        add(i);
    }
    let elapsed = start.elapsed();
    clean();
    elapsed
}

fn add(c: &mut Criterion) {
    let p = Peers::new();
    let mut group = c.benchmark_group("add");
    group.warm_up_time(Duration::from_secs(1));
    let mut round = 0u64;
    let mut name = move |size: usize, i: u64| {
        round += 1;
        format!("{size}-{round}-{i}")
    };
    for size in SIZES {
        let data = content(size);
        configure(&mut group, size);
        group.throughput(Throughput::Bytes(size as u64));
        for (id, ns) in [("filecache", &p.ns), ("filecache-sync", &p.ns_sync)] {
            group.bench_function(BenchmarkId::new(id, size), |b| {
                b.iter_custom(|iters| {
                    fresh_adds(
                        iters,
                        |i| ns.add(&Key::digest(name(size, i)), black_box(&data)).expect("add"),
                        || {
                            ns.clear().expect("clear");
                        },
                    )
                })
            });
        }
        group.bench_function(BenchmarkId::new("cacache", size), |b| {
            b.iter_custom(|iters| {
                fresh_adds(
                    iters,
                    |i| {
                        cacache::write_sync(&p.cacache, Key::digest(name(size, i)).to_string(), black_box(&data))
                            .expect("cacache write");
                    },
                    || cacache::clear_sync(&p.cacache).expect("cacache clear"),
                )
            })
        });
        group.bench_function(BenchmarkId::new("std-fs", size), |b| {
            b.iter_custom(|iters| {
                fresh_adds(
                    iters,
                    |i| fs_add(&p.raw, &Key::digest(name(size, i)).to_string(), black_box(&data)),
                    || {
                        std::fs::remove_dir_all(&p.raw).expect("remove");
                        std::fs::create_dir(&p.raw).expect("a directory");
                    },
                )
            })
        });
    }
    group.finish();
}

fn miss(c: &mut Criterion) {
    let p = Peers::new();
    // Something in every store, so that a miss is not answered by a missing directory.
    let present = Key::digest("present");
    p.ns.add(&present, b"present").expect("add");
    cacache::write_sync(&p.cacache, present.to_string(), b"present").expect("cacache write");
    fs_add(&p.raw, &present.to_string(), b"present");
    let absent = Key::digest("absent");
    let raw_absent = p.raw.join(absent.to_string());
    let mut group = c.benchmark_group("miss");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    group.bench_function("filecache", |b| {
        b.iter(|| assert!(p.ns.get(black_box(&absent)).expect("get").is_none()))
    });
    group.bench_function("cacache", |b| {
        b.iter(|| {
            assert!(matches!(
                cacache::read_sync(&p.cacache, black_box(absent.to_string())),
                Err(cacache::Error::EntryNotFound(..))
            ))
        })
    });
    group.bench_function("std-fs", |b| {
        b.iter(|| assert!(std::fs::read(black_box(&raw_absent)).is_err()))
    });
    // The same, for keys never asked for before: the kernel has no negative entry cached for
    // them, so each miss looks in the directory itself (made outside the timed region).
    let fresh: Vec<Key> = (0..FRESH_MISSES).map(|i| Key::digest(format!("absent/{i}"))).collect();
    let fresh_names: Vec<String> = fresh.iter().map(|k| k.to_string()).collect();
    let fresh_paths: Vec<PathBuf> = fresh_names.iter().map(|n| p.raw.join(n)).collect();
    let mut i = 0;
    group.bench_function("filecache-fresh", |b| {
        b.iter(|| {
            i += 1;
            assert!(p.ns.get(black_box(&fresh[i % FRESH_MISSES])).expect("get").is_none())
        })
    });
    let mut i = 0;
    group.bench_function("cacache-fresh", |b| {
        b.iter(|| {
            i += 1;
            assert!(cacache::read_sync(&p.cacache, black_box(&fresh_names[i % FRESH_MISSES])).is_err())
        })
    });
    let mut i = 0;
    group.bench_function("std-fs-fresh", |b| {
        b.iter(|| {
            i += 1;
            assert!(std::fs::read(black_box(&fresh_paths[i % FRESH_MISSES])).is_err())
        })
    });
    group.finish();
}

/// The entries `parallel` reads: 1 KiB each, as a hot working set.
const PARALLEL_ENTRIES: usize = 64;
const PARALLEL_SIZE: usize = 1 << 10;

fn parallel_key(i: usize) -> Key {
    Key::digest(format!("parallel/{i}"))
}

/// `n` gets of the parallel working set on `ns`, checked.
fn parallel_gets(ns: &Namespace, n: u64) {
    for i in 0..n {
        let got = ns
            .get(black_box(&parallel_key(i as usize % PARALLEL_ENTRIES)))
            .expect("get")
            .expect("a hit");
        assert_eq!(got.len(), PARALLEL_SIZE);
    }
}

/// The environment variable that makes this benchmark binary a reader process of `parallel`:
/// `<cache dir> <gets>`; it waits for a line on stdin, does the gets, and prints how long they
/// took in nanoseconds.
const CHILD: &str = "FILECACHE_BENCH_PARALLEL_CHILD";

fn parallel_child(spec: &str) {
    use std::io::BufRead;
    let (dir, n) = spec.split_once(' ').expect("<dir> <gets>");
    let cache = FileCache::open(dir).expect("the cache opens");
    let ns = cache
        .namespace("parallel", NamespaceOptions::default())
        .expect("a namespace");
    parallel_gets(&ns, 100); // warm
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).expect("go");
    let t = Instant::now();
    parallel_gets(&ns, n.parse().expect("a count"));
    println!("{}", t.elapsed().as_nanos());
}

/// Throughput of 1 KiB gets on one namespace by 1 and 2 threads of one process, and by 1 and 2
/// processes: each iteration is one get per reader, so the per-iteration time of 2 readers over
/// that of 1 is how far from perfect scaling they are (nothing shared on the hit path: 1.0).
fn parallel(c: &mut Criterion) {
    let p = Peers::new();
    let dir = p._tmp.path().join("filecache");
    let ns = FileCache::open(&dir)
        .expect("the cache opens")
        .namespace("parallel", NamespaceOptions::default())
        .expect("a namespace");
    let data = content(PARALLEL_SIZE);
    for i in 0..PARALLEL_ENTRIES {
        ns.add(&parallel_key(i), &data).expect("add");
    }
    let mut group = c.benchmark_group("parallel");
    group
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30)
        .measurement_time(Duration::from_secs(4));
    group.throughput(Throughput::Elements(1));
    for readers in [1u64, 2] {
        group.bench_function(BenchmarkId::new("threads", readers), |b| {
            b.iter_custom(|iters| {
                let barrier = std::sync::Barrier::new(readers as usize + 1);
                std::thread::scope(|s| {
                    for _ in 0..readers {
                        s.spawn(|| {
                            barrier.wait();
                            parallel_gets(&ns, iters);
                        });
                    }
                    barrier.wait();
                    let t = Instant::now();
                    // Joined at the end of the scope: the time of the slowest reader.
                    t
                })
                .elapsed()
            })
        });
    }
    let exe = std::env::current_exe().expect("this benchmark's path");
    for readers in [1u64, 2] {
        group.bench_function(BenchmarkId::new("processes", readers), |b| {
            b.iter_custom(|iters| {
                use std::io::{BufRead, BufReader, Write};
                let mut children: Vec<_> = (0..readers)
                    .map(|_| {
                        std::process::Command::new(&exe)
                            .env(CHILD, format!("{} {iters}", dir.display()))
                            .stdin(std::process::Stdio::piped())
                            .stdout(std::process::Stdio::piped())
                            .spawn()
                            .expect("a reader process")
                    })
                    .collect();
                for child in &mut children {
                    child.stdin.as_mut().expect("stdin").write_all(b"go\n").expect("go");
                }
                // Each reader times its own gets; the slowest one is the pair's time.
                let mut slowest = Duration::ZERO;
                for mut child in children {
                    let mut line = String::new();
                    BufReader::new(child.stdout.take().expect("stdout"))
                        .read_line(&mut line)
                        .expect("a time");
                    assert!(child.wait().expect("a reader").success());
                    slowest = slowest.max(Duration::from_nanos(line.trim().parse().expect("nanoseconds")));
                }
                slowest
            })
        });
    }
    group.finish();
}

criterion_group!(benches, get, add, miss, parallel);

fn main() {
    if let Ok(spec) = std::env::var(CHILD) {
        return parallel_child(&spec);
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
