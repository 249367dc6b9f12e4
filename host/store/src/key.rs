//! Keys: 32-byte SHA-256 digests.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::Error;

/// A cache key: a 32-byte SHA-256 digest of whatever identifies the content.
///
/// ```
/// use filecache_store::Key;
/// let key = Key::digest(b"hello");
/// assert_eq!(key.to_string().len(), 64);
/// assert_eq!(Key::try_from(key.as_bytes().as_slice()).unwrap(), key);
/// assert!(Key::try_from(&[0u8; 31][..]).is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key([u8; 32]);

impl Key {
    /// The key's length in bytes.
    pub const LEN: usize = 32;

    /// Wraps a digest.
    pub const fn new(bytes: [u8; 32]) -> Key {
        Key(bytes)
    }

    /// The SHA-256 digest of `data`.
    pub fn digest(data: impl AsRef<[u8]>) -> Key {
        Key(Sha256::digest(data.as_ref()).into())
    }

    /// The digest's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key as 64 lowercase hex digits: its file name on disk.
    pub(crate) fn hex(&self) -> HexKey {
        let mut out = [0u8; 64];
        hex::encode_to_slice(self.0, &mut out).expect("64 bytes hold 32 in hex");
        HexKey(out)
    }

    /// Parses 64 hex digits (a file name on disk).
    pub fn from_hex(s: &str) -> Option<Key> {
        let mut out = [0u8; 32];
        if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return None;
        }
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Key(out))
    }
}

impl TryFrom<&[u8]> for Key {
    type Error = Error;
    fn try_from(bytes: &[u8]) -> Result<Key, Error> {
        <[u8; 32]>::try_from(bytes)
            .map(Key)
            .map_err(|_| Error::InvalidKey { len: bytes.len() })
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hex().as_str())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({self})")
    }
}

/// A key in hex, on the stack: the entry's file name, and its fan-out directory.
pub(crate) struct HexKey([u8; 64]);

impl HexKey {
    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex is ASCII")
    }
    /// The fan-out directory: the first byte of the key, two hex digits.
    pub(crate) fn shard(&self) -> &str {
        &self.as_str()[..2]
    }
    /// `shard/name`, relative to the namespace directory.
    pub(crate) fn rel_path(&self) -> String {
        format!("{}/{}", self.shard(), self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_rejects() {
        let k = Key::digest(b"x");
        assert_eq!(Key::from_hex(&k.to_string()), Some(k));
        assert_eq!(Key::from_hex(&k.to_string().to_uppercase()), None);
        assert_eq!(Key::from_hex("ab"), None);
        assert_eq!(k.hex().shard(), &k.to_string()[..2]);
        for len in [0, 31, 33, 4096] {
            let v = vec![0u8; len];
            assert!(matches!(Key::try_from(&v[..]), Err(Error::InvalidKey { len: l }) if l == len));
        }
    }
}
