//! Tests of the store against real files in temporary directories.

use std::io::{Read, Write};
#[cfg(unix)]
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use super::*;
use crate::entry::HEADER_LEN;
use crate::namespace::RECENCY;
use std::time::{Duration, Instant};

fn cache() -> (tempfile::TempDir, FileCache) {
    let dir = tempfile::tempdir().unwrap();
    let cache = FileCache::open(dir.path().join("cache")).unwrap();
    (dir, cache)
}

fn ns(cache: &FileCache) -> Namespace {
    cache.namespace("test", NamespaceOptions::default()).unwrap()
}

fn content(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[3] ^ seed)
        .collect()
}

fn entry_path(root: &Path, ns: &str, key: &Key) -> PathBuf {
    let hex = key.to_string();
    root.join("cache").join(ns).join(&hex[..2]).join(hex)
}

fn tmp_files(root: &Path, ns: &str) -> usize {
    std::fs::read_dir(root.join("cache").join(ns).join("tmp"))
        .unwrap()
        .count()
}

#[test]
fn add_get_round_trip_at_many_sizes() {
    let (_d, cache) = cache();
    let ns = ns(&cache);
    for (i, len) in [0usize, 1, 63, 64, 65, 4095, 65536, (1 << 20) + 7]
        .into_iter()
        .enumerate()
    {
        let key = Key::digest(len.to_le_bytes());
        let data = content(i as u8, len);
        assert_eq!(ns.get(&key).unwrap(), None);
        assert!(!ns.contains(&key).unwrap());
        ns.add(&key, &data).unwrap();
        assert_eq!(ns.get(&key).unwrap().as_deref(), Some(&data[..]), "len {len}");
        assert!(ns.contains(&key).unwrap());
        let mut r = ns.open(&key).unwrap().unwrap();
        assert_eq!(r.size(), len as u64);
        let mut back = Vec::new();
        r.read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
    }
}

#[test]
fn replace_delete_and_persistence_across_reopen() {
    let (d, cache) = cache();
    let key = Key::digest(b"k");
    {
        let ns = ns(&cache);
        ns.add(&key, b"first").unwrap();
        ns.add(&key, b"second, longer").unwrap();
        assert_eq!(ns.get(&key).unwrap().as_deref(), Some(&b"second, longer"[..]));
        ns.delete(&Key::digest(b"missing")).unwrap();
    }
    drop(cache);
    let cache = FileCache::open(d.path().join("cache")).unwrap();
    let ns = ns(&cache);
    assert_eq!(ns.get(&key).unwrap().as_deref(), Some(&b"second, longer"[..]));
    ns.delete(&key).unwrap();
    assert_eq!(ns.get(&key).unwrap(), None);
    assert!(!entry_path(d.path(), "test", &key).exists());
}

#[test]
fn namespaces_are_isolated() {
    let (_d, cache) = cache();
    let a = cache.namespace("a", NamespaceOptions::default()).unwrap();
    let b = cache.namespace("b", NamespaceOptions::default()).unwrap();
    let key = Key::digest(b"shared");
    a.add(&key, b"in a").unwrap();
    assert_eq!(b.get(&key).unwrap(), None);
    assert!(!b.contains(&key).unwrap());
}

#[test]
fn streamed_entry_is_invisible_until_commit_and_dropped_writer_leaves_nothing() {
    let (d, cache) = cache();
    let ns = ns(&cache);
    let key = Key::digest(b"stream");
    let data = content(3, 3 << 20);
    let mut w = ns.create(&key).unwrap();
    for chunk in data.chunks(100_000) {
        w.write_all(chunk).unwrap();
        assert_eq!(ns.get(&key).unwrap(), None);
        assert!(!ns.contains(&key).unwrap());
    }
    w.commit().unwrap();
    assert_eq!(ns.get(&key).unwrap().as_deref(), Some(&data[..]));
    assert_eq!(tmp_files(d.path(), "test"), 0);

    let other = Key::digest(b"dropped");
    let mut w = ns.create(&other).unwrap();
    w.write_all(b"never committed").unwrap();
    assert_eq!(tmp_files(d.path(), "test"), 1);
    drop(w);
    assert_eq!(tmp_files(d.path(), "test"), 0);
    assert_eq!(ns.get(&other).unwrap(), None);
}

#[test]
fn entry_size_limit_for_add_and_stream() {
    let (d, cache) = cache();
    let ns = cache
        .namespace(
            "small",
            NamespaceOptions {
                max_entry_size: 1000,
                ..Default::default()
            },
        )
        .unwrap();
    let key = Key::digest(b"big");
    ns.add(&key, &[1; 1000]).unwrap();
    let other = Key::digest(b"bigger");
    assert!(matches!(
        ns.add(&other, &[1; 1001]),
        Err(Error::TooLarge { limit: 1000 })
    ));
    let mut w = ns.create(&other).unwrap();
    w.write(&[0; 600]).unwrap();
    assert!(matches!(w.write(&[0; 600]), Err(Error::TooLarge { limit: 1000 })));
    assert_eq!(
        tmp_files(d.path(), "small"),
        0,
        "the spent writer's file is gone at once"
    );
    assert!(matches!(w.write(&[0; 1]), Err(Error::TooLarge { limit: 1000 })));
    assert!(matches!(w.commit(), Err(Error::TooLarge { limit: 1000 })));
    assert!(!ns.contains(&other).unwrap());
}

/// Sets the entry file's modification time (its recency) to `ago` before now.
fn age(path: &Path, ago: Duration) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - ago)
        .unwrap();
}

/// Issue 14's recency granularity: a hit refreshes an entry's modification time only when it is
/// older than `RECENCY` (1 s as shipped), so a hot entry costs no inode write per hit.
#[test]
fn a_hit_refreshes_recency_only_past_the_granularity() {
    let (d, cache) = cache();
    let ns = ns(&cache);
    let key = Key::digest(b"recency");
    ns.add(&key, b"content").unwrap();
    let path = entry_path(d.path(), "test", &key);
    let recent = std::time::SystemTime::now() - RECENCY / 2;
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(recent)
        .unwrap();
    assert!(ns.get(&key).unwrap().is_some());
    assert_eq!(
        std::fs::metadata(&path).unwrap().modified().unwrap(),
        recent,
        "fresh enough: not written"
    );
    age(&path, RECENCY + Duration::from_secs(1));
    let stale = std::fs::metadata(&path).unwrap().modified().unwrap();
    assert!(ns.open(&key).unwrap().is_some());
    assert!(
        std::fs::metadata(&path).unwrap().modified().unwrap() > stale,
        "older: refreshed"
    );
}

/// The granularity is the namespace's own (`NamespaceOptions::recency`): the compiled cache
/// uses an hour.
#[test]
fn recency_granularity_is_per_namespace() {
    let (d, cache) = cache();
    let key = Key::digest(b"recency");
    let ago = Duration::from_secs(120);
    for (name, granularity, refreshed) in [("minute", 60, true), ("hour", 3600, false)] {
        let ns = cache
            .namespace(
                name,
                NamespaceOptions::default().recency(Duration::from_secs(granularity)),
            )
            .unwrap();
        ns.add(&key, b"content").unwrap();
        let path = entry_path(d.path(), name, &key);
        age(&path, ago);
        let before = std::fs::metadata(&path).unwrap().modified().unwrap();
        assert!(ns.get(&key).unwrap().is_some());
        let after = std::fs::metadata(&path).unwrap().modified().unwrap();
        assert_eq!(after > before, refreshed, "{name}: two minutes old");
    }
}

#[test]
fn quota_evicts_least_recently_used_and_a_hit_refreshes() {
    let (_d, cache) = cache();
    // An entry of 1000 bytes is charged its file rounded up to 4 KiB.
    let per = crate::entry::charge(1000);
    assert_eq!(per, 4096);
    let ns = cache
        .namespace(
            "q",
            NamespaceOptions {
                quota: per * 4,
                ..Default::default()
            },
        )
        .unwrap();
    let keys: Vec<Key> = (0..6u8).map(|i| Key::digest([i])).collect();
    for (i, k) in keys[..4].iter().enumerate() {
        ns.add(k, &[7; 1000]).unwrap();
        // Older than the recency granularity, in the order added: a hit refreshes them.
        age(
            &entry_path(_d.path(), "q", k),
            RECENCY * 2 + Duration::from_secs(10 - i as u64),
        );
    }
    // Use the oldest: now keys[1] is the least recently used.
    assert!(ns.get(&keys[0]).unwrap().is_some());
    ns.add(&keys[4], &[7; 1000]).unwrap();
    assert!(ns.contains(&keys[0]).unwrap(), "a hit refreshes recency");
    assert!(!ns.contains(&keys[1]).unwrap(), "the least recently used goes first");
    assert!(ns.contains(&keys[2]).unwrap(), "only as much as needed is evicted");
    // A reader counts as a hit too.
    drop(ns.open(&keys[2]).unwrap().unwrap());
    ns.add(&keys[5], &[7; 1000]).unwrap();
    assert!(!ns.contains(&keys[3]).unwrap());
    assert!(ns.contains(&keys[2]).unwrap());
    let stats = cache.stats().unwrap();
    assert_eq!(stats[0].bytes, per * 4);

    // The largest content whose file (64-byte header, content, one 4-byte CRC) is the quota.
    let whole = (per * 4 - 64 - 4) as usize;
    assert_eq!(crate::entry::charge(whole as u64), per * 4);
    let huge = Key::digest(b"huge");
    assert!(matches!(
        ns.add(&huge, &vec![0; whole + 1]),
        Err(Error::QuotaExceeded { .. })
    ));
    assert!(!ns.contains(&huge).unwrap());
    assert_eq!(cache.stats().unwrap()[0].entries, 4, "a refused entry evicts nothing");
    // An entry costing exactly the quota fits, evicting everything else.
    ns.add(&huge, &vec![0; whole]).unwrap();
    assert_eq!(cache.stats().unwrap()[0].entries, 1);
}

/// When each worker's operations ran: proof that concurrent workers did overlap (a test of
/// concurrency whose workers ran one after the other proves nothing).
#[derive(Default)]
struct Timeline(std::sync::Mutex<Vec<(usize, Instant, Instant)>>);

impl Timeline {
    /// Runs `f` as an operation of `worker`, recording when it ran.
    fn run<T>(&self, worker: usize, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = f();
        let end = Instant::now();
        self.0.lock().unwrap().push((worker, start, end));
        out
    }

    /// How many operations ran (in part) while an operation of another worker was running.
    fn overlapping(&self) -> usize {
        let ops = self.0.lock().unwrap();
        ops.iter()
            .filter(|a| ops.iter().any(|b| b.0 != a.0 && b.1 < a.2 && a.1 < b.2))
            .count()
    }
}

#[test]
fn quota_holds_across_two_handles_on_one_namespace() {
    // Two opens of the namespace stand for two processes: they share the usage counter on disk,
    // each with its own eviction queue and uncommitted total. Two threads, released together
    // for each round, add at the same time; the quota is checked between rounds.
    let (d, cache) = cache();
    let quota = 10 * 4096;
    let opts = NamespaceOptions {
        quota,
        ..Default::default()
    };
    let handles = [
        cache.namespace("shared", opts).unwrap(),
        cache.namespace("shared", opts).unwrap(),
    ];
    let (start, checked) = (std::sync::Barrier::new(2), std::sync::Barrier::new(2));
    let done = std::sync::atomic::AtomicBool::new(false);
    // A failure is recorded, not panicked on, so that the other thread is not left waiting.
    let failure = std::sync::Mutex::new(None::<String>);
    let timeline = Timeline::default();
    std::thread::scope(|s| {
        for (t, ns) in handles.iter().enumerate() {
            let (start, checked, done, failure, timeline, cache) =
                (&start, &checked, &done, &failure, &timeline, &cache);
            s.spawn(move || {
                for round in 0u32.. {
                    start.wait();
                    if done.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let key = Key::digest((round * 2 + t as u32).to_le_bytes());
                    if let Err(e) = timeline.run(t, || ns.add(&key, &[1; 1000])) {
                        *failure.lock().unwrap() = Some(format!("round {round}: {e}"));
                    }
                    checked.wait();
                    if t == 0 {
                        let mut failure = failure.lock().unwrap();
                        match cache.stats().map(|s| s[0].bytes) {
                            Ok(bytes) if bytes > quota => {
                                *failure = Some(format!("over quota after round {round}: {bytes}"))
                            }
                            Ok(_) => {}
                            Err(e) => *failure = Some(format!("stats: {e}")),
                        }
                        // At least 64 rounds, and enough of them run at once (on a loaded
                        // machine a thread may not get a core in every round).
                        let enough = round >= 63 && round % 8 == 7 && timeline.overlapping() >= 10;
                        let stop = enough || failure.is_some() || round >= 1000;
                        done.store(stop, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
    });
    if let Some(failure) = failure.into_inner().unwrap() {
        panic!("{failure}");
    }
    let overlapping = timeline.overlapping();
    assert!(
        overlapping >= 10,
        "the two handles' adds never overlapped enough ({overlapping} in 1000 rounds)"
    );
    let s = &cache.stats().unwrap()[0];
    // Ten entries of 1000 bytes fit (each charged its file, rounded up to 4 KiB), an eleventh
    // does not.
    assert_eq!((s.entries, s.bytes), (10, 10 * crate::entry::charge(1000)));
    let state = std::fs::read(d.path().join("cache/shared/state")).unwrap();
    assert_eq!(
        u64::from_le_bytes(state[8..16].try_into().unwrap()),
        10 * crate::entry::charge(1000),
        "the shared usage counter"
    );
}

#[test]
fn read_only_refuses_writes_and_creates_nothing() {
    let (d, cache) = cache();
    let key = Key::digest(b"x");
    ns(&cache).add(&key, b"v").unwrap();
    let ro = cache
        .namespace(
            "test",
            NamespaceOptions {
                read_only: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert!(matches!(ro.add(&key, b"w"), Err(Error::ReadOnly)));
    assert!(matches!(ro.create(&key), Err(Error::ReadOnly)));
    assert!(matches!(ro.delete(&key), Err(Error::ReadOnly)));
    assert_eq!(ro.get(&key).unwrap().as_deref(), Some(&b"v"[..]));
    let missing = cache
        .namespace(
            "never-written",
            NamespaceOptions {
                read_only: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(missing.get(&key).unwrap(), None);
    assert!(!d.path().join("cache/never-written").exists());
}

#[test]
fn bad_namespace_names_create_nothing() {
    let (d, cache) = cache();
    for bad in ["..", ".", "a/b", ".hidden", "", &"x".repeat(65), "../escape"] {
        assert!(matches!(
            cache.namespace(bad, NamespaceOptions::default()),
            Err(Error::InvalidNamespace { .. })
        ));
    }
    let listed: Vec<_> = std::fs::read_dir(d.path().join("cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(listed, vec![std::ffi::OsString::from("CACHEDIR.TAG")]);
    assert!(!d.path().join("escape").exists());
}

/// Opens the entry under `key` (its header intact, its content damaged) and reads it in chunks
/// of `chunk` bytes until the read that reaches the damage fails: that failure is `corrupt`, and
/// what was served before it is returned. (`what` names the case in messages.)
fn read_to_damage(ns: &Namespace, key: &Key, chunk: usize, what: &str) -> Vec<u8> {
    let mut r = ns.open(key).unwrap().expect("the header is intact");
    let mut got = Vec::new();
    let err = loop {
        match r.read_chunk(chunk) {
            Ok(c) if c.is_empty() => panic!("{what}: damaged content read to the end"),
            Ok(c) => got.extend(c),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, Error::Corrupt { .. }), "{what}: {err}");
    got
}

/// Streams the entry under `key` in reads of `chunk` bytes: what was served, and how the read
/// ended; `None` when it did not open (damage found at open: the entry is removed).
fn stream_all(ns: &Namespace, key: &Key, chunk: usize) -> Option<(Vec<u8>, Result<()>)> {
    let mut r = ns.open(key).unwrap()?;
    let mut got = Vec::new();
    loop {
        match r.read_chunk(chunk) {
            Ok(c) if c.is_empty() => return Some((got, Ok(()))),
            Ok(c) => got.extend(c),
            Err(e) => return Some((got, Err(e))),
        }
    }
}

/// Writes `file` at `path`, creating its fan-out directory.
fn plant(path: &Path, file: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, file).unwrap();
}

#[allow(clippy::too_many_arguments)]
/// Reads the damaged entry file `bad` (planted at `path`, for `key`), whose byte `at` differs
/// from the good file's, in reads of each size of `chunks`, and asserts what a reader promises:
/// every byte it serves is the original's (`data`), damage in the content ends the read with
/// `corrupt` once it reaches the damaged block (the blocks before it are served: the check is
/// per block), damage in the header or block table is found at open, and the entry is removed.
fn assert_streams_only_written_bytes(
    ns: &Namespace,
    key: &Key,
    path: &Path,
    bad: &[u8],
    at: usize,
    content_at: usize,
    data: &[u8],
    block: usize,
    chunks: &[usize],
    what: &str,
) {
    let in_content = (content_at..content_at + data.len()).contains(&at);
    for &chunk in chunks {
        plant(path, bad);
        let what = format!("{what}: flip at {at}, reads of {chunk}");
        match stream_all(ns, key, chunk) {
            None => assert!(!in_content, "{what}: damage in the content found at open"),
            Some((got, end)) => {
                if let Some(first) = got.iter().zip(data).position(|(a, b)| a != b) {
                    panic!("{what}: served a byte that was not written, at offset {first}");
                }
                assert!(got.len() <= data.len(), "{what}: served more than was written");
                assert!(matches!(end, Err(Error::Corrupt { .. })), "{what}: ended with {end:?}");
                assert!(in_content, "{what}: damage outside the content not found at open");
                let damaged_block = (at - content_at) / block * block;
                assert!(
                    got.len() <= damaged_block && got.len() + chunk > damaged_block,
                    "{what}: served {} bytes; the damaged block starts at {damaged_block}",
                    got.len()
                );
            }
        }
        assert!(!path.exists(), "{what}: not removed");
    }
}

/// Issue 28: a byte flipped at every position of an entry of several blocks (header, content and
/// block table), in both layouts, read through `open` in reads of several sizes: no byte that was
/// not written is ever served. Blocks of 512 bytes (the smallest a reader accepts) make every
/// position affordable; the next test does the same at the store's own block size.
#[test]
fn a_reader_never_serves_a_byte_that_was_not_written_at_any_flipped_position() {
    use crate::entry::{Layout, MIN_BLOCK_SHIFT, encode_file};
    let (d, cache) = cache();
    let ns = ns(&cache);
    let block = 1usize << MIN_BLOCK_SHIFT;
    // Four blocks, the last one short.
    let data = content(7, 3 * block + 300);
    for layout in [Layout::Leading, Layout::Trailing] {
        let key = Key::digest(format!("{layout:?}"));
        let path = entry_path(d.path(), "test", &key);
        let good = encode_file(key, &data, layout, MIN_BLOCK_SHIFT);
        plant(&path, &good);
        let (got, end) = stream_all(&ns, &key, 1000).expect("the good entry opens");
        assert!(got == data && end.is_ok(), "{layout:?}: the good entry reads back");
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            assert_streams_only_written_bytes(
                &ns,
                &key,
                &path,
                &bad,
                at,
                layout.content_start() as usize,
                &data,
                block,
                &[1, 100, block, 1500, 4096],
                &format!("{layout:?}"),
            );
        }
    }
}

/// The same at the block size the store writes (64 KiB), for an entry the store wrote: every
/// byte of the header and block table, the first, second and last bytes of every block, and
/// bytes all through the content, with reads of several sizes up to the largest.
#[test]
fn a_reader_never_serves_a_byte_that_was_not_written_at_the_stores_block_size() {
    use crate::entry::BLOCK_SHIFT;
    let (d, cache) = cache();
    let ns = ns(&cache);
    let block = 1usize << BLOCK_SHIFT;
    let data = content(8, 3 * block + 1);
    let key = Key::digest(b"blocks");
    ns.add(&key, &data).unwrap();
    let path = entry_path(d.path(), "test", &key);
    let good = std::fs::read(&path).unwrap();
    let len = data.len();
    let mut positions: Vec<usize> = (0..HEADER_LEN).chain(HEADER_LEN + len..good.len()).collect();
    for b in (0..len).step_by(block) {
        positions.extend([b, b + 1, (b + block - 1).min(len - 1)].map(|p| HEADER_LEN + p));
    }
    positions.extend((0..len).step_by(4093).map(|p| HEADER_LEN + p));
    for at in positions {
        let mut bad = good.clone();
        bad[at] ^= 0x01;
        assert_streams_only_written_bytes(
            &ns,
            &key,
            &path,
            &bad,
            at,
            HEADER_LEN,
            &data,
            block,
            &[4096, block, 100_000, MAX_READ_CHUNK],
            "64 KiB blocks",
        );
    }
}

/// Entries written before block checksums (format version 1: one CRC32C of the whole content)
/// are read as misses, by every path, and removed; the key can be filled again.
#[test]
fn an_entry_in_the_format_before_block_checksums_is_a_miss_and_removed() {
    use crate::entry::{Checksum, Header};
    let (d, cache) = cache();
    let ns = ns(&cache);
    let key = Key::digest(b"old");
    let data = content(4, 100_000);
    let mut old = Header {
        len: data.len() as u64,
        crc: Checksum::of(&data),
        key,
    }
    .encode()
    .to_vec();
    old.extend_from_slice(&data);
    let path = entry_path(d.path(), "test", &key);
    for read in ["get", "open", "contains"] {
        plant(&path, &old);
        let found = match read {
            "get" => ns.get(&key).unwrap().is_some(),
            "open" => ns.open(&key).unwrap().is_some(),
            _ => ns.contains(&key).unwrap(),
        };
        assert!(!found, "{read}: a version-1 entry found");
        assert!(!path.exists(), "{read}: a version-1 entry not removed");
    }
    ns.add(&key, &data).unwrap();
    assert_eq!(ns.get(&key).unwrap().as_deref(), Some(&data[..]));
}

#[test]
fn every_byte_flip_and_truncation_is_a_miss_and_removed() {
    let (d, cache) = cache();
    let ns = ns(&cache);
    let key = Key::digest(b"victim");
    let data = content(9, 200);
    ns.add(&key, &data).unwrap();
    let path = entry_path(d.path(), "test", &key);
    let good = std::fs::read(&path).unwrap();
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x41;
        std::fs::write(&path, &bad).unwrap();
        assert_eq!(ns.get(&key).unwrap(), None, "flip at {i} served");
        assert!(!path.exists(), "flip at {i} not removed");
    }
    for len in 0..good.len() {
        std::fs::write(&path, &good[..len]).unwrap();
        assert_eq!(ns.get(&key).unwrap(), None, "truncation to {len} served");
        assert!(!path.exists());
    }
    // A reader: flips in the content are caught before any byte of their block is served (here
    // the only block); flips in the block table, at open.
    for i in HEADER_LEN..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        std::fs::write(&path, &bad).unwrap();
        let what = format!("flip at {i}");
        if i < HEADER_LEN + data.len() {
            let got = read_to_damage(&ns, &key, 64, &what);
            assert_eq!(got, b"", "{what}: bytes of a damaged block served");
        } else {
            assert!(ns.open(&key).unwrap().is_none(), "{what}: opened");
        }
        assert!(!path.exists());
    }
    std::fs::write(&path, &good).unwrap();
    assert_eq!(ns.get(&key).unwrap().as_deref(), Some(&data[..]));
}

#[test]
fn whole_entry_reads_refuse_damage_on_both_sides_of_the_one_read_size() {
    // `get` reads small entries together with their header in one call, larger ones in two.
    let (d, cache) = cache();
    let ns = ns(&cache);
    for len in [(16usize << 10) - 1, 16 << 10, (16 << 10) + 1, 100 << 10] {
        let key = Key::digest(len.to_le_bytes());
        let data = content(3, len);
        ns.add(&key, &data).unwrap();
        let path = entry_path(d.path(), "test", &key);
        let good = std::fs::read(&path).unwrap();
        let total = good.len();
        let flips = [0, 17, 24, 31, 40, HEADER_LEN, HEADER_LEN + len / 2, total - 1];
        for i in flips {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            assert_eq!(ns.get(&key).unwrap(), None, "len {len}: flip at {i} served");
            assert!(!path.exists(), "len {len}: flip at {i} not removed");
        }
        for cut in [HEADER_LEN - 1, HEADER_LEN, HEADER_LEN + len / 2, total - 1] {
            std::fs::write(&path, &good[..cut]).unwrap();
            assert_eq!(ns.get(&key).unwrap(), None, "len {len}: truncation to {cut} served");
            assert!(!path.exists());
        }
        let mut longer = good.clone();
        longer.push(0);
        std::fs::write(&path, &longer).unwrap();
        assert_eq!(ns.get(&key).unwrap(), None, "len {len}: a trailing byte served");
        std::fs::write(&path, &good).unwrap();
        assert_eq!(ns.get(&key).unwrap().as_deref(), Some(&data[..]), "len {len}");
    }
}

#[test]
// Only Linux has `O_NOATIME`: elsewhere a hit may also write the access time (see `crate::sys`).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn a_hit_sets_the_modification_time_and_leaves_the_access_time() {
    // Recency is the modification time; the access time is not written on a hit (O_NOATIME),
    // which under `relatime` would otherwise cost a second inode write per hit.
    let (d, cache) = cache();
    let ns = ns(&cache);
    let key = Key::digest(b"atime");
    ns.add(&key, b"content").unwrap();
    let path = entry_path(d.path(), "test", &key);
    let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_times(std::fs::FileTimes::new().set_accessed(old).set_modified(old))
        .unwrap();
    assert_eq!(ns.get(&key).unwrap().as_deref(), Some(&b"content"[..]));
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.modified().unwrap() > old, "a hit refreshes recency");
    assert_eq!(meta.accessed().unwrap(), old, "a hit wrote the access time");
}

#[test]
fn a_file_under_another_keys_name_is_refused() {
    let (d, cache) = cache();
    let ns = ns(&cache);
    let (a, b) = (Key::digest(b"a"), Key::digest(b"b"));
    ns.add(&a, b"content of a").unwrap();
    let pb = entry_path(d.path(), "test", &b);
    std::fs::create_dir_all(pb.parent().unwrap()).unwrap();
    std::fs::copy(entry_path(d.path(), "test", &a), &pb).unwrap();
    assert_eq!(ns.get(&b).unwrap(), None);
    assert!(!pb.exists(), "the copy under another key's name is removed");
    assert_eq!(
        ns.get(&a).unwrap().as_deref(),
        Some(&b"content of a"[..]),
        "the original stays"
    );
}

#[test]
#[cfg(unix)]
fn cachedir_tag_is_never_written_through_a_symlink() {
    // Issue 11 finding 8: the tag was written with `Dir::write`, which follows a planted
    // symlink (even a dangling one) and creates or truncates the file it points to.
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("cache");
    std::fs::create_dir(&root).unwrap();
    let outside = d.path().join("outside");
    symlink(&outside, root.join("CACHEDIR.TAG")).unwrap();
    FileCache::open(&root).unwrap();
    assert!(!outside.exists(), "the tag was written through a dangling symlink");
    std::fs::write(&outside, b"precious").unwrap();
    FileCache::open(&root).unwrap();
    assert_eq!(std::fs::read(&outside).unwrap(), b"precious");
    // Without a symlink, the tag is created once and then left alone.
    let fresh = d.path().join("fresh");
    FileCache::open(&fresh).unwrap();
    let tag = std::fs::read_to_string(fresh.join("CACHEDIR.TAG")).unwrap();
    assert!(tag.starts_with("Signature: 8a477f597d28d172789f06886806bc55"));
}

#[test]
fn a_hard_link_is_never_served() {
    // Also on Windows, where links are counted through the open handle.
    let (d, cache) = cache();
    let ns = ns(&cache);
    let outside = d.path().join("outside");
    std::fs::write(&outside, b"secret").unwrap();
    let key = Key::digest(b"hard");
    let p = entry_path(d.path(), "test", &key);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::hard_link(&outside, &p).unwrap();
    assert_eq!(ns.get(&key).unwrap(), None);
    assert!(ns.open(&key).unwrap().is_none());
    assert!(!ns.contains(&key).unwrap());
    assert!(!p.exists(), "the planted link is removed");
    assert_eq!(std::fs::read(&outside).unwrap(), b"secret");
}

#[test]
// Symlinks need privileges on Windows and FIFOs do not live in directories there.
#[cfg(unix)]
fn symlinks_hard_links_and_fifos_are_never_followed() {
    let (d, cache) = cache();
    let ns = ns(&cache);
    let outside = d.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"secret").unwrap();

    // An entry file that is a symlink to a file outside.
    let key = Key::digest(b"link");
    let p = entry_path(d.path(), "test", &key);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    symlink(outside.join("secret"), &p).unwrap();
    assert_eq!(ns.get(&key).unwrap(), None);
    assert!(ns.open(&key).unwrap().is_none());
    assert!(std::fs::symlink_metadata(&p).is_err(), "the planted symlink is removed");
    assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"secret");

    // A hard link to a file outside.
    let key = Key::digest(b"hard");
    let p = entry_path(d.path(), "test", &key);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::hard_link(outside.join("secret"), &p).unwrap();
    assert_eq!(ns.get(&key).unwrap(), None);
    assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"secret");

    // A FIFO must not hang the reader.
    let key = Key::digest(b"fifo");
    let p = entry_path(d.path(), "test", &key);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &p,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from(0o600),
        0,
    )
    .unwrap();
    // On another thread with a deadline: a regression would hang, and must fail instead.
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = ns.clone();
    std::thread::spawn(move || tx.send(reader.get(&key).map_err(|e| e.full_message())));
    let got = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("get of a FIFO hung (no answer in 10 s)");
    assert_eq!(got.unwrap(), None);
    assert!(std::fs::symlink_metadata(&p).is_err(), "the planted FIFO is removed");

    // A fan-out directory that is a symlink to a directory outside.
    let key = Key::digest(b"shard");
    let hex = key.to_string();
    let shard = d.path().join("cache/test").join(&hex[..2]);
    if shard.exists() {
        std::fs::remove_dir_all(&shard).unwrap();
    }
    std::fs::write(outside.join(&hex), b"planted").unwrap();
    symlink(&outside, &shard).unwrap();
    assert!(
        !matches!(ns.get(&key), Ok(Some(_))),
        "an entry reached through a symlinked directory was served"
    );
    let listing = |p: &Path| {
        std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect::<Vec<_>>()
    };
    let before = listing(&outside);
    let _ = ns.add(&key, b"x");
    let _ = ns.delete(&key);
    assert_eq!(listing(&outside), before, "a file was created or removed outside");
    assert_eq!(
        std::fs::read(outside.join(&hex)).unwrap(),
        b"planted",
        "a file outside was changed"
    );

    // A namespace directory that is a symlink.
    symlink(&outside, d.path().join("cache/evil")).unwrap();
    assert!(cache.namespace("evil", NamespaceOptions::default()).is_err());
}

#[test]
fn temporary_files_of_dead_writers_are_reclaimed_on_open_but_live_ones_are_not() {
    let (d, cache) = cache();
    let ns = ns(&cache);
    let key = Key::digest(b"live");
    let mut live = ns.create(&key).unwrap();
    live.write_all(b"still writing").unwrap();
    // A writer that died: its file exists, nobody holds its lock.
    std::fs::write(d.path().join("cache/test/tmp/dead.1.0.tmp"), b"partial").unwrap();
    assert_eq!(tmp_files(d.path(), "test"), 2);
    let again = cache.namespace("test", NamespaceOptions::default()).unwrap();
    assert_eq!(tmp_files(d.path(), "test"), 1);
    live.commit().unwrap();
    assert_eq!(again.get(&key).unwrap().as_deref(), Some(&b"still writing"[..]));
}

#[test]
fn concurrent_writers_of_one_key_never_tear() {
    let (_d, cache) = cache();
    let ns = ns(&cache);
    let key = Key::digest(b"contended");
    let start = std::sync::Barrier::new(4);
    let timeline = Timeline::default();
    std::thread::scope(|s| {
        for t in 0..4u8 {
            let ns = ns.clone();
            let (start, timeline) = (&start, &timeline);
            s.spawn(move || {
                start.wait();
                for _ in 0..50 {
                    timeline.run(t as usize, || ns.add(&key, &vec![t; 50_000])).unwrap();
                    let got = timeline.run(t as usize, || ns.get(&key)).unwrap();
                    // Where Windows cannot rename over an open file (Wine; Windows before 10
                    // 1809), replacing an entry a reader holds is two renames, and a reader in
                    // between misses (see the crate's Platforms docs). Never torn bytes.
                    let Some(got) = got else {
                        if cfg!(windows) {
                            continue;
                        }
                        panic!("a reader missed an entry being replaced");
                    };
                    assert!(got.len() == 50_000 && got.iter().all(|&b| b == got[0]));
                }
            });
        }
    });
    // Proof that writers and readers did run at once: 400 operations, most of them overlapping
    // another thread's.
    let overlapping = timeline.overlapping();
    assert!(
        overlapping >= 40,
        "only {overlapping} of 400 operations overlapped another thread's"
    );
    let s = &cache.stats().unwrap()[0];
    assert_eq!((s.entries, s.bytes), (1, crate::entry::charge(50_000)));
}

#[test]
fn stats_gc_verify_clear() {
    let (d, cache) = cache();
    let a = cache.namespace("a", NamespaceOptions::default()).unwrap();
    let b = cache.namespace("b", NamespaceOptions::default()).unwrap();
    for i in 0..10u8 {
        a.add(&Key::digest([i]), &[i; 1000]).unwrap();
        b.add(&Key::digest([i, i]), &[i; 1000]).unwrap();
    }
    let stats = cache.stats().unwrap();
    assert_eq!(
        stats.iter().map(|s| (s.name.as_str(), s.entries)).collect::<Vec<_>>(),
        [("a", 10), ("b", 10)]
    );

    // Damage two entries; verify finds and removes exactly those.
    for key in [Key::digest([3]), Key::digest([4])] {
        let p = entry_path(d.path(), "a", &key);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[500] ^= 0xff;
        std::fs::write(&p, bytes).unwrap();
    }
    let report = cache.verify(&mut |_| {}).unwrap();
    assert_eq!((report.checked, report.ok, report.removed), (20, 18, 2));
    assert_eq!(cache.verify(&mut |_| {}).unwrap().removed, 0);

    // gc to 10 entries' worth removes the 8 oldest, across both namespaces.
    let per = crate::entry::charge(1000);
    let report = cache.gc(per * 10, &mut |_| {}).unwrap();
    assert_eq!(report.removed_entries, 8);
    assert_eq!(report.remaining_bytes, per * 10);
    let total: u64 = cache.stats().unwrap().iter().map(|s| s.bytes).sum();
    assert_eq!(total, per * 10);
    assert!(b.contains(&Key::digest([9, 9])).unwrap(), "the newest survive");

    let before = cache.stats().unwrap()[0].entries;
    assert_eq!(cache.clear(Some("a")).unwrap(), before);
    assert_eq!(cache.stats().unwrap()[0].entries, 0);
    cache.clear(None).unwrap();
    assert!(cache.stats().unwrap().iter().all(|s| s.entries == 0));
}

/// Issue 26, item 4: opening a namespace for writing creates nothing in it; its lock file
/// (`state`) and `tmp/` come with the first write. So `verify` of a sound namespace leaves it as
/// it was, and makes them only when it has damage to remove.
#[test]
fn a_namespace_gets_its_lock_file_and_temporary_directory_only_when_written() {
    let (d, cache) = cache();
    let listing = |ns: &str| {
        let mut names: Vec<String> = std::fs::read_dir(d.path().join("cache").join(ns))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let ns = ns(&cache);
    assert!(listing("test").is_empty(), "{:?}", listing("test"));
    let report = cache.verify(&mut |_| {}).unwrap();
    assert_eq!((report.checked, report.removed), (0, 0));
    cache.stats().unwrap();
    assert!(listing("test").is_empty(), "verify created {:?}", listing("test"));

    let key = Key::digest(b"k");
    ns.add(&key, &content(1, 5000)).unwrap();
    let shard = key.to_string()[..2].to_string();
    assert_eq!(listing("test"), [shard.as_str(), "state", "tmp"]);
    drop(ns);

    // A sound entry in a namespace without them (copied from elsewhere, say): still nothing.
    std::fs::remove_file(d.path().join("cache/test/state")).unwrap();
    std::fs::remove_dir(d.path().join("cache/test/tmp")).unwrap();
    let report = cache.verify(&mut |_| {}).unwrap();
    assert_eq!((report.checked, report.ok, report.removed), (1, 1, 0));
    assert_eq!(listing("test"), [shard.as_str()]);

    // A damaged one: verify removes it, and needs the lock (so `state`) to do it.
    let path = entry_path(d.path(), "test", &key);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[HEADER_LEN + 10] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let report = cache.verify(&mut |_| {}).unwrap();
    assert_eq!((report.checked, report.ok, report.removed), (1, 0, 1));
    assert!(!path.exists(), "the damaged entry was removed");
    assert!(listing("test").contains(&"state".to_string()), "{:?}", listing("test"));
    assert_eq!(cache.stats().unwrap()[0].entries, 0);
}

#[test]
fn verify_and_stats_do_not_count_as_use() {
    let (_d, cache) = cache();
    let per = crate::entry::charge(100);
    let ns = cache
        .namespace(
            "lru",
            NamespaceOptions {
                quota: per * 8,
                ..Default::default()
            },
        )
        .unwrap();
    let keys: Vec<Key> = (0..9u8).map(|i| Key::digest([i])).collect();
    let path = |k: &Key| entry_path(_d.path(), "lru", k);
    let mtime = |k: &Key| std::fs::metadata(path(k)).unwrap().modified().unwrap();
    for (i, k) in keys[..8].iter().enumerate() {
        ns.add(k, &[0; 100]).unwrap();
        // Older than the recency granularity (an hour in tests), keys[0] the oldest: a read that
        // counted as a use would refresh them, as a hit does.
        age(&path(k), RECENCY * 2 + Duration::from_secs(100 - i as u64));
    }
    let before: Vec<_> = keys[..8].iter().map(mtime).collect();
    cache.verify(&mut |_| {}).unwrap();
    cache.stats().unwrap();
    let after: Vec<_> = keys[..8].iter().map(mtime).collect();
    assert_eq!(after, before, "verify or stats refreshed an entry's recency");
    ns.add(&keys[8], &[0; 100]).unwrap();
    assert!(
        !ns.contains(&keys[0]).unwrap(),
        "the oldest by use goes, whatever verify read last"
    );
    for k in &keys[1..] {
        assert!(ns.contains(k).unwrap());
    }
}

#[test]
fn counters_add_up_across_handles_and_survive_damage() {
    let (d, cache) = cache();
    let a = ns(&cache);
    let b = ns(&cache);
    assert!(a.counts().is_zero());
    a.count(&[(Counter::Hits, 2), (Counter::Misses, 1)]).unwrap();
    b.count(&[(Counter::Hits, 3), (Counter::RemoteErrors, 4)]).unwrap();
    let c = b.counts();
    assert_eq!((c.hits, c.misses, c.remote_errors, c.rejected), (5, 1, 4, 0));
    let stats = cache.stats().unwrap();
    assert_eq!(stats.iter().find(|s| s.name == "test").unwrap().counts, c);

    // A damaged counters file reads as zeros and is rewritten whole by the next update.
    let path = d.path().join("cache/test/counters");
    std::fs::write(&path, b"garbage").unwrap();
    assert!(a.counts().is_zero());
    a.count(&[(Counter::Misses, 1)]).unwrap();
    assert_eq!(a.counts().misses, 1);

    // A read-only namespace counts nothing and fails nothing.
    let ro = cache
        .namespace(
            "test",
            NamespaceOptions {
                read_only: true,
                ..Default::default()
            },
        )
        .unwrap();
    ro.count(&[(Counter::Hits, 1)]).unwrap();
    assert_eq!(ro.counts().hits, 0);
}

#[test]
fn gc_counts_the_temporary_files_it_reclaims() {
    let (d, cache) = cache();
    ns(&cache).add(&Key::digest(b"x"), b"x").unwrap();
    for i in 0..3 {
        std::fs::write(d.path().join(format!("cache/test/tmp/dead.{i}.tmp")), b"partial").unwrap();
    }
    let report = cache.gc(u64::MAX, &mut |_| {}).unwrap();
    assert_eq!(report.temporary_files, 3);
    assert_eq!(tmp_files(d.path(), "test"), 0);
}

/// Writes `data` as an entry with a trailing header, in uneven pieces.
fn add_trailing(ns: &Namespace, key: &Key, data: &[u8]) {
    let mut w = ns.create_trailing(key).unwrap();
    for piece in data.chunks(7919) {
        w.write(piece).unwrap();
    }
    w.commit().unwrap();
}

#[test]
fn entries_with_a_trailing_header_start_with_their_content_and_read_back_through_every_path() {
    use crate::entry::{Header, Layout};
    let (d, cache) = cache();
    let ns = ns(&cache);
    let sizes = [
        0usize,
        1,
        7,
        8,
        63,
        64,
        65,
        4095,
        (16 << 10) - 1,
        16 << 10,
        (16 << 10) + 1,
        100 << 10,
        (1 << 20) + 7,
    ];
    for (i, len) in sizes.into_iter().enumerate() {
        let key = Key::digest(len.to_le_bytes());
        let data = content(i as u8 + 1, len);
        add_trailing(&ns, &key, &data);
        let file = std::fs::read(entry_path(d.path(), "test", &key)).unwrap();
        let table_len = crate::entry::table_len(len as u64, crate::entry::BLOCK_SHIFT) as usize;
        assert_eq!(file.len(), len + table_len + HEADER_LEN, "len {len}");
        let layout = if len == 0 { Layout::Leading } else { Layout::Trailing };
        let (content_at, header_at) = match layout {
            Layout::Leading => (HEADER_LEN, 0),
            Layout::Trailing => (0, len + table_len),
        };
        assert_eq!(
            file[content_at..content_at + len],
            data[..],
            "len {len}: the content's place"
        );
        let header = Header::decode_as(file[header_at..header_at + HEADER_LEN].try_into().unwrap(), layout)
            .unwrap()
            .header;
        assert_eq!((header.len, header.key), (len as u64, key));

        assert_eq!(ns.get(&key).unwrap().as_deref(), Some(&data[..]), "len {len}");
        let mut back = Vec::new();
        ns.open(&key).unwrap().unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back, data, "len {len}: streamed");
        assert!(ns.contains(&key).unwrap());
        let raw = ns.open_raw(&key).unwrap().unwrap();
        assert_eq!(
            (raw.layout(), raw.content_start(), raw.content_len()),
            (layout, content_at as u64, len as u64)
        );
    }
    let report = cache.verify(&mut |_| {}).unwrap();
    assert_eq!((report.checked, report.ok), (sizes.len() as u64, sizes.len() as u64));
    let total: u64 = sizes.iter().map(|&len| crate::entry::charge(len as u64)).sum();
    assert_eq!(
        cache.stats().unwrap()[0].bytes,
        total,
        "charged their files, as leading entries"
    );

    // Replacing an entry of one layout by the other, both ways.
    let key = Key::digest(b"both");
    ns.add(&key, b"leading").unwrap();
    add_trailing(&ns, &key, b"trailing");
    assert_eq!(ns.get(&key).unwrap().as_deref(), Some(&b"trailing"[..]));
    ns.add(&key, b"leading again").unwrap();
    assert_eq!(ns.get(&key).unwrap().as_deref(), Some(&b"leading again"[..]));
}

#[test]
fn every_byte_flip_and_truncation_of_an_entry_with_a_trailing_header_is_a_miss_and_removed() {
    let (d, cache) = cache();
    let ns = ns(&cache);
    for len in [200usize, 20 << 10] {
        let key = Key::digest(len.to_le_bytes());
        let data = content(5, len);
        add_trailing(&ns, &key, &data);
        let path = entry_path(d.path(), "test", &key);
        let good = std::fs::read(&path).unwrap();
        // Every byte of a small entry; of the larger one (read in two calls), the header and
        // bytes all through the content.
        let flips: Vec<usize> = if len < 1000 {
            (0..good.len()).collect()
        } else {
            (0..8).chain((0..len).step_by(331)).chain(len..good.len()).collect()
        };
        for &i in &flips {
            let mut bad = good.clone();
            bad[i] ^= 0x41;
            std::fs::write(&path, &bad).unwrap();
            assert_eq!(ns.get(&key).unwrap(), None, "len {len}: flip at {i} served");
            assert!(!path.exists(), "len {len}: flip at {i} not removed");
        }
        for cut in (0..good.len()).step_by(if len < 1000 { 1 } else { 97 }) {
            std::fs::write(&path, &good[..cut]).unwrap();
            assert_eq!(ns.get(&key).unwrap(), None, "len {len}: truncation to {cut} served");
            assert!(
                ns.open(&key).unwrap().is_none(),
                "len {len}: truncation to {cut} opened"
            );
        }
        let mut longer = good.clone();
        longer.push(0);
        std::fs::write(&path, &longer).unwrap();
        assert_eq!(ns.get(&key).unwrap(), None, "len {len}: a byte after the header served");
        // Content flips caught by a reader before it serves any byte of the damaged block.
        for i in (0..len).step_by(61) {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            std::fs::write(&path, &bad).unwrap();
            let got = read_to_damage(&ns, &key, 4096, &format!("len {len}: flip at {i}"));
            assert!(
                data.starts_with(&got),
                "len {len}: flip at {i}: a byte that was not written served"
            );
            assert!(!path.exists());
        }
        // `verify` finds damage in one too.
        let mut bad = good.clone();
        bad[len / 2] ^= 0x80;
        std::fs::write(&path, &bad).unwrap();
        let report = cache.verify(&mut |_| {}).unwrap();
        assert_eq!((report.checked, report.removed), (1, 1), "len {len}");
        std::fs::write(&path, &good).unwrap();
        assert_eq!(ns.get(&key).unwrap().as_deref(), Some(&data[..]), "len {len}");
        ns.delete(&key).unwrap();
    }
}

#[test]
fn content_that_starts_with_the_header_magic_cannot_take_a_trailing_header() {
    let (d, cache) = cache();
    let ns = ns(&cache);
    let key = Key::digest(b"magic");
    let mut data = crate::entry::MAGIC.to_vec();
    data.extend_from_slice(&[0; 100]);
    let mut w = ns.create_trailing(&key).unwrap();
    w.write(&data[..3]).unwrap();
    w.write(&data[3..]).unwrap();
    let err = w.commit().unwrap_err();
    assert!(err.full_message().contains("magic"), "{}", err.full_message());
    assert!(!ns.contains(&key).unwrap(), "nothing stored");
    assert_eq!(tmp_files(d.path(), "test"), 0, "its temporary file removed");
    // Any other start is stored, even one that begins like the magic.
    add_trailing(&ns, &key, &data[1..]);
    add_trailing(&ns, &Key::digest(b"short"), &data[..7]);
    assert_eq!(ns.get(&key).unwrap().as_deref(), Some(&data[1..]));
    assert_eq!(ns.get(&Key::digest(b"short")).unwrap().as_deref(), Some(&data[..7]));
    // And with a leading header, as always.
    ns.add(&key, &data).unwrap();
    assert_eq!(ns.get(&key).unwrap().as_deref(), Some(&data[..]));
}
