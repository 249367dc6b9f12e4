//! The fuzz targets' logic, shared by the cargo-fuzz targets in `fuzz/`, by the test that
//! replays their committed corpus (what CI runs), and by the model-based property test.
//!
//! Not part of the API: built for the crate's tests or with the `fuzzing` feature. Each target
//! panics when the store breaks a promise; it never panics on any input otherwise.
//!
//! - [`entry`]: an arbitrary entry file — raw bytes, or a valid entry damaged in a few places —
//!   is planted in a namespace and read back with `get`, `open`, `contains` and `verify`. An
//!   independent check of the format decides what must happen: a valid file is served exactly,
//!   anything else is a miss (or `corrupt` at the end of a read) and is removed.
//! - [`store_ops`]: a sequence of operations (add, get, open, streamed and abandoned writes,
//!   delete, contains, reopen, writes during which an injected disk fault strikes, and the
//!   key-value records of the same namespace: set, get, delete) is run against a namespace and
//!   against [`Model`], which must agree after every step. The model test adds operations the
//!   fuzz input does not encode: damage to an entry file, `verify`, `gc`, `clear`, and writes
//!   and reads through a second handle on the namespace with a smaller entry-size limit.

use std::collections::HashMap;
use std::path::Path;

use crate::entry::{HEADER_LEN, Header, Layout};
use crate::fault;
use crate::{Durability, FileCache, Namespace, NamespaceOptions};
use crate::{Error, Key};

// ---------------------------------------------------------------------------------------------
// entry

/// The key every planted entry is looked up under.
fn entry_key() -> Key {
    Key::digest(b"fuzzed entry")
}

/// The format, checked independently of the store's code: the content if `file` is a valid entry
/// for `key`. A file that starts with the magic has its header first (flags 0); any other has it
/// last (flags 1). The header (format version 2) gives the content's length and the block size;
/// the block table follows the content, one CRC32C per block, and its own CRC32C is in the header.
fn valid_content<'a>(file: &'a [u8], key: &Key) -> Option<&'a [u8]> {
    if file.len() < HEADER_LEN {
        return None;
    }
    let (h, body, flags) = if file.starts_with(b"FCACHE\r\n") {
        let (h, body) = file.split_at(HEADER_LEN);
        (h, body, 0)
    } else {
        let (body, h) = file.split_at(file.len() - HEADER_LEN);
        (h, body, 1)
    };
    let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().unwrap());
    let header_crc = crc32c::crc32c_append(crc32c::crc32c(&h[..28]), &h[32..]);
    let shift = h[14];
    let header_ok = h[..8] == *b"FCACHE\r\n"
        && u32_at(8) == 2
        && h[12..14] == [flags, 0]
        && (9..=20).contains(&shift)
        && h[15] == 0
        && u32_at(28) == header_crc
        && h[32..] == *key.as_bytes();
    if !header_ok {
        return None;
    }
    let len = u64::from_le_bytes(h[16..24].try_into().unwrap());
    let block = 1u64 << shift;
    let table_len = len.div_ceil(block) * 4;
    if len.checked_add(table_len) != Some(body.len() as u64) {
        return None;
    }
    let (content, table) = body.split_at(len as usize);
    if u32_at(24) != crc32c::crc32c(table) {
        return None;
    }
    let blocks_ok = content
        .chunks(block as usize)
        .zip(table.chunks(4))
        .all(|(b, crc)| crc32c::crc32c(b).to_le_bytes() == crc);
    blocks_ok.then_some(content)
}

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
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An entry file as the store writes it, in blocks of `1 << shift` bytes: the header for
/// `content` under `key`, then `content`, then the block table; or, with `trailing` (and content
/// that neither is empty nor starts with the magic, as the store's writer requires), `content`,
/// the table, then the header.
fn entry_file(key: Key, content: &[u8], trailing: bool, shift: u8) -> Vec<u8> {
    let layout = if trailing && !content.is_empty() && !content.starts_with(&crate::entry::MAGIC) {
        Layout::Trailing
    } else {
        Layout::Leading
    };
    crate::entry::encode_file(key, content, layout, shift)
}

/// Builds the entry file a fuzz input describes, and the content it was made from (if it was).
/// First byte: bit 0 set = a valid entry of the rest's content, then damaged by up to 3 edits
/// (byte changes, a truncation, appended bytes); bit 1 set = written under another key; bit 2
/// set = with a trailing header; bit 3 set = in blocks of 512 bytes (the smallest a reader
/// accepts: small inputs span several), else of 64 KiB, as the store writes. Otherwise the rest
/// is the file, raw.
fn planted_file(data: &[u8]) -> (Vec<u8>, Option<&[u8]>) {
    let mut input = Bytes(data);
    let mode = input.u8();
    if mode & 1 == 0 {
        return (input.0.to_vec(), None);
    }
    let edits: Vec<(u8, u16, u8)> = (0..input.u8() % 4)
        .map(|_| (input.u8(), input.u16(), input.u8()))
        .collect();
    let content = input.0;
    let key = if mode & 2 == 0 {
        entry_key()
    } else {
        Key::digest(b"another key")
    };
    let shift = if mode & 8 != 0 {
        crate::entry::MIN_BLOCK_SHIFT
    } else {
        crate::entry::BLOCK_SHIFT
    };
    let mut file = entry_file(key, content, mode & 4 != 0, shift);
    for (kind, pos, value) in edits {
        let at = pos as usize % (file.len() + 1);
        match kind % 3 {
            0 if at < file.len() => file[at] ^= value.max(1),
            1 => file.truncate(at),
            _ => file.extend(std::iter::repeat_n(value, pos as usize % 16 + 1)),
        }
    }
    (file, Some(content))
}

/// Plants `file` as the entry for [`entry_key`] in namespace `ns` of the cache at `root`.
fn plant(root: &Path, ns: &str, file: &[u8]) -> std::path::PathBuf {
    let hex = entry_key().to_string();
    let shard = root.join(ns).join(&hex[..2]);
    std::fs::create_dir_all(&shard).expect("create a fan-out directory");
    let path = shard.join(hex);
    std::fs::write(&path, file).expect("plant an entry file");
    path
}

/// The entry-file target: see the module documentation.
pub fn entry(data: &[u8]) {
    // The header codec: whatever decodes re-encodes to the same bytes.
    if let Some(bytes) = data.get(..HEADER_LEN) {
        let bytes: [u8; HEADER_LEN] = bytes.try_into().unwrap();
        if let Ok(h) = Header::decode(&bytes) {
            assert_eq!(h.encode(), bytes, "a header decoded from bytes it does not encode to");
        }
        for layout in [Layout::Leading, Layout::Trailing] {
            if let Ok(fh) = Header::decode_as(&bytes, layout) {
                let again = fh.header.encode_as(layout, fh.block_shift);
                assert_eq!(again, bytes, "an entry header decoded from bytes it does not encode to");
            }
        }
    }
    let (file, original) = planted_file(data);
    let key = entry_key();
    let expected = valid_content(&file, &key);
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let root = tmp.path().join("cache");
    let cache = FileCache::open(&root).expect("open the cache");
    let ns = cache
        .namespace("fuzz", NamespaceOptions::default())
        .expect("open a namespace");

    plant(&root, "fuzz", &file);
    assert_eq!(
        ns.contains(&key).expect("contains answers"),
        header_fools_contains(&file, &key)
    );
    let path = plant(&root, "fuzz", &file);
    match ns.get(&key).expect("get answers") {
        Some(got) => assert_eq!(Some(&got[..]), expected, "get served bytes of an invalid entry"),
        None => {
            assert!(expected.is_none(), "get missed a valid entry");
            assert!(!path.exists(), "a damaged entry was not removed");
        }
    }

    let path = plant(&root, "fuzz", &file);
    let chunk = (data.len() % 97 + 1) * 13;
    match ns.open(&key).expect("open answers") {
        None => {
            assert!(expected.is_none(), "open missed a valid entry");
            assert!(!path.exists(), "a damaged entry was not removed");
        }
        Some(mut reader) => {
            let mut got = Vec::new();
            let end = loop {
                match reader.read_chunk(chunk) {
                    Ok(c) if c.is_empty() => break Ok(()),
                    Ok(c) => got.extend(c),
                    Err(e) => break Err(e),
                }
            };
            // Whatever the damage, a reader never serves a byte that was not written: what it
            // served, before the end or before `corrupt`, is the start of the original content.
            if let Some(original) = original {
                assert!(
                    original.starts_with(&got),
                    "a reader served a byte that was not written (at {} of the {} served)",
                    got.iter()
                        .zip(original)
                        .position(|(a, b)| a != b)
                        .unwrap_or(original.len()),
                    got.len()
                );
            }
            match end {
                Ok(()) => assert_eq!(Some(&got[..]), expected, "a reader served an invalid entry"),
                Err(Error::Corrupt { .. }) => {
                    assert!(expected.is_none(), "a reader refused a valid entry");
                    assert!(!path.exists(), "a damaged entry was not removed");
                }
                Err(e) => panic!("a reader failed with {e}"),
            }
        }
    }

    plant(&root, "fuzz", &file);
    let report = cache.verify(&mut |_| {}).expect("verify answers");
    assert_eq!(report.checked, 1);
    assert_eq!(report.removed, u64::from(expected.is_none()), "verify judged wrongly");
}

/// `contains` reads only the header: it also accepts an entry whose header is valid but whose
/// content is damaged.
fn header_fools_contains(file: &[u8], key: &Key) -> bool {
    if file.len() < HEADER_LEN {
        return false;
    }
    let (h, layout) = if file.starts_with(b"FCACHE\r\n") {
        (&file[..HEADER_LEN], Layout::Leading)
    } else {
        (&file[file.len() - HEADER_LEN..], Layout::Trailing)
    };
    matches!(Header::decode_as(h.try_into().unwrap(), layout),
        Ok(fh) if fh.header.key == *key && fh.file_len() == Some(file.len() as u64))
}

// ---------------------------------------------------------------------------------------------
// store_ops

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

/// What the store promises, in memory: content per key, and use order (oldest first), and
/// key-value records (never evicted, counted as key and value), under [`QUOTA`]. An entry is
/// charged its file on disk, rounded up to 4 KiB ([`crate::entry::charge`]): an empty one too.
#[derive(Default, Debug)]
pub struct Model {
    entries: HashMap<u8, Vec<u8>>,
    order: Vec<u8>,
    records: HashMap<u8, Vec<u8>>,
    /// Entries whose file was damaged ([`Op::Damage`]), each with whether its header is still
    /// whole (so that `contains`, which reads only the header, still finds it). A damaged
    /// entry keeps its place and size until a read finds the damage and removes it.
    damaged: HashMap<u8, bool>,
}

/// The key-value key of record `k`.
/// What an entry of `len` bytes of content is charged: its file (64-byte header, content, a
/// 4-byte CRC per 64 KiB block), rounded up to 4 KiB. Computed here independently of the store.
fn cost(len: u64) -> u64 {
    (64 + len + 4 * len.div_ceil(64 << 10)).div_ceil(4096) * 4096
}

fn kv_key(k: u8) -> String {
    format!("key{k}")
}

impl Model {
    /// What is charged: cache entries (their files, rounded up to 4 KiB), and records' keys and
    /// values.
    pub fn used(&self) -> u64 {
        self.entries.values().map(|v| cost(v.len() as u64)).sum::<u64>() + self.records_used()
    }
    fn records_used(&self) -> u64 {
        self.records
            .iter()
            .map(|(&k, v)| (kv_key(k).len() + v.len()) as u64)
            .sum()
    }
    /// `set` of record `k`: cache entries are evicted, oldest first, to make room; when even all
    /// of them are not enough it fails, with every one of them evicted on the way.
    fn kv_set(&mut self, k: u8, v: Vec<u8>) -> bool {
        let charged = (kv_key(k).len() + v.len()) as u64;
        if charged > QUOTA {
            return false;
        }
        let old = self.records.get(&k).map_or(0, |o| (kv_key(k).len() + o.len()) as u64);
        while self.used() - old + charged > QUOTA {
            let Some(&oldest) = self.order.first() else {
                return false;
            };
            self.delete(oldest);
        }
        self.records.insert(k, v);
        true
    }
    fn touch(&mut self, k: u8) {
        self.order.retain(|&x| x != k);
        self.order.push(k);
    }
    /// The keys `add(k, len)` would evict, oldest first; `None` if it is over the quota on its
    /// own. When even evicting every other entry leaves no room (records take the rest), that is
    /// every other entry, and the add fails after evicting them (see [`Model::add`]).
    fn victims(&self, k: u8, len: u64) -> Option<Vec<u8>> {
        let charge = cost(len);
        if charge > QUOTA {
            return None;
        }
        let old = self.entries.get(&k).map_or(0, |o| cost(o.len() as u64));
        let mut used = self.used() - old + charge;
        let mut victims = Vec::new();
        for &x in self.order.iter().filter(|&&x| x != k) {
            if used <= QUOTA {
                break;
            }
            used -= cost(self.entries[&x].len() as u64);
            victims.push(x);
        }
        Some(victims)
    }
    fn add(&mut self, k: u8, v: Vec<u8>) -> bool {
        let Some(victims) = self.victims(k, v.len() as u64) else {
            return false;
        };
        for x in victims {
            self.delete(x);
        }
        let old = self.entries.get(&k).map_or(0, |o| cost(o.len() as u64));
        if self.used() - old + cost(v.len() as u64) > QUOTA {
            return false;
        }
        self.entries.insert(k, v);
        self.damaged.remove(&k);
        self.touch(k);
        true
    }
    /// A read of the whole entry (`get`, `open`): its content, or `None` on a miss or when
    /// the entry is damaged (which the read removes).
    fn read(&mut self, k: u8) -> Option<Vec<u8>> {
        if self.damaged.contains_key(&k) {
            self.delete(k);
            return None;
        }
        self.get(k)
    }
    /// `contains`: reads the header only; a damaged header is found (and removed).
    fn contains(&mut self, k: u8) -> bool {
        match self.damaged.get(&k) {
            Some(false) => {
                self.delete(k);
                false
            }
            _ => self.entries.contains_key(&k),
        }
    }
    /// `gc` down to `max` bytes: the oldest entries go until what remains fits (records stay).
    fn gc(&mut self, max: u64) {
        let mut excess = self.used().saturating_sub(max);
        while excess > 0 {
            let Some(&oldest) = self.order.first() else { break };
            excess = excess.saturating_sub(cost(self.entries[&oldest].len() as u64));
            self.delete(oldest);
        }
    }
    /// A hit refreshes an entry's recency only when its last refresh is older than the store's
    /// recency granularity (an hour in test and fuzzing builds, longer than any run): never here.
    fn get(&mut self, k: u8) -> Option<Vec<u8>> {
        self.entries.get(&k).cloned()
    }
    fn delete(&mut self, k: u8) {
        self.entries.remove(&k);
        self.damaged.remove(&k);
        self.order.retain(|&x| x != k);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every input of the committed corpus of `target` (`fuzz/corpus/<target>/`).
    fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/corpus")
            .join(target);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        inputs.sort();
        assert!(
            inputs.len() >= 10,
            "the corpus of {target} has only {} inputs",
            inputs.len()
        );
        inputs
    }

    #[test]
    fn entry_corpus_replays() {
        for (name, input) in corpus("entry") {
            let r = std::panic::catch_unwind(|| entry(&input));
            assert!(r.is_ok(), "fuzz/corpus/entry/{name} fails");
        }
    }

    #[test]
    fn store_ops_corpus_replays() {
        for (name, input) in corpus("store_ops") {
            if let Err(e) = check_ops(&decode_ops(&input)) {
                panic!("fuzz/corpus/store_ops/{name}: {e}");
            }
        }
    }

    /// The entry target on generated inputs of every mode (valid, damaged, another key, either
    /// header layout), beyond the committed corpus: whatever the file, the store's answer is the
    /// independent check's.
    #[test]
    fn entry_target_on_generated_inputs() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for case in 0..400u64 {
            // Half in blocks of 512 bytes (bit 3), most of those spanning several blocks.
            let small_blocks = case & 8 != 0;
            let len = (next() % if small_blocks { 2500 } else { 300 }) as usize;
            let mut data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(mode) = data.first_mut() {
                // Mostly valid entries (bit 0), half with a trailing header (bit 2), few edits.
                *mode = (case as u8 & 0b1110) | u8::from(case % 5 != 0);
            }
            if let Some(edits) = data.get_mut(1) {
                *edits = (case % 3) as u8;
            }
            entry(&data);
        }
    }

    #[test]
    fn the_independent_format_check_agrees_with_the_encoder() {
        let key = entry_key();
        let content = b"some content";
        let mut file = entry_file(key, content, false, crate::entry::BLOCK_SHIFT);
        assert_eq!(valid_content(&file, &key), Some(&content[..]));
        assert_eq!(valid_content(&file, &Key::digest(b"other")), None);
        file[70] ^= 1;
        assert_eq!(valid_content(&file, &key), None);
        // With a trailing header, as `create_trailing` writes it.
        let ns_dir = tempfile::tempdir().unwrap();
        let ns = FileCache::open(ns_dir.path())
            .unwrap()
            .namespace("t", NamespaceOptions::default())
            .unwrap();
        let mut w = ns.create_trailing(&key).unwrap();
        w.write(content).unwrap();
        w.commit().unwrap();
        let hex = key.to_string();
        let written = std::fs::read(ns_dir.path().join("t").join(&hex[..2]).join(&hex)).unwrap();
        let mut file = entry_file(key, content, true, crate::entry::BLOCK_SHIFT);
        assert_eq!(file, written, "the model writes what the store writes");
        assert_eq!(valid_content(&file, &key), Some(&content[..]));
        assert!(header_fools_contains(&file, &key));
        file[3] ^= 1;
        assert_eq!(valid_content(&file, &key), None);
    }
}
