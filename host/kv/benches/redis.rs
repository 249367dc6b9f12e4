//! The Redis engine against the SQLite engine and against a raw RESP round trip, in one run,
//! interleaved (each round times every contender once, in turn), on a real `redis-server`
//! started on loopback: `get`, `set` and `increment` of 1 KiB values (increment: a counter).
//!
//! Contenders, per operation:
//! - `sqlite`: [`SqliteEngine`] through a [`Bucket`], one namespace in a temporary directory.
//! - `redis`: [`RedisEngine`] through a [`Bucket`], with a fleet key (checksum and MAC on every
//!   value, as a fleet runs it).
//! - `raw`: the same client's bare round trip (`RemoteTier::command`): `PING`, and `GET`/`SET`
//!   of a 1 KiB value: what a Redis client can do at best over this connection.
//!
//! Prints the median of the rounds' per-call means, in microseconds, and the ratios; then, on
//! the same server, `redis-benchmark -c 1` (one client, no pipelining: redis-cli-level latency
//! of `GET`, `SET` of 1 KiB and `INCR`), as the C client's anchor.
//! Run: `cargo bench -p filecache-kv --features remote --bench redis` (needs redis-server).

use std::sync::Arc;
use std::time::Instant;

use filecache_kv::{Bucket, RedisEngine};
use filecache_store::remote::{RemoteOptions, RemoteTier};
use filecache_store::{FileCache, NamespaceOptions};

const ROUNDS: usize = 15;
const CALLS: usize = 400;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Mean microseconds per call of `f` over [`CALLS`] calls.
fn time(mut f: impl FnMut(usize)) -> f64 {
    let start = Instant::now();
    for i in 0..CALLS {
        f(i);
    }
    start.elapsed().as_secs_f64() * 1e6 / CALLS as f64
}

fn main() {
    let redis = filecache_tests::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cache = FileCache::open(dir.path()).unwrap();
    let sqlite = Bucket::new(cache.namespace("bench", NamespaceOptions::default()).unwrap());
    let mut options = RemoteOptions::new(redis.url());
    options.fleet_key = Some(vec![7; 32]);
    let tier = RemoteTier::new(options).unwrap();
    let remote = Bucket::from_engine(Arc::new(
        RedisEngine::new(tier.clone(), "bench", &NamespaceOptions::default()).unwrap(),
    ));
    let value = vec![7u8; 1024];
    let keys: Vec<String> = (0..100).map(|i| format!("bench-{i}")).collect();
    for b in [&sqlite, &remote] {
        b.set("bench", &value).unwrap();
    }
    tier.command("bench", &[b"SET", b"raw", &value], 0).unwrap();

    type Op<'a> = (&'a str, Box<dyn FnMut(usize) + 'a>);
    let ops: Vec<(&str, Vec<Op>)> = vec![
        (
            "get",
            vec![
                (
                    "sqlite",
                    Box::new(|_| assert_eq!(sqlite.get("bench").unwrap().map(|v| v.len()), Some(1024))),
                ),
                (
                    "redis",
                    Box::new(|_| assert_eq!(remote.get("bench").unwrap().map(|v| v.len()), Some(1024))),
                ),
                (
                    "raw GET",
                    Box::new(|_| drop(tier.command("bench", &[b"GET", b"raw"], 2048).unwrap())),
                ),
                (
                    "raw PING",
                    Box::new(|_| drop(tier.command("bench", &[b"PING"], 0).unwrap())),
                ),
            ],
        ),
        (
            "set",
            vec![
                ("sqlite", Box::new(|i| sqlite.set(&keys[i % 100], &value).unwrap())),
                ("redis", Box::new(|i| remote.set(&keys[i % 100], &value).unwrap())),
                (
                    "raw SET",
                    Box::new(|i| {
                        drop(
                            tier.command("bench", &[b"SET", keys[i % 100].as_bytes(), &value], 0)
                                .unwrap(),
                        )
                    }),
                ),
            ],
        ),
        (
            "increment",
            vec![
                (
                    "sqlite",
                    Box::new(|_| assert!(sqlite.increment_u64("counter", 1).unwrap() > 0)),
                ),
                (
                    "redis",
                    Box::new(|_| assert!(remote.increment_u64("counter", 1).unwrap() > 0)),
                ),
                (
                    "raw INCRBY",
                    Box::new(|_| drop(tier.command("bench", &[b"INCRBY", b"raw-counter", b"1"], 0).unwrap())),
                ),
            ],
        ),
    ];
    println!("{ROUNDS} rounds of {CALLS} calls, interleaved; median of the rounds' means");
    for (name, mut contenders) in ops {
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); contenders.len()];
        // A warm-up round, untimed.
        for (_, f) in contenders.iter_mut() {
            time(f);
        }
        for _ in 0..ROUNDS {
            for (i, (_, f)) in contenders.iter_mut().enumerate() {
                times[i].push(time(f));
            }
        }
        let medians: Vec<f64> = times.into_iter().map(median).collect();
        let anchor = medians[0];
        for ((who, _), m) in contenders.iter().zip(&medians) {
            println!("{name:>9} {who:<10} {m:8.1} µs  {:5.2}x sqlite", m / anchor);
        }
        if let Some(raw) = medians.get(2) {
            println!("{name:>9} redis / {:<10} {:5.2}x", contenders[2].0, medians[1] / raw);
        }
    }
    let port = redis.port().to_string();
    match std::process::Command::new("redis-benchmark")
        .args([
            "-p",
            &port,
            "-t",
            "get,set,incr",
            "-n",
            "5000",
            "-d",
            "1024",
            "-c",
            "1",
            "-q",
        ])
        .output()
    {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
            for line in text.lines().filter(|l| l.contains("requests per second")) {
                let (op, rest) = line.split_once(':').unwrap_or((line, ""));
                let rps: f64 = rest
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(f64::NAN);
                println!("redis-benchmark -c 1 {op:<5} {:8.1} µs", 1e6 / rps);
            }
        }
        Err(e) => println!("redis-benchmark: {e}"),
    }
}
