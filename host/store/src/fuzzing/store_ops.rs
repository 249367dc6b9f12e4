//! The `store_ops` target: a sequence of operations run against a namespace and against
//! [`Model`], which must agree after every step.

use std::collections::HashMap;
use std::path::Path;

use super::entry::{header_fools_contains, valid_content};
use super::model::kv_key;
use super::{Bytes, Model};
use crate::fault;
use crate::{Durability, Error, FileCache, Key, Namespace, NamespaceOptions};

/// The quota of the namespace the operations run in: six 4 KiB blocks (an entry is charged its
/// file, rounded up to 4 KiB: one to three blocks here).
pub const QUOTA: u64 = 6 * 4096;
/// How many distinct keys the operations use.
pub const KEYS: u8 = 6;
/// The longest content an operation writes.
pub const MAX_LEN: u16 = 9000;
/// The entry-size limit of the second handle ([`Op::Second`], [`Op::SecondGet`]).
pub const SECOND_LIMIT: u64 = 1200;

/// One operation on the store. Keys are `0..KEYS`, lengths `0..MAX_LEN`.
#[derive(Debug, Clone)]
pub enum Op {
    /// `add`.
    Add(u8, u16),
    /// `get`.
    Get(u8),
    /// `open`, read to the end in chunks of the given size.
    Open(u8, u16),
    /// `create` (`create_trailing` for an odd chunk size), writes of the given chunk size,
    /// `commit`.
    Stream(u8, u16, u16),
    /// `create`, a write, then dropped without `commit`.
    AbandonedStream(u8, u16),
    /// `delete`.
    Delete(u8),
    /// `contains`.
    Contains(u8),
    /// Drops the namespace and opens it again, as a new process would.
    Reopen,
    /// An `add` (or, with `stream`, a streamed write) during which the `nth` hooked operation of
    /// the write path fails (and, with `persistent`, every later one), as on a full disk.
    Faulty {
        /// The key.
        key: u8,
        /// The content's length.
        len: u16,
        /// Streamed rather than `add`.
        stream: bool,
        /// Which hooked operation fails first (from 1).
        nth: u8,
        /// Whether every later one fails too.
        persistent: bool,
    },
    /// A key-value write of a value of the given length (key `key<k>`), as the key-value crate
    /// charges it: [`Namespace::charge_data`] from the old value's size to the new one's.
    KvSet(u8, u16),
    /// Checks the data charge ([`Namespace::data_bytes`]) against the records held.
    KvGet(u8),
    /// A key-value delete: the charge of record `k` given back.
    KvDelete(u8),
    /// Flips the byte at this position (modulo the file's length) of the key's entry file, if
    /// it has one, as a damaged disk would.
    Damage(u8, u16),
    /// `FileCache::verify`.
    Verify,
    /// `FileCache::gc` down to this many bytes.
    Gc(u16),
    /// `Namespace::clear`.
    Clear,
    /// A write through a second handle on the namespace (another process's, with an entry-size
    /// limit of [`SECOND_LIMIT`]): `add` for chunk 0, else streamed in chunks of that size.
    Second(u8, u16, u16),
    /// `get` through the second handle.
    SecondGet(u8),
}

/// Decodes a fuzz input into operations (at most 64).
pub fn decode_ops(data: &[u8]) -> Vec<Op> {
    let mut b = Bytes(data);
    let mut ops = Vec::new();
    while !b.is_empty() && ops.len() < 64 {
        let kind = b.u8();
        let key = b.u8() % KEYS;
        ops.push(match kind % 10 {
            // Empty entries are charged a filesystem block too: a quarter of the adds.
            0 | 1 if kind & 0x40 != 0 => Op::Add(key, 0),
            0 | 1 => Op::Add(key, b.u16() % MAX_LEN),
            2 => Op::Get(key),
            3 => Op::Open(key, b.u16() % 700 + 1),
            4 => Op::Stream(key, b.u16() % MAX_LEN, b.u16() % 700 + 1),
            5 => Op::AbandonedStream(key, b.u16() % MAX_LEN),
            6 => Op::Delete(key),
            7 if kind & 0x80 == 0 => Op::Contains(key),
            7 => Op::Reopen,
            8 => match kind / 10 % 3 {
                0 => Op::KvSet(key, b.u16() % MAX_LEN),
                1 => Op::KvGet(key),
                _ => Op::KvDelete(key),
            },
            _ => Op::Faulty {
                key,
                len: b.u16() % MAX_LEN,
                stream: kind & 0x10 != 0,
                nth: b.u8() % 16 + 1,
                persistent: kind & 0x20 != 0,
            },
        });
    }
    ops
}

/// The operation-sequence target: see the module documentation.
pub fn store_ops(data: &[u8]) {
    if let Err(e) = check_ops(&decode_ops(data)) {
        panic!("{e}");
    }
}

fn value(k: u8, len: u16, salt: u64) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((i * 31 + k as u64 * 7 + salt) % 251) as u8)
        .collect()
}

fn key(k: u8) -> Key {
    Key::digest([k])
}

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// The usage counter in the state file of the namespace at `dir`.
fn stored_counter(dir: &Path) -> Option<u64> {
    let b = std::fs::read(dir.join("state")).ok()?;
    Some(u64::from_le_bytes(b.get(8..16)?.try_into().ok()?))
}

fn read_all(ns: &Namespace, k: u8, chunk: u16) -> crate::Result<Option<Vec<u8>>> {
    let Some(mut r) = ns.open(&key(k))? else {
        return Ok(None);
    };
    let mut v = Vec::new();
    let mut buf = vec![0u8; chunk as usize];
    loop {
        let n = r.read_into(&mut buf)?;
        if n == 0 {
            return Ok(Some(v));
        }
        v.extend_from_slice(&buf[..n]);
    }
}

fn write(ns: &Namespace, k: u8, v: &[u8], stream: Option<u16>) -> crate::Result<()> {
    match stream {
        None => ns.add(&key(k), v),
        Some(chunk) => {
            // An odd chunk size writes the entry with a trailing header.
            let mut w = if chunk % 2 == 1 {
                ns.create_trailing(&key(k))?
            } else {
                ns.create(&key(k))?
            };
            for c in v.chunks(chunk.max(1) as usize) {
                w.write(c)?;
            }
            w.commit()
        }
    }
}

/// Runs `ops` against a fresh namespace and against [`Model`]; the first disagreement.
pub fn check_ops(ops: &[Op]) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let options = NamespaceOptions {
        quota: QUOTA,
        durability: Durability::Relaxed,
        ..Default::default()
    };
    let open = || {
        FileCache::open(dir.path())
            .and_then(|c| c.namespace("model", options))
            .map_err(|e| format!("reopen: {e}"))
    };
    let open_second = || {
        FileCache::open(dir.path())
            .and_then(|c| c.namespace("model", options.max_entry_size(SECOND_LIMIT)))
            .map_err(|e| format!("reopen: {e}"))
    };
    let ns_dir = dir.path().join("model");
    let mut ns = open()?;
    // What the key-value crate would hold: the charged size of each record.
    let mut records: HashMap<u8, u64> = HashMap::new();
    let mut second = open_second()?;
    let mut model = Model::default();
    for (step, op) in ops.iter().enumerate() {
        let salt = step as u64;
        match *op {
            Op::Add(k, len) | Op::Stream(k, len, _) => {
                let stream = if let Op::Stream(_, _, c) = *op { Some(c) } else { None };
                let v = value(k, len, salt);
                let r = write(&ns, k, &v, stream);
                ensure!(r.is_ok() == model.add(k, v), "step {step} {op:?}: {r:?}");
            }
            Op::Get(k) => {
                let got = ns.get(&key(k)).map_err(|e| format!("step {step} {op:?}: {e}"))?;
                ensure!(got == model.read(k), "step {step} {op:?}: wrong answer");
            }
            Op::Open(k, chunk) => {
                let damaged = model.damaged.get(&k).copied();
                let expected = model.read(k);
                match read_all(&ns, k, chunk) {
                    Ok(got) => ensure!(
                        got == expected && damaged != Some(true),
                        "step {step} {op:?}: wrong answer"
                    ),
                    // Damage behind a whole header is found by reading the content.
                    Err(Error::Corrupt { .. }) if damaged == Some(true) => {}
                    Err(e) => return Err(format!("step {step} {op:?}: {e}")),
                }
            }
            Op::AbandonedStream(k, len) => {
                let mut w = ns.create(&key(k)).map_err(|e| format!("step {step}: {e}"))?;
                w.write(&value(k, len, salt)).map_err(|e| format!("step {step}: {e}"))?;
                drop(w);
            }
            Op::Delete(k) => {
                ns.delete(&key(k)).map_err(|e| format!("step {step} {op:?}: {e}"))?;
                model.delete(k);
            }
            Op::Contains(k) => {
                let got = ns.contains(&key(k)).map_err(|e| format!("step {step} {op:?}: {e}"))?;
                ensure!(got == model.contains(k), "step {step} {op:?}: wrong answer");
            }
            Op::Reopen => {
                drop((ns, second));
                ns = open()?;
                second = open_second()?;
            }
            Op::Damage(k, pos) => {
                let hex = key(k).to_string();
                let path = ns_dir.join(&hex[..2]).join(&hex);
                if model.entries.contains_key(&k) {
                    let mut file = std::fs::read(&path).map_err(|e| format!("step {step} {op:?}: {e}"))?;
                    let at = pos as usize % file.len();
                    file[at] ^= 0x20;
                    // Rewritten in place, as a disk's damage is: same file, same size and time.
                    let mtime = std::fs::metadata(&path).and_then(|m| m.modified());
                    std::fs::write(&path, &file)
                        .and_then(|()| std::fs::File::options().write(true).open(&path)?.set_modified(mtime?))
                        .map_err(|e| format!("step {step} {op:?}: {e}"))?;
                    // Judged by the independent check of the format (a second flip of the same
                    // byte makes the entry whole again).
                    if valid_content(&file, &key(k)).is_some() {
                        model.damaged.remove(&k);
                    } else {
                        model.damaged.insert(k, header_fools_contains(&file, &key(k)));
                    }
                }
            }
            Op::Verify => {
                let report = FileCache::open(dir.path())
                    .and_then(|c| c.verify(&mut |_| {}))
                    .map_err(|e| format!("step {step} {op:?}: {e}"))?;
                let damaged: Vec<u8> = model.damaged.keys().copied().collect();
                ensure!(
                    report.removed == damaged.len() as u64 && report.checked == model.entries.len() as u64,
                    "step {step} {op:?}: {report:?}, model {model:?}"
                );
                for k in damaged {
                    model.delete(k);
                }
            }
            Op::Gc(max) => {
                FileCache::open(dir.path())
                    .and_then(|c| c.gc(u64::from(max), &mut |_| {}))
                    .map_err(|e| format!("step {step} {op:?}: {e}"))?;
                model.gc(u64::from(max));
            }
            Op::Clear => {
                let removed = ns.clear().map_err(|e| format!("step {step} {op:?}: {e}"))?;
                ensure!(
                    removed == model.entries.len() as u64,
                    "step {step} {op:?}: {removed} removed"
                );
                // Key-value data is not the store's to clear: it stays, and stays charged.
                model = Model {
                    records: std::mem::take(&mut model.records),
                    ..Model::default()
                };
            }
            Op::Second(k, len, chunk) => {
                let v = value(k, len, salt);
                let r = write(&second, k, &v, (chunk > 0).then_some(chunk));
                if u64::from(len) > SECOND_LIMIT {
                    ensure!(
                        matches!(r, Err(Error::TooLarge { limit: SECOND_LIMIT })),
                        "step {step} {op:?}: past the limit: {r:?}"
                    );
                } else {
                    ensure!(r.is_ok() == model.add(k, v), "step {step} {op:?}: {r:?}");
                }
            }
            Op::SecondGet(k) => {
                let r = second.get(&key(k));
                let too_large = model.entries.get(&k).is_some_and(|v| v.len() as u64 > SECOND_LIMIT);
                // An entry past this handle's limit is not read (not even to check it): too
                // large, unless its header is damaged (then it is removed).
                if too_large && model.damaged.get(&k) != Some(&false) {
                    ensure!(
                        matches!(r, Err(Error::TooLarge { .. })),
                        "step {step} {op:?}: past the limit: {:?}",
                        r.map(|o| o.map(|v| v.len()))
                    );
                } else {
                    let got = r.map_err(|e| format!("step {step} {op:?}: {e}"))?;
                    ensure!(got == model.read(k), "step {step} {op:?}: wrong answer");
                }
            }
            Op::KvSet(k, len) => {
                let v = value(k, len, salt);
                let (old, new) = (
                    records.get(&k).copied().unwrap_or(0),
                    (kv_key(k).len() + v.len()) as u64,
                );
                let r = ns.charge_data(old, new, || Ok::<_, Error>(()));
                if r.is_ok() {
                    records.insert(k, new);
                }
                ensure!(r.is_ok() == model.kv_set(k, v), "step {step} {op:?}: {r:?}");
            }
            Op::KvGet(k) => {
                let got = ns.data_bytes().map_err(|e| format!("step {step} {op:?}: {e}"))?;
                ensure!(
                    got == model.records_used(),
                    "step {step} {op:?}: data charge {got}, records hold {}",
                    model.records_used()
                );
                ensure!(
                    records.get(&k).copied() == model.records.get(&k).map(|v| (kv_key(k).len() + v.len()) as u64),
                    "step {step} {op:?}: wrong record"
                );
            }
            Op::KvDelete(k) => {
                if let Some(old) = records.remove(&k) {
                    ns.charge_data(old, 0, || Ok::<_, Error>(()))
                        .map_err(|e| format!("step {step} {op:?}: {e}"))?;
                }
                model.records.remove(&k);
            }
            Op::Faulty {
                key: k,
                len,
                stream,
                nth,
                persistent,
            } => {
                let v = value(k, len, salt);
                let guard = fault::inject(u64::from(nth), crate::sys::DISK_FULL, persistent);
                let r = write(&ns, k, &v, stream.then_some(97));
                let hits = fault::hits();
                drop(guard);
                if !hits.iter().any(|h| h.failed) {
                    ensure!(
                        r.is_ok() == model.add(k, v),
                        "step {step} {op:?} (no fault struck): {r:?}"
                    );
                } else {
                    ensure!(
                        matches!(r, Err(Error::Io { .. })),
                        "step {step} {op:?}: expected io, got {r:?}"
                    );
                    after_fault(&ns, &mut model, k, len, &hits).map_err(|e| format!("step {step} {op:?}: {e}"))?;
                }
            }
        }
        let used = ns.scan(0).map_err(|e| e.to_string())?.used;
        ensure!(
            used == model.used(),
            "step {step} {op:?}: {used} bytes stored, model {}",
            model.used()
        );
        ensure!(used <= QUOTA, "step {step}: over quota");
        if let Some(counter) = stored_counter(&ns_dir) {
            ensure!(
                counter == used,
                "step {step} {op:?}: counter {counter}, {used} bytes present"
            );
        }
    }
    Ok(())
}

/// After a write failed on an injected fault: the key keeps its old entry; the entries the write
/// may have evicted first (the oldest, in order) may be gone, nothing else. A failed write of the
/// usage counter leaves it too high, which the next scan corrects (here, at once).
fn after_fault(ns: &Namespace, model: &mut Model, k: u8, len: u16, hits: &[fault::Hit]) -> Result<(), String> {
    let old = model.read(k);
    let got = ns.get(&key(k)).map_err(|e| e.to_string())?;
    ensure!(got == old, "the key's old entry changed");
    // An entry with a damaged header is absent whether the write evicted it or `contains`
    // below finds the damage (and removes it): it is left out of the order of eviction.
    let header_damaged: Vec<u8> = model.damaged.iter().filter(|d| !*d.1).map(|d| *d.0).collect();
    let victims: Vec<u8> = model.victims(k, u64::from(len)).unwrap_or_default();
    let victims: Vec<u8> = victims.into_iter().filter(|x| !header_damaged.contains(x)).collect();
    let mut gone = Vec::new();
    for x in model.order.clone() {
        let present = ns.contains(&key(x)).map_err(|e| e.to_string())?;
        if header_damaged.contains(&x) {
            ensure!(!present, "an entry with a damaged header was found");
            model.delete(x);
        } else if !present {
            gone.push(x);
        }
    }
    ensure!(
        victims.starts_with(&gone),
        "lost {gone:?}; only a prefix of the eviction order {victims:?} may go"
    );
    for x in gone {
        model.delete(x);
    }
    if hits.iter().any(|h| h.point == fault::Point::UpdateCounter && h.failed) {
        ns.recount().map_err(|e| e.to_string())?;
    }
    Ok(())
}
