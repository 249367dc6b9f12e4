//! Tests of key-value buckets against real files in temporary directories.

use std::path::{Path, PathBuf};

use super::*;
use crate::{FileCache, NamespaceOptions};

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

fn record_path(root: &Path, key: &str) -> PathBuf {
    let hex = Key::digest(key.as_bytes()).to_string();
    root.join("cache/test/kv").join(&hex[..2]).join(hex)
}

/// Every file under `dir`, relative.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                // With `/` between components on every platform (Windows lists `\`).
                out.push(e.path().strip_prefix(dir).unwrap().to_string_lossy().replace('\\', "/"));
            }
        }
    }
    out.sort();
    out
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
        "state".into(),
        "tmp".into(),
        " ".into(),
    ]
}

#[test]
fn odd_keys_round_trip_and_never_name_a_file() {
    let (d, cache) = cache();
    let b = bucket(&cache);
    let keys = odd_keys();
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(b.get(k).unwrap(), None);
        assert!(!b.exists(k).unwrap());
        b.set(k, format!("value {i}").as_bytes()).unwrap();
    }
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(b.get(k).unwrap(), Some(format!("value {i}").into_bytes()), "{k:?}");
        assert!(b.exists(k).unwrap());
    }
    let mut listed = b.keys().unwrap();
    listed.sort();
    let mut expected = keys.clone();
    expected.sort();
    assert_eq!(listed, expected);
    // Only digests name files: the namespace holds its state, counters, kv-generation, tmp/
    // and kv/xx/<hex>.
    for f in files(&d.path().join("cache/test")) {
        let ok = f == "state"
            || f == "kv-generation"
            || f.strip_prefix("kv/").is_some_and(|rest| {
                let (shard, name) = rest.split_once('/').unwrap();
                Key::from_hex(name).is_some() && name.starts_with(shard)
            });
        assert!(ok, "unexpected file {f:?}");
    }
    assert!(!d.path().join("cache/etc").exists());
    for k in &keys {
        b.delete(k).unwrap();
        assert_eq!(b.get(k).unwrap(), None);
    }
    assert!(b.keys().unwrap().is_empty());
    // Deleting a key with no value is fine.
    b.delete("never set").unwrap();
}

#[test]
fn values_persist_across_reopen_and_replace_atomically() {
    let (d, cache) = cache();
    bucket(&cache).set("k", b"one").unwrap();
    drop(cache);
    let cache = FileCache::open(d.path().join("cache")).unwrap();
    let b = bucket(&cache);
    assert_eq!(b.get("k").unwrap().as_deref(), Some(&b"one"[..]));
    b.set("k", b"two, longer").unwrap();
    assert_eq!(b.get("k").unwrap().as_deref(), Some(&b"two, longer"[..]));
    b.set("k", b"").unwrap();
    assert_eq!(b.get("k").unwrap().as_deref(), Some(&b""[..]));
    assert!(b.exists("k").unwrap());
}

#[test]
fn list_keys_pages_2500_keys_exactly_once_with_cursors_valid_across_handles() {
    let (d, cache) = cache();
    let b = bucket(&cache);
    let mut expected: Vec<String> = (0..2500).map(|i| format!("key-{i}")).collect();
    for k in &expected {
        b.set(k, k.as_bytes()).unwrap();
    }
    drop((b, cache));
    let mut got = Vec::new();
    let mut from = 0;
    let mut pages = 0;
    let mut last_digest = None;
    loop {
        // A new handle (as a new run would have) for every page.
        let cache = FileCache::open(d.path().join("cache")).unwrap();
        let page = bucket(&cache).list_keys(from, 1000).unwrap();
        assert!(page.keys.len() <= 1000);
        for k in &page.keys {
            let digest = Key::digest(k.as_bytes());
            assert!(Some(digest) > last_digest, "not in digest order");
            last_digest = Some(digest);
        }
        got.extend(page.keys);
        pages += 1;
        match page.next {
            Some(n) => from = n,
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(got.len(), 2500);
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
    // Small pages too, and a limit of 0 means the largest page.
    let cache = FileCache::open(d.path().join("cache")).unwrap();
    let b = bucket(&cache);
    let first = b.list_keys(0, 7).unwrap();
    assert_eq!(first.keys.len(), 7);
    let second = b.list_keys(first.next.unwrap(), 7).unwrap();
    assert!(second.keys.iter().all(|k| !first.keys.contains(k)));
    assert_eq!(b.list_keys(0, 0).unwrap().keys.len(), MAX_PAGE);
    assert_eq!(b.list_keys(0, 5000).unwrap().keys.len(), MAX_PAGE);
}

#[test]
fn increment_stores_decimal_ascii_and_fails_cleanly() {
    let (_d, cache) = cache();
    let b = bucket(&cache);
    assert_eq!(b.increment_u64("n", 5).unwrap(), 5);
    assert_eq!(b.increment_u64("n", 1).unwrap(), 6);
    assert_eq!(b.get("n").unwrap().as_deref(), Some(&b"6"[..]));
    b.set("preset", b"41").unwrap();
    assert_eq!(b.increment_u64("preset", 1).unwrap(), 42);
    assert_eq!(b.increment_i64("s", -3).unwrap(), -3);
    assert_eq!(b.get("s").unwrap().as_deref(), Some(&b"-3"[..]));
    assert!(matches!(b.increment_u64("s", 1), Err(Error::NotANumber { .. })));
    for bad in [&b"abc"[..], b"", b" 1", b"1.5", b"\xff", b"0x10"] {
        b.set("bad", bad).unwrap();
        assert!(
            matches!(b.increment_u64("bad", 1), Err(Error::NotANumber { .. })),
            "{bad:?}"
        );
        assert_eq!(
            b.get("bad").unwrap().as_deref(),
            Some(bad),
            "a failed increment changed the value"
        );
    }
    b.set("big", u64::MAX.to_string().as_bytes()).unwrap();
    let e = b.increment_u64("big", 1).unwrap_err();
    assert!(matches!(e, Error::Overflow { .. }), "{e}");
    assert_eq!(b.increment_u64("big", 0).unwrap(), u64::MAX);
    b.set("too big", b"99999999999999999999999").unwrap();
    assert!(matches!(b.increment_u64("too big", 1), Err(Error::NotANumber { .. })));
    b.set("min", i64::MIN.to_string().as_bytes()).unwrap();
    assert!(matches!(b.increment_i64("min", -1), Err(Error::Overflow { .. })));
}

#[test]
fn increments_from_separate_handles_add_up_exactly() {
    let (d, _cache) = cache();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let root = d.path().join("cache");
            std::thread::spawn(move || {
                // Each thread has its own cache handle: its own lock file description, as a
                // separate process would.
                let cache = FileCache::open(root).unwrap();
                let b = bucket(&cache);
                for _ in 0..250 {
                    b.increment_u64("counter", 1).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let cache = FileCache::open(d.path().join("cache")).unwrap();
    assert_eq!(bucket(&cache).get("counter").unwrap().as_deref(), Some(&b"1000"[..]));
}

#[test]
fn swap_fails_after_any_write_since_the_read_and_retries_succeed() {
    let (_d, cache) = cache();
    let b = bucket(&cache);
    let cas = b.cas("k").unwrap();
    assert_eq!(cas.current(), None);
    b.swap(&cas, b"first").unwrap().unwrap();
    // The same read again: the key has changed since.
    let fresh = b.swap(&cas, b"stale").unwrap().unwrap_err();
    assert_eq!(fresh.current(), Some(&b"first"[..]));
    assert_eq!(b.get("k").unwrap().as_deref(), Some(&b"first"[..]));
    // A write of the same bytes is a write too.
    let cas = b.cas("k").unwrap();
    b.set("k", b"first").unwrap();
    assert!(b.swap(&cas, b"x").unwrap().is_err());
    // A delete too.
    let cas = b.cas("k").unwrap();
    b.delete("k").unwrap();
    let fresh = b.swap(&cas, b"x").unwrap().unwrap_err();
    assert_eq!(fresh.current(), None);
    b.swap(&fresh, b"back").unwrap().unwrap();
    assert_eq!(b.get("k").unwrap().as_deref(), Some(&b"back"[..]));
}

#[test]
fn cas_loops_from_separate_handles_are_exact() {
    let (d, _cache) = cache();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let root = d.path().join("cache");
            std::thread::spawn(move || {
                let cache = FileCache::open(root).unwrap();
                let b = bucket(&cache);
                let mut retries = 0;
                for _ in 0..100 {
                    let mut cas = b.cas("n").unwrap();
                    loop {
                        let n: u64 = cas
                            .current()
                            .map(|v| std::str::from_utf8(v).unwrap().parse().unwrap())
                            .unwrap_or(0);
                        match b.swap(&cas, (n + 1).to_string().as_bytes()).unwrap() {
                            Ok(()) => break,
                            Err(fresh) => {
                                retries += 1;
                                cas = fresh;
                            }
                        }
                    }
                }
                retries
            })
        })
        .collect();
    let retries: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let cache = FileCache::open(d.path().join("cache")).unwrap();
    assert_eq!(
        bucket(&cache).get("n").unwrap().as_deref(),
        Some(&b"400"[..]),
        "{retries} retries"
    );
}

#[test]
fn records_count_against_the_quota_evict_cache_entries_and_are_never_evicted() {
    let (_d, cache) = cache();
    // Cache entries are charged their files rounded up to 4 KiB: 4,096 for 2,000 bytes.
    let options = NamespaceOptions {
        quota: 17_000,
        max_entry_size: 12_000,
        ..NamespaceOptions::default()
    };
    let b = bucket_with(&cache, options);
    let ns = b.namespace().clone();
    // Key "a" (1 byte) + 3,999 bytes = 4,000 bytes charged.
    b.set("a", &[1; 3999]).unwrap();
    let keys: Vec<Key> = (0..3u8).map(|i| Key::digest([i])).collect();
    for k in &keys {
        ns.add(k, &[7; 2000]).unwrap();
    }
    let stats = cache.stats().unwrap();
    assert_eq!(
        (stats[0].kv_keys, stats[0].kv_bytes, stats[0].bytes),
        (1, 4000, 3 * 4096)
    );
    // Cache entries make room for records (the oldest first)...
    b.set("b", &[2; 5999]).unwrap();
    assert!(ns.get(&keys[0]).unwrap().is_none() && ns.get(&keys[1]).unwrap().is_none());
    assert!(ns.get(&keys[2]).unwrap().is_some());
    // ...and records are never evicted to make room for cache entries.
    ns.add(&Key::digest(b"new"), &[9; 2000]).unwrap();
    assert!(ns.get(&keys[2]).unwrap().is_none());
    assert_eq!(b.get("a").unwrap().map(|v| v.len()), Some(3999));
    let e = ns.add(&Key::digest(b"too much"), &[9; 6000]).unwrap_err();
    assert!(matches!(e, crate::Error::QuotaExceeded { .. }), "{e}");
    // A record that cannot fit even after evicting every cache entry: refused, nothing stored.
    let e = b.set("c", &[3; 7000]).unwrap_err();
    assert!(matches!(e, Error::Store(crate::Error::QuotaExceeded { .. })), "{e}");
    assert_eq!(b.get("c").unwrap(), None);
    // Over the entry size limit: refused before anything is written.
    let e = b.set("d", &[4; 12_001]).unwrap_err();
    assert!(
        matches!(e, Error::Store(crate::Error::TooLarge { limit: 12_000 })),
        "{e}"
    );
    // Replacing a record counts only the difference.
    b.set("a", &[5; 5000]).unwrap();
    assert_eq!(b.keys().unwrap().len(), 2);
    let stats = cache.stats().unwrap();
    assert_eq!((stats[0].kv_keys, stats[0].kv_bytes, stats[0].entries), (2, 11_001, 0));
    // gc counts records but never removes them.
    let report = cache.gc(0, &mut |_| {}).unwrap();
    assert_eq!(report.removed_entries, 0);
    assert_eq!(report.remaining_bytes, 11_001);
    assert_eq!(b.keys().unwrap().len(), 2);
    // A key too long for the limit.
    let long = "k".repeat(MAX_KEY_LEN + 1);
    assert!(matches!(b.set(&long, b""), Err(Error::KeyTooLong { .. })));
    assert!(matches!(b.get(&long), Err(Error::KeyTooLong { .. })));
    // Deleting gives the bytes back.
    b.delete("a").unwrap();
    b.set("c", &[3; 2100]).unwrap();
}

#[test]
fn the_usage_counter_includes_records_after_a_rescan() {
    let (d, cache) = cache();
    let options = NamespaceOptions {
        quota: 8_000,
        ..NamespaceOptions::default()
    };
    let b = bucket_with(&cache, options);
    b.set("a", &[1; 2999]).unwrap();
    // Lose the counter: the next write rescans, and must count the record.
    std::fs::write(d.path().join("cache/test/state"), b"").unwrap();
    let e = b.set("b", &[2; 5499]).unwrap_err();
    assert!(matches!(e, Error::Store(crate::Error::QuotaExceeded { .. })), "{e}");
    // An entry is charged its file, rounded up to 4 KiB: one fits beside the record, two do not.
    b.namespace().add(&Key::digest(b"x"), &[0; 1000]).unwrap();
    let e = b.namespace().add(&Key::digest(b"y"), &[0; 4033]).unwrap_err();
    assert!(matches!(e, crate::Error::QuotaExceeded { .. }), "{e}");
}

#[test]
fn damaged_records_are_removed_and_reported_never_served() {
    let (d, cache) = cache();
    let b = bucket(&cache);
    let value = b"a value of some length".to_vec();
    let len = std::fs::metadata({
        b.set("k", &value).unwrap();
        record_path(d.path(), "k")
    })
    .unwrap()
    .len() as usize;
    for i in (0..len).step_by(3) {
        b.set("k", &value).unwrap();
        let path = record_path(d.path(), "k");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[i] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let e = b.get("k").unwrap_err();
        assert!(matches!(e, Error::Store(crate::Error::Corrupt { .. })), "byte {i}: {e}");
        assert!(!path.exists(), "byte {i}: not removed");
        assert_eq!(b.get("k").unwrap(), None);
    }
    // Truncated.
    b.set("k", &value).unwrap();
    let path = record_path(d.path(), "k");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
    assert!(b.exists("k").is_err());
    assert!(!b.exists("k").unwrap());
    // A record moved under another key's name.
    b.set("one", b"1").unwrap();
    b.set("two", b"2").unwrap();
    std::fs::rename(record_path(d.path(), "one"), record_path(d.path(), "two")).unwrap();
    assert!(b.get("two").is_err());
    assert_eq!(b.get("one").unwrap(), None);
    // A damaged record is left out of listings (and removed); verify finds and removes it.
    b.set("x", b"x").unwrap();
    b.set("y", b"y").unwrap();
    std::fs::write(record_path(d.path(), "y"), b"garbage").unwrap();
    assert_eq!(b.keys().unwrap(), vec!["x".to_string()]);
    b.set("y", b"y").unwrap();
    std::fs::write(record_path(d.path(), "y"), b"garbage").unwrap();
    let report = cache.verify(&mut |_| {}).unwrap();
    assert_eq!((report.checked, report.ok, report.removed), (2, 1, 1));
    assert!(report.damaged[0].key.starts_with("kv/"));
    // Symlinks are never followed (planting one needs privileges on Windows).
    #[cfg(unix)]
    {
        let outside = d.path().join("outside");
        std::fs::write(&outside, b"secret").unwrap();
        std::os::unix::fs::symlink(&outside, record_path(d.path(), "x")).unwrap_or_else(|_| {
            std::fs::remove_file(record_path(d.path(), "x")).unwrap();
            std::os::unix::fs::symlink(&outside, record_path(d.path(), "x")).unwrap();
        });
        assert_eq!(b.get("x").unwrap(), None);
        assert_eq!(std::fs::read(&outside).unwrap(), b"secret");
    }
}

#[test]
fn read_only_refuses_writes_and_reads_what_is_there() {
    let (_d, cache) = cache();
    bucket(&cache).set("k", b"v").unwrap();
    let ro = bucket_with(
        &cache,
        NamespaceOptions {
            read_only: true,
            ..NamespaceOptions::default()
        },
    );
    assert_eq!(ro.get("k").unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(ro.keys().unwrap(), vec!["k".to_string()]);
    for e in [
        ro.set("k", b"w").unwrap_err(),
        ro.delete("k").unwrap_err(),
        ro.increment_u64("n", 1).unwrap_err(),
        ro.swap(&ro.cas("k").unwrap(), b"w").unwrap_err(),
    ] {
        assert!(matches!(e, Error::Store(crate::Error::ReadOnly)), "{e}");
    }
    assert_eq!(ro.get("k").unwrap().as_deref(), Some(&b"v"[..]));
    // A read-only bucket of a namespace that does not exist: empty, and nothing is created.
    let none = Bucket::new(
        cache
            .namespace(
                "absent",
                NamespaceOptions {
                    read_only: true,
                    ..NamespaceOptions::default()
                },
            )
            .unwrap(),
    );
    assert_eq!(none.get("k").unwrap(), None);
    assert!(none.keys().unwrap().is_empty());
    assert!(cache.namespace_names().unwrap().iter().all(|n| n != "absent"));
}

#[test]
fn clear_removes_records_and_leftover_temporary_files_are_reclaimed() {
    let (d, cache) = cache();
    let b = bucket(&cache);
    b.set("a", b"1").unwrap();
    b.namespace().add(&Key::digest(b"e"), b"entry").unwrap();
    // A dead writer's temporary file (no one holds its lock) is not a record.
    std::fs::write(d.path().join("cache/test/tmp/kv.1.0000000000000000.tmp"), b"half").unwrap();
    assert_eq!(b.keys().unwrap(), vec!["a".to_string()]);
    drop(b);
    let b = bucket(&cache);
    assert_eq!(std::fs::read_dir(d.path().join("cache/test/tmp")).unwrap().count(), 0);
    assert_eq!(cache.clear(Some("test")).unwrap(), 2);
    assert!(b.keys().unwrap().is_empty());
    let stats = cache.stats().unwrap();
    assert_eq!((stats[0].kv_keys, stats[0].kv_bytes, stats[0].entries), (0, 0, 0));
}

#[test]
fn a_record_over_the_readers_limit_is_refused_not_removed_and_not_allocated() {
    let (d, cache) = cache();
    bucket(&cache).set("big", &[1; 20_000]).unwrap();
    let small = bucket_with(
        &cache,
        NamespaceOptions {
            max_entry_size: 1000,
            ..NamespaceOptions::default()
        },
    );
    let e = small.get("big").unwrap_err();
    assert!(matches!(e, Error::Store(crate::Error::TooLarge { limit: 1000 })), "{e}");
    assert_eq!(bucket(&cache).get("big").unwrap().map(|v| v.len()), Some(20_000));
    // A planted sparse file of 100 GiB under a record's name: refused without reading it.
    let path = record_path(d.path(), "sparse");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::File::create(&path).unwrap().set_len(100 << 30).unwrap();
    let e = bucket(&cache).get("sparse").unwrap_err();
    assert!(matches!(e, Error::Store(crate::Error::TooLarge { .. })), "{e}");
}

fn generation_path(root: &Path) -> PathBuf {
    root.join("cache/test/kv-generation")
}

/// Two handles on one directory (each its own namespace handle, lock file description and read
/// cache, as two processes would have).
fn two_buckets(d: &tempfile::TempDir) -> (FileCache, Bucket, FileCache, Bucket) {
    let a = FileCache::open(d.path().join("cache")).unwrap();
    let b = FileCache::open(d.path().join("cache")).unwrap();
    let (ba, bb) = (bucket(&a), bucket(&b));
    (a, ba, b, bb)
}

#[test]
fn a_cached_value_never_outlives_a_change_by_another_handle() {
    let d = tempfile::tempdir().unwrap();
    let (_a, a, _b, b) = two_buckets(&d);
    b.set("k", b"1").unwrap();
    assert_eq!(a.get("k").unwrap().as_deref(), Some(&b"1"[..]));
    assert!(a.cache_bytes() > 0, "the value is cached");
    assert_eq!(a.get("k").unwrap().as_deref(), Some(&b"1"[..]));
    // Set.
    b.set("k", b"2").unwrap();
    assert_eq!(a.get("k").unwrap().as_deref(), Some(&b"2"[..]));
    assert!(a.exists("k").unwrap());
    // Delete.
    b.delete("k").unwrap();
    assert_eq!(a.get("k").unwrap(), None);
    assert!(!a.exists("k").unwrap());
    // A missing key is cached too, and a set by the other handle ends that as well.
    assert_eq!(a.get("k").unwrap(), None);
    assert_eq!(b.increment_u64("k", 5).unwrap(), 5);
    assert_eq!(a.get("k").unwrap().as_deref(), Some(&b"5"[..]));
    assert_eq!(b.increment_i64("k", -2).unwrap(), 3);
    assert_eq!(a.get("k").unwrap().as_deref(), Some(&b"3"[..]));
    // Swap.
    let cas = b.cas("k").unwrap();
    b.swap(&cas, b"swapped").unwrap().unwrap();
    assert_eq!(a.get("k").unwrap().as_deref(), Some(&b"swapped"[..]));
    // Clear.
    b.namespace().clear().unwrap();
    assert_eq!(a.get("k").unwrap(), None);
    // And the other way round, with a value cached on both sides.
    a.set("k", b"x").unwrap();
    assert_eq!(b.get("k").unwrap().as_deref(), Some(&b"x"[..]));
    assert_eq!(a.get("k").unwrap().as_deref(), Some(&b"x"[..]));
    a.set("k", b"y").unwrap();
    assert_eq!(b.get("k").unwrap().as_deref(), Some(&b"y"[..]));
    // A handle's own change leaves the rest of its cache in place, but never the key changed.
    a.set("other", b"o").unwrap();
    assert_eq!(a.get("k").unwrap().as_deref(), Some(&b"y"[..]));
    a.set("k", b"z").unwrap();
    assert_eq!(a.get("k").unwrap().as_deref(), Some(&b"z"[..]));
    a.delete("k").unwrap();
    assert_eq!(a.get("k").unwrap(), None);
}

#[test]
fn damage_behind_the_stores_back_is_found_at_the_next_read_from_disk() {
    let d = tempfile::tempdir().unwrap();
    let (_a, a, _b, b) = two_buckets(&d);
    b.set("k", b"a value").unwrap();
    assert_eq!(a.get("k").unwrap().as_deref(), Some(&b"a value"[..]));
    let path = record_path(d.path(), "k");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    // Documented: what was read (and checked) before the damage is served from memory...
    assert_eq!(a.get("k").unwrap().as_deref(), Some(&b"a value"[..]));
    // ...by the handle that read it; another reads the disk, finds the damage and removes it.
    assert!(matches!(b.get("k"), Err(Error::Store(crate::Error::Corrupt { .. }))));
    assert!(!path.exists());
    // That removal is a change of the bucket: the first handle sees it.
    assert_eq!(a.get("k").unwrap(), None);

    // Damage again, and a change of another key through the store: the first handle reads the
    // disk again, finds the damage, reports it and removes the record.
    b.set("k", b"a value").unwrap();
    assert_eq!(a.get("k").unwrap().as_deref(), Some(&b"a value"[..]));
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(a.get("k").unwrap().as_deref(), Some(&b"a value"[..]));
    b.set("another", b"x").unwrap();
    assert!(matches!(a.get("k"), Err(Error::Store(crate::Error::Corrupt { .. }))));
    assert!(!path.exists());
    assert_eq!(a.get("k").unwrap(), None);
    assert_eq!(b.get("k").unwrap(), None);
}

#[test]
fn a_damaged_record_met_by_increment_or_swap_is_removed_under_the_lock_held() {
    let (d, cache) = cache();
    let b = bucket(&cache);
    for op in ["increment", "swap"] {
        b.set("n", b"41").unwrap();
        let cas = b.cas("n").unwrap();
        std::fs::write(record_path(d.path(), "n"), b"garbage").unwrap();
        // (The removal takes the lock the operation already holds: it must not wait for it.)
        let e = match op {
            "increment" => b.increment_u64("n", 1).unwrap_err(),
            _ => b.swap(&cas, b"42").unwrap_err(),
        };
        assert!(matches!(e, Error::Store(crate::Error::Corrupt { .. })), "{op}: {e}");
        assert!(!record_path(d.path(), "n").exists(), "{op}");
        assert_eq!(b.increment_u64("n", 1).unwrap(), 1, "{op}");
        b.delete("n").unwrap();
    }
}

#[test]
fn a_torn_damaged_or_missing_generation_means_reads_from_disk() {
    let d = tempfile::tempdir().unwrap();
    let (_a, _, _b, b) = two_buckets(&d);
    // The reader is read-only: it never writes a generation itself (a writable handle gives a
    // damaged file a fresh one, once), so each case below meets the generation as written here.
    let ro = FileCache::open(d.path().join("cache")).unwrap();
    let a = bucket_with(
        &ro,
        NamespaceOptions {
            read_only: true,
            ..NamespaceOptions::default()
        },
    );
    b.set("k", b"old").unwrap();
    assert_eq!(a.get("k").unwrap().as_deref(), Some(&b"old"[..]));
    let cached_at = std::fs::read(generation_path(d.path())).unwrap();
    assert_eq!(cached_at.len(), 16);
    b.set("k", b"new").unwrap();
    let now = std::fs::read(generation_path(d.path())).unwrap();
    assert_ne!(now, cached_at);
    // The control: a generation set back by hand to the one the value was cached at makes the
    // handle serve what it cached (so what follows does test the check of the generation).
    std::fs::write(generation_path(d.path()), &cached_at).unwrap();
    assert_eq!(a.get("k").unwrap().as_deref(), Some(&b"old"[..]));
    // Torn (the first half from the generation the value was cached at), damaged, odd (a
    // change under way), short, empty, missing: the record is read from disk.
    let mut torn = cached_at.clone();
    torn[8..].copy_from_slice(&now[8..]);
    let mut flipped = cached_at.clone();
    flipped[15] ^= 0x80;
    let g = u64::from_le_bytes(cached_at[..8].try_into().unwrap());
    let mut odd = Vec::new();
    odd.extend_from_slice(&(g | 1).to_le_bytes());
    odd.extend_from_slice(&(!(g | 1)).to_le_bytes());
    for (what, bytes) in [
        ("torn", torn),
        ("flipped", flipped),
        ("odd", odd),
        ("short", cached_at[..15].to_vec()),
        ("empty", Vec::new()),
        ("zeros", vec![0; 16]),
    ] {
        std::fs::write(generation_path(d.path()), &bytes).unwrap();
        assert_eq!(a.get("k").unwrap().as_deref(), Some(&b"new"[..]), "{what}");
        assert!(a.exists("k").unwrap(), "{what}");
        // Nothing read then is served later as if read at the generation it was cached at.
        std::fs::write(generation_path(d.path()), &cached_at).unwrap();
        assert_eq!(a.get("k").unwrap().as_deref(), Some(&b"old"[..]), "{what}: the control");
    }
    // A change through the store after damage writes a fresh generation: caching resumes.
    std::fs::write(generation_path(d.path()), b"garbage").unwrap();
    b.set("k", b"newer").unwrap();
    assert_eq!(a.get("k").unwrap().as_deref(), Some(&b"newer"[..]));
    let fresh = std::fs::read(generation_path(d.path())).unwrap();
    assert_eq!(fresh.len(), 16);
    assert_ne!(fresh, cached_at);
    b.set("k", b"newest").unwrap();
    assert_eq!(a.get("k").unwrap().as_deref(), Some(&b"newest"[..]));
    // The file removed: a handle that already had it open keeps reading its (stale) copy, so
    // this is unsupported like removing `state`; a handle opened afterwards reads from disk
    // until a change through the store writes a generation again. (Not on Windows, where a file
    // removed while open stays, delete-pending, until its last handle closes.)
    if cfg!(windows) {
        return;
    }
    std::fs::remove_file(generation_path(d.path())).unwrap();
    let c = FileCache::open(d.path().join("cache")).unwrap();
    let ro = bucket_with(
        &c,
        NamespaceOptions {
            read_only: true,
            ..NamespaceOptions::default()
        },
    );
    assert_eq!(ro.get("k").unwrap().as_deref(), Some(&b"newest"[..]));
    assert_eq!(ro.cache_bytes(), 0, "no generation, nothing cached");
}

#[test]
fn a_writable_handle_fixes_a_generation_left_odd_by_a_dead_writer_once() {
    let d = tempfile::tempdir().unwrap();
    let (_a, _, _b, b) = two_buckets(&d);
    b.set("k", b"v").unwrap();
    let g = u64::from_le_bytes(
        std::fs::read(generation_path(d.path())).unwrap()[..8]
            .try_into()
            .unwrap(),
    );
    let odd = g.wrapping_add(1);
    let mut bytes = odd.to_le_bytes().to_vec();
    bytes.extend_from_slice(&(!odd).to_le_bytes());
    std::fs::write(generation_path(d.path()), &bytes).unwrap();
    let c = FileCache::open(d.path().join("cache")).unwrap();
    let fresh = bucket(&c);
    assert_eq!(fresh.get("k").unwrap().as_deref(), Some(&b"v"[..]));
    assert!(fresh.cache_bytes() > 0, "cached once the generation was fixed");
    let now = u64::from_le_bytes(
        std::fs::read(generation_path(d.path())).unwrap()[..8]
            .try_into()
            .unwrap(),
    );
    assert_eq!(now, odd + 1);
    // And a read from within `update` (the lock held by this very thread) never waits for it.
    std::fs::write(generation_path(d.path()), b"damaged").unwrap();
    let d2 = FileCache::open(d.path().join("cache")).unwrap();
    let other = bucket(&d2);
    let seen = other
        .update("n", |_| Ok((b"1".to_vec(), other.get("k").unwrap())))
        .unwrap();
    assert_eq!(seen.as_deref(), Some(&b"v"[..]));
}

/// Flips the last byte of the record for `key` (its value's) and returns the record's path.
fn damage_record(root: &Path, key: &str) -> PathBuf {
    let path = record_path(root, key);
    let mut bytes = std::fs::read(&path).unwrap();
    *bytes.last_mut().unwrap() ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    path
}

/// After an update that saw the damaged record at `path` (key "damaged") without removing it:
/// the next read still reports it, never serves it, and removes it; the one after is a miss.
fn reported_then_removed_by_the_next_read(b: &Bucket, path: &Path) {
    assert!(b.get("damaged").is_err(), "still reported, never served");
    assert!(!path.exists(), "removed by the next read outside the lock");
    assert_eq!(b.get("damaged").unwrap(), None);
}

/// A damaged record read from within `update` on the same handle (whose lock this thread then
/// holds) is reported at once, not removed by waiting for that lock (which never comes: the
/// mutex is not reentrant); the next read outside removes it.
#[test]
fn a_damaged_record_read_within_update_is_reported_without_waiting_for_the_lock_held() {
    let (d, cache) = cache();
    let b = bucket(&cache);
    b.set("damaged", b"value").unwrap();
    let path = damage_record(d.path(), "damaged");
    let (tx, rx) = std::sync::mpsc::channel();
    let b2 = b.clone();
    std::thread::spawn(move || {
        let seen = b2.update("n", |_| Ok((b"1".to_vec(), b2.get("damaged"))));
        tx.send(seen.map(|r| r.map_err(|e| e.to_string()))).unwrap();
    });
    let seen = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("a read within update never waits for the lock its own thread holds");
    let inner = seen.expect("the update itself succeeds");
    assert!(inner.unwrap_err().contains("corrupt"), "reported as damaged");
    assert_eq!(b.get("n").unwrap().as_deref(), Some(&b"1"[..]));
    assert!(path.exists(), "left in place while the lock was held");
    reported_then_removed_by_the_next_read(&b, &path);
}

/// The same through another handle of this process: its in-process lock is free, but the
/// `flock` is held by the first handle, on this very thread. The removal waits a moment
/// (`LOCK_TRY_WAIT`), not the long `LOCK_WAIT` meant for another process's work, and the
/// damage is reported; a read after the update removes the record.
#[test]
fn a_damaged_record_read_through_another_handle_within_update_is_reported_promptly() {
    let (d, cache) = cache();
    let a = bucket(&cache);
    let other = FileCache::open(d.path().join("cache")).unwrap();
    let b = bucket(&other);
    b.set("damaged", b"value").unwrap();
    let path = damage_record(d.path(), "damaged");
    let started = std::time::Instant::now();
    let seen = a
        .update("n", |_| {
            Ok((b"1".to_vec(), b.get("damaged").map_err(|e| e.to_string())))
        })
        .unwrap();
    let took = started.elapsed();
    assert!(seen.unwrap_err().contains("corrupt"), "reported as damaged");
    assert!(
        took < crate::namespace::LOCK_WAIT / 2,
        "took {took:?}: waited for a lock held by this very thread"
    );
    reported_then_removed_by_the_next_read(&b, &path);
}

#[test]
fn the_read_cache_stays_within_its_bound() {
    use crate::namespace::kv::{KV_CACHE_BYTES, KV_CACHE_MAX_VALUE};
    let (_d, cache) = cache();
    let b = bucket_with(
        &cache,
        NamespaceOptions {
            quota: 64 << 20,
            ..NamespaceOptions::default()
        },
    );
    let value = vec![7u8; KV_CACHE_MAX_VALUE];
    let n = 2 * KV_CACHE_BYTES / KV_CACHE_MAX_VALUE;
    for i in 0..n {
        b.set(&format!("big-{i}"), &value).unwrap();
    }
    let mut most = 0;
    for i in 0..n {
        assert_eq!(b.get(&format!("big-{i}")).unwrap().map(|v| v.len()), Some(value.len()));
        let bytes = b.cache_bytes();
        assert!(bytes <= KV_CACHE_BYTES, "{bytes} bytes after {i} values");
        most = most.max(bytes);
    }
    assert!(most > KV_CACHE_BYTES / 2, "the cache was used: {most} bytes at most");
    // A value over the largest cached is read from disk every time.
    b.set("huge", &vec![1u8; KV_CACHE_MAX_VALUE + 1]).unwrap();
    let before = b.cache_bytes();
    assert_eq!(b.get("huge").unwrap().map(|v| v.len()), Some(KV_CACHE_MAX_VALUE + 1));
    assert_eq!(b.cache_bytes(), before);
    // Missing keys are bounded too (long keys, to get there sooner).
    let mut most = 0;
    for i in 0..(KV_CACHE_BYTES / 4000 + 100) {
        let key = format!("{i:04000}");
        assert_eq!(b.get(&key).unwrap(), None);
        let bytes = b.cache_bytes();
        assert!(bytes <= KV_CACHE_BYTES, "{bytes} bytes after {i} missing keys");
        most = most.max(bytes);
    }
    assert!(
        most > KV_CACHE_BYTES / 2,
        "missing keys were cached: {most} bytes at most"
    );
}

/// Readers on their own handles never see a counter go back while others increment it, and
/// see its last value at the end.
fn watch_counter(root: &Path, key: &str, target: u64) -> u64 {
    let cache = FileCache::open(root).unwrap();
    let b = bucket(&cache);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let (mut last, mut reads) = (0, 0u64);
    loop {
        let v: u64 = b
            .get(key)
            .unwrap()
            .map(|v| std::str::from_utf8(&v).unwrap().parse().unwrap())
            .unwrap_or(0);
        reads += 1;
        assert!(v >= last, "went back from {last} to {v}");
        last = v;
        if v == target {
            return reads;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still {v} of {target} after a minute"
        );
        // Leave the writers (and the other tests) some of the machine.
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
}

/// Two threads, each with its own handle on the cache at `root`, increment "counter" 200 times
/// while two more watch it (see [`watch_counter`]) until it reaches 400.
fn increment_and_watch(root: &Path) {
    let writers: Vec<_> = (0..2)
        .map(|_| {
            let root = root.to_path_buf();
            std::thread::spawn(move || {
                let cache = FileCache::open(root).unwrap();
                let b = bucket(&cache);
                for _ in 0..200 {
                    b.increment_u64("counter", 1).unwrap();
                }
            })
        })
        .collect();
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let root = root.to_path_buf();
            std::thread::spawn(move || watch_counter(&root, "counter", 400))
        })
        .collect();
    for t in writers {
        t.join().unwrap();
    }
    for t in readers {
        t.join().unwrap();
    }
}

#[test]
fn readers_on_other_handles_follow_concurrent_increments() {
    let (d, _cache) = cache();
    let root = d.path().join("cache");
    increment_and_watch(&root);
}

/// The generation file truncated to nothing, again and again, under readers that read it
/// through a shared mapping (Linux) and writers that rewrite it: no reader dies of `SIGBUS`, no
/// reader ever sees the counter go back, and every reader sees the last value. (Each truncation
/// leaves zeros once the file is extended again: a damaged generation, which writers replace
/// with a fresh one and readers do not cache by.)
#[cfg(target_os = "linux")]
#[test]
fn readers_follow_increments_while_the_generation_file_is_truncated_under_them() {
    let (d, _cache) = cache();
    let root = d.path().join("cache");
    // The namespace and its generation file exist before anyone maps it.
    bucket(&FileCache::open(&root).unwrap()).set("counter", b"0").unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let chaos = {
        let (path, done) = (generation_path(d.path()), done.clone());
        std::thread::spawn(move || {
            let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            let mut truncations = 0u32;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                file.set_len(0).unwrap();
                std::thread::sleep(std::time::Duration::from_micros(300));
                file.set_len(16).unwrap();
                truncations += 1;
                std::thread::sleep(std::time::Duration::from_micros(700));
            }
            truncations
        })
    };
    increment_and_watch(&root);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(chaos.join().unwrap() > 0);
}

/// The child side of the cross-process test below: does nothing unless run by it.
#[test]
fn cross_process_child() {
    let Ok(job) = std::env::var("FILECACHE_KV_CHILD") else {
        return;
    };
    let (op, root) = job.split_once(':').unwrap();
    match op {
        "increment" => {
            let cache = FileCache::open(root).unwrap();
            let b = bucket(&cache);
            for _ in 0..250 {
                b.increment_u64("counter", 1).unwrap();
            }
        }
        "watch" => {
            let reads = watch_counter(Path::new(root), "counter", 500);
            eprintln!("watched with {reads} reads");
        }
        _ => panic!("unknown job {job}"),
    }
}

#[test]
fn readers_in_other_processes_follow_increments_and_see_the_last_value() {
    let (d, _cache) = cache();
    let root = d.path().join("cache");
    let child = |op: &str| {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "kv::tests::cross_process_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("FILECACHE_KV_CHILD", format!("{op}:{}", root.display()))
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    // A reader with the value cached from the start.
    let cache = FileCache::open(&root).unwrap();
    let b = bucket(&cache);
    assert_eq!(b.get("counter").unwrap(), None);
    let children: Vec<_> = [child("watch"), child("watch"), child("increment"), child("increment")].into();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    assert_eq!(b.get("counter").unwrap().as_deref(), Some(&b"500"[..]));
}
