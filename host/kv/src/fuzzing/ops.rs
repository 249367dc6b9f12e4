//! A fuzz input, decoded: the namespace's limits and the operations to run.

use filecache_store::NamespaceOptions;

use crate::{MAX_KEY_LEN, MAX_PAGE};

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
pub(super) const SHORT_KEYS: [&str; 8] = ["", "a", "b", "line\nbreak", "ключ", "n", "dir/x", "nul\0"];

/// A key from one byte: mostly [`SHORT_KEYS`] (so that batches collide with each other and with
/// keys held), sometimes a key of exactly [`MAX_KEY_LEN`] bytes or one byte past it.
pub(super) fn key(b: u8) -> String {
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
