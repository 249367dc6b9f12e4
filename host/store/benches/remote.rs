//! A remote hit (local miss, answered by a real `redis-server` on loopback and copied to the
//! local tier) against a local hit, through the same [`TieredStore`]; and the remote fetch alone
//! (verified, not copied). Medians of one run on one machine.
//!
//! `cargo bench -p filecache-host --bench remote` (needs `redis-server` and `redis-cli`)

use std::hint::black_box;
use std::time::{Duration, Instant};

use filecache_store::remote::{RemoteOptions, RemoteTier, TieredStore};
use filecache_store::{EntryStore, FileCache, Key, NamespaceOptions};
use filecache_tests::RedisServer;

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
    let redis = RedisServer::start();
    let tier = RemoteTier::new(RemoteOptions::new(redis.url())).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let options = NamespaceOptions::default().quota(u64::MAX);
    let open = |dir: &str| {
        FileCache::open(tmp.path().join(dir))
            .unwrap()
            .namespace("bench", options)
            .unwrap()
    };
    // The writer publishes; the reader starts empty, so its first get of a key is a remote hit.
    let writer = TieredStore::new(open("writer"), tier.clone()).expect("a named namespace");
    let reader_ns = open("reader");
    let reader = TieredStore::new(reader_ns.clone(), tier.clone()).expect("a named namespace");

    println!(
        "{:>8}  {:>12} {:>12} {:>12} {:>7}",
        "size", "local hit", "remote hit", "fetch only", "ratio"
    );
    for size in [1usize << 10, 64 << 10, 1 << 20, 16 << 20] {
        let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        let iters = ((128usize << 20) / size).clamp(20, 1000);
        let keys: Vec<Key> = (0..iters).map(|i| Key::digest(format!("{size}/{i}"))).collect();
        for k in &keys {
            writer.add(k, &data).unwrap();
        }
        let fetch = time(iters, |i| {
            black_box(tier.fetch(&reader_ns, &keys[i], u64::MAX).unwrap().unwrap());
        });
        let remote = time(iters, |i| {
            black_box(reader.get(&keys[i]).unwrap().unwrap());
        });
        let local = time(iters, |i| {
            black_box(reader.get(&keys[i]).unwrap().unwrap());
        });
        assert_eq!(reader_ns.counts().remote_errors, 0);
        println!(
            "{:>8}  {:>12?} {:>12?} {:>12?} {:>7.1}",
            size,
            local,
            remote,
            fetch,
            remote.as_secs_f64() / local.as_secs_f64()
        );
        redis.cli(&["FLUSHALL"]);
        reader_ns.clear().unwrap();
        writer.local().clear().unwrap();
    }
    let c = reader_ns.counts();
    println!(
        "reader counters: {} remote hits, {} remote errors",
        c.remote_hits, c.remote_errors
    );
}
