//! How the store scales with the number of entries in one namespace:
//!
//! - `scale/{get,miss,add}/N`: latency with N = 1 thousand, 100 thousand and 1 million entries of
//!   1 KiB. `get` cycles through the same number of entries, 1 000, spread over the N (a hot
//!   working set of the same size at every N, in the page cache after warm-up), `miss` asks for keys never written (nor asked for before), `add` writes new entries (the
//!   namespace grows by the few thousand it adds, and they are deleted afterwards);
//!   `std-fs-miss` is `std::fs::read` of never-seen names in the same directories.
//! - `maintenance/{stats,verify,gc}/100000`: [`FileCache::stats`], [`FileCache::verify`] (reads
//!   and checks every entry) and [`FileCache::gc`] with a size the cache is already under (a full
//!   scan that removes nothing, so that it can be repeated).
//!
//! The entries are written as entry files directly (header and content, as the store writes them),
//! which takes a fraction of the time of a million `add`s, into `target/bench-scale/<N>`, which
//! later runs reuse (about 4.5 GiB on ext4 with 4 KiB blocks; delete it when done). The first
//! `add` of each run recounts the namespace's usage, outside the timed region.
//!
//! `cargo bench -p filecache-store --bench scale` (about 3 minutes once the namespaces exist;
//! writing the million entries takes 22 s on the idle 2-core machine, and took 20 minutes once
//! on a busy one).
//! `FILECACHE_BENCH_SCALE=1000,100000` measures only those sizes (the maintenance benchmarks run
//! when 100000 is among them).

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};
use filecache_store::entry::{BLOCK_SHIFT, Layout, encode_file};
use filecache_store::{FileCache, Key, Namespace, NamespaceOptions};

const ENTRY: usize = 1 << 10;
/// The working set of `get`: the same at every N (so that only N differs between them).
const HOT: usize = 1_000;
/// How many fresh keys a miss or add benchmark has (more than it uses in a run).
const FRESH: usize = 1_000_000;

fn key(i: usize) -> Key {
    Key::digest(format!("scale/{i}"))
}

/// Writes entry files `range` of 1 KiB into the namespace directory `dir`, as the store would.
fn populate_range(dir: &Path, range: std::ops::Range<usize>) {
    let content = vec![0x5a; ENTRY];
    for i in range {
        let k = key(i);
        let hex = k.to_string();
        let file = encode_file(k, &content, Layout::Leading, BLOCK_SHIFT);
        std::fs::write(dir.join(&hex[..2]).join(&hex), &file).expect("an entry file");
    }
}

/// Writes `n` entries into the namespace directory `dir`, on every core.
fn populate(dir: &Path, n: usize) {
    for shard in 0..256 {
        std::fs::create_dir_all(dir.join(format!("{shard:02x}"))).expect("a fan-out directory");
    }
    let threads = std::thread::available_parallelism().map_or(1, |p| p.get());
    let per = n.div_ceil(threads);
    std::thread::scope(|s| {
        for t in 0..threads {
            let range = (t * per).min(n)..((t + 1) * per).min(n);
            s.spawn(move || populate_range(dir, range));
        }
    });
}

fn options() -> NamespaceOptions {
    NamespaceOptions::default().quota(u64::MAX).max_entry_size(u64::MAX)
}

fn root_of(n: usize) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/bench-scale")
        .join(n.to_string())
}

/// A cache root holding one namespace of `n` entries. Kept under `target/bench-scale/<n>` and
/// reused by later runs (writing a million files takes many minutes on a busy 2-core machine);
/// `FILECACHE_BENCH_FRESH=1` writes it again.
fn open(n: usize) -> (FileCache, Namespace) {
    let root = root_of(n);
    let done = root.join("populated");
    if std::env::var_os("FILECACHE_BENCH_FRESH").is_some() || !done.exists() {
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("a directory");
        let cache = FileCache::open(&root).expect("the cache opens");
        drop(cache.namespace("scale", options()).expect("a namespace"));
        let t = std::time::Instant::now();
        populate(&root.join("scale"), n);
        eprintln!("wrote {n} entries in {:.1?}", t.elapsed());
        std::fs::write(&done, b"").expect("a marker");
    }
    let cache = FileCache::open(&root).expect("the cache opens");
    let ns = cache.namespace("scale", options()).expect("a namespace");
    // Recounts the usage (the counter was never written), outside the timed region.
    ns.add(&Key::digest("scale/first"), b"first").expect("add");
    (cache, ns)
}

/// Which namespace sizes to measure: `FILECACHE_BENCH_SCALE=1000,100000` picks some.
fn sizes() -> Vec<usize> {
    match std::env::var("FILECACHE_BENCH_SCALE") {
        Ok(list) => list
            .split(',')
            .map(|n| {
                n.trim()
                    .parse()
                    .expect("FILECACHE_BENCH_SCALE: numbers separated by commas")
            })
            .collect(),
        Err(_) => vec![1_000, 100_000, 1_000_000],
    }
}

fn scale(c: &mut Criterion) {
    let mut group = c.benchmark_group("scale");
    group
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);
    let content = vec![0xa5; ENTRY];
    // Keys differ from run to run, so that none was asked for (or cached negative) before.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_nanos();
    for n in sizes() {
        let (_cache, ns) = open(n);
        let hot: Vec<Key> = (0..HOT).map(|i| key((i * 7919) % n)).collect();
        let mut i = 0;
        group.bench_function(BenchmarkId::new("get", n), |b| {
            b.iter(|| {
                i += 1;
                ns.get(black_box(&hot[i % hot.len()])).expect("get").expect("a hit")
            })
        });
        // Keys never asked for before (made outside the timed region), so that no miss is
        // answered from a negative entry the kernel cached for an earlier one.
        let absent: Vec<Key> = (0..FRESH)
            .map(|i| Key::digest(format!("absent/{run}/{n}/{i}")))
            .collect();
        let mut i = 0;
        group.bench_function(BenchmarkId::new("miss", n), |b| {
            b.iter(|| {
                i += 1;
                assert!(ns.get(black_box(&absent[i % FRESH])).expect("get").is_none())
            })
        });
        // The same lookups made by `std::fs::read` on the same directories: what the filesystem
        // itself charges for a name it has never seen.
        let dir = root_of(n).join("scale");
        let absent_paths: Vec<std::path::PathBuf> = (0..FRESH)
            .map(|i| {
                let hex = Key::digest(format!("absent-fs/{run}/{n}/{i}")).to_string();
                dir.join(&hex[..2]).join(hex)
            })
            .collect();
        let mut i = 0;
        group.bench_function(BenchmarkId::new("std-fs-miss", n), |b| {
            b.iter(|| {
                i += 1;
                assert!(std::fs::read(black_box(&absent_paths[i % FRESH])).is_err())
            })
        });
        let added: Vec<Key> = (0..FRESH)
            .map(|i| Key::digest(format!("added/{run}/{n}/{i}")))
            .collect();
        let mut i = 0;
        group.bench_function(BenchmarkId::new("add", n), |b| {
            b.iter(|| {
                i += 1;
                ns.add(&added[i % FRESH], black_box(&content)).expect("add")
            })
        });
        // Back to `n` entries for the next run.
        for j in 0..=i {
            ns.delete(&added[j % FRESH]).expect("delete");
        }
    }
    group.finish();
}

fn maintenance(c: &mut Criterion) {
    const N: usize = 100_000;
    if !sizes().contains(&N) {
        return;
    }
    let (cache, _ns) = open(N);
    let mut group = c.benchmark_group("maintenance");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    // N, and the entry the first `add` wrote.
    let entries = cache.stats().expect("stats")[0].entries;
    assert!(entries > N as u64);
    group.bench_function(BenchmarkId::new("stats", N), |b| {
        b.iter(|| {
            let stats = cache.stats().expect("stats");
            assert_eq!(stats[0].entries, entries);
            stats
        })
    });
    group.bench_function(BenchmarkId::new("verify", N), |b| {
        b.iter(|| {
            let report = cache.verify(&mut |_| {}).expect("verify");
            assert_eq!((report.ok, report.removed), (entries, 0));
            report
        })
    });
    group.bench_function(BenchmarkId::new("gc", N), |b| {
        b.iter(|| {
            let report = cache.gc(u64::MAX / 2, &mut |_| {}).expect("gc");
            assert_eq!(report.removed_entries, 0);
            report
        })
    });
    group.finish();
}

criterion_group!(benches, scale, maintenance);
criterion_main!(benches);
