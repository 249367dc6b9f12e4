//! The 64-byte header of an entry file (format version 2) and of a remote value (version 1):
//! encoding, decoding and its checks.

use super::{HEADER_LEN, Layout, MAGIC, MAX_BLOCK_SHIFT, MIN_BLOCK_SHIFT, VERSION, WHOLE_CONTENT_VERSION};
use super::{crc32c_append, file_len, table_len};
use crate::Key;

/// Flag bit of a header that follows the content.
const FLAG_TRAILING: u16 = 1;

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
