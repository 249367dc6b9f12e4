//! The remote tier against a real `redis-server` (started by each test on a free loopback port):
//! hosts with separate cache directories sharing entries, the server dying mid-run, values
//! damaged or forged in Redis, read-only mode, and the CLI's checks of its flags.

mod common;

use std::time::{Duration, Instant};

use common::*;
use filecache_host::remote::{RemoteOptions, RemoteTier, TieredStore};
use filecache_host::{EntryStore, FileCache, Key, NamespaceOptions};

/// The counters of `namespace` in `filecache stats --json`.
fn counter(cache: &TestCache, namespace: &str, name: &str) -> u64 {
    let ns = cache.namespace_stats(namespace);
    ns[name].as_u64().unwrap_or_else(|| panic!("no {name} in {ns}"))
}

/// The Redis key of the contract guest's entry for `seed` in `namespace`.
fn redis_key(namespace: &str, seed: &str) -> String {
    RemoteTier::redis_key(namespace, &Key::digest(seed.as_bytes()))
}

#[test]
fn two_hosts_share_plugin_entries_through_redis() {
    let redis = RedisServer::start();
    let url = redis.url();
    // 5 s per call, not 500 ms: a pause of a loaded machine must not turn a hit into a miss.
    let remote = ["--remote", url.as_str(), "--remote-timeout", "5s"];
    let (a, b) = (TestCache::new(), TestCache::new());

    a.contract(&remote, &["put", "shared", "100000"]);
    a.contract(&remote, &["put-stream", "shared-stream", "3MiB"]);
    assert_eq!(redis.dbsize(), 2);
    assert!(redis.cli(&["EXISTS", &redis_key("default", "shared")]) == "1");

    // B has never seen them: its local misses are answered by Redis, and kept locally.
    assert!(!b.entry_file("default", "shared").exists());
    b.contract(&remote, &["check", "shared", "100000"]);
    b.contract(&remote, &["check", "shared-stream", "3MiB"]);
    assert!(b.entry_file("default", "shared").exists());
    assert!(b.entry_file("default", "shared-stream").exists());
    b.contract(&remote, &["absent", "never-added"]);
    assert_eq!(counter(&b, "default", "remote_hits"), 2);
    // `absent` asks three times (contains, get, open), each a local and a remote miss.
    assert_eq!(counter(&b, "default", "remote_misses"), 3);
    assert_eq!(counter(&b, "default", "remote_errors"), 0);
    let table = stdout(&b.cli("stats", &[]));
    assert!(table.contains("remote hits"), "{table}");

    // Namespaces stay apart in Redis too.
    b.contract(&["--remote", &url, "--namespace", "other"], &["absent", "shared"]);

    // A host whose entry size limit is smaller does not take the entry: a miss, not damage.
    let small = TestCache::new();
    small.contract(&["--remote", &url, "--max-entry-size", "50000"], &["absent", "shared"]);
    assert_eq!(counter(&small, "default", "rejected"), 0);
    assert_eq!(counter(&small, "default", "remote_misses"), 3);

    // Without --remote, B still has them (the local copies).
    b.contract(&[], &["check", "shared", "100000"]);

    // The whole contract holds through the tiered store, on a host that shares with others;
    // its deletes reach Redis (basics adds, then deletes, "basics/replace"; it keeps its sized
    // entries).
    b.contract(&remote, &["basics"]);
    b.contract(&remote, &["handles"]);
    assert_eq!(redis.cli(&["EXISTS", &redis_key("default", "basics/size/4095")]), "1");
    assert_eq!(redis.cli(&["EXISTS", &redis_key("default", "basics/replace")]), "0");
    let c = TestCache::new();
    c.contract(&remote, &["absent", "basics/replace"]);
    c.contract(&remote, &["check", "basics/size/4095", "4095"]);
}

#[test]
fn killed_server_runs_carry_on_locally_within_the_bound() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let remote = ["--remote", url.as_str()];
    let a = TestCache::new();
    a.contract(&remote, &["put", "before", "20000"]);
    redis.kill();

    // Every run still succeeds on the local tier, and the dead remote costs little: measured
    // against the same four runs without a remote (the control, run just before on another
    // cache), so that a loaded machine does not fail the bound.
    let runs = |cache: &TestCache, remote: &[&str]| {
        let start = Instant::now();
        cache.contract(remote, &["put", "after", "20000"]);
        cache.contract(remote, &["check", "before", "20000"]);
        cache.contract(remote, &["absent", "never-added"]);
        cache.contract(remote, &["basics"]);
        start.elapsed()
    };
    let control = TestCache::new();
    control.contract(&[], &["put", "before", "20000"]);
    let local = runs(&control, &[]);
    let took = runs(&a, &remote);
    assert!(
        took.saturating_sub(local) < Duration::from_secs(5),
        "four runs against a dead remote took {took:?}, without a remote {local:?}"
    );
    assert!(counter(&a, "default", "remote_errors") >= 1);

    // --remote-required refuses to start without the remote.
    let out = a.run(
        contract_wasm(),
        &["--remote", &url, "--remote-required"],
        &["absent", "x"],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--remote-required"), "{}", stderr(&out));
}

#[test]
fn a_remote_that_never_answers_costs_a_run_the_timeouts_only() {
    // A socket that accepts connections (the kernel's backlog) but never answers a command.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", listener.local_addr().unwrap());
    let (a, control) = (TestCache::new(), TestCache::new());
    // Both caches hold the guest's compiled code before the timed runs: compiling it takes
    // seconds, by as many more on a loaded machine, which the bound must not have to absorb.
    for cache in [&a, &control] {
        cache.contract(&[], &["absent", "compiled-first"]);
    }
    // The control: the same run without a remote.
    let start = Instant::now();
    control.contract(&[], &["basics"]);
    let local = start.elapsed();
    let start = Instant::now();
    let out = a.contract(&["--remote", &url], &["basics"]);
    let took = start.elapsed();
    eprintln!("basics: {took:?} with a silent remote, {local:?} without");
    // The cache tier's failure is logged once (not once per call), and says what happens.
    let log = stderr(&out);
    assert_eq!(
        log.matches("remote tier failed; the local tier carries on").count(),
        1,
        "{log}"
    );
    // basics makes hundreds of cache calls; the breaker stops after 3 timeouts of 500 ms (1.5 s
    // over the control; without the breaker, minutes).
    assert!(
        took.saturating_sub(local) < Duration::from_secs(6),
        "took {took:?}, without a remote {local:?}"
    );
    assert_eq!(counter(&a, "default", "remote_errors"), 3);
    drop(listener);
}

#[test]
fn server_killed_in_the_middle_of_a_run() {
    let mut redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let ns = FileCache::open(dir.path())
        .unwrap()
        .namespace("plugin", NamespaceOptions::default())
        .unwrap();
    let store = TieredStore::new(ns.clone(), RemoteTier::new(RemoteOptions::new(redis.url())).unwrap()).unwrap();
    let data = vec![7u8; 50_000];
    for i in 0..20u32 {
        store.add(&Key::digest(i.to_le_bytes()), &data).unwrap();
    }
    assert_eq!(redis.dbsize(), 20);
    redis.kill();
    let work = |store: &dyn EntryStore| {
        let start = Instant::now();
        for i in 20..200u32 {
            let key = Key::digest(i.to_le_bytes());
            store.add(&key, &data).unwrap();
            assert_eq!(store.get(&key).unwrap().as_deref(), Some(&data[..]));
            assert_eq!(store.get(&Key::digest(format!("missing {i}"))).unwrap(), None);
            store.delete(&Key::digest((i - 20).to_le_bytes())).unwrap();
        }
        start.elapsed()
    };
    // The control: the same work on a local namespace alone, so that the bound is on what the
    // dead remote adds (three failures, then nothing), not on how loaded the machine is.
    let control_dir = tempfile::tempdir().unwrap();
    let control = FileCache::open(control_dir.path())
        .unwrap()
        .namespace("plugin", NamespaceOptions::default())
        .unwrap();
    let local = work(&control);
    let took = work(&store);
    assert!(
        took.saturating_sub(local) < Duration::from_secs(5),
        "took {took:?}, without a remote {local:?}"
    );
    let counts = ns.counts();
    assert_eq!(
        counts.remote_errors, 3,
        "the breaker stops after 3 failures: {counts:?}"
    );
}

#[test]
fn value_corrupted_in_redis_is_not_served_nor_copied() {
    let redis = RedisServer::start();
    let url = redis.url();
    // 5 s per call, not 500 ms: a pause of a loaded machine must not turn a hit into a miss.
    let remote = ["--remote", url.as_str(), "--remote-timeout", "5s"];
    let (a, b) = (TestCache::new(), TestCache::new());
    a.contract(&remote, &["put", "victim", "50000"]);
    a.contract(&remote, &["put", "header-victim", "5000"]);
    let key = redis_key("default", "victim");
    // One byte of content changed (offset 64 + 30000), with redis-cli.
    assert_eq!(redis.cli(&["SETRANGE", &key, "30064", "X"]), "50064");
    // A header damaged: the content length field.
    redis.cli(&["SETRANGE", &redis_key("default", "header-victim"), "16", "\x01"]);

    b.contract(&remote, &["corrupt-check", "victim"]);
    b.contract(&remote, &["absent", "header-victim"]);
    assert!(
        !b.entry_file("default", "victim").exists(),
        "a damaged value was copied locally"
    );
    assert!(!b.entry_file("default", "header-victim").exists());
    // Every lookup of either value was rejected: get, contains, get, open; contains, get, open.
    assert_eq!(counter(&b, "default", "rejected"), 7);
    assert_eq!(counter(&b, "default", "remote_errors"), 7);
    assert_eq!(counter(&b, "default", "remote_hits"), 0);

    // A good value put back is served again.
    a.contract(&remote, &["put", "victim", "50000"]);
    b.contract(&remote, &["check", "victim", "50000"]);
}

#[test]
fn reserved_namespaces_accept_only_values_macd_under_the_fleet_key() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cache = FileCache::open(dir.path()).unwrap();
    let compiled = cache
        .reserved_namespace(".compiled", NamespaceOptions::default())
        .unwrap();
    let tier = |key: Option<&[u8]>| {
        let mut o = RemoteOptions::new(redis.url());
        o.fleet_key = key.map(<[u8]>::to_vec);
        RemoteTier::new(o).unwrap()
    };
    let fleet = tier(Some(b"the fleet's key: 32 bytes or more......"));
    let intruder = tier(Some(b"some other key, also 32 bytes or more..."));
    let keyless = tier(None);
    let key = Key::digest(b"component sha256");
    let code = b"\x7fELF native code".repeat(1000);

    // Without a fleet key nothing of a reserved namespace is published.
    keyless.publish(&compiled, &key, &code).unwrap();
    assert_eq!(redis.dbsize(), 0);

    // An unauthenticated value planted in Redis: a valid local-format entry without a MAC.
    let header = filecache_host::entry::Header {
        len: code.len() as u64,
        crc: filecache_host::entry::Checksum::of(&code),
        key,
    };
    let mut planted = header.encode().to_vec();
    planted.extend_from_slice(&code);
    let rkey = RemoteTier::redis_key(".compiled", &key);
    redis.cli_with_value(&["SET", &rkey], &planted);
    assert_eq!(redis.cli(&["STRLEN", &rkey]), planted.len().to_string());
    assert_eq!(fleet.fetch(&compiled, &key, 1 << 30).unwrap(), None);
    // ... with a MAC-sized tail of zeros,
    planted.extend_from_slice(&[0; 32]);
    redis.cli_with_value(&["SET", &rkey], &planted);
    assert_eq!(fleet.fetch(&compiled, &key, 1 << 30).unwrap(), None);
    // ... and one MAC'd under another key.
    intruder.publish(&compiled, &key, &code).unwrap();
    assert_eq!(fleet.fetch(&compiled, &key, 1 << 30).unwrap(), None);
    assert_eq!(compiled.counts().rejected, 3);
    assert!(!compiled.contains(&key).unwrap());

    // The fleet's own value is accepted, but not by a host without the key.
    fleet.publish(&compiled, &key, &code).unwrap();
    assert_eq!(keyless.fetch(&compiled, &key, 1 << 30).unwrap(), None);
    assert_eq!(fleet.fetch(&compiled, &key, 1 << 30).unwrap(), Some(code.clone()));
    assert_eq!(compiled.counts().remote_hits, 1);
    // Not more than the caller's limit: a miss (not damage), transferred only up to the limit.
    assert_eq!(fleet.fetch(&compiled, &key, code.len() as u64 - 1).unwrap(), None);
    assert_eq!(compiled.counts().rejected, 3);
    assert_eq!(compiled.counts().remote_misses, 1);
    assert_eq!(fleet.fetch(&compiled, &key, code.len() as u64).unwrap(), Some(code));
}

#[test]
fn read_only_remote_never_writes() {
    let redis = RedisServer::start();
    let url = redis.url();
    let (a, b) = (TestCache::new(), TestCache::new());
    let ro = ["--remote", url.as_str(), "--remote-read-only"];
    b.contract(&ro, &["basics"]);
    b.contract(&ro, &["put", "local-only", "1000"]);
    b.contract(&ro, &["put-stream", "local-only-stream", "1MiB"]);
    assert_eq!(redis.dbsize(), 0, "{}", redis.cli(&["KEYS", "*"]));

    // It still reads: an entry another host wrote is served, and the delete of it stays local.
    a.contract(&["--remote", &url], &["put", "shared", "1000"]);
    assert_eq!(redis.dbsize(), 1);
    b.contract(&ro, &["check", "shared", "1000"]);
    assert_eq!(counter(&b, "default", "remote_hits"), 1);
    let out = b.run(contract_wasm(), &ro, &["basics"]);
    assert_success(&out, "basics again");
    assert_eq!(redis.dbsize(), 1);
    assert_eq!(redis.cli(&["EXISTS", &redis_key("default", "shared")]), "1");
}

#[test]
fn remote_timeout_bounds_the_cache_tier_too() {
    // A socket that accepts connections but never answers: --remote-required pings it before
    // the run, and the ping fails at the deadline given (1500 ms), not at the default (500 ms).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", listener.local_addr().unwrap());
    let a = TestCache::new();
    let start = Instant::now();
    let out = a.run(
        contract_wasm(),
        &["--remote", &url, "--remote-required", "--remote-timeout", "1500ms"],
        &["absent", "x"],
    );
    let took = start.elapsed();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("(1500 ms") && err.contains("--remote-required"), "{err}");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(10),
        "{took:?}"
    );
    drop(listener);
}

#[test]
fn a_required_remote_that_stalls_after_the_ping_fails_cache_calls_and_says_so() {
    // A server that answers PING (so --remote-required lets the run start) and nothing after.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let (mut seen, mut buf, mut ponged) = (Vec::new(), [0u8; 4096], false);
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    seen.extend_from_slice(&buf[..n]);
                    if !ponged && seen.windows(4).any(|w| w == b"PING") {
                        ponged = true;
                        let _ = stream.write_all(b"+PONG\r\n");
                    }
                }
            });
        }
    });
    let a = TestCache::new();
    let out = a.run(
        contract_wasm(),
        &["--remote", &url, "--remote-required", "--remote-timeout", "300ms"],
        &["absent", "x"],
    );
    // The lookup fails at the 300 ms deadline, and the log says the operation failed, not that
    // the local tier carried on.
    let log = stderr(&out);
    assert!(
        log.contains("remote tier failed; the cache operation fails (the remote is required)"),
        "{log}\n{}",
        stdout(&out)
    );
    assert!(log.contains("(300 ms") && !log.contains("carries on"), "{log}");
}

#[test]
fn remote_flags_are_checked_before_anything_is_created() {
    let cache = TestCache::new();
    let fail = |flags: &[&str], expect: &str| {
        let out = cache.run(contract_wasm(), flags, &["absent", "x"]);
        assert!(!out.status.success(), "{flags:?} accepted");
        let err = stderr(&out);
        assert!(err.contains(expect), "{flags:?}: expected {expect:?} in:\n{err}");
        assert!(!cache.dir().exists(), "{flags:?} created the cache directory");
    };
    fail(&["--remote", "localhost:6379"], "invalid remote URL");
    fail(
        &["--remote", "http://localhost:6379"],
        "expected redis://HOST:PORT[/DB]",
    );
    fail(&["--remote", "redis://host:port"], "invalid remote URL");
    let missing = cache.tmp.path().join("no-such-key");
    fail(
        &[
            "--remote",
            "redis://127.0.0.1:1",
            "--remote-key-file",
            missing.to_str().unwrap(),
        ],
        "cannot read fleet key file",
    );
    let short = cache.tmp.path().join("short.key");
    std::fs::write(&short, [1u8; 31]).unwrap();
    fail(
        &[
            "--remote",
            "redis://127.0.0.1:1",
            "--remote-key-file",
            short.to_str().unwrap(),
        ],
        "at least 32 random bytes",
    );
    fail(&["--remote-read-only"], "--remote");
    fail(&["--remote-timeout", "2s"], "--remote");
    for zero in ["0", "0ms", "00s"] {
        fail(
            &["--remote", "redis://127.0.0.1:1", "--remote-timeout", zero],
            "a timeout of 0 would fail every remote operation",
        );
    }
    fail(
        &["--remote", "redis://127.0.0.1:1", "--remote-timeout", "2 s"],
        "unknown unit",
    );
    // A key file of 32 bytes and a remote that is down: the run goes on locally.
    let good = cache.tmp.path().join("fleet.key");
    std::fs::write(&good, [7u8; 32]).unwrap();
    cache.contract(
        &[
            "--remote",
            "redis://127.0.0.1:1",
            "--remote-key-file",
            good.to_str().unwrap(),
        ],
        &["absent", "x"],
    );
}

#[test]
fn two_hosts_share_compiled_components_under_a_fleet_key() {
    let redis = RedisServer::start();
    let url = redis.url();
    let tmp = tempfile::tempdir().unwrap();
    let key_file = tmp.path().join("fleet.key");
    std::fs::write(&key_file, [7u8; 32]).unwrap();
    let other_key = tmp.path().join("other.key");
    std::fs::write(&other_key, [8u8; 32]).unwrap();
    let flags = |key: &std::path::Path| {
        vec![
            "--remote".to_string(),
            url.clone(),
            "--remote-key-file".into(),
            key.display().to_string(),
        ]
    };
    fn as_strs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    let fleet = flags(&key_file);

    // A compiles and publishes.
    let a = TestCache::new();
    a.contract(&as_strs(&fleet), &["absent", "x"]);
    assert_eq!(counter(&a, ".compiled", "misses"), 1);
    let published = redis.cli(&["KEYS", "filecache:v1:.compiled:*"]);
    assert_eq!(published.lines().count(), 1, "{published}");

    // B, a fresh host of the same fleet, fetches instead of compiling, keeps it, then hits.
    let b = TestCache::new();
    b.contract(&as_strs(&fleet), &["absent", "x"]);
    assert_eq!(counter(&b, ".compiled", "misses"), 0);
    assert_eq!(counter(&b, ".compiled", "remote_hits"), 1);
    b.contract(&as_strs(&fleet), &["absent", "x"]);
    assert_eq!(counter(&b, ".compiled", "hits"), 1);

    // Without the fleet key, native code is neither fetched nor sent.
    let c = TestCache::new();
    c.contract(&["--remote", &url], &["absent", "x"]);
    assert_eq!(counter(&c, ".compiled", "misses"), 1);
    assert_eq!(counter(&c, ".compiled", "remote_hits"), 0);

    // Under another key, the artifact fails its MAC: rejected, compiled locally.
    let d = TestCache::new();
    d.contract(&as_strs(&flags(&other_key)), &["absent", "x"]);
    assert_eq!(counter(&d, ".compiled", "misses"), 1);
    assert_eq!(counter(&d, ".compiled", "rejected"), 1);
    assert_eq!(counter(&d, ".compiled", "remote_hits"), 0);
}

/// Issue 11, finding 6: `--remote-ttl` gives every published value an expiry; bad durations
/// are refused before anything is created.
#[test]
fn finding_6_remote_ttl_sets_an_expiry_on_published_values() {
    let redis = RedisServer::start();
    let url = redis.url();
    let a = TestCache::new();
    a.contract(&["--remote", &url, "--remote-ttl", "1h"], &["put", "ttl", "1000"]);
    let pttl: i64 = redis
        .cli(&["PTTL", &redis_key("default", "ttl")])
        .trim()
        .parse()
        .unwrap();
    assert!((3_590_000..=3_600_000).contains(&pttl), "PTTL {pttl}");
    // Without the flag, no expiry.
    a.contract(&["--remote", &url], &["put", "no-ttl", "1000"]);
    assert_eq!(redis.cli(&["PTTL", &redis_key("default", "no-ttl")]).trim(), "-1");

    let cache = TestCache::new();
    for (ttl, expect) in [
        ("0s", "at least 1ms"),
        ("10", "unknown unit"),
        ("1w", "unknown unit"),
        ("s", "not a duration"),
    ] {
        let out = cache.run(
            contract_wasm(),
            &["--remote", &url, "--remote-ttl", ttl],
            &["absent", "x"],
        );
        assert!(!out.status.success(), "--remote-ttl {ttl} accepted");
        let err = stderr(&out);
        assert!(
            err.contains(expect),
            "--remote-ttl {ttl}: expected {expect:?} in:\n{err}"
        );
        assert!(!cache.dir().exists(), "--remote-ttl {ttl} created the cache directory");
    }
    let out = cache.run(contract_wasm(), &["--remote-ttl", "1h"], &["absent", "x"]);
    assert!(!out.status.success(), "--remote-ttl without --remote accepted");
}
