//! How the store scales with the number of entries in one namespace:
//!
//! - `scale/{get,miss,add}/N`: latency with N = 1 thousand, 100 thousand and 1 million entries of
//!   1 KiB. `get` cycles through 10 000 of the N entries (a hot working set, in the page cache
//!   after warm-up), `miss` asks for keys never written, `add` writes new entries (the namespace
//!   grows by the few thousand it adds).
//! - `maintenance/{stats,verify,gc}/100000`: [`FileCache::stats`], [`FileCache::verify`] (reads
//!   and checks every entry) and [`FileCache::gc`] with a size the cache is already under (a full
//!   scan that removes nothing, so that it can be repeated).
//!
//! The entries are written as entry files directly (header and content, as the store writes them),
//! which takes a fraction of the time of a million `add`s; the first `add` of each run recounts the
//! namespace's usage, outside the timed region.
//!
//! `cargo bench -p filecache-host --bench scale` (about 6 minutes, most of it writing the million
//! entries; 4 GiB of disk while it runs, on ext4 with 4 KiB blocks).

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};
use filecache_host::entry::{HEADER_LEN, Header};
use filecache_host::{FileCache, Key, Namespace, NamespaceOptions};

const ENTRY: usize = 1 << 10;
const HOT: usize = 10_000;

fn key(i: usize) -> Key {
    Key::digest(format!("scale/{i}"))
}

/// Writes `n` entry files of 1 KiB into the namespace directory `dir`, as the store would.
fn populate(dir: &Path, n: usize) {
    let content = vec![0x5a; ENTRY];
    let crc = crc32c::crc32c(&content);
    let mut file = Vec::with_capacity(HEADER_LEN + ENTRY);
    let mut shards = std::collections::HashSet::new();
    for i in 0..n {
        let k = key(i);
        let hex = k.to_string();
        let shard = dir.join(&hex[..2]);
        if shards.insert(hex[..2].to_string()) {
            std::fs::create_dir_all(&shard).expect("a fan-out directory");
        }
        file.clear();
        file.extend_from_slice(
            &Header {
                len: ENTRY as u64,
                crc,
                key: k,
            }
            .encode(),
        );
        file.extend_from_slice(&content);
        std::fs::write(shard.join(&hex), &file).expect("an entry file");
    }
}

fn options() -> NamespaceOptions {
    NamespaceOptions {
        quota: u64::MAX,
        max_entry_size: u64::MAX,
        ..NamespaceOptions::default()
    }
}

fn open(root: &Path, n: usize) -> (FileCache, Namespace) {
    let cache = FileCache::open(root).expect("the cache opens");
    let ns = cache.namespace("scale", options()).expect("a namespace");
    populate(&root.join("scale"), n);
    // Recounts the usage (the counter was never written), outside the timed region.
    ns.add(&Key::digest("scale/first"), b"first").expect("add");
    (cache, ns)
}

fn scale(c: &mut Criterion) {
    let mut group = c.benchmark_group("scale");
    group
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);
    let content = vec![0xa5; ENTRY];
    for n in [1_000usize, 100_000, 1_000_000] {
        let tmp = tempfile::tempdir().expect("a temporary directory");
        let (_cache, ns) = open(tmp.path(), n);
        let hot: Vec<Key> = (0..HOT.min(n)).map(|i| key((i * 7919) % n)).collect();
        let mut i = 0;
        group.bench_function(BenchmarkId::new("get", n), |b| {
            b.iter(|| {
                i += 1;
                ns.get(black_box(&hot[i % hot.len()])).expect("get").expect("a hit")
            })
        });
        let mut i = 0;
        group.bench_function(BenchmarkId::new("miss", n), |b| {
            b.iter(|| {
                i += 1;
                assert!(ns.get(&Key::digest(format!("absent/{i}"))).expect("get").is_none())
            })
        });
        let mut i = 0;
        group.bench_function(BenchmarkId::new("add", n), |b| {
            b.iter(|| {
                i += 1;
                ns.add(&Key::digest(format!("added/{i}")), black_box(&content)).expect("add")
            })
        });
    }
    group.finish();
}

fn maintenance(c: &mut Criterion) {
    const N: usize = 100_000;
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let (cache, _ns) = open(tmp.path(), N);
    let mut group = c.benchmark_group("maintenance");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    group.bench_function(BenchmarkId::new("stats", N), |b| {
        b.iter(|| {
            let stats = cache.stats().expect("stats");
            assert_eq!(stats[0].entries, N as u64 + 1);
            stats
        })
    });
    group.bench_function(BenchmarkId::new("verify", N), |b| {
        b.iter(|| {
            let report = cache.verify(&mut |_| {}).expect("verify");
            assert_eq!(report.ok, N as u64 + 1);
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
