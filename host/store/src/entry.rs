//! The on-disk format of one entry: a 64-byte header, the content, and a table of one CRC32C per
//! block of the content.
//!
//! ```text
//! offset size  field
//!      0    8  magic "FCACHE\r\n"
//!      8    4  format version (2), little-endian
//!     12    2  flags: 0, or 1 for a trailing header (below); any other value is refused
//!     14    1  block size, as its base-2 logarithm (9 to 20: 512 bytes to 1 MiB; 16, 64 KiB,
//!              as this build writes)
//!     15    1  0
//!     16    8  content length in bytes, little-endian
//!     24    4  CRC32C of the block table, little-endian
//!     28    4  CRC32C of the header (bytes 0..28 and 32..64), little-endian
//!     32   32  the entry's key
//!     64    …  content
//!      …    …  block table: the CRC32C of each block of the content (the last block may be
//!              shorter), 4 bytes each, little-endian; none for empty content
//! ```
//!
//! A reader checks each block against its CRC before it hands out any byte of it, so a streamed
//! read never serves a byte that was not written, and holds at most one block at a time (as HDFS
//! checks each 512-byte chunk, ZFS each block). The block size is chosen by measurement (see
//! BENCHMARKS.md): at 64 KiB, a streamed read and a whole `get` run as fast as with a single
//! checksum, and the table costs 4 bytes in 65,536.
//!
//! An entry whose content must start at offset 0 of its file (a compiled artifact, which
//! wasmtime maps from the file itself) has the content first, then the block table, then the
//! same header, with flag 1 set ([`Layout::Trailing`]). Such content never starts with the magic
//! (its writer refuses it), so a reader tells the layouts apart by the file's first eight bytes:
//! the magic means a leading header; anything else, a trailing one (or damage, which its header
//! then reports).
//!
//! Entries written by earlier builds (format version 1: one CRC32C of the whole content, no
//! table) are read as misses and removed: a cache can always fill again, and a version-1 entry
//! cannot be streamed verified.
//!
//! The same header in format version 1 is still what the remote tier puts in front of the values
//! it stores ([`Header::encode`], [`Header::decode`]): there `crc` is the CRC32C of the whole
//! content, which a remote value is always checked against in full, before any byte of it is used.
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
/// The format version of entry files this build reads and writes.
pub const VERSION: u32 = 2;
/// The format version of the remote tier's values (and of entry files before block checksums).
pub const WHOLE_CONTENT_VERSION: u32 = 1;
/// The base-2 logarithm of the block size this build writes: 64 KiB (see BENCHMARKS.md).
pub const BLOCK_SHIFT: u8 = 16;
/// The smallest block size a reader accepts, as a base-2 logarithm (512 bytes).
pub const MIN_BLOCK_SHIFT: u8 = 9;
/// The largest block size a reader accepts, as a base-2 logarithm (1 MiB: what one reader holds
/// at most).
pub const MAX_BLOCK_SHIFT: u8 = 20;
/// Bytes of the block table per block.
pub const CRC_LEN: usize = 4;

/// Flag bit of a header that follows the content.
const FLAG_TRAILING: u16 = 1;

/// The number of blocks of `content_len` bytes of content in blocks of `1 << shift` bytes.
pub fn block_count(content_len: u64, shift: u8) -> u64 {
    content_len.div_ceil(1u64 << shift)
}

/// The length of the block table of `content_len` bytes of content.
pub fn table_len(content_len: u64, shift: u8) -> u64 {
    block_count(content_len, shift) * CRC_LEN as u64
}

/// The length of the entry file for `content_len` bytes of content (header, content and block
/// table); `None` past `u64`.
pub fn file_len(content_len: u64, shift: u8) -> Option<u64> {
    content_len
        .checked_add(HEADER_LEN as u64)?
        .checked_add(table_len(content_len, shift))
}

/// The filesystem block an entry file's size is rounded up to when it is charged against its
/// namespace's quota: 4 KiB, the default block size of ext4, XFS, APFS and NTFS.
pub const CHARGE_UNIT: u64 = 4096;

/// What an entry file of `file_len` bytes is charged against its namespace's quota: what it takes
/// on disk, its size (header, content, block table) rounded up to a whole [`CHARGE_UNIT`]. An empty
/// entry costs 4 KiB, so a quota bounds the number of files as well as the bytes. The one
/// definition of an entry's cost: the usage counter, quota checks, eviction and `stats` all use
/// it.
pub fn charge_for_file(file_len: u64) -> u64 {
    file_len.div_ceil(CHARGE_UNIT).saturating_mul(CHARGE_UNIT)
}

/// What an entry of `content_len` bytes of content, as this build writes it (blocks of
/// [`BLOCK_SHIFT`]), is charged: [`charge_for_file`] of its file.
pub fn charge(content_len: u64) -> u64 {
    file_len(content_len, BLOCK_SHIFT).map_or(u64::MAX, charge_for_file)
}

/// Where an entry file keeps its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// Header first, content from offset [`HEADER_LEN`], then the block table: every entry but
    /// compiled artifacts.
    #[default]
    Leading,
    /// Content from offset 0, the block table, then the header (flag 1): for content that a
    /// consumer maps from the file itself and that must start the file.
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

    /// The offset of the block table in the entry file of `content_len` bytes of content: right
    /// after the content.
    pub fn table_start(self, content_len: u64) -> u64 {
        self.content_start() + content_len
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
    /// In an entry file, the CRC32C of the block table; in a remote value (format version 1),
    /// the CRC32C of the content.
    pub crc: u32,
    /// The key the entry was written under.
    pub key: Key,
}

/// A decoded entry-file header: the header, and the block size of its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHeader {
    /// The header's fields (`crc` is the block table's CRC32C).
    pub header: Header,
    /// The block size, as its base-2 logarithm.
    pub block_shift: u8,
}

impl FileHeader {
    /// The block size in bytes.
    pub fn block_len(&self) -> u64 {
        1u64 << self.block_shift
    }
    /// The length of the block table.
    pub fn table_len(&self) -> u64 {
        table_len(self.header.len, self.block_shift)
    }
    /// The length of the entry file this header describes; `None` past `u64`.
    pub fn file_len(&self) -> Option<u64> {
        file_len(self.header.len, self.block_shift)
    }
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
    /// A block size out of the accepted range (as its base-2 logarithm).
    BadBlockSize(u8),
}

impl HeaderError {
    /// A short description, for logs and error values.
    pub fn describe(self) -> &'static str {
        match self {
            HeaderError::BadMagic => "not an entry (bad magic)",
            HeaderError::UnknownVersion(WHOLE_CONTENT_VERSION) => {
                "format version 1 (written before block checksums): read as a miss"
            }
            HeaderError::UnknownVersion(_) => "unknown format version",
            HeaderError::UnknownFlags(_) => "unknown flags in header",
            HeaderError::BadHeaderChecksum => "header checksum mismatch",
            HeaderError::BadBlockSize(_) => "block size out of range",
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

fn u32_at(b: &[u8; HEADER_LEN], i: usize) -> u32 {
    u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"))
}

impl Header {
    /// Encodes the header in format version 1, where `crc` is the CRC32C of the whole content:
    /// the form the remote tier puts in front of its values.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = self.fields(WHOLE_CONTENT_VERSION);
        b[12..16].copy_from_slice(&0u32.to_le_bytes());
        seal(b)
    }

    /// Encodes the header of an entry file (format version 2) for its place in a file of layout
    /// `layout` whose block table has blocks of `1 << block_shift` bytes (`crc` is the table's
    /// CRC32C).
    pub fn encode_as(&self, layout: Layout, block_shift: u8) -> [u8; HEADER_LEN] {
        let flags = match layout {
            Layout::Leading => 0,
            Layout::Trailing => FLAG_TRAILING,
        };
        let mut b = self.fields(VERSION);
        b[12..14].copy_from_slice(&flags.to_le_bytes());
        b[14] = block_shift;
        seal(b)
    }

    fn fields(&self, version: u32) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&version.to_le_bytes());
        b[16..24].copy_from_slice(&self.len.to_le_bytes());
        b[24..28].copy_from_slice(&self.crc.to_le_bytes());
        b[32..64].copy_from_slice(self.key.as_bytes());
        b
    }

    /// Decodes and checks a header in format version 1 (a remote value's). The caller still has
    /// to check `len` against the value's size, the content against `crc`, and `key` against
    /// the key it asked for.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, HeaderError> {
        let version = check_common(b)?;
        if version != WHOLE_CONTENT_VERSION {
            return Err(HeaderError::UnknownVersion(version));
        }
        match u32_at(b, 12) {
            0 => Ok(Header::of_fields(b)),
            f => Err(HeaderError::UnknownFlags(f)),
        }
    }

    /// Decodes and checks the header of an entry file (format version 2) read from its place in
    /// a file of layout `layout`: a header whose flag says the other layout is refused. The
    /// caller still has to check the file's size against [`FileHeader::file_len`] and `key`
    /// against the key it asked for.
    pub fn decode_as(b: &[u8; HEADER_LEN], layout: Layout) -> Result<FileHeader, HeaderError> {
        let version = check_common(b)?;
        if version != VERSION {
            return Err(HeaderError::UnknownVersion(version));
        }
        let expected_flags = match layout {
            Layout::Leading => 0,
            Layout::Trailing => FLAG_TRAILING,
        };
        let flags = u16::from_le_bytes([b[12], b[13]]);
        if flags != expected_flags || b[15] != 0 {
            return Err(HeaderError::UnknownFlags(u32_at(b, 12)));
        }
        let block_shift = b[14];
        if !(MIN_BLOCK_SHIFT..=MAX_BLOCK_SHIFT).contains(&block_shift) {
            return Err(HeaderError::BadBlockSize(block_shift));
        }
        Ok(FileHeader {
            header: Header::of_fields(b),
            block_shift,
        })
    }

    fn of_fields(b: &[u8; HEADER_LEN]) -> Header {
        Header {
            len: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
            crc: u32_at(b, 24),
            key: Key::new(b[32..64].try_into().expect("32 bytes")),
        }
    }
}

/// Sets the header's own CRC.
fn seal(mut b: [u8; HEADER_LEN]) -> [u8; HEADER_LEN] {
    let hcrc = header_crc(&b);
    b[28..32].copy_from_slice(&hcrc.to_le_bytes());
    b
}

/// Checks the magic and the header's CRC; the version.
fn check_common(b: &[u8; HEADER_LEN]) -> Result<u32, HeaderError> {
    if b[..8] != MAGIC {
        return Err(HeaderError::BadMagic);
    }
    if u32_at(b, 28) != header_crc(b) {
        return Err(HeaderError::BadHeaderChecksum);
    }
    Ok(u32_at(b, 8))
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

/// The block table of content streamed to it in pieces of any size: one CRC32C per block.
#[derive(Debug, Clone)]
pub struct BlockTable {
    shift: u8,
    /// The table so far (the finished blocks).
    table: Vec<u8>,
    /// The CRC of the block being filled, and how many of its bytes have come.
    current: Checksum,
    filled: u64,
}

impl BlockTable {
    /// An empty table of blocks of `1 << shift` bytes.
    pub fn new(shift: u8) -> BlockTable {
        BlockTable {
            shift,
            table: Vec::new(),
            current: Checksum::default(),
            filled: 0,
        }
    }

    /// Adds the next bytes of the content.
    pub fn update(&mut self, mut bytes: &[u8]) {
        let block = 1u64 << self.shift;
        while !bytes.is_empty() {
            let n = ((block - self.filled) as usize).min(bytes.len());
            self.current.update(&bytes[..n]);
            self.filled += n as u64;
            bytes = &bytes[n..];
            if self.filled == block {
                self.table.extend_from_slice(&self.current.value().to_le_bytes());
                self.current = Checksum::default();
                self.filled = 0;
            }
        }
    }

    /// The finished table (the last block may be short), and its CRC32C for the header.
    pub fn finish(mut self) -> (Vec<u8>, u32) {
        if self.filled > 0 {
            self.table.extend_from_slice(&self.current.value().to_le_bytes());
        }
        let crc = Checksum::of(&self.table);
        (self.table, crc)
    }
}

/// The whole entry file for `content` under `key`, in layout `layout` with blocks of
/// `1 << block_shift` bytes: what the store's writer produces. For tests and tools that plant
/// entry files.
#[doc(hidden)]
pub fn encode_file(key: Key, content: &[u8], layout: Layout, block_shift: u8) -> Vec<u8> {
    let mut table = BlockTable::new(block_shift);
    table.update(content);
    let (table, crc) = table.finish();
    let header = Header {
        len: content.len() as u64,
        crc,
        key,
    }
    .encode_as(layout, block_shift);
    let mut file = Vec::with_capacity(HEADER_LEN + content.len() + table.len());
    if layout == Layout::Leading {
        file.extend_from_slice(&header);
    }
    file.extend_from_slice(content);
    file.extend_from_slice(&table);
    if layout == Layout::Trailing {
        file.extend_from_slice(&header);
    }
    file
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
        for layout in [Layout::Leading, Layout::Trailing] {
            let fh = Header::decode_as(&h.encode_as(layout, BLOCK_SHIFT), layout).unwrap();
            assert_eq!((fh.header, fh.block_shift), (h, BLOCK_SHIFT));
            // A version-1 header is not an entry file's, nor the reverse.
            assert_eq!(
                Header::decode_as(&h.encode(), layout),
                Err(HeaderError::UnknownVersion(1))
            );
        }
        assert_eq!(
            Header::decode(&h.encode_as(Layout::Leading, BLOCK_SHIFT)),
            Err(HeaderError::UnknownVersion(2))
        );
        for shift in [MIN_BLOCK_SHIFT - 1, MAX_BLOCK_SHIFT + 1] {
            assert_eq!(
                Header::decode_as(&h.encode_as(Layout::Leading, shift), Layout::Leading),
                Err(HeaderError::BadBlockSize(shift))
            );
        }
    }

    #[test]
    fn every_single_byte_flip_of_the_header_is_refused() {
        let h = Header {
            len: 77,
            crc: Checksum::of(b"content"),
            key: Key::digest(b"k"),
        };
        let encodings = [
            (h.encode(), None),
            (h.encode_as(Layout::Leading, BLOCK_SHIFT), Some(Layout::Leading)),
            (h.encode_as(Layout::Trailing, BLOCK_SHIFT), Some(Layout::Trailing)),
        ];
        for (good, layout) in encodings {
            let decode = |b: &[u8; HEADER_LEN]| match layout {
                None => Header::decode(b).is_ok(),
                Some(layout) => Header::decode_as(b, layout).is_ok(),
            };
            assert!(decode(&good));
            for i in 0..HEADER_LEN {
                for bit in 0..8 {
                    let mut bad = good;
                    bad[i] ^= 1 << bit;
                    assert!(!decode(&bad), "{layout:?}: flip of bit {bit} in byte {i} accepted");
                }
                let mut bad = good;
                bad[i] = bad[i].wrapping_add(0x5a);
                assert!(!decode(&bad), "{layout:?}: change of byte {i} accepted");
            }
        }
    }

    /// The table has one CRC per block, the last block short, whatever pieces the content comes
    /// in; and an entry file is header, content, table (or content, table, header).
    #[test]
    fn the_block_table_is_one_crc_per_block() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let shift = MIN_BLOCK_SHIFT;
        let block = 1usize << shift;
        for len in [0, 1, block - 1, block, block + 1, 3 * block, data.len()] {
            let content = &data[..len];
            let expected: Vec<u8> = content
                .chunks(block)
                .flat_map(|b| Checksum::of(b).to_le_bytes())
                .collect();
            for piece in [1, 7, block - 1, block, block + 3, 4096] {
                let mut t = BlockTable::new(shift);
                for p in content.chunks(piece) {
                    t.update(p);
                }
                let (table, crc) = t.finish();
                assert_eq!(table, expected, "len {len}, pieces of {piece}");
                assert_eq!(crc, Checksum::of(&expected));
            }
            assert_eq!(table_len(len as u64, shift), expected.len() as u64);
            let key = Key::digest(b"k");
            let file = encode_file(key, content, Layout::Leading, shift);
            assert_eq!(file.len() as u64, file_len(len as u64, shift).unwrap());
            assert_eq!(&file[HEADER_LEN..HEADER_LEN + len], content);
            assert_eq!(&file[HEADER_LEN + len..], &expected[..]);
            let fh = Header::decode_as(file[..HEADER_LEN].try_into().unwrap(), Layout::Leading).unwrap();
            assert_eq!(
                (fh.header.len, fh.header.crc, fh.block_shift),
                (len as u64, Checksum::of(&expected), shift)
            );
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
