//! The error type of every key-value operation.

/// Why a key-value operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store failed, or refused (read-only, over a limit, a damaged row).
    #[error(transparent)]
    Store(#[from] filecache_store::Error),
    /// A key longer than [`MAX_KEY_LEN`](crate::MAX_KEY_LEN).
    #[error("key too long: a key has at most {limit} bytes, this one has {len}")]
    KeyTooLong {
        /// The key's length.
        len: usize,
        /// [`MAX_KEY_LEN`](crate::MAX_KEY_LEN).
        limit: usize,
    },
    /// `increment` on a value that is not a decimal integer of the right kind.
    #[error("cannot increment key {key:?}: its value is not a decimal integer ({reason})")]
    NotANumber {
        /// The key (cut to 64 characters).
        key: String,
        /// What parsing found.
        reason: String,
    },
    /// `increment` would leave the integer range.
    #[error("cannot increment key {key:?}: {value} + {delta} overflows")]
    Overflow {
        /// The key (cut to 64 characters).
        key: String,
        /// The stored value.
        value: String,
        /// The delta asked for.
        delta: String,
    },
    /// One call would gather more than it may hold (see [`Bucket::get_many`](crate::Bucket::get_many)).
    #[error("{what} would hold more than {limit} bytes at once: ask for fewer keys per call")]
    TooMuchAtOnce {
        /// What was asked for.
        what: &'static str,
        /// The bound.
        limit: u64,
    },
    /// The bucket's database failed (an SQLite error other than damage).
    #[error("key-value database of namespace {namespace:?}: {message}")]
    Database {
        /// The namespace.
        namespace: String,
        /// SQLite's message.
        message: String,
    },
    /// The bucket's database file is damaged: its data cannot be read.
    #[error(
        "the key-value database of namespace {namespace:?} is damaged ({message}): its data cannot be read; \
         remove it with `filecache clear --include-kv --namespace {namespace}` (or Bucket::clear)"
    )]
    DamagedDatabase {
        /// The namespace.
        namespace: String,
        /// SQLite's message.
        message: String,
    },
    /// A value read from a shared server (the Redis engine) failed its checks (its checksum, or
    /// its MAC under the fleet key): it is not served.
    #[error(
        "the value of key {key:?} in the shared bucket of namespace {namespace:?} was refused: {reason}; \
         it is not served (verifying the bucket removes it)"
    )]
    Rejected {
        /// The namespace.
        namespace: String,
        /// The key (cut to 64 characters).
        key: String,
        /// What the check found.
        reason: &'static str,
    },
    /// The shared server (the Redis engine) failed, could not be reached in time, or answered
    /// something unexpected.
    #[error("key-value bucket of namespace {namespace:?} in Redis: {message}")]
    Remote {
        /// The namespace.
        namespace: String,
        /// What failed.
        message: String,
    },
    /// The database file, its log or its index is not a regular file (a planted symlink, say).
    #[error("key-value database of namespace {namespace:?}: {name} is not a regular file: refusing to open it")]
    NotAFile {
        /// The namespace.
        namespace: String,
        /// The file's name.
        name: String,
    },
}

impl Error {
    /// The message with every underlying cause, `outer: inner: …`.
    pub fn full_message(&self) -> String {
        match self {
            Error::Store(e) => e.full_message(),
            e => e.to_string(),
        }
    }
}

/// `Result<T, filecache_kv::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
