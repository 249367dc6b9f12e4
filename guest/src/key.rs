//! Cache keys.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::Error;

/// A cache key: a 32-byte SHA-256 digest.
///
/// Derive keys with [`Key::from_parts`] from everything the cached value depends on: a name and
/// version for the computation, its settings, and its inputs. `Display` (and `{:x}`) print the key
/// as 64 lowercase hex digits, which [`str::parse`] reads back.
///
/// ```
/// use filecache_guest::Key;
///
/// let settings = 11u32.to_le_bytes();
/// let key = Key::from_parts(&[b"my-plugin 1.0", &settings, b"input bytes"]);
/// assert_eq!(key.to_string().len(), 64);
/// assert_eq!(key.to_string().parse::<Key>().unwrap(), key);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key([u8; Key::LEN]);

impl Key {
    /// The length of a key in bytes.
    pub const LEN: usize = 32;

    /// Derives a key from `parts`: the SHA-256 digest of each part's length (as a little-endian
    /// `u64`) followed by its bytes, for every part in order.
    ///
    /// The length prefixes keep part boundaries apart, so `["ab", "c"]` and `["a", "bc"]` give
    /// different keys. Nothing else goes into the digest, so other tools can compute the same keys.
    ///
    /// ```
    /// use filecache_guest::Key;
    ///
    /// assert_ne!(Key::from_parts(&[b"ab", b"c"]), Key::from_parts(&[b"a", b"bc"]));
    /// assert_eq!(Key::from_parts(&[b"x"]), Key::from_parts(&[b"x"]));
    /// ```
    pub fn from_parts(parts: &[&[u8]]) -> Key {
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        Key(hasher.finalize().into())
    }

    /// Wraps 32 bytes as a key, as they are (no hashing).
    ///
    /// ```
    /// use filecache_guest::Key;
    ///
    /// let key = Key::from_bytes([7; 32]);
    /// assert_eq!(key.as_bytes(), &[7; 32]);
    /// ```
    pub const fn from_bytes(bytes: [u8; Key::LEN]) -> Key {
        Key(bytes)
    }

    /// The key's 32 bytes.
    ///
    /// ```
    /// use filecache_guest::Key;
    ///
    /// assert_eq!(Key::from_parts(&[]).as_bytes().len(), 32);
    /// ```
    pub const fn as_bytes(&self) -> &[u8; Key::LEN] {
        &self.0
    }
}

impl From<[u8; Key::LEN]> for Key {
    fn from(bytes: [u8; Key::LEN]) -> Key {
        Key(bytes)
    }
}

impl From<Key> for [u8; Key::LEN] {
    fn from(key: Key) -> [u8; Key::LEN] {
        key.0
    }
}

/// Accepts exactly 32 bytes; any other length is [`Error::InvalidKey`], as the cache would answer.
impl TryFrom<&[u8]> for Key {
    type Error = Error;

    fn try_from(bytes: &[u8]) -> Result<Key, Error> {
        <[u8; Key::LEN]>::try_from(bytes)
            .map(Key)
            .map_err(|_| Error::InvalidKey)
    }
}

impl AsRef<[u8]> for Key {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::LowerHex for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(self, f)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({self:x})")
    }
}

/// Why a string is not a key: keys are written as exactly 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseKeyError(());

impl fmt::Display for ParseKeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a cache key is written as exactly 64 hex digits")
    }
}

impl std::error::Error for ParseKeyError {}

/// Parses 64 hex digits (either case), as printed by `Display`.
impl FromStr for Key {
    type Err = ParseKeyError;

    fn from_str(s: &str) -> Result<Key, ParseKeyError> {
        let digits = s.as_bytes();
        if digits.len() != 2 * Key::LEN {
            return Err(ParseKeyError(()));
        }
        let mut bytes = [0u8; Key::LEN];
        for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
            *byte = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
        }
        Ok(Key(bytes))
    }
}

fn hex_digit(c: u8) -> Result<u8, ParseKeyError> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(ParseKeyError(())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_parts_is_sha256_of_length_prefixed_parts() {
        let mut manual = Vec::new();
        for part in [&b"ab"[..], b"", b"c"] {
            manual.extend_from_slice(&(part.len() as u64).to_le_bytes());
            manual.extend_from_slice(part);
        }
        let expected: [u8; 32] = Sha256::digest(&manual).into();
        assert_eq!(Key::from_parts(&[b"ab", b"", b"c"]).as_bytes(), &expected);
    }

    #[test]
    fn part_boundaries_matter() {
        assert_ne!(Key::from_parts(&[b"ab", b"c"]), Key::from_parts(&[b"a", b"bc"]));
        assert_ne!(Key::from_parts(&[b"abc"]), Key::from_parts(&[b"abc", b""]));
        assert_ne!(Key::from_parts(&[]), Key::from_parts(&[b""]));
    }

    #[test]
    fn known_vector() {
        // SHA-256 of the empty string: no parts means nothing is hashed.
        assert_eq!(
            Key::from_parts(&[]).to_string(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // One empty part: eight zero bytes of length prefix.
        assert_eq!(
            Key::from_parts(&[b""]).to_string(),
            "af5570f5a1810b7af78caf4bc70a660f0df51e42baf91d4de5b2328de0e83dfc"
        );
    }

    #[test]
    fn hex_round_trip() {
        let key = Key::from_bytes(core::array::from_fn(|i| (i * 8) as u8));
        let text = key.to_string();
        assert_eq!(text, "0008101820283038404850586068707880889098a0a8b0b8c0c8d0d8e0e8f0f8");
        assert_eq!(format!("{key:x}"), text);
        assert_eq!(format!("{key:?}"), format!("Key({text})"));
        assert_eq!(text.parse::<Key>(), Ok(key));
        assert_eq!(text.to_uppercase().parse::<Key>(), Ok(key));
        assert!(text[1..].parse::<Key>().is_err());
        assert!(format!("{text}0").parse::<Key>().is_err());
        assert!(text.replace('f', "g").parse::<Key>().is_err());
    }

    #[test]
    fn byte_conversions() {
        let key = Key::from_parts(&[b"x"]);
        let bytes: [u8; 32] = key.into();
        assert_eq!(Key::from(bytes), key);
        assert_eq!(Key::try_from(&bytes[..]), Ok(key));
        assert_eq!(Key::try_from(&bytes[1..]), Err(Error::InvalidKey));
        assert_eq!(key.as_ref(), &bytes[..]);
    }
}
