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

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use filecache_store::{FileCache, NamespaceOptions};

use crate::{Bucket, Cas, Error, MAX_KEY_LEN, MAX_PAGE, Namespace, fault};

/// A little reader of fuzz input: every read succeeds, with zeros past the end.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn take(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head.to_vec()
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Short keys: the empty key, one with a newline, one with a NUL, non-ASCII, a path.
const SHORT_KEYS: [&str; 8] = ["", "a", "b", "line\nbreak", "ключ", "n", "dir/x", "nul\0"];

/// A key from one byte: mostly [`SHORT_KEYS`] (so that batches collide with each other and with
/// keys held), sometimes a key of exactly [`MAX_KEY_LEN`] bytes or one byte past it.
fn key(b: u8) -> String {
    match b % 16 {
        14 => "k".repeat(MAX_KEY_LEN),
        15 => "k".repeat(MAX_KEY_LEN + 1),
        i => SHORT_KEYS[usize::from(i) % SHORT_KEYS.len()].to_string(),
    }
}

/// A value: empty, raw bytes from the input, a decimal integer (for the increments), a string
/// that is almost one, or a long value (past small limits).
fn value(b: &mut Bytes<'_>) -> Vec<u8> {
    let tag = b.u8();
    let arg = usize::from(tag >> 3);
    match tag % 8 {
        0 | 1 => Vec::new(),
        2..=4 => b.take(arg % 24),
        5 => (arg as i64 - 16).to_string().into_bytes(),
        6 => [
            "18446744073709551615",
            "9223372036854775807",
            "-9223372036854775808",
            "+7",
            "-0",
            " 1",
            "007",
            "1.5",
        ][arg % 8]
            .as_bytes()
            .to_vec(),
        _ => {
            let len = usize::from(b.u16() % 400);
            (0..len).map(|i| (i * 7 + arg) as u8).collect()
        }
    }
}

fn keys(b: &mut Bytes<'_>) -> Vec<String> {
    let n = b.u8() % 8;
    (0..n).map(|_| key(b.u8())).collect()
}

/// One operation. `second` (where there is one): through the second handle.
#[derive(Debug, Clone)]
pub enum Op {
    /// `set`.
    Set(bool, String, Vec<u8>),
    /// `get`.
    Get(bool, String),
    /// `delete`.
    Delete(bool, String),
    /// `exists`.
    Exists(bool, String),
    /// `set-many`.
    SetMany(bool, Vec<(String, Vec<u8>)>),
    /// `delete-many`.
    DeleteMany(bool, Vec<String>),
    /// `get-many`, with the bound on the bytes of values it may gather.
    GetMany(bool, Vec<String>, u64),
    /// `increment` (unsigned).
    IncU(bool, String, u64),
    /// `increment` (signed).
    IncI(bool, String, i64),
    /// Reads a key for a compare-and-swap into one of four slots.
    Cas(bool, usize, String),
    /// Swaps the value read into a slot (an empty slot: reads key 0 first).
    Swap(bool, usize, Vec<u8>),
    /// Lists every key, in pages of this size (0: [`MAX_PAGE`]; past it: [`MAX_PAGE`]).
    List(bool, usize),
    /// Drops both handles and opens them again, as new processes would.
    Reopen,
    /// `verify`.
    Verify,
    /// `clear`.
    Clear(bool),
    /// A write (any of the above that writes) whose commit fails.
    Faulty(Box<Op>),
}

/// A write operation from the input (for [`Op::Faulty`]).
fn write_op(b: &mut Bytes<'_>, second: bool) -> Op {
    match b.u8() % 8 {
        0 => Op::Set(second, key(b.u8()), value(b)),
        1 => Op::SetMany(second, pairs(b)),
        2 => Op::Delete(second, key(b.u8())),
        3 => Op::DeleteMany(second, keys(b)),
        4 => Op::IncU(second, key(b.u8()), u64::from(b.u8() % 4)),
        5 => Op::IncI(second, key(b.u8()), i64::from(b.u8() % 5) - 2),
        6 => Op::Swap(second, usize::from(b.u8() % 4), value(b)),
        _ => Op::Clear(second),
    }
}

fn pairs(b: &mut Bytes<'_>) -> Vec<(String, Vec<u8>)> {
    let n = b.u8() % 8;
    (0..n).map(|_| (key(b.u8()), value(b))).collect()
}

/// The namespace's limits and the operations (at most 64) a fuzz input describes. First byte:
/// `% 4 == 0`, the default limits; otherwise a quota of 16–271 bytes and an entry-size limit of
/// 0–63 bytes from the next two.
pub fn decode(data: &[u8]) -> (NamespaceOptions, Vec<Op>) {
    let mut b = Bytes(data);
    let mut options = NamespaceOptions::default();
    if b.u8() % 4 != 0 {
        options = options
            .quota(16 + u64::from(b.u8()))
            .max_entry_size(u64::from(b.u8() % 64));
    }
    let mut ops = Vec::new();
    while !b.is_empty() && ops.len() < 64 {
        let kind = b.u8();
        let second = kind & 0x80 != 0;
        ops.push(match kind % 16 {
            0 | 1 => Op::Set(second, key(b.u8()), value(&mut b)),
            2 => Op::Get(second, key(b.u8())),
            3 => Op::Delete(second, key(b.u8())),
            4 => Op::Exists(second, key(b.u8())),
            5 | 6 => Op::SetMany(second, pairs(&mut b)),
            7 => Op::DeleteMany(second, keys(&mut b)),
            8 => {
                let keys = keys(&mut b);
                let max = match b.u8() {
                    255 => u64::MAX,
                    m => u64::from(m % 64),
                };
                Op::GetMany(second, keys, max)
            }
            9 => Op::IncU(
                second,
                key(b.u8()),
                match b.u8() {
                    255 => u64::MAX,
                    d => u64::from(d % 8),
                },
            ),
            10 => Op::IncI(
                second,
                key(b.u8()),
                match b.u8() {
                    255 => i64::MAX,
                    254 => i64::MIN,
                    d => i64::from(d % 8) - 4,
                },
            ),
            11 => Op::Cas(second, usize::from(b.u8() % 4), key(b.u8())),
            12 => Op::Swap(second, usize::from(b.u8() % 4), value(&mut b)),
            13 => Op::List(
                second,
                match b.u8() {
                    255 => MAX_PAGE + 1,
                    n => usize::from(n % 6),
                },
            ),
            14 => Op::Faulty(Box::new(write_op(&mut b, second))),
            _ => match kind / 16 % 4 {
                0 => Op::Reopen,
                1 => Op::Verify,
                _ => Op::Clear(second),
            },
        });
    }
    (options, ops)
}

/// The target: see the module documentation.
pub fn kv_batches(data: &[u8]) {
    let (options, ops) = decode(data);
    if let Err(e) = check_ops(options, &ops) {
        panic!("{e}");
    }
}

/// Why a write is refused (or `Fine`: it is not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Fine,
    KeyTooLong,
    TooLarge,
    Quota,
    NotANumber,
    Overflow,
}

fn refusal_of<T: std::fmt::Debug>(r: &Result<T, Error>) -> Result<Refusal, String> {
    Ok(match r {
        Ok(_) => Refusal::Fine,
        Err(Error::KeyTooLong { .. }) => Refusal::KeyTooLong,
        Err(Error::Store(filecache_store::Error::TooLarge { .. })) => Refusal::TooLarge,
        Err(Error::Store(filecache_store::Error::QuotaExceeded { .. })) => Refusal::Quota,
        Err(Error::NotANumber { .. }) => Refusal::NotANumber,
        Err(Error::Overflow { .. }) => Refusal::Overflow,
        Err(e) => return Err(format!("unexpected error: {}", e.full_message())),
    })
}

/// What the bucket must hold: each key's value and the generation of its last write (what a
/// compare-and-swap compares), and the limits it must enforce.
#[derive(Debug, Clone)]
pub struct Model {
    map: HashMap<String, (Vec<u8>, u64)>,
    generation: u64,
    quota: u64,
    max_entry_size: u64,
}

fn charged(k: &str, v: &[u8]) -> u64 {
    (k.len() + v.len()) as u64
}

impl Model {
    fn bytes(&self) -> u64 {
        self.map.iter().map(|(k, (v, _))| charged(k, v)).sum()
    }

    fn size_of(&self, k: &str) -> u64 {
        self.map.get(k).map_or(0, |(v, _)| charged(k, v))
    }

    fn value(&self, k: &str) -> Option<Vec<u8>> {
        self.map.get(k).map(|(v, _)| v.clone())
    }

    /// The limits one pair must keep on its own.
    fn check_pair(&self, k: &str, v: &[u8]) -> Refusal {
        if v.len() as u64 > self.max_entry_size {
            Refusal::TooLarge
        } else if charged(k, v) > self.quota {
            Refusal::Quota
        } else {
            Refusal::Fine
        }
    }

    /// Whether writing these pairs (the last value of a key given twice) fits the quota, given
    /// what is held (no cache entries in the namespace: nothing can be evicted to make room).
    fn fits(&self, pairs: &[(String, Vec<u8>)]) -> bool {
        let last: HashMap<&str, &[u8]> = pairs.iter().map(|(k, v)| (k.as_str(), &v[..])).collect();
        let old: u64 = last.keys().map(|k| self.size_of(k)).sum();
        let new: u64 = last.iter().map(|(k, v)| charged(k, v)).sum();
        new <= old || self.bytes() - old + new <= self.quota
    }

    /// How `set-many` of `pairs` must end: checks in the order the bucket makes them.
    fn set_many(&self, pairs: &[(String, Vec<u8>)]) -> Refusal {
        if pairs.iter().any(|(k, _)| k.len() > MAX_KEY_LEN) {
            return Refusal::KeyTooLong;
        }
        if let Some(r) = pairs
            .iter()
            .map(|(k, v)| self.check_pair(k, v))
            .find(|r| *r != Refusal::Fine)
        {
            return r;
        }
        if self.fits(pairs) {
            Refusal::Fine
        } else {
            Refusal::Quota
        }
    }

    fn write(&mut self, pairs: Vec<(String, Vec<u8>)>) {
        for (k, v) in pairs {
            self.generation += 1;
            self.map.insert(k, (v, self.generation));
        }
    }

    /// How an increment must end, and the value it stores.
    fn increment<T>(&self, k: &str, add: impl Fn(T) -> Option<T>) -> (Refusal, Option<(T, Vec<u8>)>)
    where
        T: std::str::FromStr + Default + ToString + Copy,
    {
        if k.len() > MAX_KEY_LEN {
            return (Refusal::KeyTooLong, None);
        }
        let cur = match self.map.get(k) {
            None => T::default(),
            Some((v, _)) => match std::str::from_utf8(v).ok().and_then(|s| s.parse::<T>().ok()) {
                Some(n) => n,
                None => return (Refusal::NotANumber, None),
            },
        };
        let Some(sum) = add(cur) else {
            return (Refusal::Overflow, None);
        };
        let stored = sum.to_string().into_bytes();
        let r = match self.check_pair(k, &stored) {
            Refusal::Fine if !self.fits(&[(k.to_string(), stored.clone())]) => Refusal::Quota,
            r => r,
        };
        (r, Some((sum, stored)))
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

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
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
    let mut model = Model {
        map: HashMap::new(),
        generation: 0,
        quota: options.quota,
        max_entry_size: options.max_entry_size,
    };
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

/// Runs a write (or checks one already run: `ran`) against the model, which it updates.
fn check_write(
    h: &Handles,
    model: &mut Model,
    slots: &mut [Slot; 4],
    op: &Op,
    ran: Option<Outcome>,
) -> Result<(), String> {
    // An empty slot is filled first, as a guest would read before it swaps.
    if let Op::Swap(s, slot, _) = op
        && slots[*slot].is_none()
    {
        check_read(h, model, slots, &Op::Cas(*s, *slot, key(0)))?;
    }
    let held = model.map.len();
    let r = match ran {
        Some(r) => r,
        None => run_write(h, slots, op),
    };
    match op {
        Op::Set(_, k, v) => {
            let want = model.set_many(&[(k.clone(), v.clone())]);
            check_refusal(&r, want, op)?;
            if want == Refusal::Fine {
                model.write(vec![(k.clone(), v.clone())]);
            }
        }
        Op::SetMany(_, pairs) => {
            let want = model.set_many(pairs);
            check_refusal(&r, want, op)?;
            if want == Refusal::Fine {
                model.write(pairs.clone());
            }
        }
        Op::Delete(_, k) => {
            let want = if k.len() > MAX_KEY_LEN {
                Refusal::KeyTooLong
            } else {
                Refusal::Fine
            };
            check_refusal(&r, want, op)?;
            model.map.remove(k);
        }
        Op::DeleteMany(_, keys) => {
            let want = if keys.iter().any(|k| k.len() > MAX_KEY_LEN) {
                Refusal::KeyTooLong
            } else {
                Refusal::Fine
            };
            check_refusal(&r, want, op)?;
            if want == Refusal::Fine {
                for k in keys {
                    model.map.remove(k);
                }
            }
        }
        Op::IncU(_, k, d) => {
            let (want, out) = model.increment(k, |c: u64| c.checked_add(*d));
            check_refusal(&r, want, op)?;
            if let (Refusal::Fine, Some((sum, stored))) = (want, out) {
                ensure!(
                    matches!(&r, Ok(n) if *n == sum.to_string()),
                    "{op:?}: {r:?}, model {sum}"
                );
                model.write(vec![(k.clone(), stored)]);
            }
        }
        Op::IncI(_, k, d) => {
            let (want, out) = model.increment(k, |c: i64| c.checked_add(*d));
            check_refusal(&r, want, op)?;
            if let (Refusal::Fine, Some((sum, stored))) = (want, out) {
                ensure!(
                    matches!(&r, Ok(n) if *n == sum.to_string()),
                    "{op:?}: {r:?}, model {sum}"
                );
                model.write(vec![(k.clone(), stored)]);
            }
        }
        Op::Swap(s, slot, v) => {
            let (cas, generation) = slots[*slot].clone().expect("filled above");
            let k = cas.key().to_string();
            let now = model.map.get(&k).map(|(_, g)| *g);
            let want = if k.len() > MAX_KEY_LEN {
                Refusal::KeyTooLong
            } else {
                match model.check_pair(&k, v) {
                    Refusal::Fine if now == generation && !model.fits(&[(k.clone(), v.clone())]) => Refusal::Quota,
                    r => r,
                }
            };
            check_refusal(&r, want, op)?;
            if want == Refusal::Fine {
                if now == generation {
                    ensure!(
                        matches!(&r, Ok(m) if m == "swapped"),
                        "{op:?}: {r:?}, the read was fresh"
                    );
                    model.write(vec![(k.clone(), v.clone())]);
                } else {
                    let current = model.value(&k);
                    ensure!(
                        matches!(&r, Ok(m) if *m == format!("lost: {:?}", current.as_deref())),
                        "{op:?}: {r:?}, the read was stale (now {current:?})"
                    );
                    // A guest retries with what the loss answered: a fresh read.
                    if let Ok(fresh) = h.bucket(*s).cas(&k) {
                        slots[*slot] = Some((fresh, model.map.get(&k).map(|(_, g)| *g)));
                    }
                }
            }
        }
        Op::Clear(_) => {
            ensure!(
                matches!(&r, Ok(n) if *n == held.to_string()),
                "{op:?}: {r:?}, model held {held} keys"
            );
            model.map.clear();
        }
        _ => unreachable!("not a write: {op:?}"),
    }
    Ok(())
}

/// Checks that a write ended as the model says it must.
fn check_refusal(r: &Outcome, want: Refusal, op: &Op) -> Result<(), String> {
    let got = refusal_of(r).map_err(|e| format!("{op:?}: {e}"))?;
    ensure!(got == want, "{op:?}: {r:?}, the model says {want:?}");
    Ok(())
}

/// A write whose commit fails: one that would commit fails, and changes nothing; one that would
/// not (a refusal, a swap that loses) ends as it would without the fault.
fn check_faulty(h: &Handles, model: &mut Model, slots: &mut [Slot; 4], op: &Op) -> Result<(), String> {
    if let Op::Swap(s, slot, _) = op
        && slots[*slot].is_none()
    {
        check_read(h, model, slots, &Op::Cas(*s, *slot, key(0)))?;
    }
    let commits = commits(model, slots, op);
    let r = {
        let _armed = fault::inject(fault::Point::BeforeCommit);
        run_write(h, slots, op)
    };
    let before = model.map.clone();
    if commits {
        ensure!(
            matches!(&r, Err(e) if e.full_message().contains("injected failure")),
            "{op:?} with a failing commit: {r:?}"
        );
    } else {
        check_write(h, model, slots, op, Some(r))?;
        ensure!(model.map == before, "{op:?}: the model changed");
    }
    // Every key the write named, and every key held, is as it was.
    for k in before.keys().chain(op_keys(op).iter()) {
        if k.len() > MAX_KEY_LEN {
            continue;
        }
        let got = h.first.get(k);
        let want = model.value(k);
        ensure!(
            matches!(&got, Ok(v) if *v == want),
            "{op:?} with a failing commit changed {k:?}: {got:?}, want {want:?}"
        );
    }
    Ok(())
}

/// Runs a read and checks its answer against the model.
fn check_read(h: &Handles, model: &Model, slots: &mut [Slot; 4], op: &Op) -> Result<(), String> {
    let too_long = |k: &str| k.len() > MAX_KEY_LEN;
    match op {
        Op::Get(s, k) => {
            let r = h.bucket(*s).get(k);
            if too_long(k) {
                ensure!(refusal_of(&r)? == Refusal::KeyTooLong, "{op:?}: {r:?}");
            } else {
                ensure!(
                    matches!(&r, Ok(v) if *v == model.value(k)),
                    "{op:?}: {r:?}, model {:?}",
                    model.value(k)
                );
            }
        }
        Op::Exists(s, k) => {
            let r = h.bucket(*s).exists(k);
            if too_long(k) {
                ensure!(refusal_of(&r)? == Refusal::KeyTooLong, "{op:?}: {r:?}");
            } else {
                ensure!(r.as_ref().ok() == Some(&model.map.contains_key(k)), "{op:?}: {r:?}");
            }
        }
        Op::GetMany(s, keys, max) => {
            let r = h.bucket(*s).get_many(keys, *max);
            let want: Vec<Option<Vec<u8>>> = keys.iter().map(|k| model.value(k)).collect();
            let total: u64 = want.iter().flatten().map(|v| v.len() as u64).sum();
            match r {
                _ if keys.iter().any(|k| too_long(k)) => {
                    ensure!(refusal_of(&r)? == Refusal::KeyTooLong, "{op:?}: {r:?}")
                }
                Ok(got) => {
                    ensure!(total <= *max, "{op:?}: gathered {total} bytes, past its bound");
                    ensure!(got == want, "{op:?}: {got:?}, model {want:?}");
                }
                Err(Error::TooMuchAtOnce { .. }) => ensure!(total > *max, "{op:?}: refused {total} bytes"),
                Err(e) => return Err(format!("{op:?}: {}", e.full_message())),
            }
        }
        Op::Cas(s, slot, k) => {
            let r = h.bucket(*s).cas(k);
            if too_long(k) {
                ensure!(refusal_of(&r)? == Refusal::KeyTooLong, "{op:?}: {r:?}");
            } else {
                let cas = r.map_err(|e| format!("{op:?}: {}", e.full_message()))?;
                ensure!(
                    cas.current().map(<[u8]>::to_vec) == model.value(k),
                    "{op:?}: read {:?}, model {:?}",
                    cas.current(),
                    model.value(k)
                );
                slots[*slot] = Some((cas, model.map.get(k).map(|(_, g)| *g)));
            }
        }
        Op::List(s, size) => {
            let page_max = if *size == 0 { MAX_PAGE } else { (*size).min(MAX_PAGE) };
            let mut listed = Vec::new();
            let mut from = 0;
            loop {
                let page = h
                    .bucket(*s)
                    .list_keys(from, *size)
                    .map_err(|e| format!("{op:?}: {}", e.full_message()))?;
                ensure!(page.keys.len() <= page_max, "{op:?}: a page of {}", page.keys.len());
                listed.extend(page.keys);
                ensure!(
                    listed.len() <= model.map.len(),
                    "{op:?}: the listing runs on: {listed:?}"
                );
                match page.next {
                    Some(n) => from = n,
                    None => break,
                }
            }
            let unique: HashSet<&String> = listed.iter().collect();
            ensure!(unique.len() == listed.len(), "{op:?}: a key listed twice: {listed:?}");
            ensure!(
                unique == model.map.keys().collect::<HashSet<_>>(),
                "{op:?}: listed {listed:?}, model {:?}",
                model.map.keys().collect::<Vec<_>>()
            );
        }
        _ => unreachable!("not a read: {op:?}"),
    }
    Ok(())
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
