//! The remote tier: value checks, options, and the breaker against sockets that refuse or never
//! answer; the connection pool, namespace isolation and TTLs against a real `redis-server`. (The
//! CLI's remote tests are in host/cli/tests/remote.rs.)

use std::net::TcpListener;
use std::time::{Duration, Instant};

use super::*;
use crate::Store;
use crate::{FileCache, NamespaceOptions};

fn tier(fleet_key: Option<&[u8]>) -> RemoteTier {
    let mut o = RemoteOptions::new("redis://127.0.0.1:1");
    o.fleet_key = fleet_key.map(<[u8]>::to_vec);
    RemoteTier::new(o).unwrap()
}

const FLEET: &[u8] = b"0123456789abcdef0123456789abcdef";

#[test]
fn plain_values_round_trip_and_every_damage_is_refused() {
    let t = tier(None);
    let key = Key::digest(b"k");
    let content: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
    let value = t.encode("plugin", &key, &content).unwrap();
    assert_eq!(value.len(), HEADER_LEN + content.len());
    assert_eq!(t.decode("plugin", &key, value.clone(), 1 << 20).unwrap(), content);
    for i in 0..value.len() {
        let mut bad = value.clone();
        bad[i] ^= 0x20;
        assert!(
            t.decode("plugin", &key, bad, 1 << 20).is_err(),
            "flip at byte {i} accepted"
        );
    }
    assert_eq!(
        t.decode("plugin", &Key::digest(b"other"), value.clone(), 1 << 20),
        Err("written under another key")
    );
    assert_eq!(
        t.decode("plugin", &key, value[..value.len() - 1].to_vec(), 1 << 20),
        Err("length does not match the value's size")
    );
    assert_eq!(
        t.decode("plugin", &key, value.clone(), content.len() as u64 - 1),
        Err("larger than the size limit")
    );
    assert_eq!(
        t.decode("plugin", &key, value[..10].to_vec(), 1 << 20),
        Err("shorter than a header")
    );
    // The empty entry is a value too.
    let empty = t.encode("plugin", &key, b"").unwrap();
    assert_eq!(t.decode("plugin", &key, empty, 0).unwrap(), b"");
}

#[test]
fn reserved_namespaces_need_the_fleet_key() {
    let keyed = tier(Some(FLEET));
    let other = tier(Some(b"another fleet's key, also 32+ bytes long"));
    let keyless = tier(None);
    let key = Key::digest(b"component");
    let code = b"native code".repeat(100);

    assert!(
        keyless.encode(".compiled", &key, &code).is_none(),
        "published without a key"
    );
    let value = keyed.encode(".compiled", &key, &code).unwrap();
    assert_eq!(value.len(), HEADER_LEN + code.len() + MAC_LEN);
    assert_eq!(keyed.decode(".compiled", &key, value.clone(), 1 << 20).unwrap(), code);

    // Another key, no key, another reserved namespace, a plain (unauthenticated) value, and a
    // value whose content was changed with its checksum recomputed: all refused.
    assert!(other.decode(".compiled", &key, value.clone(), 1 << 20).is_err());
    assert!(keyless.decode(".compiled", &key, value.clone(), 1 << 20).is_err());
    assert!(keyed.decode(".other", &key, value.clone(), 1 << 20).is_err());
    let plain = keyless.encode("compiled", &key, &code).unwrap();
    assert!(keyed.decode(".compiled", &key, plain, 1 << 20).is_err());
    let mut forged = keyless.encode("compiled", &key, b"evil code!!").unwrap();
    forged.extend_from_slice(&[0u8; MAC_LEN]);
    assert_eq!(
        keyed.decode(".compiled", &key, forged, 1 << 20),
        Err("MAC mismatch (not written under this fleet key)")
    );
    for i in 0..value.len() {
        let mut bad = value.clone();
        bad[i] ^= 1;
        assert!(
            keyed.decode(".compiled", &key, bad, 1 << 20).is_err(),
            "flip at byte {i} accepted"
        );
    }
    // Without a fleet key, a plugin namespace's value carries no MAC.
    assert_eq!(
        keyless.encode("plugin", &key, &code).unwrap().len(),
        HEADER_LEN + code.len()
    );
}

/// Issue 11, finding 6: under a fleet key every value is MAC'd, plugin namespaces' too, and a
/// value without a valid MAC is refused, so a writer to Redis cannot poison a plugin's cache.
#[test]
fn finding_6_plugin_values_are_macd_under_a_fleet_key() {
    let keyed = tier(Some(FLEET));
    let other = tier(Some(b"another fleet's key, also 32+ bytes long"));
    let keyless = tier(None);
    let key = Key::digest(b"plugin entry");
    let content: Vec<u8> = (0..700u32).map(|i| (i * 13 % 256) as u8).collect();

    let value = keyed.encode("plugin", &key, &content).unwrap();
    assert_eq!(value.len(), HEADER_LEN + content.len() + MAC_LEN);
    assert_eq!(keyed.decode("plugin", &key, value.clone(), 1 << 20).unwrap(), content);
    // Every single bit flip, at every byte of header, content and MAC, is refused.
    for i in 0..value.len() {
        for bit in 0..8 {
            let mut bad = value.clone();
            bad[i] ^= 1 << bit;
            assert!(
                keyed.decode("plugin", &key, bad, 1 << 20).is_err(),
                "flip of bit {bit} at byte {i} accepted"
            );
        }
    }
    // A well-formed value planted without the key: with a valid checksum, with no MAC, with a
    // zero MAC, MAC'd under another key, or MAC'd for another namespace: all refused.
    let planted = keyless.encode("plugin", &key, b"poison").unwrap();
    assert_eq!(
        keyed.decode("plugin", &key, planted, 1 << 20),
        Err("shorter than a header and a MAC")
    );
    let mut zero_mac = keyless.encode("plugin", &key, b"poison, with room for a tag").unwrap();
    zero_mac.extend_from_slice(&[0; MAC_LEN]);
    assert_eq!(
        keyed.decode("plugin", &key, zero_mac, 1 << 20),
        Err("MAC mismatch (not written under this fleet key)")
    );
    let foreign = other.encode("plugin", &key, b"poison").unwrap();
    assert!(keyed.decode("plugin", &key, foreign, 1 << 20).is_err());
    let elsewhere = keyed.encode("other-plugin", &key, &content).unwrap();
    assert!(keyed.decode("plugin", &key, elsewhere, 1 << 20).is_err());
    // A host without the key does not take a keyed value as its content.
    assert!(keyless.decode("plugin", &key, value, 1 << 20).is_err());
}

/// Issue 11, finding 3: a namespace opened on a bare directory has no name of its own, so it
/// cannot reach a remote (every such namespace would share one set of Redis keys).
#[test]
fn finding_3_unnamed_namespaces_cannot_reach_a_remote() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = || cap_std::fs::Dir::open_ambient_dir(tmp.path(), cap_std::ambient_authority()).unwrap();
    let unnamed = Namespace::open_dir(dir(), NamespaceOptions::default()).unwrap();
    assert!(!unnamed.is_named());
    let err = TieredStore::new(unnamed.clone(), tier(None)).unwrap_err();
    assert!(matches!(err, Error::InvalidNamespace { .. }), "{err:?}");
    assert!(err.to_string().contains("open_dir_named"), "{err}");
    let key = Key::digest(b"k");
    assert!(tier(None).fetch(&unnamed, &key, 100).is_err());
    assert!(tier(None).publish(&unnamed, &key, b"v").is_err());
    assert!(tier(None).remove(&unnamed, &key).is_err());

    let named = Namespace::open_dir_named("plugin-a", dir(), NamespaceOptions::default()).unwrap();
    assert!(named.is_named());
    assert_eq!(named.name(), "plugin-a");
    TieredStore::new(named, tier(None)).unwrap();
    for bad in ["", "(directory)", "a/b", "UPPER", ".", ".."] {
        assert!(
            Namespace::open_dir_named(bad, dir(), NamespaceOptions::default()).is_err(),
            "{bad:?} accepted"
        );
    }
    Namespace::open_dir_named(".reserved", dir(), NamespaceOptions::default()).unwrap();
}

#[test]
fn options_are_checked() {
    for bad in [
        "",
        "localhost:6379",
        "http://localhost:6379",
        "rediss://localhost:6379",
        "redis+unix:///tmp/redis.sock",
        "redis://",
        "redis://host:notaport",
        "redis://host:6379/notadb",
    ] {
        let err = RemoteTier::new(RemoteOptions::new(bad)).unwrap_err();
        assert!(err.to_string().contains("invalid remote URL"), "{bad:?}: {err}");
    }
    for good in [
        "redis://127.0.0.1:6379",
        "redis://localhost",
        "redis://cache.example:7000/3",
    ] {
        RemoteTier::new(RemoteOptions::new(good)).unwrap();
    }
    let mut o = RemoteOptions::new("redis://localhost");
    o.fleet_key = Some(vec![1; 31]);
    let err = RemoteTier::new(o).unwrap_err().full_message();
    assert!(err.contains("at least 32"), "{err}");

    let url = "redis://user:s3cret@localhost:6379/0";
    let t = RemoteTier::new(RemoteOptions::new(url)).unwrap();
    assert!(!format!("{t:?}").contains("s3cret"));
    let err = RemoteTier::new(RemoteOptions::new("rediss://user:s3cret@host")).unwrap_err();
    assert!(!err.full_message().contains("s3cret"), "{}", err.full_message());
}

fn local(dir: &tempfile::TempDir) -> Namespace {
    FileCache::open(dir.path())
        .unwrap()
        .namespace("plugin", NamespaceOptions::default())
        .unwrap()
}

/// Runs 40 adds and 40 missing gets through a tiered store whose remote is `url`; every one
/// must succeed on the local tier. Returns the time taken and the counters.
fn run_against(url: String, timeout: Duration) -> (Duration, crate::Counts) {
    let dir = tempfile::tempdir().unwrap();
    let ns = local(&dir);
    let mut o = RemoteOptions::new(url);
    o.connect_timeout = timeout;
    o.op_timeout = timeout;
    let store = TieredStore::new(ns.clone(), RemoteTier::new(o).unwrap()).unwrap();
    let start = Instant::now();
    for i in 0..40u32 {
        let key = Key::digest(i.to_le_bytes());
        store.add(&key, b"local content").unwrap();
        assert_eq!(store.get(&key).unwrap().as_deref(), Some(&b"local content"[..]));
        assert_eq!(store.get(&Key::digest(format!("missing {i}"))).unwrap(), None);
        assert!(!store.contains(&Key::digest(format!("missing {i}"))).unwrap());
    }
    (start.elapsed(), ns.counts())
}

#[test]
fn a_refused_remote_costs_three_failures_then_is_skipped() {
    // A port nobody listens on: bound, then closed.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (took, counts) = run_against(format!("redis://127.0.0.1:{port}"), Duration::from_millis(200));
    assert_eq!(counts.remote_errors, 3, "{counts:?}");
    assert_eq!(counts.remote_hits + counts.remote_misses, 0);
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[test]
fn a_stalled_remote_costs_at_most_the_timeouts() {
    // The control: the same run against a refused port (three failures that cost nothing), so
    // that the bound below is on what the stalled remote adds, not on how loaded the machine is.
    let refused = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let timeout = Duration::from_millis(500);
    let (control, _) = run_against(format!("redis://127.0.0.1:{refused}"), timeout);
    // Accepts connections and never answers: every operation times out.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (took, counts) = run_against(format!("redis://127.0.0.1:{port}"), timeout);
    drop(listener);
    assert_eq!(counts.remote_errors, 3, "{counts:?}");
    // Three timeouts (plus the local work), not 120 operations' worth; and one timeout per
    // failure, not two (connecting sends nothing that waits for an answer: no `CLIENT SETINFO`,
    // which cost 1.3 s here before): two per failure would add six timeouts, the bound is 4.5.
    assert!(took >= timeout * 3, "{took:?}");
    assert!(
        took.saturating_sub(control) < timeout * 9 / 2,
        "{took:?}, of which the local work took {control:?}"
    );
}

#[test]
fn required_remote_failures_are_errors_and_local_writes_stay() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let ns = local(&dir);
    let mut o = RemoteOptions::new(format!("redis://127.0.0.1:{port}"));
    o.required = true;
    let store = TieredStore::new(ns.clone(), RemoteTier::new(o).unwrap()).unwrap();
    let key = Key::digest(b"k");
    let err = store.add(&key, b"v").unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("remote tier redis://127.0.0.1"), "{err}");
    assert_eq!(ns.get(&key).unwrap().as_deref(), Some(&b"v"[..]));
    assert!(store.get(&Key::digest(b"missing")).is_err());
    assert!(store.remote().ping().is_err());
}

/// Concurrent callers each get a connection: eight operations against a remote that never
/// answers take about one timeout together, not eight (one shared connection would queue them).
#[test]
fn concurrent_callers_do_not_queue_on_one_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut o = RemoteOptions::new(format!("redis://127.0.0.1:{port}"));
    // Long enough that the watching thread below sees every connection while it is open,
    // even on a loaded machine.
    let timeout = Duration::from_millis(1000);
    o.connect_timeout = timeout;
    o.op_timeout = timeout;
    o.breaker_threshold = 100;
    let remote = RemoteTier::new(o).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ns = local(&dir);
    // The silent server watches its connections: the most it ever held open at once tells
    // parallel callers (eight) from callers queued on one connection (one), however slowly a
    // loaded machine runs them.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    listener.set_nonblocking(true).unwrap();
    let server = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let (mut open, mut most) = (Vec::<std::net::TcpStream>::new(), 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((conn, _)) = listener.accept() {
                    conn.set_nonblocking(true).unwrap();
                    open.push(conn);
                }
                // A connection whose client hung up reads to its end (0 bytes), after what
                // the client sent.
                open.retain_mut(|c| {
                    loop {
                        match std::io::Read::read(c, &mut [0u8; 256]) {
                            Ok(0) => break false,
                            Ok(_) => {}
                            Err(_) => break true,
                        }
                    }
                });
                most = most.max(open.len());
                std::thread::sleep(Duration::from_millis(1));
            }
            most
        }
    });
    let start = std::sync::Barrier::new(8);
    std::thread::scope(|s| {
        for i in 0..8u32 {
            let (remote, ns, start) = (&remote, &ns, &start);
            s.spawn(move || {
                start.wait();
                assert_eq!(remote.fetch(ns, &Key::digest(i.to_le_bytes()), 1 << 20).unwrap(), None);
            });
        }
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let most = server.join().unwrap();
    assert_eq!(ns.counts().remote_errors, 8);
    assert_eq!(most, 8, "the callers did not all wait at once: they queued");
    assert_eq!(remote.idle_connections(), 0, "failed connections are not kept");
}

/// With a real server: idle connections are reused, and at most MAX_IDLE_CONNECTIONS are kept.
#[test]
fn connections_are_pooled() {
    let redis = filecache_tests::RedisServer::start();
    let remote = RemoteTier::new(RemoteOptions::new(redis.url())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ns = local(&dir);
    for i in 0..20u32 {
        remote.publish(&ns, &Key::digest(i.to_le_bytes()), b"v").unwrap();
    }
    assert_eq!(
        remote.idle_connections(),
        1,
        "one caller at a time needs one connection"
    );
    std::thread::scope(|s| {
        for t in 0..16u32 {
            let (remote, ns) = (&remote, &ns);
            s.spawn(move || {
                for i in 0..50u32 {
                    let key = Key::digest((t * 1000 + i).to_le_bytes());
                    remote.publish(ns, &key, b"value").unwrap();
                    assert_eq!(remote.fetch(ns, &key, 100).unwrap().as_deref(), Some(&b"value"[..]));
                }
            });
        }
    });
    assert!(remote.idle_connections() <= MAX_IDLE_CONNECTIONS);
    assert!(remote.idle_connections() >= 1);
    assert_eq!(ns.counts().remote_errors, 0);
}

/// Issue 11, finding 3, through a real redis-server: two namespaces opened on directory handles,
/// each with its own name, keep their entries apart in Redis; hosts of each see their own only.
#[test]
fn finding_3_named_directory_namespaces_are_isolated_through_redis() {
    let redis = filecache_tests::RedisServer::start();
    let remote = RemoteTier::new(RemoteOptions::new(redis.url())).unwrap();
    let open = |root: &tempfile::TempDir, name: &str| {
        let path = root.path().join(name);
        std::fs::create_dir_all(&path).unwrap();
        let dir = cap_std::fs::Dir::open_ambient_dir(&path, cap_std::ambient_authority()).unwrap();
        let ns = Namespace::open_dir_named(name, dir, NamespaceOptions::default()).unwrap();
        TieredStore::new(ns, remote.clone()).unwrap()
    };
    let (host1, host2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let key = Key::digest(b"same key in both");
    let a1 = open(&host1, "plugin-a");
    let b1 = open(&host1, "plugin-b");
    a1.add(&key, b"a's value").unwrap();
    b1.add(&key, b"b's value").unwrap();
    assert_eq!(redis.dbsize(), 2, "one Redis key per namespace");

    // A second host, with empty directories: each namespace reads its own entry from Redis.
    let a2 = open(&host2, "plugin-a");
    let b2 = open(&host2, "plugin-b");
    assert_eq!(a2.get(&key).unwrap().as_deref(), Some(&b"a's value"[..]));
    assert_eq!(b2.get(&key).unwrap().as_deref(), Some(&b"b's value"[..]));
    // A delete in one leaves the other.
    a1.delete(&key).unwrap();
    let c = open(&tempfile::tempdir().unwrap(), "plugin-b");
    assert_eq!(c.get(&key).unwrap().as_deref(), Some(&b"b's value"[..]));
    let d = open(&tempfile::tempdir().unwrap(), "plugin-a");
    assert_eq!(d.get(&key).unwrap(), None);
}

/// Issue 11, finding 6, through a real redis-server: a value planted in a plugin namespace by a
/// writer without the fleet key is refused (not served, not copied), and values expire after the
/// TTL.
#[test]
fn finding_6_planted_plugin_values_are_refused_and_values_expire() {
    let redis = filecache_tests::RedisServer::start();
    let mut o = RemoteOptions::new(redis.url());
    o.fleet_key = Some(FLEET.to_vec());
    o.ttl = Some(Duration::from_secs(60));
    let fleet = RemoteTier::new(o).unwrap();
    let attacker = RemoteTier::new(RemoteOptions::new(redis.url())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ns = local(&dir);
    let key = Key::digest(b"planted");
    attacker.publish(&ns, &key, b"poisoned result").unwrap();
    let store = TieredStore::new(ns.clone(), fleet.clone()).unwrap();
    assert_eq!(store.get(&key).unwrap(), None);
    assert_eq!(ns.get(&key).unwrap(), None, "not copied to the local tier");
    assert_eq!(ns.counts().rejected, 1);

    // The fleet's own value is served, and carries the TTL.
    let own = Key::digest(b"own");
    let added = Instant::now();
    store.add(&own, b"fleet value").unwrap();
    let rkey = RemoteTier::redis_key("plugin", &own);
    let ttl: i64 = redis.cli(&["PTTL", &rkey]).trim().parse().unwrap();
    // Less what the time since the add took off it (slow on a loaded machine).
    let least = 60_000 - added.elapsed().as_millis() as i64 - 1;
    assert!((least..=60_000).contains(&ttl), "PTTL {ttl}");
    let other = tempfile::tempdir().unwrap();
    let reader = TieredStore::new(local(&other), fleet.clone()).unwrap();
    assert_eq!(reader.get(&own).unwrap().as_deref(), Some(&b"fleet value"[..]));
    // Without a TTL, no expiry is set.
    assert_eq!(
        redis.cli(&["PTTL", &RemoteTier::redis_key("plugin", &key)]).trim(),
        "-1"
    );

    // A short TTL: the value is gone from Redis once it passes.
    let mut o = RemoteOptions::new(redis.url());
    o.fleet_key = Some(FLEET.to_vec());
    o.ttl = Some(Duration::from_millis(200));
    let short = TieredStore::new(ns.clone(), RemoteTier::new(o).unwrap()).unwrap();
    let brief = Key::digest(b"brief");
    let rkey = RemoteTier::redis_key("plugin", &brief);
    let adding = Instant::now();
    short.add(&brief, b"soon gone").unwrap();
    let added = Instant::now();
    // The expiry is checked against the time that passed (a loaded machine may take longer
    // than the TTL to run redis-cli): set, at most 200 ms ahead, gone once they have passed.
    let pttl: i64 = redis.cli(&["PTTL", &rkey]).trim().parse().unwrap();
    let since = adding.elapsed();
    if since < Duration::from_millis(200) {
        let least = 200 - since.as_millis() as i64 - 1;
        assert!((least..=200).contains(&pttl), "PTTL {pttl} after {since:?}");
    } else {
        assert!(pttl == -2 || (0..=200).contains(&pttl), "PTTL {pttl} after {since:?}");
    }
    std::thread::sleep(Duration::from_millis(250).saturating_sub(added.elapsed()));
    assert_eq!(redis.cli(&["EXISTS", &rkey]).trim(), "0");
    // A zero TTL is refused.
    let mut o = RemoteOptions::new(redis.url());
    o.ttl = Some(Duration::ZERO);
    assert!(RemoteTier::new(o).is_err());
}
