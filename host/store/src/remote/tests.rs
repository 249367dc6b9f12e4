//! The remote tier: value checks, options, and the breaker against sockets that refuse or never
//! answer; the connection pool, namespace isolation and TTLs against a real `redis-server`. (The
//! CLI's remote tests are in host/cli/tests/remote.rs.)

use std::net::TcpListener;
use std::time::{Duration, Instant};

use super::*;
use crate::EntryStore;
use crate::{FileCache, NamespaceOptions};

/// Options for `url` with timeouts (10 s) that no load of the machine reaches, for the tests
/// against a real or fake server in which the time a call takes is not the point: there, a call
/// that a loaded machine delayed past the default 500 ms would fail as a timeout.
fn patient(url: String) -> RemoteOptions {
    let mut o = RemoteOptions::new(url);
    o.connect_timeout = Duration::from_secs(10);
    o.op_timeout = Duration::from_secs(10);
    o
}

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
    for zero in [
        |o: &mut RemoteOptions| o.connect_timeout = Duration::ZERO,
        |o: &mut RemoteOptions| o.op_timeout = Duration::ZERO,
    ] {
        let mut o = RemoteOptions::new("redis://localhost");
        zero(&mut o);
        let err = RemoteTier::new(o).unwrap_err().full_message();
        assert!(err.contains("timeouts must be at least 1 ms"), "{err}");
    }

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
    let remote = RemoteTier::new(patient(redis.url())).unwrap();
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
    let remote = RemoteTier::new(patient(redis.url())).unwrap();
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
    let mut o = patient(redis.url());
    o.fleet_key = Some(FLEET.to_vec());
    o.ttl = Some(Duration::from_secs(60));
    let fleet = RemoteTier::new(o).unwrap();
    let attacker = RemoteTier::new(patient(redis.url())).unwrap();
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
    let mut o = patient(redis.url());
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

/// A fake Redis server on 127.0.0.1: for each connection, reads a request, then runs `answer`
/// on the stream, which adds what it wrote to `sent`. Stops (and lets its connections end) when
/// dropped.
struct FakeServer {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl FakeServer {
    fn start(
        answer: impl Fn(&mut std::net::TcpStream, &std::sync::atomic::AtomicU64, &std::sync::atomic::AtomicBool)
        + Send
        + Sync
        + 'static,
    ) -> FakeServer {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let answer = Arc::new(answer);
        let (stop2, sent2) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let (answer, stop, sent) = (answer.clone(), stop2.clone(), sent2.clone());
                        std::thread::spawn(move || {
                            stream.set_nonblocking(false).unwrap();
                            let mut request = [0u8; 4096];
                            let _ = std::io::Read::read(&mut stream, &mut request);
                            answer(&mut stream, &sent, &stop);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FakeServer { port, stop, sent }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn sent(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Runs `f` on another thread and waits at most `within` for it: a call that hangs fails the
/// test instead of hanging it.
fn within<T: Send + 'static>(within: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(within)
        .unwrap_or_else(|_| panic!("still waiting after {within:?}"))
}

/// Issue 22, finding 4: a server that declares a value of 100,000,000 bytes (within this tier's
/// size limit) and trickles it a byte every 400 ms fails each operation at the operation's
/// deadline, not at the end of the value (the socket's timeout alone would never trip); the
/// failures are counted and open the breaker; the reply buffer grows with what arrives, not with
/// what was declared.
#[test]
fn finding_22_4_a_trickling_remote_fails_each_operation_by_its_deadline() {
    use std::io::Write;
    let server = FakeServer::start(|stream, sent, stop| {
        if stream.write_all(b"$100000000\r\n").is_err() {
            return;
        }
        sent.fetch_add(12, std::sync::atomic::Ordering::Relaxed);
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(400));
            if stream.write_all(b"x").is_err() {
                return;
            }
            sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let timeout = Duration::from_millis(1000);
    let mut o = RemoteOptions::new(server.url());
    o.connect_timeout = timeout;
    o.op_timeout = timeout;
    o.max_value_size = 1 << 30;
    let remote = RemoteTier::new(o).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ns = local(&dir);
    for i in 0..3u32 {
        let (remote, ns) = (remote.clone(), ns.clone());
        let (found, took) = within(Duration::from_secs(20), move || {
            let start = Instant::now();
            let found = remote.fetch(&ns, &Key::digest(i.to_le_bytes()), 1 << 30).unwrap();
            (found, start.elapsed())
        });
        assert_eq!(found, None);
        assert!(took >= timeout, "failed before its deadline: {took:?}");
        assert!(
            took < timeout * 3,
            "call {i} took {took:?} against a timeout of {timeout:?}"
        );
    }
    assert_eq!(ns.counts().remote_errors, 3, "each counted");
    // The breaker is open: the next call does not reach the server.
    let start = Instant::now();
    assert_eq!(remote.fetch(&ns, &Key::digest(b"next"), 1 << 30).unwrap(), None);
    assert!(start.elapsed() < timeout, "{:?}", start.elapsed());
    assert_eq!(ns.counts().remote_errors, 3, "a skipped call is not a failure");
    assert!(server.sent() < 100, "{} bytes sent", server.sent());
}

/// Issue 22, finding 4: a reply longer than the operation asked for (here a value's declared
/// length over the largest entry the call accepts, and a status line without end) is refused
/// from its first line, before its bytes are read: the server cannot push more than the
/// sockets' buffers hold, and the call fails at once.
#[test]
fn finding_22_4_a_reply_longer_than_asked_is_refused_unread() {
    use std::io::Write;
    fn blast(stream: &mut std::net::TcpStream, sent: &std::sync::atomic::AtomicU64, first: &[u8]) {
        let chunk = vec![b'x'; 1 << 20];
        if stream.write_all(first).is_err() {
            return;
        }
        for _ in 0..100 {
            if stream.write_all(&chunk).is_err() {
                return;
            }
            sent.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }
    for (what, first) in [
        ("a 100,000,000-byte value", &b"$100000000\r\n"[..]),
        ("a 100 MiB status line", &b"+"[..]),
    ] {
        let server = FakeServer::start(move |stream, sent, _| blast(stream, sent, first));
        let mut o = RemoteOptions::new(server.url());
        o.required = true;
        o.op_timeout = Duration::from_secs(5);
        let remote = RemoteTier::new(o).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ns = local(&dir);
        let start = Instant::now();
        let err = {
            let (remote, ns) = (remote.clone(), ns.clone());
            within(Duration::from_secs(20), move || {
                remote.fetch(&ns, &Key::digest(b"k"), 1 << 20).unwrap_err()
            })
        };
        let took = start.elapsed();
        let message = err.full_message();
        assert!(
            message.contains("to a request for at most") || message.contains("a reply line longer than"),
            "{what}: {message}"
        );
        assert!(took < Duration::from_secs(5), "{what}: {took:?}");
        // Give the server a moment to find the connection closed.
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            server.sent() < 32 << 20,
            "{what}: the server pushed {} bytes, as if they were read",
            server.sent()
        );
        assert_eq!(ns.counts().remote_errors, 1, "{what}");
    }
}

/// Issue 22, finding 2 (the remote tier's part): on a read-only local tier a reader of a remote
/// entry holds it in memory, so readers together are bounded (`with_reader_memory`): an `open`
/// past the bound is a clear error, and dropping a reader gives its bytes back.
#[test]
fn finding_22_2_readers_served_from_memory_are_bounded_together() {
    use std::io::{Read, Write};
    let content: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    let key = Key::digest(b"remote entry");
    let value = tier(None).encode("plugin", &key, &content).unwrap();
    let mut reply = format!("${}\r\n", value.len()).into_bytes();
    reply.extend_from_slice(&value);
    reply.extend_from_slice(b"\r\n");
    // Answers every request of a connection (each a GETRANGE of the one key) with the value.
    let server = FakeServer::start(move |stream, _, _| {
        let mut request = [0u8; 4096];
        loop {
            if stream.write_all(&reply).is_err() {
                return;
            }
            match stream.read(&mut request) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let read_only = FileCache::open(dir.path())
        .unwrap()
        .namespace("plugin", NamespaceOptions::default().read_only(true))
        .unwrap();
    let remote = RemoteTier::new(patient(server.url())).unwrap();
    let store = TieredStore::new(read_only, remote).unwrap().with_reader_memory(3 << 20);
    let mut readers: Vec<_> = (0..3)
        .map(|_| store.open(&key).unwrap().expect("found remotely"))
        .collect();
    assert_eq!(store.reader_memory_held(), 3 << 20);
    let err = store.open(&key).map(|_| ()).unwrap_err();
    assert!(
        matches!(&err, Error::Io { source, .. } if source.kind() == io::ErrorKind::OutOfMemory),
        "{err:?}"
    );
    assert!(err.full_message().contains("over the bound"), "{}", err.full_message());
    // A clone shares the bound.
    assert!(store.clone().open(&key).is_err());
    // `get` holds nothing past the call.
    assert_eq!(store.get(&key).unwrap().as_deref(), Some(&content[..]));

    let mut first = readers.remove(0);
    let mut read = Vec::new();
    loop {
        let chunk = first.read_chunk(1 << 16).unwrap();
        if chunk.is_empty() {
            break;
        }
        read.extend_from_slice(&chunk);
    }
    assert_eq!(read, content);
    drop(first);
    assert_eq!(store.reader_memory_held(), 2 << 20);
    let again = store.open(&key).unwrap().expect("room again");
    assert_eq!(again.size(), content.len() as u64);
    drop((again, readers));
    assert_eq!(store.reader_memory_held(), 0);
}

/// `RemoteTier::command` (what the key-value buckets in Redis use): an error reply is an answer,
/// on a connection kept for reuse; an array is bounded as a whole (its elements and their bytes
/// together), and one declaring more is refused unread.
#[test]
fn commands_answer_errors_and_bound_arrays() {
    let (server, tier) = answering(b"*3\r\n$2\r\nab\r\n:7\r\n*1\r\n-ERR inner\r\n");
    let reply = tier.command("test", &[b"ANY"], 66).unwrap();
    assert_eq!(
        reply,
        Reply::Array(vec![
            Reply::Bulk(Some(b"ab".to_vec())),
            Reply::Integer(7),
            Reply::Array(vec![Reply::Error("ERR inner".into())]),
        ])
    );
    // Three elements, two bytes and one element more cost 3 × 16 + 2 + 16 = 66: one byte less
    // is refused (a new tier: the fake server answers one request per connection).
    let tier = RemoteTier::new(patient(server.url())).unwrap();
    let message = tier.command("test", &[b"ANY"], 65).unwrap_err().full_message();
    assert!(message.contains("an array of 1 elements"), "{message}");
    let (_server, tier) = answering(b"*100000000\r\n");
    let message = tier.command("test", &[b"ANY"], 1 << 20).unwrap_err().full_message();
    assert!(message.contains("100000000 elements"), "{message}");
    let (_server, tier) = answering(b"-NOSCRIPT no such script\r\n");
    assert_eq!(
        tier.command("test", &[b"ANY"], 0).unwrap(),
        Reply::Error("NOSCRIPT no such script".into())
    );
    assert_eq!(tier.idle_connections(), 1);
}

/// A fake server that answers every request with `reply`, and a tier that uses it.
fn answering(reply: &'static [u8]) -> (FakeServer, RemoteTier) {
    use std::io::Write;
    let server = FakeServer::start(move |stream, _, _| {
        let _ = stream.write_all(reply);
    });
    let tier = RemoteTier::new(patient(server.url())).unwrap();
    (server, tier)
}
