//! Disk-full and I/O errors, injected into every operation of the write path in turn
//! (see [`crate::fault`]): each must be an `Io` error with the OS error, leave no temporary file,
//! leave every other entry intact, and never push the usage counter below the truth.

use std::collections::BTreeSet;
use std::path::Path;

use super::*;
use crate::fault::{self, Point};

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
/// (evicted, or taken back), besides which every existing entry must be intact.
fn check_after_failure(root: &Path, ns: &Namespace, op: Op, hits: &[fault::Hit], may_lose: &[Key], what: &str) {
    let (key, old) = (
        op.key(),
        existing().into_iter().find(|(k, _)| *k == op.key()).map(|e| e.1),
    );
    let got = ns.get(&key).unwrap();
    assert!(
        got == old || (got.is_none() && may_lose.contains(&key)),
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
    if counter_write_failed {
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
                    check_after_failure(&root, &ns, op, &hits, &may_lose, &what);
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
            check_after_failure(&root, &ns, Op::AddNew, &hits, &all, &what);
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
