//! Disk-full and I/O errors, injected into every operation of the write path in turn
//! (see [`crate::fault`]): each must be an `Io` error with the OS error, leave no temporary file,
//! leave every other entry intact, and never push the usage counter below the truth.

use std::collections::BTreeSet;
use std::path::Path;

use super::*;
use crate::fault::{self, Fault, Point};

fn content(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[3] ^ seed)
        .collect()
}

/// The usage counter as stored in the namespace's state file.
fn counter(root: &Path, ns: &str) -> u64 {
    let b = std::fs::read(root.join(ns).join("state")).unwrap();
    u64::from_le_bytes(b[8..16].try_into().unwrap())
}

fn tmp_files(root: &Path, ns: &str) -> Vec<std::ffi::OsString> {
    std::fs::read_dir(root.join(ns).join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect()
}

#[derive(Debug, Clone, Copy)]
enum Op {
    /// `add` of a new key.
    AddNew,
    /// `add` replacing an existing entry, large enough to take several writes.
    AddReplace,
    /// `create`, three writes, `commit`, for a new key.
    StreamNew,
    /// The same, replacing an existing entry.
    StreamReplace,
}

impl Op {
    fn key(self) -> Key {
        match self {
            Op::AddNew | Op::StreamNew => Key::digest(b"new entry"),
            Op::AddReplace | Op::StreamReplace => Key::digest([0u8]),
        }
    }

    fn value(self) -> Vec<u8> {
        match self {
            Op::AddNew => content(1, 100),
            Op::AddReplace => content(2, 200_000),
            Op::StreamNew | Op::StreamReplace => content(3, 150_000),
        }
    }

    /// Runs the operation; the first error it meets.
    fn run(self, ns: &Namespace) -> Result<()> {
        let (key, value) = (self.key(), self.value());
        match self {
            Op::AddNew | Op::AddReplace => ns.add(&key, &value),
            Op::StreamNew | Op::StreamReplace => {
                let mut w = ns.create(&key)?;
                for chunk in value.chunks(50_000) {
                    w.write(chunk)?;
                }
                w.commit()
            }
        }
    }
}

/// Four entries, keys `digest([i])`, 1000 bytes each.
fn existing() -> Vec<(Key, Vec<u8>)> {
    (0..4u8).map(|i| (Key::digest([i]), content(100 + i, 1000))).collect()
}

fn fresh(dir: &Path, durability: Durability, quota: u64) -> Namespace {
    let _ = std::fs::remove_dir_all(dir);
    let cache = FileCache::open(dir).unwrap();
    let open = |durability| {
        let options = NamespaceOptions {
            durability,
            quota,
            ..Default::default()
        };
        cache.namespace("f", options).unwrap()
    };
    // Filled without fsync (what this sets up is not under test), then opened as asked.
    let filler = open(Durability::Relaxed);
    for (k, v) in existing() {
        filler.add(&k, &v).unwrap();
    }
    open(durability)
}

/// The checks every failed operation must pass; `may_lose` lists the keys that may have gone
/// (evicted, or taken back), besides which every existing entry must be intact. The usage
/// counter must be exact, unless a write of it failed or `happened` (an operation that happened
/// but reported an error, which may also have published the new entry): then it may only be
/// too high.
fn check_after_failure(
    root: &Path,
    ns: &Namespace,
    op: Op,
    hits: &[fault::Hit],
    may_lose: &[Key],
    happened: bool,
    what: &str,
) {
    let (key, old) = (
        op.key(),
        existing().into_iter().find(|(k, _)| *k == op.key()).map(|e| e.1),
    );
    let got = ns.get(&key).unwrap();
    assert!(
        got == old || (got.is_none() && may_lose.contains(&key)) || (happened && got == Some(op.value())),
        "{what}: the key shows {:?} bytes, expected the old entry ({:?} bytes)",
        got.map(|g| g.len()),
        old.map(|o| o.len())
    );
    for (k, v) in existing() {
        if k == key {
            continue;
        }
        match ns.get(&k).unwrap() {
            Some(got) => assert!(got == v, "{what}: wrong bytes for an existing entry"),
            None => assert!(may_lose.contains(&k), "{what}: an existing entry was lost"),
        }
    }
    assert_eq!(
        tmp_files(root, "f"),
        Vec::<std::ffi::OsString>::new(),
        "{what}: temporary file left"
    );
    let actual = ns.scan(0).unwrap().used;
    let stored = counter(root, "f");
    let counter_write_failed = hits.iter().any(|h| h.point == Point::UpdateCounter && h.failed);
    if counter_write_failed || happened {
        // The one direction a failed counter write may err in: the next rescan corrects it.
        assert!(
            stored >= actual,
            "{what}: counter {stored} below the {actual} bytes present"
        );
    } else {
        assert_eq!(stored, actual, "{what}: counter disagrees with a scan");
    }
    ns.recount().unwrap();
    assert_eq!(counter(root, "f"), actual, "{what}: recount");
}

fn expect_io(result: Result<()>, errno: i32, what: &str) {
    match result {
        Err(Error::Io { source, .. }) => {
            assert_eq!(source.raw_os_error(), Some(errno), "{what}: wrong OS error: {source}")
        }
        other => panic!("{what}: expected an io error, got {other:?}"),
    }
}

#[test]
fn every_injected_failure_of_add_and_stream_is_an_io_error_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let enospc = crate::sys::DISK_FULL;
    let eio = crate::sys::IO_ERROR;
    for durability in [Durability::Relaxed, Durability::Sync] {
        let mut failed_points = BTreeSet::new();
        // fsync is slow: durable mode gets the two operations that reach every hook, once.
        let (ops, faults): (&[Op], &[(i32, bool)]) = match durability {
            Durability::Relaxed => (
                &[Op::AddNew, Op::AddReplace, Op::StreamNew, Op::StreamReplace],
                &[(enospc, true), (eio, false)],
            ),
            Durability::Sync => (&[Op::AddNew, Op::StreamReplace], &[(eio, false)]),
        };
        for &op in ops {
            for &(errno, persistent) in faults {
                for n in 1.. {
                    let what =
                        format!("{durability:?} {op:?}, operation #{n} fails (errno {errno}, persistent {persistent})");
                    let ns = fresh(&root, durability, 1 << 30);
                    let guard = fault::inject(n, errno, persistent);
                    let result = op.run(&ns);
                    let hits = fault::hits();
                    drop(guard);
                    let Some(first) = hits.iter().find(|h| h.failed) else {
                        // Past the last hooked operation: the fault never fired.
                        assert!(result.is_ok(), "{what}: failed without a fault: {result:?}");
                        assert_eq!(ns.get(&op.key()).unwrap(), Some(op.value()));
                        break;
                    };
                    failed_points.insert(first.point);
                    expect_io(result, errno, &what);
                    // Only an entry whose directory could not be fsynced is taken back (durable
                    // mode), which removes what it replaced.
                    let may_lose = if first.point == Point::SyncDir {
                        vec![op.key()]
                    } else {
                        vec![]
                    };
                    check_after_failure(&root, &ns, op, &hits, &may_lose, false, &what);
                    // The same operation succeeds once the disk is healthy again.
                    op.run(&ns).unwrap();
                    assert_eq!(ns.get(&op.key()).unwrap(), Some(op.value()), "{what}: retry");
                    assert_eq!(
                        counter(&root, "f"),
                        ns.scan(0).unwrap().used,
                        "{what}: counter after retry"
                    );
                }
            }
        }
        let mut expected: BTreeSet<Point> = [
            Point::CreateTemp,
            Point::LockTemp,
            Point::Write,
            Point::WriteHeader,
            Point::SetTime,
            Point::LockNamespace,
            Point::UpdateCounter,
            Point::CreateShard,
            Point::Rename,
        ]
        .into();
        if durability == Durability::Sync {
            expected.extend([Point::SyncFile, Point::SyncDir]);
        }
        assert_eq!(
            failed_points, expected,
            "{durability:?}: operations a fault was injected into"
        );
    }
}

#[test]
fn injected_failures_while_evicting_never_serve_wrong_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let eio = crate::sys::IO_ERROR;
    // The four existing entries fill the quota: adding another has to evict.
    let all: Vec<Key> = existing().into_iter().map(|e| e.0).collect();
    let mut evicted_then_failed = false;
    for persistent in [false, true] {
        for n in 1.. {
            let what = format!("eviction, operation #{n} fails (persistent {persistent})");
            // Four entries of 1000 bytes, each charged 4 KiB (its file, rounded up).
            let ns = fresh(&root, Durability::Relaxed, 4 * 4096);
            let guard = fault::inject(n, eio, persistent);
            let result = ns.add(&Key::digest(b"new entry"), &content(5, 1500));
            let hits = fault::hits();
            drop(guard);
            if !hits.iter().any(|h| h.failed) {
                result.unwrap();
                break;
            }
            expect_io(result, eio, &what);
            let lost = all.iter().filter(|k| !ns.contains(k).unwrap()).count();
            evicted_then_failed |= lost > 0;
            check_after_failure(&root, &ns, Op::AddNew, &hits, &all, false, &what);
            assert!(ns.scan(0).unwrap().used <= 4 * 4096, "{what}: over quota");
        }
    }
    assert!(evicted_then_failed, "no fault struck after an eviction");
}

#[test]
fn a_failed_create_leaves_no_temporary_file() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let ns = fresh(&root, Durability::Relaxed, 1 << 30);
    for point in [Point::CreateTemp, Point::LockTemp] {
        let _guard = fault::inject(
            if point == Point::CreateTemp { 1 } else { 2 },
            crate::sys::DISK_FULL,
            false,
        );
        let err = ns.create(&Key::digest(b"x")).err().expect("create failed");
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert_eq!(fault::hits().iter().find(|h| h.failed).map(|h| h.point), Some(point));
        assert!(tmp_files(&root, "f").is_empty(), "{point:?}");
    }
}

/// The existing entries that are gone, which must be a prefix of the order they were added in
/// (the least recently used go first).
fn lost_in_lru_order(ns: &Namespace, what: &str) -> usize {
    let present: Vec<bool> = existing().iter().map(|(k, _)| ns.contains(k).unwrap()).collect();
    let lost = present.iter().take_while(|p| !**p).count();
    assert!(
        present[lost..].iter().all(|p| *p),
        "{what}: entries lost out of LRU order: {present:?}"
    );
    lost
}

/// Short writes (every write the store makes moving half its bytes, as a kernel may) and short
/// reads (likewise) lose nothing: every entry reads back exactly, through every read path, and
/// the usage counter is exact.
#[test]
fn short_writes_and_short_reads_lose_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let ns = fresh(&root, Durability::Relaxed, 1 << 30);
    let mut expected: Vec<(Key, Vec<u8>)> = existing();
    let mut cut = 0;
    for op in [Op::AddNew, Op::AddReplace, Op::StreamNew, Op::StreamReplace] {
        let guard = fault::inject_fault(Point::Write, Fault::Short, 1, true);
        op.run(&ns).unwrap_or_else(|e| panic!("{op:?} with short writes: {e}"));
        cut += fault::hits().iter().filter(|h| h.failed).count();
        drop(guard);
        assert_eq!(ns.get(&op.key()).unwrap(), Some(op.value()), "{op:?}");
        expected.retain(|(k, _)| *k != op.key());
        expected.push((op.key(), op.value()));
    }
    // Content, headers and the usage counter, each write cut short at least once.
    assert!(cut >= 12, "only {cut} writes were cut short");
    assert_eq!(
        counter(&root, "f"),
        ns.scan(0).unwrap().used,
        "counter after short writes"
    );

    let guard = fault::inject_fault(Point::Read, Fault::Short, 1, true);
    for (key, value) in &expected {
        assert_eq!(ns.get(key).unwrap().as_ref(), Some(value), "get with short reads");
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut ns.open(key).unwrap().unwrap(), &mut back).unwrap();
        assert!(back == *value, "open with short reads");
        assert_eq!(ns.verify_entry(key).unwrap(), None, "verify with short reads");
    }
    let cut = fault::hits().iter().filter(|h| h.failed).count();
    drop(guard);
    assert!(cut >= 3 * expected.len(), "only {cut} reads were cut short");
    for (key, value) in &expected {
        assert_eq!(ns.get(key).unwrap().as_ref(), Some(value), "nothing was removed");
    }
}

/// How a read is made in [`an_io_error_in_the_middle_of_a_read_is_an_error_and_loses_nothing`].
#[derive(Debug, Clone, Copy)]
enum ReadBy {
    Get,
    /// `open`, then reads of this many bytes.
    Open(usize),
    Verify,
}

/// `EIO` from the disk at each read of an entry in turn (the header, the first, a middle, the
/// last chunk): the read answers the error, never a wrong byte (nor a miss); a reader serves only
/// bytes of the entry before it; and an entry whose content could not be read is not taken for
/// damage: it is still there, whole, once the disk answers again.
#[test]
fn an_io_error_in_the_middle_of_a_read_is_an_error_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let eio = crate::sys::IO_ERROR;
    let key = Key::digest(b"read under EIO");
    // Several of the reads that check a large entry as they go, and a small one read at once.
    for (len, chunk) in [(700_000usize, 96 << 10), (3000, 1000)] {
        let value = content(9, len);
        for by in [ReadBy::Get, ReadBy::Open(chunk), ReadBy::Verify] {
            let mut struck_content = false;
            for n in 1.. {
                let what = format!("{len} bytes, {by:?}, read #{n} fails");
                let ns = fresh(&root, Durability::Relaxed, 1 << 30);
                ns.add(&key, &value).unwrap();
                let guard = fault::inject_fault(Point::Read, Fault::Fail(eio), n, false);
                let mut served = Vec::new();
                let result: Result<Option<()>> = match by {
                    ReadBy::Get => ns.get(&key).map(|got| {
                        got.map(|got| {
                            served = got;
                        })
                    }),
                    ReadBy::Open(chunk) => (|| {
                        let Some(mut r) = ns.open(&key)? else { return Ok(None) };
                        loop {
                            let c = r.read_chunk(chunk)?;
                            if c.is_empty() {
                                return Ok(Some(()));
                            }
                            served.extend_from_slice(&c);
                        }
                    })(),
                    // Damage found is removed, as a miss is.
                    ReadBy::Verify => ns.verify_entry(&key).map(|damage| damage.is_none().then_some(())),
                };
                let hits = fault::hits();
                drop(guard);
                assert!(
                    value.starts_with(&served),
                    "{what}: served bytes that are not the entry's"
                );
                if !hits.iter().any(|h| h.failed) {
                    result.unwrap();
                    assert!(matches!(by, ReadBy::Verify) || served == value, "{what}");
                    break;
                }
                match result {
                    Err(Error::Io { source, .. }) => {
                        assert_eq!(source.raw_os_error(), Some(eio), "{what}: {source}");
                        struck_content = true;
                        assert_eq!(
                            ns.get(&key).unwrap().as_ref(),
                            Some(&value),
                            "{what}: the entry did not survive the error"
                        );
                    }
                    // Struck on the header too (the first read): an error of the disk is not
                    // damage, and no miss (issue 28).
                    other => panic!("{what}: expected an io error, got {other:?}"),
                }
                for (k, v) in existing() {
                    assert_eq!(ns.get(&k).unwrap(), Some(v), "{what}: another entry");
                }
                assert_eq!(counter(&root, "f"), ns.scan(0).unwrap().used, "{what}: counter");
            }
            assert!(struck_content, "{len} bytes, {by:?}: no fault struck the content");
        }
    }
}

/// A rename that happened, an fsync of the file or of its directory that ran, each then
/// reporting an error (as NFS, or a failing disk, may): the operation fails with the error;
/// the key then holds the new entry whole or what it held before (durable mode takes back an
/// entry whose directory it could not fsync, and what it replaced is gone); no other entry is
/// lost; no temporary file is left; the counter is never below the bytes present.
#[test]
fn a_rename_or_fsync_that_ran_but_reported_an_error_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let eio = crate::sys::IO_ERROR;
    for (point, durability) in [
        (Point::Rename, Durability::Relaxed),
        (Point::SyncFile, Durability::Sync),
        (Point::SyncDir, Durability::Sync),
    ] {
        for op in [Op::AddNew, Op::AddReplace, Op::StreamNew, Op::StreamReplace] {
            let what = format!("{point:?} {op:?} ({durability:?})");
            let ns = fresh(&root, durability, 1 << 30);
            let old = existing().into_iter().find(|(k, _)| *k == op.key()).map(|e| e.1);
            let guard = fault::inject_fault(point, Fault::FailAfterDone(eio), 1, false);
            let result = op.run(&ns);
            let hits = fault::hits();
            drop(guard);
            assert!(hits.iter().any(|h| h.failed), "{what}: the fault did not strike");
            expect_io(result, eio, &what);
            let got = ns.get(&op.key()).unwrap();
            let expected = match point {
                // Published: the rename happened.
                Point::Rename => Some(op.value()),
                // Never published.
                Point::SyncFile => old,
                // Published, then taken back.
                _ => None,
            };
            assert!(
                got == expected,
                "{what}: the key holds {:?} bytes",
                got.map(|g| g.len())
            );
            check_after_failure(&root, &ns, op, &hits, &[op.key()], true, &what);
            op.run(&ns).unwrap();
            assert_eq!(ns.get(&op.key()).unwrap(), Some(op.value()), "{what}: retry");
        }
    }
}

/// Evictions whose unlink fails (not done, or done and reported failed), at each unlink in
/// turn and at every one: the add fails with the error, the namespace stays within its quota,
/// only the least recently used entries may be gone, and in order; the counter is exact when
/// nothing was unlinked, and only ever too high otherwise. Once the disk is healthy the same add
/// evicts the oldest entries and goes in. A delete and a `clear` whose unlink fails keep the
/// entries and say so.
#[test]
fn a_failed_unlink_during_eviction_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let eio = crate::sys::IO_ERROR;
    let new = Key::digest(b"new entry");
    for fault in [Fault::Fail(eio), Fault::FailAfterDone(eio)] {
        for persistent in [false, true] {
            let mut struck = 0;
            for n in 1.. {
                let what = format!("{fault:?}, unlink #{n} (persistent {persistent})");
                // The four existing entries fill the quota (each charged 4 KiB): an entry charged 8 KiB
                // evicts two.
                let ns = fresh(&root, Durability::Relaxed, 4 * 4096);
                let guard = fault::inject_fault(Point::RemoveFile, fault, n, persistent);
                let result = ns.add(&new, &content(5, 5000));
                let hits = fault::hits();
                drop(guard);
                if !hits.iter().any(|h| h.failed) {
                    result.unwrap();
                    break;
                }
                struck += 1;
                expect_io(result, eio, &what);
                assert_eq!(ns.get(&new).unwrap(), None, "{what}: the new entry is visible");
                let lost = lost_in_lru_order(&ns, &what);
                let unlinked =
                    hits.iter().filter(|h| !h.failed).count() + usize::from(matches!(fault, Fault::FailAfterDone(_)));
                assert_eq!(lost, unlinked, "{what}: entries gone");
                let all: Vec<Key> = existing().into_iter().map(|e| e.0).collect();
                // An unlink reported failed after it removed the file leaves the counter high.
                let high = matches!(fault, Fault::FailAfterDone(_));
                check_after_failure(&root, &ns, Op::AddNew, &hits, &all, high, &what);
                assert!(ns.scan(0).unwrap().used <= 4 * 4096, "{what}: over quota");
                ns.add(&new, &content(5, 5000)).unwrap();
                // (check_after_failure recounted: the retry starts from the truth.)
                let (stored, actual) = (counter(&root, "f"), ns.scan(0).unwrap().used);
                let lost = lost_in_lru_order(&ns, &what);
                assert_eq!((lost, stored), (2, actual), "{what}: the retry");
            }
            // One unlink per evicted entry, each struck in turn.
            assert_eq!(struck, 2, "{fault:?}, persistent {persistent}");
        }
    }

    let ns = fresh(&root, Durability::Relaxed, 1 << 30);
    let victim = existing()[1].clone();
    let guard = fault::inject_fault(Point::RemoveFile, Fault::Fail(eio), 1, true);
    let deleted = ns.delete(&victim.0);
    let cleared = ns.clear();
    drop(guard);
    assert!(matches!(deleted, Err(Error::Io { .. })), "{deleted:?}");
    assert!(matches!(cleared, Err(Error::Io { .. })), "{cleared:?}");
    for (k, v) in existing() {
        assert_eq!(ns.get(&k).unwrap(), Some(v), "an entry whose unlink failed is kept");
    }
    assert_eq!(counter(&root, "f"), ns.scan(0).unwrap().used);
}

/// Issue 28: `EIO` while reading an entry's header (the leading one, or the two reads that find a
/// trailing one), through every read path, is an `Io` error, and the entry is kept: an error of
/// the disk proves nothing about the entry, which is still there, whole, once the disk answers
/// again. (Only proven damage, such as a checksum that does not match, removes an entry.)
#[test]
fn an_io_error_reading_a_header_is_an_error_and_keeps_the_entry() {
    let key = Key::digest(b"header under EIO");
    // Larger than what `get` reads in one call with its header, so that the header is read alone.
    let value = content(7, 100_000);
    let (eio, tmp) = (crate::sys::IO_ERROR, tempfile::tempdir().unwrap());
    let root = tmp.path().join("cache");
    type ReadPath = fn(&Namespace, &Key) -> Result<bool>;
    let paths: [(&str, ReadPath); 6] = [
        ("get", |ns, k| ns.get(k).map(|v| v.is_some())),
        ("open", |ns, k| ns.open(k).map(|r| r.is_some())),
        ("contains", |ns, k| ns.contains(k)),
        ("is_stored", |ns, k| ns.is_stored(k)),
        ("open_raw", |ns, k| ns.open_raw(k).map(|r| r.is_some())),
        ("verify_entry", |ns, k| {
            ns.verify_entry(k).map(|damage| damage.is_none())
        }),
    ];
    for trailing in [false, true] {
        for (name, read) in paths {
            // The first read of a file is its first bytes; a trailing header is the second.
            for (n, persistent) in [(1, false), (2, false), (1, true)] {
                let what = format!("{name}, trailing {trailing}, read #{n} fails (persistent {persistent})");
                let ns = fresh(&root, Durability::Relaxed, 1 << 30);
                let mut w = if trailing {
                    ns.create_trailing(&key)
                } else {
                    ns.create(&key)
                }
                .unwrap();
                w.write(&value).unwrap();
                w.commit().unwrap();
                let guard = fault::inject_fault(Point::Read, Fault::Fail(eio), n, persistent);
                let result = read(&ns, &key);
                let struck = fault::hits().iter().any(|h| h.failed);
                drop(guard);
                if !struck {
                    // Fewer reads than `n` (the header of a leading layout alone): no fault.
                    assert!(n == 2, "{what}: the fault did not strike");
                    assert!(result.unwrap(), "{what}: without a fault");
                    continue;
                }
                expect_io(result.map(|_| ()), eio, &what);
                assert_eq!(
                    ns.get(&key).unwrap(),
                    Some(value.clone()),
                    "{what}: the entry was removed"
                );
                assert_eq!(counter(&root, "f"), ns.scan(0).unwrap().used, "{what}: counter");
            }
        }
    }
}
