//! The on-disk format of one entry: a 64-byte header, then the content.
//!
//! ```text
//! offset size  field
//!      0    8  magic "FCACHE\r\n"
//!      8    4  format version (1), little-endian
//!     12    4  flags: 0, or 1 for a trailing header (below); any other value is refused
//!     16    8  content length in bytes, little-endian
//!     24    4  CRC32C of the content, little-endian
//!     28    4  CRC32C of the header (bytes 0..28 and 32..64), little-endian
//!     32   32  the entry's key
//!     64    …  content
//! ```
//!
//! An entry whose content must start at offset 0 of its file (a compiled artifact, which
//! wasmtime maps from the file itself) has the same header after the content instead, with flag
//! 1 set ([`Layout::Trailing`]). Such content never starts with the magic (its writer refuses
//! it), so a reader tells the layouts apart by the file's first eight bytes: the magic means a
//! leading header; anything else, a trailing one (or damage, which its header then reports).
//!
//! CRC32C (Castagnoli) is computed with the SSE4.2/ARMv8 instructions where the CPU has them,
//! chosen by measurement (see BENCHMARKS.md): faster than XXH3 in a portable build, and as a CRC
//! it detects every error burst of up to 32 bits, so every single flipped byte, with certainty.
//! The header carries its own CRC and the key, so a damaged header is caught before any content
//! is read, and a file moved under another key's name is refused.

use crate::Key;

/// Size of the header in bytes.
pub const HEADER_LEN: usize = 64;
/// The header's first bytes.
pub const MAGIC: [u8; 8] = *b"FCACHE\r\n";
/// The only format version this build reads and writes.
pub const VERSION: u32 = 1;

/// Flag bit of a header that follows the content.
const FLAG_TRAILING: u32 = 1;

/// Where an entry file keeps its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// Header first, content from offset [`HEADER_LEN`]: every entry but compiled artifacts.
    #[default]
    Leading,
    /// Content from offset 0, header after it (flag 1): for content that a consumer maps from
    /// the file itself and that must start the file.
    Trailing,
}

impl Layout {
    /// The offset of the content in the entry file.
    pub fn content_start(self) -> u64 {
        match self {
            Layout::Leading => HEADER_LEN as u64,
            Layout::Trailing => 0,
        }
    }

    /// The offset of the header in an entry file of `file_len` bytes (at least [`HEADER_LEN`]).
    pub fn header_start(self, file_len: u64) -> u64 {
        match self {
            Layout::Leading => 0,
            Layout::Trailing => file_len.saturating_sub(HEADER_LEN as u64),
        }
    }

    /// The layout of an entry file that starts with `first` (its first bytes): a leading header
    /// starts with the magic; trailing-header content never does.
    pub fn of_file_starting_with(first: &[u8]) -> Layout {
        if first.starts_with(&MAGIC) {
            Layout::Leading
        } else {
            Layout::Trailing
        }
    }
}

/// A decoded entry header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The content's length in bytes.
    pub len: u64,
    /// CRC32C of the content.
    pub crc: u32,
    /// The key the entry was written under.
    pub key: Key,
}

/// Why a header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderError {
    /// Not an entry file (or the magic is damaged).
    BadMagic,
    /// A format version this build does not know.
    UnknownVersion(u32),
    /// Reserved flags were set.
    UnknownFlags(u32),
    /// The header's own checksum does not match.
    BadHeaderChecksum,
}

impl HeaderError {
    /// A short description, for logs and error values.
    pub fn describe(self) -> &'static str {
        match self {
            HeaderError::BadMagic => "not an entry (bad magic)",
            HeaderError::UnknownVersion(_) => "unknown format version",
            HeaderError::UnknownFlags(_) => "unknown flags in header",
            HeaderError::BadHeaderChecksum => "header checksum mismatch",
        }
    }
}

fn header_crc(bytes: &[u8; HEADER_LEN]) -> u32 {
    crc32c_append(crc32c_append(0, &bytes[..28]), &bytes[32..])
}

/// CRC32C (Castagnoli, as iSCSI, ext4 and SSE4.2 define it) of `bytes`, continuing from `crc`,
/// the CRC32C of what came before (0 for nothing): `crc32c_append(crc32c_append(0, a), b)` is
/// the CRC32C of `a` then `b`. Computed with the fastest instructions the CPU has, chosen at run
/// time (on x86-64 with AVX-512 and VPCLMULQDQ, about twice the speed of SSE4.2's `crc32`).
pub(crate) fn crc32c_append(crc: u32, bytes: &[u8]) -> u32 {
    // The digest's state is the CRC before its final inversion.
    let mut d = crc_fast::Digest::new_with_init_state(crc_fast::CrcAlgorithm::Crc32Iscsi, u64::from(!crc));
    d.update(bytes);
    d.finalize() as u32
}

impl Header {
    /// Encodes the header, for the start of an entry file.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        self.encode_as(Layout::Leading)
    }

    /// Encodes the header for its place in an entry file of layout `layout`.
    pub fn encode_as(&self, layout: Layout) -> [u8; HEADER_LEN] {
        let flags = match layout {
            Layout::Leading => 0,
            Layout::Trailing => FLAG_TRAILING,
        };
        let mut b = [0u8; HEADER_LEN];
        b[..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&flags.to_le_bytes());
        b[16..24].copy_from_slice(&self.len.to_le_bytes());
        b[24..28].copy_from_slice(&self.crc.to_le_bytes());
        b[32..64].copy_from_slice(self.key.as_bytes());
        let hcrc = header_crc(&b);
        b[28..32].copy_from_slice(&hcrc.to_le_bytes());
        b
    }

    /// Decodes and checks a header from the start of an entry file. The caller still has to
    /// check `len` against the file's size and `key` against the key it asked for.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, HeaderError> {
        Header::decode_as(b, Layout::Leading)
    }

    /// Decodes and checks a header read from its place in an entry file of layout `layout`: a
    /// header whose flag says the other layout is refused.
    pub fn decode_as(b: &[u8; HEADER_LEN], layout: Layout) -> Result<Header, HeaderError> {
        let expected_flags = match layout {
            Layout::Leading => 0,
            Layout::Trailing => FLAG_TRAILING,
        };
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        if b[..8] != MAGIC {
            return Err(HeaderError::BadMagic);
        }
        if u32_at(28) != header_crc(b) {
            return Err(HeaderError::BadHeaderChecksum);
        }
        match u32_at(8) {
            VERSION => {}
            v => return Err(HeaderError::UnknownVersion(v)),
        }
        match u32_at(12) {
            f if f == expected_flags => {}
            f => return Err(HeaderError::UnknownFlags(f)),
        }
        Ok(Header {
            len: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
            crc: u32_at(24),
            key: Key::new(b[32..64].try_into().expect("32 bytes")),
        })
    }
}

/// The checksum of content, computed incrementally.
#[derive(Debug, Clone, Copy, Default)]
pub struct Checksum(u32);

impl Checksum {
    /// Adds `bytes` to the checksum.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0 = crc32c_append(self.0, bytes);
    }
    /// The checksum so far.
    pub fn value(&self) -> u32 {
        self.0
    }
    /// The checksum of `bytes`.
    pub fn of(bytes: &[u8]) -> u32 {
        crc32c_append(0, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checksum is CRC32C exactly (entries written by earlier builds, with the `crc32c`
    /// crate, stay valid): the standard check value, and agreement with `crc32c` at every size
    /// that changes code paths, in one piece and split anywhere.
    #[test]
    fn the_checksum_is_crc32c() {
        assert_eq!(Checksum::of(b"123456789"), 0xe306_9283);
        let data: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in (0..1100).chain([4095, 4096, 4097, 65_536, 262_145, 300_000]) {
            let bytes = &data[..len];
            let expected = crc32c::crc32c(bytes);
            assert_eq!(Checksum::of(bytes), expected, "{len} bytes");
            for at in [0, 1, 7, 63, 64, 65, 255, 256, len / 2, len.saturating_sub(1), len] {
                let at = at.min(len);
                let mut c = Checksum::default();
                c.update(&bytes[..at]);
                c.update(&bytes[at..]);
                assert_eq!(c.value(), expected, "{len} bytes split at {at}");
            }
        }
    }

    #[test]
    fn round_trip() {
        let h = Header {
            len: 12345,
            crc: 0xdead_beef,
            key: Key::digest(b"k"),
        };
        assert_eq!(Header::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn every_single_byte_flip_of_the_header_is_refused() {
        let h = Header {
            len: 77,
            crc: Checksum::of(b"content"),
            key: Key::digest(b"k"),
        };
        let good = h.encode();
        for i in 0..HEADER_LEN {
            for bit in 0..8 {
                let mut bad = good;
                bad[i] ^= 1 << bit;
                assert!(Header::decode(&bad).is_err(), "flip of bit {bit} in byte {i} accepted");
            }
            let mut bad = good;
            bad[i] = bad[i].wrapping_add(0x5a);
            assert!(Header::decode(&bad).is_err(), "change of byte {i} accepted");
        }
    }

    #[test]
    fn incremental_checksum_matches_whole() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut c = Checksum::default();
        for chunk in data.chunks(333) {
            c.update(chunk);
        }
        assert_eq!(c.value(), Checksum::of(&data));
    }
}
