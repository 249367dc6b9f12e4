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

mod checksum;
mod header;
#[cfg(test)]
mod tests;

use crate::Key;

pub(crate) use checksum::crc32c_append;
pub use checksum::{BlockTable, Checksum};
pub use header::{FileHeader, Header, HeaderError};

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
