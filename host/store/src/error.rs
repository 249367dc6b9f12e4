//! The store's error type.

use std::io;

/// Why a cache operation failed.
///
/// The first variants mirror the WIT `error` variant one for one; [`Error::InvalidNamespace`] is
/// for the host's own mistakes (a namespace name a plugin may not use) and never reaches a guest.
/// More variants may be added: a `match` outside this crate needs a `_` arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key is not exactly 32 bytes.
    #[error("invalid key: a key is a 32-byte SHA-256 digest, this one has {len} bytes")]
    InvalidKey {
        /// The length of the key that was given.
        len: usize,
    },
    /// The entry exceeds the namespace's maximum entry size.
    #[error("entry too large: the namespace's maximum entry size is {limit} bytes")]
    TooLarge {
        /// The namespace's maximum entry size, in bytes of content.
        limit: u64,
    },
    /// The entry cannot fit in the namespace's quota, even after evicting every other entry.
    #[error("quota exceeded: an entry of {needed} bytes cannot fit in the namespace's quota of {quota} bytes")]
    QuotaExceeded {
        /// The bytes the entry needs.
        needed: u64,
        /// The namespace's quota, in bytes.
        quota: u64,
    },
    /// The namespace was opened read-only.
    #[error("the namespace is read-only")]
    ReadOnly,
    /// The entry failed its integrity check and has been removed.
    #[error("corrupt entry {key}: {reason} (it has been removed)")]
    Corrupt {
        /// The entry's key, in hex.
        key: String,
        /// What the check found.
        reason: &'static str,
    },
    /// A namespace name that is not allowed.
    #[error("invalid namespace name {name:?}: {reason}")]
    InvalidNamespace {
        /// The name that was refused.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The storage failed. (Its `Display` is the context; the OS error is its `source()`;
    /// [`Error::full_message`] joins them.)
    #[error("{context}")]
    Io {
        /// What the store was doing.
        context: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// The message with every underlying cause, `outer: inner: …`.
    pub fn full_message(&self) -> String {
        let mut out = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            out.push_str(": ");
            out.push_str(&c.to_string());
            cause = c.source();
        }
        out
    }

    /// An [`Error::Io`]: what the store was doing, and the operating system's error.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// `Result<T, filecache_store::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds a context message to an `io::Result`.
#[doc(hidden)]
pub trait IoContext<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(what(), e))
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        match e {
            Error::Io { source, context } => io::Error::new(source.kind(), format!("{context}: {source}")),
            Error::Corrupt { .. } | Error::InvalidKey { .. } | Error::InvalidNamespace { .. } => {
                io::Error::new(io::ErrorKind::InvalidData, e)
            }
            Error::TooLarge { .. } => io::Error::new(io::ErrorKind::FileTooLarge, e),
            Error::QuotaExceeded { .. } => io::Error::new(io::ErrorKind::StorageFull, e),
            Error::ReadOnly => io::Error::new(io::ErrorKind::ReadOnlyFilesystem, e),
        }
    }
}
