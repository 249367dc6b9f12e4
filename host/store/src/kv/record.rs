//! The on-disk format of one key-value record: a 64-byte header, the key, then the value.
//!
//! ```text
//! offset size  field
//!      0    8  magic "FCKVREC\n"
//!      8    4  format version (1), little-endian
//!     12    4  key length in bytes, little-endian
//!     16    8  value length in bytes, little-endian
//!     24    8  generation: a random number drawn for every write (what `cas` compares)
//!     32    4  CRC32C of the key and the value, little-endian
//!     36    4  CRC32C of the header (bytes 0..36 and 40..64), little-endian
//!     40   24  zero
//!     64    …  key (UTF-8), then value
//! ```
//!
//! The file is named by the SHA-256 digest of the key (see [`crate::kv`]), and a reader checks
//! that digest against the key it finds, so a record moved or copied under another name is
//! refused, as a cache entry written under another key is.

use crate::entry::Checksum;

/// Size of the header in bytes (the same as a cache entry's, so that the quota charges both the
/// same way: the bytes after the header).
pub const HEADER_LEN: usize = 64;
const _: () = assert!(HEADER_LEN == crate::entry::HEADER_LEN);
/// The header's first bytes.
pub const MAGIC: [u8; 8] = *b"FCKVREC\n";
/// The only format version this build reads and writes.
pub const VERSION: u32 = 1;

/// A decoded record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Bytes of key.
    pub key_len: u32,
    /// Bytes of value.
    pub value_len: u64,
    /// Drawn at random for each write of the record.
    pub generation: u64,
    /// CRC32C of key and value.
    pub crc: u32,
}

fn header_crc(b: &[u8; HEADER_LEN]) -> u32 {
    crate::entry::crc32c_append(crate::entry::crc32c_append(0, &b[..36]), &b[40..])
}

impl Header {
    /// The header of a record holding `key` and `value`.
    pub fn of(key: &[u8], value: &[u8], generation: u64) -> Header {
        let mut crc = Checksum::default();
        crc.update(key);
        crc.update(value);
        Header {
            key_len: key.len() as u32,
            value_len: value.len() as u64,
            generation,
            crc: crc.value(),
        }
    }

    /// Encodes the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.key_len.to_le_bytes());
        b[16..24].copy_from_slice(&self.value_len.to_le_bytes());
        b[24..32].copy_from_slice(&self.generation.to_le_bytes());
        b[32..36].copy_from_slice(&self.crc.to_le_bytes());
        let h = header_crc(&b);
        b[36..40].copy_from_slice(&h.to_le_bytes());
        b
    }

    /// Decodes and checks a header; the caller checks the lengths against the file's size.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, &'static str> {
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        if b[..8] != MAGIC {
            return Err("not a key-value record (bad magic)");
        }
        if u32_at(36) != header_crc(b) {
            return Err("header checksum mismatch");
        }
        if u32_at(8) != VERSION {
            return Err("unknown format version");
        }
        if b[40..].iter().any(|&x| x != 0) {
            return Err("unknown flags in header");
        }
        Ok(Header {
            key_len: u32_at(12),
            value_len: u64_at(16),
            generation: u64_at(24),
            crc: u32_at(32),
        })
    }

    /// The file's expected length.
    pub fn file_len(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.key_len) + self.value_len
    }
}

/// A whole record file: header, key, value.
pub fn encode(key: &[u8], value: &[u8], generation: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + key.len() + value.len());
    out.extend_from_slice(&Header::of(key, value, generation).encode());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    out
}

/// Checks a whole record file's bytes; returns its header and where the value starts.
pub fn check(bytes: &[u8]) -> Result<Header, &'static str> {
    let Some(head) = bytes.first_chunk::<HEADER_LEN>() else {
        return Err("shorter than a header");
    };
    let header = Header::decode(head)?;
    if header.file_len() != bytes.len() as u64 {
        return Err("length does not match the file's size");
    }
    if Checksum::of(&bytes[HEADER_LEN..]) != header.crc {
        return Err("content checksum mismatch");
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_byte_flip_refused() {
        let rec = encode(b"the key", b"the value", 42);
        let h = check(&rec).unwrap();
        assert_eq!((h.key_len, h.value_len, h.generation), (7, 9, 42));
        for i in 0..rec.len() {
            let mut bad = rec.clone();
            bad[i] ^= 0x10;
            assert!(check(&bad).is_err(), "flip in byte {i} accepted");
        }
        assert!(check(&rec[..rec.len() - 1]).is_err());
        let mut longer = rec.clone();
        longer.push(0);
        assert!(check(&longer).is_err());
    }
}
