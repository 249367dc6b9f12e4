//! A first measurement of the store against the raw filesystem (plain `std::fs`: write to a
//! temporary file and rename; read the file whole), in one run on one machine.
//!
//! `cargo bench -p filecache-host --bench store`

use std::hint::black_box;
use std::time::{Duration, Instant};

use filecache_host::{FileCache, Key, NamespaceOptions};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time(iters: usize, mut f: impl FnMut(usize)) -> Duration {
    let mut samples = Vec::with_capacity(iters);
    for i in 0..iters {
        let t = Instant::now();
        f(i);
        samples.push(t.elapsed());
    }
    median(samples)
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = FileCache::open(tmp.path().join("cache")).unwrap();
    let ns = cache
        .namespace(
            "bench",
            NamespaceOptions {
                quota: u64::MAX,
                max_entry_size: u64::MAX,
                ..NamespaceOptions::default()
            },
        )
        .unwrap();
    let raw = tmp.path().join("raw");
    std::fs::create_dir(&raw).unwrap();

    println!(
        "{:>8}  {:>12} {:>12} {:>6}  {:>12} {:>12} {:>6}",
        "size", "get", "fs::read", "ratio", "add", "fs write", "ratio"
    );
    for size in [1usize << 10, 64 << 10, 1 << 20, 64 << 20] {
        let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        let iters = ((256usize << 20) / size).clamp(20, 2000);
        let keys: Vec<Key> = (0..iters).map(|i| Key::digest(format!("{size}/{i}"))).collect();
        let add = time(iters, |i| ns.add(&keys[i], &data).unwrap());
        let get = time(iters, |i| {
            black_box(ns.get(&keys[i]).unwrap().unwrap());
        });
        let fs_write = time(iters, |i| {
            let tmp = raw.join(format!("{i}.tmp"));
            std::fs::write(&tmp, &data).unwrap();
            std::fs::rename(&tmp, raw.join(i.to_string())).unwrap();
        });
        let fs_read = time(iters, |i| {
            black_box(std::fs::read(raw.join(i.to_string())).unwrap());
        });
        println!(
            "{:>8}  {:>12?} {:>12?} {:>6.2}  {:>12?} {:>12?} {:>6.2}",
            size,
            get,
            fs_read,
            fs_read.as_secs_f64() / get.as_secs_f64(),
            add,
            fs_write,
            fs_write.as_secs_f64() / add.as_secs_f64()
        );
        ns.clear().unwrap();
        for i in 0..iters {
            let _ = std::fs::remove_file(raw.join(i.to_string()));
        }
    }
    let missing: Vec<Key> = (0..10_000).map(|i| Key::digest(format!("missing/{i}"))).collect();
    let miss = time(missing.len(), |i| assert!(ns.get(&missing[i]).unwrap().is_none()));
    println!("miss: {miss:?}");
}
