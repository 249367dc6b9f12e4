//! The cache's error type.

use std::fmt;
use std::io;

use crate::raw;

/// Why a cache operation failed: the interface's `error` variant as a Rust error.
///
/// Converts from and to the generated [`raw::Error`], and into [`std::io::Error`] (which is what
/// [`Reader`](crate::Reader) and [`Writer`](crate::Writer) report through `std::io`), keeping this
/// error as the inner error so it can be recovered with `downcast`.
///
/// ```
/// use filecache_guest::Error;
///
/// let err = Error::TooLarge { limit: 1 << 20 };
/// assert_eq!(err.to_string(), "the cache entry exceeds the maximum entry size of 1048576 bytes");
///
/// let io_err = std::io::Error::from(Error::Corrupt);
/// assert_eq!(io_err.kind(), std::io::ErrorKind::InvalidData);
/// assert_eq!(io_err.get_ref().unwrap().downcast_ref::<Error>(), Some(&Error::Corrupt));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Error {
    /// The key is not exactly 32 bytes.
    InvalidKey,
    /// The entry exceeds the namespace's maximum entry size.
    TooLarge {
        /// The namespace's maximum entry size in bytes.
        limit: u64,
    },
    /// The entry cannot fit in the namespace's quota even after evicting every other entry.
    QuotaExceeded,
    /// The namespace is read-only: adding, creating and deleting entries are refused.
    ReadOnly,
    /// This instance already holds as many open readers and writers as it may; dropping a
    /// [`Reader`](crate::Reader) or [`Writer`](crate::Writer) gives its slot back.
    TooManyHandles,
    /// The entry failed its integrity check; the host has removed it from the cache.
    Corrupt,
    /// The host's storage failed; the text is meant for humans.
    Io(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidKey => f.write_str("the cache key is not exactly 32 bytes"),
            Error::TooLarge { limit } => write!(f, "the cache entry exceeds the maximum entry size of {limit} bytes"),
            Error::QuotaExceeded => f.write_str("the cache entry does not fit in the cache quota"),
            Error::ReadOnly => f.write_str("the cache is read-only"),
            Error::TooManyHandles => f.write_str("too many cache readers and writers are open"),
            Error::Corrupt => {
                f.write_str("the cache entry failed its integrity check and has been removed from the cache")
            }
            Error::Io(message) => write!(f, "the cache storage failed: {message}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<raw::Error> for Error {
    fn from(error: raw::Error) -> Error {
        match error {
            raw::Error::InvalidKey => Error::InvalidKey,
            raw::Error::TooLarge(limit) => Error::TooLarge { limit },
            raw::Error::QuotaExceeded => Error::QuotaExceeded,
            raw::Error::ReadOnly => Error::ReadOnly,
            raw::Error::TooManyHandles => Error::TooManyHandles,
            raw::Error::Corrupt => Error::Corrupt,
            raw::Error::Io(message) => Error::Io(message),
        }
    }
}

impl From<Error> for raw::Error {
    fn from(error: Error) -> raw::Error {
        match error {
            Error::InvalidKey => raw::Error::InvalidKey,
            Error::TooLarge { limit } => raw::Error::TooLarge(limit),
            Error::QuotaExceeded => raw::Error::QuotaExceeded,
            Error::ReadOnly => raw::Error::ReadOnly,
            Error::TooManyHandles => raw::Error::TooManyHandles,
            Error::Corrupt => raw::Error::Corrupt,
            Error::Io(message) => raw::Error::Io(message),
        }
    }
}

/// Wraps the error with the closest [`io::ErrorKind`]: `Corrupt` is `InvalidData`, `InvalidKey`
/// is `InvalidInput`, `TooLarge` is `FileTooLarge`, `QuotaExceeded` is `QuotaExceeded`,
/// `ReadOnly` is `ReadOnlyFilesystem`, and the rest are `Other`.
impl From<Error> for io::Error {
    fn from(error: Error) -> io::Error {
        let kind = match error {
            Error::InvalidKey => io::ErrorKind::InvalidInput,
            Error::TooLarge { .. } => io::ErrorKind::FileTooLarge,
            Error::QuotaExceeded => io::ErrorKind::QuotaExceeded,
            Error::ReadOnly => io::ErrorKind::ReadOnlyFilesystem,
            Error::Corrupt => io::ErrorKind::InvalidData,
            Error::TooManyHandles | Error::Io(_) => io::ErrorKind::Other,
        };
        io::Error::new(kind, error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Error> {
        vec![
            Error::InvalidKey,
            Error::TooLarge { limit: 42 },
            Error::QuotaExceeded,
            Error::ReadOnly,
            Error::TooManyHandles,
            Error::Corrupt,
            Error::Io("disk on fire".into()),
        ]
    }

    #[test]
    fn raw_round_trip() {
        for error in all() {
            let raw: raw::Error = error.clone().into();
            assert_eq!(Error::from(raw), error);
        }
        assert_eq!(Error::from(raw::Error::TooLarge(7)), Error::TooLarge { limit: 7 });
    }

    #[test]
    fn messages() {
        for error in all() {
            let text = error.to_string();
            assert!(text.starts_with("the ") || text.starts_with("too "), "{text}");
        }
        assert!(Error::TooLarge { limit: 42 }.to_string().contains("42 bytes"));
        assert!(Error::Io("disk on fire".into()).to_string().ends_with(": disk on fire"));
    }

    #[test]
    fn io_kinds_keep_the_cache_error() {
        for error in all() {
            let io_error = io::Error::from(error.clone());
            let inner = io_error.get_ref().and_then(|e| e.downcast_ref::<Error>());
            assert_eq!(inner, Some(&error));
            assert_eq!(io_error.to_string(), error.to_string());
        }
        assert_eq!(io::Error::from(Error::Corrupt).kind(), io::ErrorKind::InvalidData);
    }
}
