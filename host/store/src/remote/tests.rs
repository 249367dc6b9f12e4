//! The remote tier without a server: value checks, options, and the breaker against sockets
//! that refuse or never answer. (Tests with a real `redis-server` are in tests/e2e/remote.rs.)

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
    for i in (0..value.len()).step_by(7) {
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
    for i in (0..value.len()).step_by(5) {
        let mut bad = value.clone();
        bad[i] ^= 1;
        assert!(
            keyed.decode(".compiled", &key, bad, 1 << 20).is_err(),
            "flip at byte {i} accepted"
        );
    }
    // A plugin namespace's value carries no MAC, whatever the key.
    assert_eq!(
        keyed.encode("plugin", &key, &code).unwrap().len(),
        HEADER_LEN + code.len()
    );
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
    let store = TieredStore::new(ns.clone(), RemoteTier::new(o).unwrap());
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
    // Accepts connections and never answers: every operation times out.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (took, counts) = run_against(format!("redis://127.0.0.1:{port}"), Duration::from_millis(200));
    drop(listener);
    assert_eq!(counts.remote_errors, 3, "{counts:?}");
    // Three timeouts of 200 ms (plus the local work), not 120 operations' worth.
    assert!(took >= Duration::from_millis(600), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn required_remote_failures_are_errors_and_local_writes_stay() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let ns = local(&dir);
    let mut o = RemoteOptions::new(format!("redis://127.0.0.1:{port}"));
    o.required = true;
    let store = TieredStore::new(ns.clone(), RemoteTier::new(o).unwrap());
    let key = Key::digest(b"k");
    let err = store.add(&key, b"v").unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("remote tier redis://127.0.0.1"), "{err}");
    assert_eq!(ns.get(&key).unwrap().as_deref(), Some(&b"v"[..]));
    assert!(store.get(&Key::digest(b"missing")).is_err());
    assert!(store.remote().ping().is_err());
}
