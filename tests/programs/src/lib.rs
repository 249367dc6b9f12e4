//! Test programs for the `filecache:cache` contract.
//!
//! The bindings are generated directly from `wit/cache.wit` (not through `filecache-guest`) so the
//! programs exercise the contract itself. This library holds what every program shares: the raw
//! bindings, the deterministic key and content derivations (so separate runs agree), and small
//! assertion helpers whose panic messages name the scenario and the step.

#![allow(clippy::missing_panics_doc)]

wit_bindgen::generate!({
    path: "../../wit",
    world: "plugin",
    additional_derives: [PartialEq, Eq],
});

pub use filecache::cache::cache::{Error, Reader, Writer, add, contains, create, delete, get, open};

use sha2::{Digest, Sha256};
use std::fmt::{Debug, Display};

/// 1 MiB, the most a single `read` may return.
pub const MIB: u64 = 1024 * 1024;
/// What the quota charges for an entry of `size` bytes of content: what its file takes on disk —
/// a 64-byte header, the content and a 4-byte CRC per 64 KiB block — rounded up to a 4 KiB
/// filesystem block. (An empty entry costs 4 KiB.)
pub fn entry_cost(size: u64) -> u64 {
    let file = 64 + size + 4 * size.div_ceil(64 << 10);
    file.div_ceil(4096) * 4096
}

/// The largest content an entry may have to cost at most `quota`.
pub fn largest_entry_within(quota: u64) -> u64 {
    let mut size = quota.saturating_sub(64);
    while size > 0 && entry_cost(size) > quota {
        size -= 1;
    }
    size
}
/// How many readers and writers one instance may hold.
pub const MAX_HANDLES: usize = 64;

/// The key for `seed`: SHA-256 of the seed string, or, if `seed` is 64 hex digits, those bytes.
pub fn key_for(seed: &str) -> Vec<u8> {
    if seed.len() == 64
        && let Some(key) = decode_hex(seed)
    {
        return key;
    }
    Sha256::digest(seed.as_bytes()).to_vec()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Deterministic pseudo-random content of `size` bytes for `seed`.
///
/// Different seeds and different sizes give different content (the size is part of the seed), so
/// an entry truncated or swapped for another is noticed.
pub fn content(seed: &str, size: u64) -> Vec<u8> {
    let digest = Sha256::digest(format!("{seed}\0{size}").as_bytes());
    let mut state = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
    let size = usize::try_from(size).expect("size fits in usize");
    let mut out = Vec::with_capacity(size);
    while out.len() < size {
        // splitmix64
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let take = (size - out.len()).min(8);
        out.extend_from_slice(&z.to_le_bytes()[..take]);
    }
    out
}

/// The host CLI's own size parser, compiled into the guests too (it is plain Rust), so that a
/// scenario reads its size argument exactly as the CLI reads the matching flag.
#[path = "../../../host/store/src/size.rs"]
#[allow(dead_code)]
mod host_size;

/// Parses a size the way the host CLI does (`1048576`, `64MiB`, `1.5KiB`, `10MB`); panics with
/// the CLI's message on a bad one.
pub fn parse_size(s: &str) -> u64 {
    host_size::parse_size(s).unwrap_or_else(|e| panic!("{e}"))
}

/// Names the scenario in every assertion message.
#[derive(Clone, Copy)]
pub struct Ctx {
    pub program: &'static str,
    pub scenario: &'static str,
}

impl Ctx {
    pub const fn new(program: &'static str, scenario: &'static str) -> Self {
        Self { program, scenario }
    }

    /// Panics with a message naming the scenario and step.
    #[track_caller]
    pub fn fail(&self, step: impl Display, what: impl Display) -> ! {
        panic!("{} {}: step `{step}`: {what}", self.program, self.scenario)
    }

    /// Asserts `cond`.
    #[track_caller]
    pub fn check(&self, step: impl Display, cond: bool, what: impl Display) {
        if !cond {
            self.fail(step, what);
        }
    }

    /// Unwraps an `Ok`.
    #[track_caller]
    pub fn ok<T>(&self, step: impl Display, r: Result<T, Error>) -> T {
        match r {
            Ok(v) => v,
            Err(e) => self.fail(step, format_args!("expected Ok, got Err({e:?})")),
        }
    }

    /// Unwraps an `Err`.
    #[track_caller]
    pub fn err<T: Debug>(&self, step: impl Display, r: Result<T, Error>) -> Error {
        match r {
            Ok(v) => self.fail(step, format_args!("expected an error, got Ok({v:?})")),
            Err(e) => e,
        }
    }

    /// Asserts that `r` is exactly `Err(expected)`.
    #[track_caller]
    pub fn err_is<T: Debug>(&self, step: impl Display, r: Result<T, Error>, expected: &Error) {
        match r {
            Ok(v) => self.fail(step, format_args!("expected Err({expected:?}), got Ok({v:?})")),
            Err(e) if &e == expected => {}
            Err(e) => self.fail(step, format_args!("expected Err({expected:?}), got Err({e:?})")),
        }
    }

    /// Asserts that `key` is a miss everywhere it can be observed: `contains` is false, `get` and
    /// `open` answer `none`.
    #[track_caller]
    pub fn assert_absent(&self, step: impl Display, key: &[u8]) {
        let k = short(key);
        let present = self.ok(format_args!("{step}: contains({k})"), contains(key));
        self.check(
            format_args!("{step}: contains({k})"),
            !present,
            "expected false (absent), got true",
        );
        let got = self.ok(format_args!("{step}: get({k})"), get(key));
        if let Some(v) = got {
            self.fail(
                format_args!("{step}: get({k})"),
                format_args!("expected none (miss), got {} bytes", v.len()),
            );
        }
        let r = self.ok(format_args!("{step}: open({k})"), open(key));
        if let Some(r) = r {
            self.fail(
                format_args!("{step}: open({k})"),
                format_args!("expected none (miss), got a reader of size {}", r.size()),
            );
        }
    }

    /// Asserts that `get(key)` returns exactly `expected`.
    #[track_caller]
    pub fn assert_get(&self, step: impl Display, key: &[u8], expected: &[u8]) {
        let k = short(key);
        match self.ok(format_args!("{step}: get({k})"), get(key)) {
            None => self.fail(
                format_args!("{step}: get({k})"),
                format_args!("expected {} bytes, got none (miss)", expected.len()),
            ),
            Some(v) => self.assert_bytes(format_args!("{step}: get({k})"), &v, expected),
        }
    }

    /// Asserts that `open(key)` gives a reader whose size is right and which, read in chunks of
    /// `chunk` bytes, returns exactly `expected` and then end-of-entry.
    #[track_caller]
    pub fn assert_stream(&self, step: impl Display, key: &[u8], expected: &[u8], chunk: u64) {
        let k = short(key);
        let Some(reader) = self.ok(format_args!("{step}: open({k})"), open(key)) else {
            self.fail(
                format_args!("{step}: open({k})"),
                format_args!("expected a reader over {} bytes, got none", expected.len()),
            )
        };
        let size = reader.size();
        self.check(
            format_args!("{step}: size()"),
            size == expected.len() as u64,
            format_args!("expected {}, got {size}", expected.len()),
        );
        let got = self.read_all(format_args!("{step}: read({chunk})"), &reader, chunk);
        self.assert_bytes(format_args!("{step}: streamed content"), &got, expected);
    }

    /// Reads `reader` to its end in calls of `read(chunk)` (`chunk` > 0), checking each call's
    /// length bound, and returns everything read.
    #[track_caller]
    pub fn read_all(&self, step: impl Display, reader: &Reader, chunk: u64) -> Vec<u8> {
        assert!(chunk > 0, "read_all needs a positive chunk");
        let size = reader.size();
        let mut out = Vec::new();
        loop {
            let bytes = self.ok(format_args!("{step} at offset {}", out.len()), reader.read(chunk));
            if bytes.is_empty() {
                break;
            }
            let n = bytes.len() as u64;
            self.check(
                format_args!("{step} at offset {}", out.len()),
                n <= chunk.min(MIB),
                format_args!("read returned {n} bytes, more than min(len={chunk}, 1 MiB)"),
            );
            out.extend_from_slice(&bytes);
            self.check(
                format_args!("{step} at offset {}", out.len()),
                out.len() as u64 <= size,
                format_args!("read past size(): {} bytes read, size {size}", out.len()),
            );
        }
        out
    }

    /// Asserts two byte strings are equal, describing the first difference.
    #[track_caller]
    pub fn assert_bytes(&self, step: impl Display, got: &[u8], expected: &[u8]) {
        if got == expected {
            return;
        }
        let first = got
            .iter()
            .zip(expected)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(expected.len()));
        self.fail(
            step,
            format_args!(
                "content differs: got {} bytes, expected {}, first difference at offset {first}",
                got.len(),
                expected.len()
            ),
        );
    }

    /// Streams `content` into a new entry under `key` in `chunk`-byte writes and commits it.
    #[track_caller]
    pub fn put_stream(&self, step: impl Display, key: &[u8], content: &[u8], chunk: usize) {
        let k = short(key);
        let w = self.ok(format_args!("{step}: create({k})"), create(key));
        for (i, piece) in content.chunks(chunk.max(1)).enumerate() {
            self.ok(format_args!("{step}: write #{i}"), w.write(piece));
        }
        self.ok(format_args!("{step}: commit"), Writer::commit(w));
    }
}

/// A short printable form of a key (its first 8 bytes in hex, or its length when it is not a
/// valid key).
pub fn short(key: &[u8]) -> String {
    if key.len() == 32 {
        format!("{}..", hex(&key[..8]))
    } else {
        format!("<{}-byte key>", key.len())
    }
}

/// Returns the command-line arguments after the program name.
pub fn args() -> Vec<String> {
    std::env::args().skip(1).collect()
}

/// Returns argument `i`, or panics with a usage message.
pub fn arg<'a>(args: &'a [String], i: usize, usage: &str) -> &'a str {
    args.get(i)
        .map(String::as_str)
        .unwrap_or_else(|| panic!("missing argument #{i}; usage: {usage}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_the_host() {
        assert_eq!(parse_size("1048576"), 1 << 20);
        assert_eq!(parse_size("64MiB"), 64 << 20);
        assert_eq!(parse_size("10 KiB"), 10_240);
        assert_eq!(parse_size("10k"), 10_240);
        assert_eq!(parse_size("10KB"), 10_000);
        assert_eq!(parse_size("1.5KiB"), 1536);
    }

    #[test]
    fn content_is_deterministic_and_seeded() {
        assert_eq!(content("a", 100), content("a", 100));
        assert_ne!(content("a", 100), content("b", 100));
        assert_ne!(content("a", 100)[..99], content("a", 99)[..]);
        assert_eq!(content("a", 13).len(), 13);
        assert!(content("a", 0).is_empty());
    }

    #[test]
    fn keys_from_seed_or_hex() {
        assert_eq!(key_for("x").len(), 32);
        assert_eq!(key_for("x"), key_for("x"));
        let h = hex(&key_for("x"));
        assert_eq!(key_for(&h), key_for("x"));
        assert_eq!(key_for(&"00".repeat(32)), vec![0; 32]);
    }
}

pub mod http;
