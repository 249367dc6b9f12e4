//! The Redis engine against a real `redis-server` (started by each test on a free loopback port):
//! the trait's operations, hosts sharing buckets (engines that share nothing but the server),
//! values forged in Redis, the quota across hosts, and the server dying and coming back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use filecache_kv::{Bucket, Error, RedisEngine};
use filecache_store::NamespaceOptions;
use filecache_store::remote::{RemoteOptions, RemoteTier};
use filecache_tests::RedisServer;

const FLEET_KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

fn options(url: &str, key: Option<&[u8]>) -> RemoteOptions {
    let mut o = RemoteOptions::new(url);
    o.fleet_key = key.map(<[u8]>::to_vec);
    o
}

/// A host's view of bucket `ns`: its own tier (connections, breaker), as another process has.
/// Its timeouts are 10 s, not the default 500 ms: in these tests the time a call takes is not
/// the point, and a call a loaded machine delayed past 500 ms would fail them as a timeout.
fn host(url: &str, key: Option<&[u8]>, ns: &str, ns_options: NamespaceOptions) -> Bucket {
    let mut options = options(url, key);
    options.connect_timeout = Duration::from_secs(10);
    options.op_timeout = Duration::from_secs(10);
    let tier = RemoteTier::new(options).unwrap();
    Bucket::from_engine(Arc::new(RedisEngine::new(tier, ns, &ns_options).unwrap()))
}

fn bucket(redis: &RedisServer, ns: &str) -> Bucket {
    host(&redis.url(), Some(FLEET_KEY), ns, NamespaceOptions::default())
}

fn redis_key(ns: &str, key: &str) -> String {
    String::from_utf8(RedisEngine::redis_key(ns, key)).unwrap()
}

#[test]
fn every_operation_of_the_trait_works_on_the_server() {
    let redis = RedisServer::start();
    let b = bucket(&redis, "app");
    assert_eq!(b.get("a").unwrap(), None);
    assert!(!b.exists("a").unwrap());
    b.set("a", b"one").unwrap();
    b.set("empty", b"").unwrap();
    assert_eq!(b.get("a").unwrap().as_deref(), Some(&b"one"[..]));
    assert_eq!(b.get("empty").unwrap().as_deref(), Some(&b""[..]));
    assert!(b.exists("a").unwrap());
    b.set("a", b"two").unwrap();
    assert_eq!(b.get("a").unwrap().as_deref(), Some(&b"two"[..]));

    b.set_many(&[
        ("m1".into(), b"x".to_vec()),
        ("m2".into(), b"y".to_vec()),
        ("m1".into(), b"z".to_vec()),
    ])
    .unwrap();
    let got = b.get_many(&["m1".into(), "nope".into(), "m2".into()], 1 << 20).unwrap();
    assert_eq!(got, vec![Some(b"z".to_vec()), None, Some(b"y".to_vec())]);
    assert!(matches!(
        b.get_many(&["m1".into(), "m2".into()], 1),
        Err(Error::TooMuchAtOnce { .. })
    ));

    let mut keys = b.keys().unwrap();
    keys.sort();
    assert_eq!(keys, ["a", "empty", "m1", "m2"]);
    let usage = b.usage().unwrap();
    assert_eq!(usage.keys, 4);
    // Keys and framed values (16 bytes of frame and a 32-byte MAC each).
    assert_eq!(usage.bytes, (1 + 3) + 5 + 2 * (2 + 1) + 4 * 48);

    b.delete("a").unwrap();
    b.delete("a").unwrap();
    b.delete_many(&["m1".into(), "m2".into(), "never".into()]).unwrap();
    assert_eq!(b.keys().unwrap(), ["empty"]);
    assert_eq!(b.usage().unwrap().keys, 1);
    assert_eq!(b.usage().unwrap().bytes, 5 + 48);

    // Compare-and-swap: a write between the read and the swap makes it fail, with the value now.
    let cas = b.cas("c").unwrap();
    b.swap(&cas, b"1").unwrap().unwrap();
    let stale = b.cas("c").unwrap();
    assert_eq!(stale.current(), Some(&b"1"[..]));
    b.set("c", b"2").unwrap();
    let fresh = b.swap(&stale, b"lost").unwrap().unwrap_err();
    assert_eq!(fresh.current(), Some(&b"2"[..]));
    b.swap(&fresh, b"3").unwrap().unwrap();
    assert_eq!(b.get("c").unwrap().as_deref(), Some(&b"3"[..]));
    // The same value written again is a new version (an ABA write is seen).
    let cas = b.cas("c").unwrap();
    b.set("c", b"3").unwrap();
    assert!(b.swap(&cas, b"4").unwrap().is_err());

    assert_eq!(b.clear().unwrap(), 2);
    assert_eq!(b.keys().unwrap(), Vec::<String>::new());
    assert_eq!(b.usage().unwrap().bytes, 0);
}

#[test]
fn increments_keep_the_sqlite_engines_rules_and_errors() {
    let redis = RedisServer::start();
    let b = bucket(&redis, "app");
    assert_eq!(b.increment_u64("n", 5).unwrap(), 5);
    assert_eq!(b.increment_u64("n", 1).unwrap(), 6);
    assert_eq!(b.get("n").unwrap().as_deref(), Some(&b"6"[..]));
    assert_eq!(b.increment_i64("s", -3).unwrap(), -3);
    b.set("text", b"abc").unwrap();
    let e = b.increment_u64("text", 1).unwrap_err();
    assert!(matches!(e, Error::NotANumber { .. }), "{e}");
    b.set("big", u64::MAX.to_string().as_bytes()).unwrap();
    let e = b.increment_u64("big", 1).unwrap_err();
    assert!(matches!(e, Error::Overflow { .. }), "{e}");
    assert_eq!(b.get("big").unwrap().as_deref(), Some(u64::MAX.to_string().as_bytes()));
    // A negative number is not a u64.
    assert!(matches!(b.increment_u64("s", 1), Err(Error::NotANumber { .. })));
    // Another host's writes between two increments of this one are counted, whatever this one
    // remembers of its own last write: a set, a removal, a value that is not a number.
    let other = bucket(&redis, "app");
    assert_eq!(b.increment_u64("c", 1).unwrap(), 1);
    other.set("c", b"100").unwrap();
    assert_eq!(b.increment_u64("c", 1).unwrap(), 101);
    other.delete("c").unwrap();
    assert_eq!(b.increment_u64("c", 1).unwrap(), 1);
    other.set("c", b"x").unwrap();
    assert!(matches!(b.increment_u64("c", 1), Err(Error::NotANumber { .. })));
    other.set("c", b"-5").unwrap();
    assert_eq!(b.increment_i64("c", 1).unwrap(), -4);
    assert_eq!(b.increment_i64("c", 10).unwrap(), 6);
    other.set("c", b"7").unwrap();
    assert_eq!(b.increment_u64("c", 1).unwrap(), 8);
}

#[test]
fn every_bucket_on_the_server_is_listed_with_its_usage() {
    let redis = RedisServer::start();
    let tier = RemoteTier::new(options(&redis.url(), None)).unwrap();
    assert!(RedisEngine::buckets(&tier).unwrap().is_empty());
    let (a, b) = (bucket(&redis, "a"), bucket(&redis, "plugin.b"));
    a.set("k", b"of a").unwrap();
    for i in 0..1500 {
        b.set(&format!("key {i}"), b"value").unwrap();
    }
    // Other keys on the server: cache entries, a foreign key shaped almost like a bucket's.
    redis.cli(&["SET", "filecache:v1:a:00", "entry"]);
    redis.cli(&["HSET", "filecache:kv1:{Not A Name}:meta", "bytes", "1"]);
    let listed = RedisEngine::buckets(&tier).unwrap();
    let names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["a", "plugin.b"]);
    assert_eq!(listed[0].1, a.usage().unwrap());
    assert_eq!(listed[1].1.keys, 1500);
    assert_eq!(listed[1].1, b.usage().unwrap());
    assert!(listed[0].1.bytes > 4 && listed[1].1.bytes > 1500 * 10);
    // A cleared bucket is still listed, empty.
    a.clear().unwrap();
    let listed = RedisEngine::buckets(&tier).unwrap();
    assert_eq!((listed[0].0.as_str(), listed[0].1.keys, listed[0].1.bytes), ("a", 0, 0));
}

#[test]
fn buckets_and_cache_entries_never_collide() {
    let redis = RedisServer::start();
    let a = bucket(&redis, "a");
    let b = bucket(&redis, "b");
    a.set("k", b"of a").unwrap();
    b.set("k", b"of b").unwrap();
    assert_eq!(a.get("k").unwrap().as_deref(), Some(&b"of a"[..]));
    assert_eq!(b.get("k").unwrap().as_deref(), Some(&b"of b"[..]));
    assert_eq!(a.keys().unwrap(), ["k"]);
    b.clear().unwrap();
    assert_eq!(a.get("k").unwrap().as_deref(), Some(&b"of a"[..]));
    // The cache tier's keys are `filecache:v1:NS:…`; none of a bucket's is.
    let keys = redis.cli(&["KEYS", "filecache:v1:*"]);
    assert_eq!(keys, "");
    assert_eq!(redis.cli(&["EXISTS", &redis_key("a", "k")]), "1");
}

#[test]
fn threads_as_hosts_increment_and_swap_exactly() {
    let redis = RedisServer::start();
    let url = redis.url();
    std::thread::scope(|s| {
        for _ in 0..4 {
            let b = host(&url, Some(FLEET_KEY), "app", NamespaceOptions::default());
            s.spawn(move || {
                for _ in 0..100 {
                    b.increment_u64("n", 1).unwrap();
                }
            });
            let b = host(&url, Some(FLEET_KEY), "app", NamespaceOptions::default());
            s.spawn(move || {
                for _ in 0..50 {
                    let mut cas = b.cas("c").unwrap();
                    loop {
                        let n: u64 = cas
                            .current()
                            .map_or(0, |v| std::str::from_utf8(v).unwrap().parse().unwrap());
                        match b.swap(&cas, (n + 1).to_string().as_bytes()).unwrap() {
                            Ok(()) => break,
                            Err(fresh) => cas = fresh,
                        }
                    }
                }
            });
        }
    });
    let b = bucket(&redis, "app");
    assert_eq!(b.get("n").unwrap().as_deref(), Some(&b"400"[..]));
    assert_eq!(b.get("c").unwrap().as_deref(), Some(&b"200"[..]));
}

#[test]
fn values_forged_or_damaged_in_redis_are_refused_and_verify_removes_them() {
    let redis = RedisServer::start();
    let url = redis.url();
    let keyed = bucket(&redis, "app");
    keyed.set("good", b"genuine").unwrap();
    keyed.set("victim", b"genuine").unwrap();
    // A host without the fleet key writes its own (well-framed, checksummed) value: the keyed
    // host refuses it.
    let keyless = host(&url, None, "app", NamespaceOptions::default());
    keyless.set("forged", b"planted").unwrap();
    let e = keyed.get("forged").unwrap_err();
    assert!(
        matches!(&e, Error::Rejected { reason, .. } if reason.contains("MAC")),
        "{e}"
    );
    // Nor does a host with another key accept the keyed host's values.
    let other = host(&url, Some(&[7u8; 32]), "app", NamespaceOptions::default());
    assert!(matches!(other.get("good"), Err(Error::Rejected { .. })));
    // A raw value planted with redis-cli, and a byte of a genuine one changed.
    redis.cli(&["SET", &redis_key("app", "raw"), "12345"]);
    assert!(matches!(keyed.get("raw"), Err(Error::Rejected { .. })));
    assert!(matches!(keyed.increment_u64("raw", 1), Err(Error::Rejected { .. })));
    assert!(matches!(keyed.exists("raw"), Err(Error::Rejected { .. })));
    assert_eq!(redis.cli(&["SETRANGE", &redis_key("app", "victim"), "17", "X"]), "55");
    assert!(matches!(keyed.get("victim"), Err(Error::Rejected { .. })));
    assert!(matches!(
        keyed.get_many(&["good".into(), "victim".into()], 1 << 20),
        Err(Error::Rejected { .. })
    ));
    // Without a key, a host still checks the checksum.
    assert!(matches!(keyless.get("raw"), Err(Error::Rejected { .. })));

    let report = keyed.verify().unwrap();
    assert_eq!(report.ok, 1);
    let mut damaged: Vec<&str> = report.damaged.iter().map(|(k, _)| k.as_str()).collect();
    damaged.sort();
    assert_eq!(damaged, ["forged", "raw", "victim"]);
    assert_eq!(keyed.keys().unwrap(), ["good"]);
    assert_eq!(keyed.get("good").unwrap().as_deref(), Some(&b"genuine"[..]));
}

#[test]
fn limits_hold_across_hosts() {
    let redis = RedisServer::start();
    let url = redis.url();
    let limits = NamespaceOptions::default().max_entry_size(1000).quota(10_000);
    let b = host(&url, Some(FLEET_KEY), "app", limits);
    let e = b.set("big", &[0u8; 1001]).unwrap_err();
    assert!(
        matches!(e, Error::Store(filecache_store::Error::TooLarge { limit: 1000 })),
        "{e}"
    );
    // A value written by a host with a larger limit is refused, not served nor called damaged.
    let lax = host(&url, Some(FLEET_KEY), "app", NamespaceOptions::default());
    lax.set("large", &[1u8; 5000]).unwrap();
    assert!(matches!(
        b.get("large"),
        Err(Error::Store(filecache_store::Error::TooLarge { .. }))
    ));
    lax.delete("large").unwrap();

    // Four hosts write 1000-byte values under distinct keys until refused: together they stay
    // within the quota.
    let stored = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for h in 0..4 {
            let b = host(&url, Some(FLEET_KEY), "app", limits);
            let stored = &stored;
            s.spawn(move || {
                for i in 0..20 {
                    match b.set(&format!("h{h}-{i}"), &[h as u8; 1000]) {
                        Ok(()) => {
                            stored.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(Error::Store(filecache_store::Error::QuotaExceeded { quota: 10_000, .. })) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
            });
        }
    });
    let usage = b.usage().unwrap();
    let stored = stored.into_inner();
    assert!(usage.bytes <= 10_000, "{usage:?}");
    assert_eq!(usage.keys, stored);
    // Each value costs its key (4-5 bytes), 1000 bytes and 48 of frame: 9 fit, not 10.
    assert_eq!(stored, 9);
    // Overwriting in place and removing give room back; a batch over the quota stores nothing.
    let key = b.keys().unwrap().remove(0);
    b.set(&key, b"small").unwrap();
    b.set("h9-0", &[0; 900]).unwrap();
    let before = b.usage().unwrap();
    let batch: Vec<(String, Vec<u8>)> = (0..3).map(|i| (format!("batch{i}"), vec![0; 1000])).collect();
    assert!(matches!(
        b.set_many(&batch),
        Err(Error::Store(filecache_store::Error::QuotaExceeded { .. }))
    ));
    assert_eq!(b.usage().unwrap(), before);
    assert_eq!(b.get("batch0").unwrap(), None);
}

#[test]
fn read_only_buckets_refuse_writes() {
    let redis = RedisServer::start();
    let ro = host(&redis.url(), None, "app", NamespaceOptions::default().read_only(true));
    let e = ro.set("k", b"v").unwrap_err();
    assert!(matches!(e, Error::Store(filecache_store::Error::ReadOnly)), "{e}");
    assert!(matches!(
        ro.increment_u64("k", 1),
        Err(Error::Store(filecache_store::Error::ReadOnly))
    ));
    assert_eq!(ro.get("k").unwrap(), None);
}

#[test]
fn a_dead_or_stalled_server_fails_each_call_on_time_and_a_restarted_one_is_used_again() {
    let mut redis = RedisServer::start();
    let port = redis.port();
    let mut o = options(&redis.url(), Some(FLEET_KEY));
    o.op_timeout = Duration::from_millis(300);
    o.breaker_threshold = 2;
    o.breaker_cooldown = Duration::from_millis(500);
    let tier = RemoteTier::new(o).unwrap();
    let b = Bucket::from_engine(Arc::new(
        RedisEngine::new(tier, "app", &NamespaceOptions::default()).unwrap(),
    ));
    assert_eq!(b.increment_u64("n", 1).unwrap(), 1);
    redis.kill();
    for _ in 0..4 {
        let start = Instant::now();
        let e = b.increment_u64("n", 1).unwrap_err();
        assert!(start.elapsed() < Duration::from_millis(1500), "{:?}", start.elapsed());
        assert!(matches!(e, Error::Remote { .. }), "{e}");
        assert!(e.to_string().contains("127.0.0.1"), "{e}");
    }
    // Back (empty: the old one kept nothing), after the breaker's cool-down.
    redis.restart();
    assert_eq!(redis.port(), port);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(b.increment_u64("n", 1).unwrap(), 1);
    redis.kill();

    // A server that accepts and never answers: each call fails at its deadline.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut o = options(&format!("redis://{}", listener.local_addr().unwrap()), None);
    o.op_timeout = Duration::from_millis(200);
    o.breaker_threshold = 100;
    let b = Bucket::from_engine(Arc::new(
        RedisEngine::new(RemoteTier::new(o).unwrap(), "app", &NamespaceOptions::default()).unwrap(),
    ));
    for _ in 0..2 {
        let start = Instant::now();
        let e = b.get("k").unwrap_err();
        let took = start.elapsed();
        // Not before the deadline; and after it, at once: a call that waited for the answer
        // (for ever) or for a timeout of its own would take far longer than the 2 s bound, which
        // leaves a loaded machine 1.8 s to run the call.
        assert!(
            took >= Duration::from_millis(190) && took < Duration::from_secs(2),
            "{took:?}"
        );
        assert!(e.to_string().contains("deadline"), "{e}");
    }
}
