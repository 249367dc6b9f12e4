//! Tests of key-value buckets against real SQLite databases in temporary directories.

use filecache_store::entry::charge;
use std::path::{Path, PathBuf};
use std::time::Duration;

use filecache_store::{FileCache, Key, NamespaceOptions};

use super::*;

fn cache() -> (tempfile::TempDir, FileCache) {
    let dir = tempfile::tempdir().unwrap();
    let cache = FileCache::open(dir.path().join("cache")).unwrap();
    (dir, cache)
}

fn bucket_with(cache: &FileCache, options: NamespaceOptions) -> Bucket {
    Bucket::new(cache.namespace("test", options).unwrap())
}

fn bucket(cache: &FileCache) -> Bucket {
    bucket_with(cache, NamespaceOptions::default())
}

fn db_path(root: &Path) -> PathBuf {
    root.join("cache/test").join(DATABASE_FILE)
}

/// A connection of our own to the bucket's database, to damage it behind the engine's back.
fn raw(root: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(db_path(root)).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c
}

/// Flips one byte of the value of key `bad` (set to "original value") behind the engine's back,
/// so that its checksum no longer matches, and checks that the next read reports it damaged.
fn damage_bad_and_read(root: &Path, b: &Bucket) {
    raw(root)
        .execute(
            "UPDATE kv SET value = ?1 WHERE key = ?2",
            rusqlite::params![&b"original valuf"[..], &b"bad"[..]],
        )
        .unwrap();
    let err = b.get("bad").unwrap_err();
    assert!(
        matches!(err, Error::Store(filecache_store::Error::Corrupt { .. })),
        "{err:?}"
    );
}

fn odd_keys() -> Vec<String> {
    vec![
        String::new(),
        "x".repeat(4096),
        "..".into(),
        ".".into(),
        "a/b".into(),
        "/etc/passwd".into(),
        "..\\..\\windows".into(),
        "nul\0inside".into(),
        "\0".into(),
        "ключ 鍵 🔑".into(),
        "kv".into(),
        "'; DROP TABLE kv; --".into(),
    ]
}

fn ns_of(cache: &FileCache) -> Namespace {
    cache.namespace("test", NamespaceOptions::default()).unwrap()
}

#[test]
fn keys_of_any_string_round_trip_and_persist() {
    let (d, cache) = cache();
    let b = bucket(&cache);
    for (i, k) in odd_keys().iter().enumerate() {
        b.set(k, format!("value {i}").as_bytes()).unwrap();
    }
    drop(b);
    let b = bucket(&FileCache::open(d.path().join("cache")).unwrap());
    for (i, k) in odd_keys().iter().enumerate() {
        assert_eq!(b.get(k).unwrap(), Some(format!("value {i}").into_bytes()), "{k:?}");
        assert!(b.exists(k).unwrap());
    }
    let mut listed = b.keys().unwrap();
    listed.sort();
    let mut want = odd_keys();
    want.sort();
    assert_eq!(listed, want);
    let long = "k".repeat(MAX_KEY_LEN + 1);
    assert!(matches!(b.set(&long, b"v"), Err(Error::KeyTooLong { .. })));
    assert!(matches!(b.get(&long), Err(Error::KeyTooLong { .. })));
    b.delete("..").unwrap();
    b.delete("never there").unwrap();
    assert_eq!(b.get("..").unwrap(), None);
    assert!(!b.exists("..").unwrap());
}

#[test]
fn cursors_are_stable_across_runs_and_pages_never_repeat_or_skip() {
    let (d, cache) = cache();
    let b = bucket(&cache);
    for i in 0..25 {
        b.set(&format!("key{i}"), b"v").unwrap();
    }
    let first = b.list_keys(0, 10).unwrap();
    assert_eq!(first.keys.len(), 10);
    let next = first.next.expect("more pages");
    drop(b);
    drop(cache);
    // A new run continues where the first page ended.
    let b = bucket(&FileCache::open(d.path().join("cache")).unwrap());
    let mut all = first.keys;
    let mut from = next;
    loop {
        let page = b.list_keys(from, 10).unwrap();
        all.extend(page.keys);
        match page.next {
            Some(n) => from = n,
            None => break,
        }
    }
    let mut sorted = all.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 25, "{all:?}");
    assert_eq!(all.len(), 25);
}

#[test]
fn a_damaged_value_is_reported_and_removed_never_served() {
    let (d, cache) = cache();
    let b = bucket(&cache);
    b.set("good", b"fine").unwrap();
    b.set("bad", b"original value").unwrap();
    let ns = ns_of(&cache);
    let before = ns.data_bytes().unwrap();
    assert_eq!(before, (4 + 4 + 3 + 14) as u64);
    // Flip a value behind the engine's back (its checksum no longer matches).
    damage_bad_and_read(d.path(), &b);
    // Removed: the next read misses, and its bytes are given back to the quota.
    assert_eq!(b.get("bad").unwrap(), None);
    assert_eq!(ns.data_bytes().unwrap(), 8);
    assert_eq!(b.get("good").unwrap().as_deref(), Some(&b"fine"[..]));
    // The same through get-many, increment and cas.
    b.set("n", b"5").unwrap();
    raw(d.path())
        .execute("UPDATE kv SET value = X'36' WHERE key = X'6E'", [])
        .unwrap();
    assert!(matches!(
        b.increment_u64("n", 1),
        Err(Error::Store(filecache_store::Error::Corrupt { .. }))
    ));
    assert_eq!(b.get("n").unwrap(), None);
    b.set("m", b"5").unwrap();
    raw(d.path())
        .execute("UPDATE kv SET value = X'36' WHERE key = X'6D'", [])
        .unwrap();
    assert!(b.get_many(&["good".into(), "m".into()], u64::MAX).is_err());
    assert_eq!(b.get("m").unwrap(), None);
}

#[test]
fn a_damaged_key_is_left_out_of_listings_and_removed_and_values_are_not_read_to_list() {
    let (d, cache) = cache();
    let b = bucket(&cache);
    for k in ["a", "b", "c"] {
        b.set(k, b"v").unwrap();
    }
    // A damaged value does not stop its key from being listed: a listing reads no value (issue
    // 22 finding 8), so it cannot know; the next read of it finds the damage.
    raw(d.path())
        .execute("UPDATE kv SET value = X'00' WHERE key = X'61'", [])
        .unwrap();
    // A damaged key is found by the key's own checksum.
    raw(d.path())
        .execute("UPDATE kv SET key = X'78' WHERE key = X'62'", [])
        .unwrap();
    let mut keys = b.keys().unwrap();
    keys.sort();
    assert_eq!(keys, ["a", "c"]);
    let n: i64 = raw(d.path())
        .query_row("SELECT count(*) FROM kv", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 2, "the row with the damaged key was removed");
    let report = b.verify().unwrap();
    assert_eq!(report.ok, 1);
    assert_eq!(report.damaged, vec![("a".to_string(), "key-value checksum mismatch")]);
    assert_eq!(b.keys().unwrap(), ["c"]);
    assert_eq!(ns_of(&cache).data_bytes().unwrap(), 2);
}

#[test]
fn a_damaged_database_file_is_reported_clearly_and_can_be_cleared() {
    let (d, cache) = cache();
    let b = bucket(&cache);
    b.set("k", b"v").unwrap();
    drop(b);
    std::fs::write(db_path(d.path()), vec![0x5a; 8192]).unwrap();
    for f in ["kv.sqlite3-wal", "kv.sqlite3-shm"] {
        let _ = std::fs::remove_file(d.path().join("cache/test").join(f));
    }
    let b = bucket(&cache);
    let err = b.get("k").unwrap_err();
    assert!(matches!(err, Error::DamagedDatabase { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("damaged") && message.contains("clear --include-kv"),
        "{message}"
    );
    assert!(b.verify().unwrap().database.is_some());
    assert_eq!(b.clear().unwrap(), 0);
    assert_eq!(ns_of(&cache).data_bytes().unwrap(), 0);
    b.set("k", b"new").unwrap();
    assert_eq!(b.get("k").unwrap().as_deref(), Some(&b"new"[..]));
}

#[cfg(unix)]
#[test]
fn a_planted_symlink_is_refused() {
    let (d, cache) = cache();
    let ns = ns_of(&cache);
    let victim = d.path().join("victim");
    std::fs::write(&victim, b"not a database").unwrap();
    std::os::unix::fs::symlink(&victim, db_path(d.path())).unwrap();
    let b = Bucket::new(ns.clone());
    let err = b.set("k", b"v").unwrap_err();
    assert!(matches!(err, Error::NotAFile { .. }), "{err:?}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"not a database");
    // A planted log is refused the same way.
    std::fs::remove_file(db_path(d.path())).unwrap();
    std::os::unix::fs::symlink(&victim, d.path().join("cache/test/kv.sqlite3-wal")).unwrap();
    assert!(matches!(Bucket::new(ns.clone()).get("k"), Err(Error::NotAFile { .. })));
    // Clearing removes the symlink, not what it points at.
    Bucket::new(ns.clone()).clear().unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"not a database");
    Bucket::new(ns).set("k", b"v").unwrap();
}

#[test]
fn data_counts_against_the_quota_and_evicts_cache_entries_never_itself() {
    let (_d, cache) = cache();
    // A cache entry is charged its file rounded up to 4 KiB: `small` for 400 bytes of content,
    // `large` (two blocks of 4 KiB) for 5000. The quota holds three small entries.
    let (small, large) = (charge(400), charge(5000));
    assert_eq!(large, 2 * small);
    let options = NamespaceOptions::default().quota(3 * small);
    let ns = cache.namespace("test", options).unwrap();
    let b = Bucket::new(ns.clone());
    let (k1, k2) = (Key::digest(b"1"), Key::digest(b"2"));
    ns.add(&k1, &[1; 400]).unwrap();
    ns.add(&k2, &[2; 400]).unwrap();
    // 1 + 4500 bytes of data: the oldest entry goes to make room.
    b.set("v", &[7; 4500]).unwrap();
    assert!(ns.get(&k1).unwrap().is_none());
    assert!(ns.get(&k2).unwrap().is_some());
    assert_eq!(ns.data_bytes().unwrap(), 4501);
    // Data never makes room for entries: even with k2 evicted, a large entry does not fit
    // beside the data.
    assert!(matches!(
        ns.add(&k1, &[1; 5000]),
        Err(filecache_store::Error::QuotaExceeded { .. })
    ));
    // Nor for more data than the quota holds, even with every entry gone.
    let err = b.set("w", &[8; 8000]).unwrap_err();
    assert!(
        matches!(err, Error::Store(filecache_store::Error::QuotaExceeded { .. })),
        "{err:?}"
    );
    assert!(b.get("w").unwrap().is_none());
    assert_eq!(b.get("v").unwrap().unwrap().len(), 4500);
    // Replacing a value is charged the difference; deleting gives its bytes back.
    b.set("v", &[7; 100]).unwrap();
    assert_eq!(ns.data_bytes().unwrap(), 101);
    b.delete("v").unwrap();
    assert_eq!(ns.data_bytes().unwrap(), 0);
    assert_eq!(
        ns.scan(0).unwrap().used,
        ns.scan(0).unwrap().data_bytes
            + small * u64::from(ns.get(&k2).unwrap().is_some())
            + large * u64::from(ns.get(&k1).unwrap().is_some())
    );
    // Over the entry size limit: refused, nothing stored.
    let small = Bucket::new(
        cache
            .namespace("small", NamespaceOptions::default().max_entry_size(10))
            .unwrap(),
    );
    assert!(matches!(
        small.set("k", &[0; 11]),
        Err(Error::Store(filecache_store::Error::TooLarge { .. }))
    ));
}

#[test]
fn read_only_namespaces_refuse_writes_and_read() {
    let (_d, cache) = cache();
    bucket(&cache).set("k", b"v").unwrap();
    let ro = bucket_with(&cache, NamespaceOptions::default().read_only(true));
    assert_eq!(ro.get("k").unwrap().as_deref(), Some(&b"v"[..]));
    for r in [
        ro.set("k", b"w"),
        ro.delete("k"),
        ro.set_many(&[("a".into(), b"1".to_vec())]),
        ro.delete_many(&["k".into()]),
        ro.increment_u64("n", 1).map(drop),
        ro.clear().map(drop),
    ] {
        assert!(
            matches!(r, Err(Error::Store(filecache_store::Error::ReadOnly))),
            "{r:?}"
        );
    }
    assert_eq!(ro.get("k").unwrap().as_deref(), Some(&b"v"[..]));
    // A read-only namespace without a database reads as empty and creates nothing.
    let none = Bucket::new(
        cache
            .namespace("fresh", NamespaceOptions::default().read_only(true))
            .unwrap(),
    );
    assert_eq!(none.get("k").unwrap(), None);
    assert!(none.keys().unwrap().is_empty());
}

#[test]
fn increment_and_cas() {
    let (_d, cache) = cache();
    let b = bucket(&cache);
    assert_eq!(b.increment_i64("n", -5).unwrap(), -5);
    assert_eq!(b.increment_i64("n", 7).unwrap(), 2);
    b.set("text", b"hello").unwrap();
    assert!(matches!(b.increment_u64("text", 1), Err(Error::NotANumber { .. })));
    b.set("max", u64::MAX.to_string().as_bytes()).unwrap();
    assert!(matches!(b.increment_u64("max", 1), Err(Error::Overflow { .. })));
    let cas = b.cas("c").unwrap();
    assert_eq!(cas.current(), None);
    b.swap(&cas, b"first").unwrap().unwrap();
    // The same read again is stale now.
    let fresh = b.swap(&cas, b"second").unwrap().unwrap_err();
    assert_eq!(fresh.current(), Some(&b"first"[..]));
    // A write of the same bytes is still a write (a new version).
    b.set("c", b"first").unwrap();
    let fresh = b.swap(&fresh, b"third").unwrap().unwrap_err();
    b.swap(&fresh, b"third").unwrap().unwrap();
    assert_eq!(b.get("c").unwrap().as_deref(), Some(&b"third"[..]));
}

#[test]
fn batches_are_all_or_nothing() {
    let (_d, cache) = cache();
    let ns = cache
        .namespace("test", NamespaceOptions::default().max_entry_size(100))
        .unwrap();
    let b = Bucket::new(ns.clone());
    b.set_many(&[
        ("a".into(), b"1".to_vec()),
        ("b".into(), b"2".to_vec()),
        ("a".into(), b"3".to_vec()),
    ])
    .unwrap();
    assert_eq!(b.get("a").unwrap().as_deref(), Some(&b"3"[..]));
    assert_eq!(ns.data_bytes().unwrap(), 4);
    // One value over the limit: nothing of the batch is written.
    let r = b.set_many(&[("c".into(), b"1".to_vec()), ("d".into(), vec![0; 101])]);
    assert!(r.is_err());
    assert_eq!(b.get("c").unwrap(), None);
    // A failure at the commit: nothing of the batch is written, the charge is as before.
    {
        let _f = fault::inject(fault::Point::BeforeCommit);
        let r = b.set_many(&[("a".into(), b"new".to_vec()), ("e".into(), b"5".to_vec())]);
        assert!(r.is_err());
    }
    assert_eq!(b.get("a").unwrap().as_deref(), Some(&b"3"[..]));
    assert_eq!(b.get("e").unwrap(), None);
    assert_eq!(ns.data_bytes().unwrap(), 4);
    {
        let _f = fault::inject(fault::Point::BeforeCommit);
        assert!(b.delete_many(&["a".into(), "b".into()]).is_err());
    }
    assert_eq!(b.keys().unwrap().len(), 2);
    b.delete_many(&["a".into(), "b".into(), "never".into()]).unwrap();
    assert!(b.keys().unwrap().is_empty());
    assert_eq!(ns.data_bytes().unwrap(), 0);
}

/// Issue 28: faults around key-value writes: a write that fails inside its transaction leaves
/// the old value and the old charge, for every kind of write.
#[test]
fn a_write_that_fails_before_its_commit_leaves_the_old_value() {
    let (_d, cache) = cache();
    let ns = ns_of(&cache);
    let b = Bucket::new(ns.clone());
    b.set("k", b"old").unwrap();
    b.set("n", b"1").unwrap();
    let charge = ns.data_bytes().unwrap();
    let attempts: Vec<Box<dyn Fn() -> Result<()>>> = vec![
        Box::new(|| b.set("k", b"a much longer new value")),
        Box::new(|| b.delete("k")),
        Box::new(|| b.increment_u64("n", 100).map(drop)),
        Box::new(|| {
            let cas = b.cas("k")?;
            b.swap(&cas, b"swapped").map(drop)
        }),
        Box::new(|| b.clear().map(drop)),
    ];
    for (i, attempt) in attempts.iter().enumerate() {
        let _f = fault::inject(fault::Point::BeforeCommit);
        assert!(attempt().is_err(), "attempt {i}");
        assert_eq!(b.get("k").unwrap().as_deref(), Some(&b"old"[..]), "attempt {i}");
        assert_eq!(b.get("n").unwrap().as_deref(), Some(&b"1"[..]), "attempt {i}");
        assert_eq!(ns.data_bytes().unwrap(), charge, "attempt {i}");
    }
}

#[test]
fn get_many_is_bounded() {
    let (_d, cache) = cache();
    let b = bucket(&cache);
    b.set("big", &[1; 1000]).unwrap();
    let keys: Vec<String> = vec!["big".into(); 5];
    assert_eq!(b.get_many(&keys, 5000).unwrap().len(), 5);
    let err = b.get_many(&keys, 4999).unwrap_err();
    assert!(matches!(err, Error::TooMuchAtOnce { .. }), "{err:?}");
    assert_eq!(b.get_many(&["nothing".into()], 0).unwrap(), vec![None]);
}

fn write_old_record(root: &Path, key: &str, value: &[u8]) -> PathBuf {
    let hex = Key::digest(key.as_bytes()).to_string();
    let dir = root.join("cache/test/kv").join(&hex[..2]);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(&hex);
    std::fs::write(&path, encode_record(key.as_bytes(), value, 7)).unwrap();
    path
}

#[test]
fn old_records_are_imported_once_then_removed() {
    let (d, cache) = cache();
    // The namespace as an earlier version left it: records, a damaged one, a crafted one.
    let ns = ns_of(&cache);
    write_old_record(d.path(), "a", b"1");
    write_old_record(d.path(), "b/..", b"two");
    let damaged = write_old_record(d.path(), "damaged", b"x");
    let mut bytes = std::fs::read(&damaged).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(&damaged, bytes).unwrap();
    let crafted = write_old_record(d.path(), "crafted", b"y");
    let mut bytes = std::fs::read(&crafted).unwrap();
    bytes[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    bytes[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&crafted, bytes).unwrap();
    std::fs::write(d.path().join("cache/test/kv-generation"), [0u8; 16]).unwrap();
    let b = Bucket::new(ns.clone());
    assert_eq!(b.get("a").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(b.get("b/..").unwrap().as_deref(), Some(&b"two"[..]));
    assert_eq!(b.get("damaged").unwrap(), None);
    assert_eq!(b.get("crafted").unwrap(), None);
    assert!(!d.path().join("cache/test/kv").exists());
    assert!(!d.path().join("cache/test/kv-generation").exists());
    assert_eq!(ns.data_bytes().unwrap(), 1 + 1 + 4 + 3);
}

#[test]
fn an_import_interrupted_anywhere_loses_nothing_and_never_runs_twice() {
    for point in [
        fault::Point::BeforeCommit,
        fault::Point::ImportCommitted,
        fault::Point::ImportRemovedOne,
    ] {
        let (d, cache) = cache();
        let ns = ns_of(&cache);
        let files: Vec<(PathBuf, Vec<u8>)> = ["a", "b", "c"]
            .iter()
            .map(|k| {
                let p = write_old_record(d.path(), k, k.as_bytes());
                let bytes = std::fs::read(&p).unwrap();
                (p, bytes)
            })
            .collect();
        {
            let _f = fault::inject(point);
            let err = Bucket::new(ns.clone()).get("a");
            assert!(err.is_err(), "{point:?}: {err:?}");
        }
        let b = Bucket::new(ns.clone());
        for k in ["a", "b", "c"] {
            assert_eq!(b.get(k).unwrap().as_deref(), Some(k.as_bytes()), "{point:?}");
        }
        assert!(!d.path().join("cache/test/kv").exists(), "{point:?}");
        assert_eq!(ns.data_bytes().unwrap(), 6, "{point:?}");
        // Once imported, records are never imported again: a key deleted since stays deleted
        // even if its old file comes back.
        b.delete("a").unwrap();
        drop(b);
        std::fs::create_dir_all(files[0].0.parent().unwrap()).unwrap();
        std::fs::write(&files[0].0, &files[0].1).unwrap();
        let b = Bucket::new(ns.clone());
        assert_eq!(b.get("a").unwrap(), None, "{point:?}");
        assert!(!d.path().join("cache/test/kv").exists(), "{point:?}");
    }
}

/// The test binary run as a child process for one of the tests below (`--ignored --exact`):
/// it never runs in a normal run, and it fails when started without its instructions.
#[test]
#[ignore = "a child process of the cross-process tests"]
fn child_process() {
    let root = PathBuf::from(std::env::var("FILECACHE_KV_CHILD_ROOT").expect("started by a cross-process test"));
    let task = std::env::var("FILECACHE_KV_CHILD_TASK").expect("started by a cross-process test");
    let b = bucket(&FileCache::open(root.join("cache")).unwrap());
    match task.as_str() {
        "increment" => {
            // Wait for the start signal so that every process increments at once (at most a
            // minute: a test that failed before giving it leaves no process waiting for ever).
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while !root.join("go").exists() {
                assert!(std::time::Instant::now() < deadline, "no start signal after 60 s");
                std::thread::sleep(Duration::from_millis(1));
            }
            // For a fixed while rather than a fixed count, so that the processes surely overlap.
            let end = std::time::Instant::now() + Duration::from_millis(300);
            let mut seen = Vec::new();
            while std::time::Instant::now() < end {
                seen.push(b.increment_u64("counter", 1).unwrap().to_string());
            }
            std::fs::write(root.join(format!("seen-{}", std::process::id())), seen.join(",")).unwrap();
        }
        "batches" => {
            // Batch after batch, each writing one generation into every key, until killed.
            for generation in 0u64.. {
                let pairs: Vec<(String, Vec<u8>)> = (0..100)
                    .map(|i| (format!("key{i}"), format!("generation {generation}").into_bytes()))
                    .collect();
                b.set_many(&pairs).unwrap();
                std::fs::write(root.join("started"), b"").unwrap();
            }
        }
        "set" => {
            let value = std::env::var("FILECACHE_KV_CHILD_VALUE").expect("a value to set");
            b.set("shared", value.as_bytes()).unwrap();
        }
        other => panic!("unknown task {other}"),
    }
}

/// A child process of the cross-process tests, killed and reaped when dropped: a test that fails
/// while its children run leaves none running on (a writer of batches runs until killed), holding
/// the test run's stderr and the files of its temporary directory.
struct Running(std::process::Child);

impl std::ops::Deref for Running {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until the file `path` exists: fails, instead of waiting for ever, when `c` ends first
/// (it failed, or found no test to run) or after a minute.
#[cfg(unix)]
fn wait_for_file(c: &mut Running, path: &Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        if let Some(status) = c.try_wait().unwrap() {
            panic!("the child process ended ({status}) before making {}", path.display());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the child process made no {} in 60 s",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn child(root: &Path, task: &str) -> Running {
    Running(
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "tests::child_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("FILECACHE_KV_CHILD_ROOT", root)
            .env("FILECACHE_KV_CHILD_TASK", task)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// Increments from four processes at once for 300 ms: none is lost, and they really did
/// interleave (a process that saw only consecutive sums ran alone).
#[test]
fn increments_from_several_processes_are_atomic_and_interleave() {
    let (d, cache) = cache();
    bucket(&cache).set("counter", b"0").unwrap();
    let children: Vec<_> = (0..4).map(|_| child(d.path(), "increment")).collect();
    std::fs::write(d.path().join("go"), b"").unwrap();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let total: u64 = String::from_utf8(bucket(&cache).get("counter").unwrap().unwrap())
        .unwrap()
        .parse()
        .unwrap();
    let mut all = Vec::new();
    let mut interleaved = 0;
    for e in std::fs::read_dir(d.path()).unwrap() {
        let e = e.unwrap();
        if !e.file_name().to_string_lossy().starts_with("seen-") {
            continue;
        }
        let seen: Vec<u64> = std::fs::read_to_string(e.path())
            .unwrap()
            .split(',')
            .map(|s| s.parse().unwrap())
            .collect();
        assert!(!seen.is_empty());
        if seen.windows(2).any(|w| w[1] != w[0] + 1) {
            interleaved += 1;
        }
        all.extend(seen);
    }
    all.sort();
    assert_eq!(all, (1..=total).collect::<Vec<u64>>(), "every sum seen exactly once");
    // A process that saw a gap between two of its own sums saw another's increment in between.
    assert!(interleaved >= 1, "the processes did not overlap");
}

/// Increments from threads on separate handles (connections): none lost, and they contended for
/// the database's lock (some thread had to wait for another's transaction).
#[test]
fn increments_from_threads_on_separate_handles_are_atomic_and_contend() {
    let (d, _cache) = cache();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let root = d.path().to_path_buf();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                // A thread that failed here must still reach the barrier, or the others would
                // wait there for ever: its failure is raised once they are released.
                let opened = std::panic::catch_unwind(|| {
                    let b = bucket(&FileCache::open(root.join("cache")).unwrap());
                    b.get("warm up").unwrap();
                    b
                });
                barrier.wait();
                let b = opened.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                let before = crate::sqlite::BUSY_WAITS.with(|n| n.get());
                // For a fixed while rather than a fixed count, so that the threads surely overlap.
                let end = std::time::Instant::now() + Duration::from_millis(300);
                let mut seen = Vec::new();
                while std::time::Instant::now() < end {
                    seen.push(b.increment_u64("n", 1).unwrap());
                }
                (seen, crate::sqlite::BUSY_WAITS.with(|n| n.get()) - before)
            })
        })
        .collect();
    let results: Vec<(Vec<u64>, u64)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let waits: u64 = results.iter().map(|(_, w)| w).sum();
    let mut all: Vec<u64> = results.into_iter().flat_map(|(s, _)| s).collect();
    all.sort();
    let total = all.len() as u64;
    assert_eq!(all, (1..=total).collect::<Vec<u64>>());
    assert_eq!(
        bucket(&FileCache::open(d.path().join("cache")).unwrap())
            .get("n")
            .unwrap(),
        Some(total.to_string().into_bytes())
    );
    assert!(
        waits > 0,
        "no thread ever waited for another's transaction: no contention was tested"
    );
}

/// `kill -9` of a process writing batches, at a different moment each time: every key always
/// holds the same generation (each batch all old or all new).
#[cfg(unix)]
#[test]
fn a_batch_killed_at_any_point_is_all_old_or_all_new() {
    let (d, cache) = cache();
    let mut generations = std::collections::BTreeSet::new();
    let mut round = 0u64;
    // Eight rounds; more (at most 16) while every kill found the same generation committed.
    while round < 8 || (generations.len() < 2 && round < 16) {
        let _ = std::fs::remove_file(d.path().join("started"));
        let mut c = child(d.path(), "batches");
        wait_for_file(&mut c, &d.path().join("started"));
        // Let it run a varying while, so that the kills land at different points of a batch: 1
        // to 13 ms; then, where a batch takes longer than that (a loaded machine: every kill
        // landed in the second batch), twice as long each round, up to 3.3 s.
        let delay = if round < 8 {
            Duration::from_micros(1000 + round * 1700)
        } else {
            Duration::from_micros(12_900 << (round - 7))
        };
        std::thread::sleep(delay);
        c.kill().unwrap();
        c.wait().unwrap();
        let b = bucket(&cache);
        let values: Vec<Option<Vec<u8>>> = (0..100).map(|i| b.get(&format!("key{i}")).unwrap()).collect();
        let first = values[0].clone().expect("a batch committed before the kill");
        assert!(
            values.iter().all(|v| v.as_ref() == Some(&first)),
            "round {round}: a torn batch"
        );
        generations.insert(first);
        // The charge stays at least what the data holds (a kill may leave it higher).
        let usage = b.usage().unwrap();
        assert!(ns_of(&cache).data_bytes().unwrap() >= usage.bytes);
        round += 1;
    }
    assert!(
        generations.len() > 1,
        "the kills of {round} rounds all landed at the same point"
    );
}

#[test]
fn clear_removes_every_key_and_gives_the_bytes_back() {
    let (_d, cache) = cache();
    let ns = ns_of(&cache);
    let b = Bucket::new(ns.clone());
    for i in 0..10 {
        b.set(&format!("k{i}"), b"value").unwrap();
    }
    let entry = Key::digest(b"entry");
    ns.add(&entry, b"cache entry").unwrap();
    assert_eq!(b.clear().unwrap(), 10);
    assert!(b.keys().unwrap().is_empty());
    assert_eq!(ns.data_bytes().unwrap(), 0);
    // Cache entries are not the key-value crate's to clear, and the store's clear keeps data.
    assert!(ns.get(&entry).unwrap().is_some());
    b.set("kept", b"v").unwrap();
    ns.clear().unwrap();
    assert_eq!(b.get("kept").unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(ns.data_bytes().unwrap(), 5);
}

/// Found by the model test: a row of 0 bytes (the empty key with an empty value) was never
/// deleted (the delete skipped rows whose size was 0), by `delete` and `delete_many` alike.
#[test]
fn the_empty_key_with_an_empty_value_can_be_deleted() {
    let (_d, cache) = cache();
    let b = bucket(&cache);
    b.set("", b"").unwrap();
    assert!(b.exists("").unwrap());
    b.delete("").unwrap();
    assert!(!b.exists("").unwrap());
    assert!(b.keys().unwrap().is_empty());
    b.set("", b"").unwrap();
    b.delete_many(&["".into()]).unwrap();
    assert!(!b.exists("").unwrap());
    assert_eq!(b.usage().unwrap(), Usage::default());
    assert_eq!(ns_of(&cache).data_bytes().unwrap(), 0);
}

/// How many `get`s this thread answered from a read cache so far.
fn hits() -> u64 {
    crate::sqlite::read_cache_hits()
}

/// A repeated `get` is answered from the engine's read cache (no statement), and every write
/// seen by the next `get`: another connection's (another bucket on the namespace, a raw SQLite
/// connection) and each of the engine's own write paths.
#[test]
fn the_read_cache_answers_repeated_gets_and_sees_every_write() {
    let (d, cache) = cache();
    let b = bucket(&cache);
    b.set("k", b"v1").unwrap();
    assert_eq!(b.get("k").unwrap().as_deref(), Some(&b"v1"[..]));
    let before = hits();
    assert_eq!(b.get("k").unwrap().as_deref(), Some(&b"v1"[..]));
    assert!(b.exists("k").unwrap());
    assert_eq!(hits(), before + 2, "repeated gets were not answered from the cache");
    // Absence is cached too, and a later write seen.
    assert_eq!(b.get("absent").unwrap(), None);
    assert_eq!(b.get("absent").unwrap(), None);
    assert_eq!(hits(), before + 3);

    // Another engine on the namespace (its own connection).
    let other = bucket(&cache);
    other.set("k", b"v2").unwrap();
    other.set("absent", b"here").unwrap();
    let before = hits();
    assert_eq!(b.get("k").unwrap().as_deref(), Some(&b"v2"[..]));
    assert_eq!(b.get("absent").unwrap().as_deref(), Some(&b"here"[..]));
    assert_eq!(hits(), before, "a stale entry was served");
    assert_eq!(b.get("k").unwrap().as_deref(), Some(&b"v2"[..]));
    assert_eq!(hits(), before + 1);
    // A connection that is not ours at all (the `sqlite3` shell, say), with a sound row.
    let value = b"from the shell";
    raw(d.path())
        .execute(
            "UPDATE kv SET value = ?1, crc = ?2 WHERE key = ?3",
            rusqlite::params![
                &value[..],
                {
                    let mut c = filecache_store::entry::Checksum::default();
                    c.update(b"k");
                    c.update(value);
                    c.value()
                },
                &b"k"[..]
            ],
        )
        .unwrap();
    assert_eq!(b.get("k").unwrap().as_deref(), Some(&value[..]));

    // Every write path of the engine itself.
    b.get("k").unwrap();
    b.set("k", b"v3").unwrap();
    assert_eq!(b.get("k").unwrap().as_deref(), Some(&b"v3"[..]));
    b.set_many(&[("k".into(), b"v4".to_vec())]).unwrap();
    assert_eq!(b.get("k").unwrap().as_deref(), Some(&b"v4"[..]));
    let cas = b.cas("k").unwrap();
    b.swap(&cas, b"v5").unwrap().unwrap();
    assert_eq!(b.get("k").unwrap().as_deref(), Some(&b"v5"[..]));
    b.set("n", b"1").unwrap();
    assert_eq!(b.get("n").unwrap().as_deref(), Some(&b"1"[..]));
    b.increment_u64("n", 1).unwrap();
    assert_eq!(b.get("n").unwrap().as_deref(), Some(&b"2"[..]));
    b.increment_i64("n", -5).unwrap();
    assert_eq!(b.get("n").unwrap().as_deref(), Some(&b"-3"[..]));
    b.delete("n").unwrap();
    assert_eq!(b.get("n").unwrap(), None);
    b.delete_many(&["k".into()]).unwrap();
    assert_eq!(b.get("k").unwrap(), None);
    b.set("k", b"v6").unwrap();
    assert_eq!(b.get("k").unwrap().as_deref(), Some(&b"v6"[..]));
    b.clear().unwrap();
    assert_eq!(b.get("k").unwrap(), None);
    b.set("k", b"v7").unwrap();
    assert_eq!(b.get("k").unwrap().as_deref(), Some(&b"v7"[..]));
    b.verify().unwrap();
    assert_eq!(b.get("k").unwrap().as_deref(), Some(&b"v7"[..]));
}

/// A write by another process is seen by the next `get` of a value this process has cached.
#[test]
fn the_read_cache_sees_a_write_by_another_process() {
    let (d, cache) = cache();
    let b = bucket(&cache);
    b.set("shared", b"parent").unwrap();
    for round in 0..3 {
        b.get("shared").unwrap();
        let before = hits();
        let value = format!("child {round}");
        assert_ne!(b.get("shared").unwrap(), Some(value.clone().into_bytes()));
        assert_eq!(hits(), before + 1, "the value was not cached: nothing is tested");
        let mut c = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "tests::child_process", "--test-threads=1"])
            .env("FILECACHE_KV_CHILD_ROOT", d.path())
            .env("FILECACHE_KV_CHILD_TASK", "set")
            .env("FILECACHE_KV_CHILD_VALUE", &value)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        assert!(c.wait().unwrap().success());
        assert_eq!(b.get("shared").unwrap(), Some(value.into_bytes()));
    }
}

/// A value damaged after it was cached is not served: the damaging write moves the header, the
/// next `get` reads the row again, finds it damaged, removes and reports it.
#[test]
fn the_read_cache_never_serves_a_damaged_row() {
    let (d, cache) = cache();
    let b = bucket(&cache);
    b.set("bad", b"original value").unwrap();
    b.get("bad").unwrap();
    let before = hits();
    assert_eq!(b.get("bad").unwrap().as_deref(), Some(&b"original value"[..]));
    assert_eq!(hits(), before + 1, "the value was not cached: nothing is tested");
    damage_bad_and_read(d.path(), &b);
    // Found damaged, so not cached: removed, and the next reads miss.
    assert_eq!(b.get("bad").unwrap(), None);
    assert_eq!(b.get("bad").unwrap(), None);
    // A damaged row found by a first read is not cached either.
    b.set("bad2", b"value").unwrap();
    raw(d.path())
        .execute("UPDATE kv SET value = X'00' WHERE key = ?1", [&b"bad2"[..]])
        .unwrap();
    assert!(b.get("bad2").is_err());
    assert_eq!(b.get("bad2").unwrap(), None);
}

/// The read cache holds at most `CACHE_BYTES` whatever is read, and never a value over
/// `MAX_CACHED_VALUE`.
#[test]
fn the_read_cache_is_bounded() {
    use crate::sqlite::{CACHE_BYTES, MAX_CACHED_VALUE};
    let (_d, cache) = cache();
    let engine = SqliteEngine::new(ns_of(&cache));
    let value = vec![5u8; 16 << 10];
    let n = 2 * CACHE_BYTES / value.len();
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let pairs: Vec<(String, Vec<u8>)> = chunk.iter().map(|i| (format!("k{i}"), value.clone())).collect();
        engine.set_many(&pairs).unwrap();
    }
    for round in 0..2 {
        for i in 0..n {
            assert_eq!(engine.get(&format!("k{i}")).unwrap().as_deref(), Some(&value[..]));
            let (bytes, entries) = engine.read_cache_usage();
            assert!(bytes <= CACHE_BYTES, "round {round}: {bytes} bytes cached");
            assert!(entries < n);
        }
    }
    let (bytes, _) = engine.read_cache_usage();
    assert!(
        bytes > CACHE_BYTES / 2,
        "only {bytes} bytes cached: the bound is not what is tested"
    );
    let big = vec![1u8; MAX_CACHED_VALUE + 1];
    engine.set("big", &big).unwrap();
    engine.get("big").unwrap();
    let before = hits();
    assert_eq!(engine.get("big").unwrap().map(|v| v.len()), Some(big.len()));
    assert_eq!(hits(), before, "a value over the limit was cached");
}

/// A batch over several sizing statements (more keys than one sizes), half of them replacing
/// rows of other sizes, a key given twice: charged exactly what it changes; every row of the
/// batch gets a version of its own (one draw per batch, consecutive versions).
#[test]
fn a_large_batch_charges_exactly_what_it_changes_and_versions_each_row() {
    let (_d, cache) = cache();
    let ns = ns_of(&cache);
    let b = Bucket::new(ns.clone());
    let n = 150;
    // The even keys exist already, with 3-byte values.
    for i in (0..n).step_by(2) {
        b.set(&format!("key{i:03}"), b"old").unwrap();
    }
    let mut pairs: Vec<(String, Vec<u8>)> = (0..n).map(|i| (format!("key{i:03}"), vec![b'v'; i % 7])).collect();
    pairs.push(("key000".into(), b"last".to_vec()));
    b.set_many(&pairs).unwrap();
    let expected: u64 = (0..n).map(|i| 6 + if i == 0 { 4 } else { (i % 7) as u64 }).sum();
    assert_eq!(ns.data_bytes().unwrap(), expected);
    assert_eq!(b.usage().unwrap().bytes, expected);
    assert_eq!(b.get("key000").unwrap().as_deref(), Some(&b"last"[..]));
    let versions: std::collections::HashSet<_> = (0..n)
        .map(|i| b.cas(&format!("key{i:03}")).unwrap().version().unwrap())
        .collect();
    assert_eq!(versions.len(), n, "two rows of one batch share a version");
}
