//! Regression tests for the findings of the adversarial review (issue 11), each named after
//! its finding; docs/guarantees.md lists what each proves.

use super::*;

fn cache() -> (tempfile::TempDir, FileCache) {
    let dir = tempfile::tempdir().unwrap();
    let cache = FileCache::open(dir.path()).unwrap();
    (dir, cache)
}

fn options(max_entry_size: u64) -> NamespaceOptions {
    NamespaceOptions {
        max_entry_size,
        ..NamespaceOptions::default()
    }
}

/// Finding 1: `get` sizes its buffer from the entry file; an entry written under a larger limit
/// (by another host) must be answered `TooLarge` with this namespace's limit, not read whole, and
/// must still stream through `open`.
#[test]
fn get_never_allocates_past_the_namespace_limit() {
    let (_dir, cache) = cache();
    let writer = cache.namespace("plugin", options(4 << 20)).unwrap();
    let key = Key::digest(b"written under a larger limit");
    let content: Vec<u8> = (0..(2u32 << 20)).map(|i| (i % 251) as u8).collect();
    writer.add(&key, &content).unwrap();

    let reader = cache.namespace("plugin", options(1 << 20)).unwrap();
    match reader.get(&key) {
        Err(Error::TooLarge { limit }) => assert_eq!(limit, 1 << 20),
        other => panic!("expected TooLarge, got {:?}", other.map(|o| o.map(|c| c.len()))),
    }
    let mut streamed = Vec::new();
    let mut r = reader.open(&key).unwrap().expect("the entry streams");
    loop {
        let chunk = r.read_chunk(MAX_READ_CHUNK).unwrap();
        if chunk.is_empty() {
            break;
        }
        streamed.extend_from_slice(&chunk);
    }
    assert!(streamed == content, "the streamed entry is the whole entry");
    assert!(
        writer.get(&key).unwrap().is_some(),
        "the entry is not removed: it is not damaged"
    );
}

/// Finding 1, the extreme: a sparse entry file of 100 GiB with a valid header. `get` answers at
/// once, without allocating (a regression would try to allocate 100 GiB and abort, or read
/// 100 GiB of zeros); `open` reports its size.
#[cfg(unix)]
#[test]
fn get_of_a_sparse_100_gib_entry_answers_too_large_without_allocating() {
    use crate::entry::{BLOCK_SHIFT, Checksum, HEADER_LEN, Header, Layout};
    let (dir, cache) = cache();
    let ns = cache.namespace("plugin", NamespaceOptions::default()).unwrap();
    let key = Key::digest(b"sparse");
    let len = 100u64 << 30;
    let hex = key.hex();
    let path = dir.path().join("plugin").join(&hex.as_str()[..2]).join(hex.as_str());
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(&path).unwrap();
    // Its content zeros (sparse), with a block table that says so: a valid entry.
    let zero_block = Checksum::of(&[0; 1 << BLOCK_SHIFT]).to_le_bytes();
    let table: Vec<u8> = std::iter::repeat_n(zero_block, (len >> BLOCK_SHIFT) as usize)
        .flatten()
        .collect();
    let header = Header {
        len,
        crc: Checksum::of(&table),
        key,
    };
    std::io::Write::write_all(&mut &file, &header.encode_as(Layout::Leading, BLOCK_SHIFT)).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &table, HEADER_LEN as u64 + len).unwrap();
    drop(file);

    let before = peak_rss_kib();
    let start = std::time::Instant::now();
    assert!(matches!(ns.get(&key), Err(Error::TooLarge { .. })));
    let took = start.elapsed();
    let after = peak_rss_kib();
    eprintln!("get of a sparse 100 GiB entry: too-large in {took:?}; peak RSS {before} KiB before, {after} KiB after");
    assert!(after < before + 64 * 1024, "get did not allocate the entry");
    let mut reader = ns.open(&key).unwrap().expect("a whole header: the entry opens");
    assert_eq!(reader.size(), len);
    // Streaming it costs one chunk at a time: the first 256 MiB, 1 MiB per read.
    for _ in 0..256 {
        assert_eq!(reader.read_chunk(MAX_READ_CHUNK).unwrap().len(), MAX_READ_CHUNK);
    }
    let streamed = peak_rss_kib();
    eprintln!("streamed 256 MiB of it with open: peak RSS {streamed} KiB");
    assert!(streamed < before + 64 * 1024, "streaming holds one chunk at a time");
    assert!(path.exists(), "an entry too large to read whole is not damage");
}

#[cfg(unix)]
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Finding 2: hits and misses of a plugin namespace's `get`, `open` and `contains` are counted
/// (in memory, then in the counters file when the handle goes), exactly.
#[test]
fn stats_count_plugin_hits_and_misses_exactly() {
    let (_dir, cache) = cache();
    {
        let ns = cache.namespace("plugin", NamespaceOptions::default()).unwrap();
        let key = Key::digest(b"present");
        ns.add(&key, b"content").unwrap();
        for _ in 0..6 {
            assert!(ns.get(&key).unwrap().is_some());
        }
        for _ in 0..2 {
            assert!(ns.open(&key).unwrap().is_some());
        }
        for _ in 0..2 {
            assert!(ns.contains(&key).unwrap());
        }
        for i in 0..3 {
            assert!(ns.get(&Key::digest([i])).unwrap().is_none());
        }
        assert!(ns.open(&Key::digest(b"absent")).unwrap().is_none());
        assert!(!ns.contains(&Key::digest(b"absent")).unwrap());
        let live = ns.counts();
        assert_eq!((live.hits, live.misses), (10, 5), "a live handle sees its own uses");
    }
    let stats = cache.stats().unwrap();
    let s = stats.iter().find(|s| s.name == "plugin").unwrap();
    assert_eq!(
        (s.counts.hits, s.counts.misses),
        (10, 5),
        "flushed when the handle went"
    );
}

/// The end of a streamed read (or of a writer) does not write the counters file: the store's
/// own short-lived handles leave the flush to the user's handle (it cost a lock and five system
/// calls at the end of every `open`), and the uses still reach the file when that handle goes,
/// even when a reader outlives it.
#[test]
fn readers_and_writers_leave_the_counters_to_the_users_handle() {
    let (_dir, cache) = cache();
    let on_disk = || {
        let stats = cache.stats().unwrap();
        let s = stats.iter().find(|s| s.name == "plugin").unwrap();
        (s.counts.hits, s.counts.misses)
    };
    let key = Key::digest(b"present");
    let ns = cache.namespace("plugin", NamespaceOptions::default()).unwrap();
    ns.add(&key, b"content").unwrap();
    for _ in 0..3 {
        let mut r = ns.open(&key).unwrap().unwrap();
        let mut content = Vec::new();
        std::io::Read::read_to_end(&mut r, &mut content).unwrap();
        assert_eq!(content, b"content");
        drop(r);
        let mut w = ns.create(&Key::digest(b"other")).unwrap();
        w.write(b"x").unwrap();
        w.commit().unwrap();
    }
    assert_eq!(
        on_disk(),
        (0, 0),
        "nothing written by the readers and writers that went"
    );
    assert_eq!((ns.counts().hits, ns.counts().misses), (3, 0));
    // A reader that outlives the user's handle: the user's handle flushes as it goes.
    let r = ns.open(&key).unwrap().unwrap();
    drop(ns);
    assert_eq!(on_disk(), (4, 0), "flushed when the user's handle went");
    drop(r);
    assert_eq!(on_disk(), (4, 0));
}

/// Finding 5: a fan-out directory that cannot be opened (EACCES, EMFILE) fails the scan — and so
/// `stats`, `verify`, `clear` and the recount behind the quota — instead of being skipped with a
/// short total written to the usage counter. (Root opens any directory and the descriptor limit is
/// process-wide, so the failure is injected at the open, on this thread only.)
#[test]
fn scan_fails_on_a_fan_out_directory_it_cannot_open() {
    use crate::fault::{self, Point};
    let (_dir, cache) = cache();
    let ns = cache.namespace("plugin", NamespaceOptions::default()).unwrap();
    for i in 0..3u8 {
        ns.add(&Key::digest([i]), b"content").unwrap();
    }
    let used = ns.scan(0).unwrap().used;
    for what in ["scan", "recount", "clear"] {
        let _plan = fault::inject_at(Point::OpenShard, 13 /* EACCES */);
        let result = match what {
            "scan" => ns.scan(0).map(|_| ()),
            "recount" => ns.recount().map(|_| ()),
            _ => ns.clear().map(|_| ()),
        };
        let err = result
            .err()
            .unwrap_or_else(|| panic!("{what} cannot see a fan-out directory: it must fail"));
        assert!(
            err.full_message().contains("cannot open"),
            "{what}: {}",
            err.full_message()
        );
    }
    assert_eq!(
        ns.scan(0).unwrap().used,
        used,
        "nothing was lost, and no short total was written"
    );
    assert_eq!(ns.scan(0).unwrap().entries, 3);
}

/// Finding 4: the temporary files of uncommitted writers count against the quota: a guest
/// holding many writers cannot put more than the quota on disk in them (before, the bound was
/// `max_handles × max_entry_size`, 4 GiB with the defaults), and a dropped writer gives its bytes
/// back and leaves no file.
#[test]
fn temporary_files_of_uncommitted_writers_count_against_the_quota() {
    let (dir, cache) = cache();
    let options = NamespaceOptions {
        quota: 1 << 20,
        max_entry_size: 1 << 20,
        ..NamespaceOptions::default()
    };
    let ns = cache.namespace("plugin", options).unwrap();
    let tmp_files = || {
        std::fs::read_dir(dir.path().join("plugin").join("tmp"))
            .unwrap()
            .count()
    };
    let chunk = vec![7u8; 300 << 10];
    let mut held = Vec::new();
    for i in 0..3u8 {
        let mut w = ns.create(&Key::digest([i])).unwrap();
        w.write(&chunk).unwrap();
        held.push(w);
    }
    // 900 KiB are uncommitted: another 300 KiB would pass the 1 MiB quota.
    let mut fourth = ns.create(&Key::digest([3])).unwrap();
    match fourth.write(&chunk) {
        Err(Error::QuotaExceeded { quota, .. }) => assert_eq!(quota, 1 << 20),
        other => panic!("expected QuotaExceeded, got {other:?}"),
    }
    assert!(
        matches!(fourth.commit(), Err(Error::QuotaExceeded { .. })),
        "the writer is spent"
    );
    assert_eq!(tmp_files(), 3, "the spent writer's file is gone");
    drop(held.pop());
    assert_eq!(tmp_files(), 2, "a dropped writer leaves no file");
    let mut fifth = ns.create(&Key::digest([4])).unwrap();
    fifth.write(&chunk).unwrap();
    fifth.commit().unwrap();
    assert_eq!(ns.get(&Key::digest([4])).unwrap().as_deref(), Some(&chunk[..]));
    // Committed bytes are the quota's ordinary business, not uncommitted any more.
    let mut sixth = ns.create(&Key::digest([5])).unwrap();
    sixth.write(&chunk).unwrap();
    drop(sixth);
    drop(held);
    assert_eq!(tmp_files(), 0);
}

/// Finding 8: the namespace lock is waited for at most a bounded time (`LOCK_WAIT`, 30 s; 3 s
/// in tests): a process stopped while holding it makes writers fail with a clear `Io` error
/// instead of stalling them forever. Here another open file description holds the lock, as a
/// stopped process would.
#[test]
fn a_held_namespace_lock_is_waited_for_a_bounded_time() {
    let (dir, cache) = cache();
    let ns = cache.namespace("plugin", NamespaceOptions::default()).unwrap();
    ns.add(&Key::digest(b"before"), b"content").unwrap();
    let state = crate::namespace::hold_lock_elsewhere(&dir.path().join("plugin"));
    let start = std::time::Instant::now();
    let err = ns.add(&Key::digest(b"during"), b"content").unwrap_err();
    let waited = start.elapsed();
    assert!(
        err.full_message().contains("held the namespace lock"),
        "{}",
        err.full_message()
    );
    assert!(waited >= crate::namespace::LOCK_WAIT, "it waited the bound: {waited:?}");
    assert!(
        waited < crate::namespace::LOCK_WAIT * 10,
        "and not much longer: {waited:?}"
    );
    assert_eq!(
        ns.get(&Key::digest(b"before")).unwrap().as_deref(),
        Some(&b"content"[..]),
        "reads take no lock"
    );
    crate::sys::unlock(&state).unwrap();
    ns.add(&Key::digest(b"after"), b"content").unwrap();
}
