//! The `kv_batches` fuzz target's logic, shared by the cargo-fuzz target in `fuzz/` and by the
//! tests that replay its committed corpus (what CI runs) and generated inputs.
//!
//! Not part of the API: built for the crate's tests or with the `fuzzing` feature. The target
//! panics when a bucket breaks a promise; it never panics on any input otherwise.
//!
//! A fuzz input is a namespace's limits and a sequence of operations, run on real [`Bucket`]s
//! (SQLite, in a temporary cache directory: two handles on one namespace, as two processes would
//! hold them) and on [`Model`], a `HashMap`, which must agree after every step: `set`,
//! `set-many` and `delete-many` (batches with duplicate keys, empty keys and values, keys past
//! [`MAX_KEY_LEN`], values past the entry-size limit, batches past the quota: each applied whole
//! or refused whole, with the error that says why), `get`, `exists`, `get-many` (and its bound on
//! the bytes it gathers), both increments (and their refusals), compare-and-swap (a stale read
//! must lose, a fresh one win), listings paged every way (every key exactly once), reopening,
//! `verify`, `clear`, and writes whose commit fails (the `BeforeCommit` fault hook: nothing
//! changes). After every step, the namespace's data charge and the bucket's usage are the bytes
//! of keys and values the model holds.

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

mod check;
mod model;
mod ops;

use std::path::{Path, PathBuf};

use filecache_store::{FileCache, NamespaceOptions};

use crate::{Bucket, Cas, Error, MAX_KEY_LEN, Namespace};
use check::{check_faulty, check_read, check_write};
pub use model::Model;
use model::Refusal;
pub use ops::{Op, decode};
use ops::{SHORT_KEYS, key};

/// The target: see the module documentation.
pub fn kv_batches(data: &[u8]) {
    let (options, ops) = decode(data);
    if let Err(e) = check_ops(options, &ops) {
        panic!("{e}");
    }
}

/// A compare-and-swap read: what the bucket answered, and the key's generation then (`None`:
/// it had no value).
type Slot = Option<(Cas, Option<u64>)>;

/// The two handles on the namespace, as two processes hold them.
struct Handles {
    ns: Namespace,
    first: Bucket,
    second: Bucket,
}

impl Handles {
    fn open(root: &Path, options: NamespaceOptions) -> Handles {
        let open = || {
            FileCache::open(root)
                .and_then(|c| c.namespace("kv", options))
                .expect("open the namespace")
        };
        let ns = open();
        Handles {
            first: Bucket::new(ns.clone()),
            second: Bucket::new(open()),
            ns,
        }
    }

    fn bucket(&self, second: bool) -> &Bucket {
        if second { &self.second } else { &self.first }
    }
}

/// Runs `ops` on buckets in a fresh namespace with `options`, and on the model: `Err` says what
/// the first disagreement was.
pub fn check_ops(options: NamespaceOptions, ops: &[Op]) -> Result<(), String> {
    run_ops(options, ops).map_err(|e| {
        // Keys of 8 KiB, shortened.
        e.replace(&"k".repeat(MAX_KEY_LEN + 1), "k…(MAX_KEY_LEN + 1 bytes)")
            .replace(&"k".repeat(MAX_KEY_LEN), "k…(MAX_KEY_LEN bytes)")
    })
}

/// A scratch directory, in memory where the system offers one (`/dev/shm`): the target checks
/// the buckets' logic, not the disk, and on a disk SQLite's and the store's `fsync`s made an
/// input cost about 100 ms (16 s for the committed corpus) against 6 ms.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let in_memory = shm
        .is_dir()
        .then(|| tempfile::Builder::new().prefix("filecache-kv-fuzz").tempdir_in(shm));
    match in_memory {
        Some(Ok(dir)) => dir,
        _ => tempfile::tempdir().expect("a temporary directory"),
    }
}

fn run_ops(options: NamespaceOptions, ops: &[Op]) -> Result<(), String> {
    let tmp = scratch();
    let root: PathBuf = tmp.path().join("cache");
    let mut model = Model::new(&options);
    let mut handles = Handles::open(&root, options);
    let mut slots: [Slot; 4] = Default::default();
    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Reopen => {
                drop(handles);
                handles = Handles::open(&root, options);
            }
            Op::Verify => {
                let report = handles
                    .first
                    .verify()
                    .map_err(|e| format!("step {step}: verify: {e}"))?;
                ensure!(
                    report.ok == model.map.len() as u64 && report.damaged.is_empty() && report.database.is_none(),
                    "step {step}: verify: {report:?}, model holds {} keys",
                    model.map.len()
                );
            }
            Op::Faulty(op) => {
                check_faulty(&handles, &mut model, &mut slots, op).map_err(|e| format!("step {step}: {e}"))?
            }
            op if is_write(op) => {
                check_write(&handles, &mut model, &mut slots, op, None).map_err(|e| format!("step {step}: {e}"))?
            }
            op => check_read(&handles, &model, &mut slots, op).map_err(|e| format!("step {step}: {e}"))?,
        }
        // After every step: the data charge and the usage are what the model holds.
        let bytes = model.bytes();
        let charge = handles
            .ns
            .data_bytes()
            .map_err(|e| format!("step {step}: data_bytes: {e}"))?;
        ensure!(
            charge == bytes,
            "step {step}: data charge {charge} after {op:?}, model {bytes}"
        );
        let usage = handles.second.usage().map_err(|e| format!("step {step}: usage: {e}"))?;
        ensure!(
            (usage.keys, usage.bytes) == (model.map.len() as u64, bytes),
            "step {step}: usage {usage:?} after {op:?}, model {} keys, {bytes} bytes",
            model.map.len()
        );
    }
    // At the end, every key's value, through both handles.
    for k in SHORT_KEYS.iter().map(|k| k.to_string()).chain([key(14)]) {
        for second in [false, true] {
            let got = handles
                .bucket(second)
                .get(&k)
                .map_err(|e| format!("end: get {k:?}: {e}"))?;
            ensure!(
                got == model.value(&k),
                "end: {k:?}: {got:?}, model {:?}",
                model.value(&k)
            );
        }
    }
    Ok(())
}

fn is_write(op: &Op) -> bool {
    matches!(
        op,
        Op::Set(..)
            | Op::SetMany(..)
            | Op::Delete(..)
            | Op::DeleteMany(..)
            | Op::IncU(..)
            | Op::IncI(..)
            | Op::Swap(..)
            | Op::Clear(..)
    )
}

/// The keys a write names.
fn op_keys(op: &Op) -> Vec<String> {
    match op {
        Op::Set(_, k, _) | Op::Delete(_, k) | Op::IncU(_, k, _) | Op::IncI(_, k, _) => vec![k.clone()],
        Op::SetMany(_, pairs) => pairs.iter().map(|(k, _)| k.clone()).collect(),
        Op::DeleteMany(_, keys) => keys.clone(),
        _ => Vec::new(),
    }
}

/// What a write returned: `Ok` says what (a sum, `swapped`, `lost: <the value now>`, the keys
/// cleared; empty for the others).
type Outcome = Result<String, Error>;

/// Runs a write on the bucket.
fn run_write(h: &Handles, slots: &[Slot; 4], op: &Op) -> Outcome {
    let msg = |e: Error| e;
    match op {
        Op::Set(s, k, v) => h.bucket(*s).set(k, v).map(|()| String::new()).map_err(msg),
        Op::SetMany(s, pairs) => h.bucket(*s).set_many(pairs).map(|()| String::new()).map_err(msg),
        Op::Delete(s, k) => h.bucket(*s).delete(k).map(|()| String::new()).map_err(msg),
        Op::DeleteMany(s, keys) => h.bucket(*s).delete_many(keys).map(|()| String::new()).map_err(msg),
        Op::IncU(s, k, d) => h.bucket(*s).increment_u64(k, *d).map(|n| n.to_string()).map_err(msg),
        Op::IncI(s, k, d) => h.bucket(*s).increment_i64(k, *d).map(|n| n.to_string()).map_err(msg),
        Op::Swap(s, slot, v) => {
            let b = h.bucket(*s);
            let (cas, _) = slots[*slot].as_ref().expect("a slot is filled before its swap");
            match b.swap(cas, v) {
                Ok(Ok(())) => Ok("swapped".into()),
                Ok(Err(now)) => Ok(format!("lost: {:?}", now.current())),
                Err(e) => Err(msg(e)),
            }
        }
        Op::Clear(s) => h.bucket(*s).clear().map(|n| n.to_string()).map_err(msg),
        _ => unreachable!("not a write: {op:?}"),
    }
}

/// Whether a write reaches its commit: it is not refused, and is no swap that loses.
fn commits(model: &Model, slots: &[Slot; 4], op: &Op) -> bool {
    let fine = |r: Refusal| r == Refusal::Fine;
    match op {
        Op::Set(_, k, v) => fine(model.set_many(&[(k.clone(), v.clone())])),
        Op::SetMany(_, pairs) => fine(model.set_many(pairs)),
        Op::Delete(_, k) => k.len() <= MAX_KEY_LEN,
        Op::DeleteMany(_, keys) => keys.iter().all(|k| k.len() <= MAX_KEY_LEN),
        Op::IncU(_, k, d) => fine(model.increment(k, |c: u64| c.checked_add(*d)).0),
        Op::IncI(_, k, d) => fine(model.increment(k, |c: i64| c.checked_add(*d)).0),
        Op::Swap(_, slot, v) => {
            let Some((cas, generation)) = &slots[*slot] else {
                return false;
            };
            let k = cas.key();
            model.map.get(k).map(|(_, g)| *g) == *generation
                && fine(model.check_pair(k, v))
                && model.fits(&[(k.to_string(), v.clone())])
        }
        Op::Clear(_) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every input of the committed corpus (`fuzz/corpus/kv_batches/`).
    fn corpus() -> Vec<(String, Vec<u8>)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/kv_batches");
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| {
                let path = e.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read(&path).unwrap())
            })
            .collect();
        inputs.sort();
        assert!(inputs.len() >= 10, "the corpus has only {} inputs", inputs.len());
        inputs
    }

    #[test]
    fn kv_batches_corpus_replays() {
        for (name, input) in corpus() {
            let (options, ops) = decode(&input);
            if let Err(e) = check_ops(options, &ops) {
                panic!("fuzz/corpus/kv_batches/{name}: {e}");
            }
        }
    }

    /// The target on generated inputs, beyond the committed corpus: both kinds of limits, random
    /// operations.
    #[test]
    fn kv_batches_on_generated_inputs() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for case in 0..32u64 {
            let len = 40 + next() % 220;
            let mut data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            data[0] = case as u8;
            kv_batches(&data);
        }
    }
}
