//! The store of filecache: content by key, in namespaces, on disk, with no WebAssembly runtime.
//!
//! [`FileCache`] is the cache root: the one place where a path from the outside world is opened
//! (with cap-std's ambient authority, in [`FileCache::open`]). Everything below works through
//! [`cap_std::fs::Dir`] handles, so no key, file name or planted symlink can reach outside it.
//! [`Namespace`] is one subdirectory of it, with its own limits; it implements [`EntryStore`].
//!
//! - [`entry`]: the format of one entry file (header, checked content).
//! - Data charged beside the entries ([`Namespace::charge_data`]): what the key-value crate
//!   (`filecache-kv`, SQLite) stores in a namespace counts against its quota, and is never
//!   evicted (cache entries are evicted to make room for it instead).
//! - `remote` (feature `remote`): a shared tier in Redis for a fleet of hosts.
//! - [`size`]: parsing sizes such as `64MiB` (for command lines and configuration).
//!
//! # Cargo features
//!
//! - `remote` (off by default): the `remote` module (`RemoteTier`, `TieredStore`), over the
//!   `redis` crate (synchronous client, no TLS or cluster support) and `hmac`.
//! - `fault-injection`, `fuzzing`: hooks for this crate's own tests and fuzzers; never enable them
//!   in a normal build.
//!
//! # Platforms
//!
//! Linux, macOS and Windows, on x86-64 and aarch64 (wherever wasmtime runs); the crate needs no C
//! compiler. What differs between platforms is kept in one small module per platform; where a
//! platform lacks something, this is what happens instead:
//!
//! - **Locks** (the namespace's, and each writer's on its temporary file): `flock` on Unix;
//!   `LockFileEx` on Windows, on one byte far past the end of any file, so that a held lock never
//!   blocks a reader of the file's bytes (Windows enforces byte-range locks).
//! - **A removed or replaced entry that a reader has open**: on Unix it is unlinked or renamed
//!   over. Windows cannot take the name of an open file (deleting it only marks it "delete
//!   pending", and until its last reader closes the name can be neither opened nor replaced), so
//!   the store first renames it into the namespace's `tmp/` and deletes it there: the entry's name
//!   is free at once, and the file goes when its reader closes it. Replacing an entry is one
//!   atomic rename where Windows can rename over an open file (POSIX semantics: Windows 10 1809
//!   and later, on NTFS); elsewhere (older Windows, Wine) an entry a reader holds open is moved
//!   aside first, and a reader that looks in between misses. Everywhere,
//!   a reader keeps reading the bytes it opened, and never sees a torn entry.
//! - **Access times**: on Linux entries are opened with `O_NOATIME`, so a hit writes the inode
//!   once (the modification time, which is recency). Elsewhere a hit may also update the access
//!   time, as any read does there.
//! - **Private files**: created mode `0600` on Unix. On Windows they inherit the directory's ACL:
//!   keep the cache under the user's profile (as `%LOCALAPPDATA%` is).
//! - **[`Durability::Sync`]**: the entry is flushed before it is published everywhere; its
//!   directory is fsynced after the rename on Unix only (Windows cannot flush a directory handle;
//!   NTFS journals the rename).
//! - **Planted FIFOs** are opened with `O_NONBLOCK` on Unix (they cannot be planted in a Windows
//!   directory).
//!
//! The store's own test suite runs on Windows too (under Wine, in CI: `scripts/cross-check.sh`);
//! only tests of what Windows lacks (symlinks without privileges, FIFOs, Unix permissions,
//! `O_NOATIME`, mounts, rlimits) are Unix-only.
#![deny(missing_docs)]

pub mod entry;
mod error;
#[cfg(any(test, feature = "fault-injection"))]
#[doc(hidden)]
pub mod fault;
#[cfg(not(any(test, feature = "fault-injection")))]
mod fault;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod key;
#[cfg(feature = "remote")]
pub mod remote;
pub mod size;

#[doc(hidden)]
pub use error::IoContext;
pub use error::{Error, Result};
pub use key::Key;

mod counters;
#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod hardening_tests;
mod maintenance;
#[cfg(test)]
mod model_tests;
mod namespace;
#[cfg(test)]
mod store_tests;
mod sys;

use std::io;
use std::path::Path;

use cap_fs_ext::{DirExt, OpenOptionsFollowExt};
use cap_std::ambient_authority;
use cap_std::fs::Dir;

pub use counters::{Counter, Counts};
pub use maintenance::{DamagedEntry, GcReport, NamespaceStats, Progress, VerifyReport};
pub use namespace::{EntryInfo, FileReader, FileWriter, MAX_READ_CHUNK, Namespace, RawEntry};

/// The operations every cache tier offers: whole and streamed reads and writes, delete, contains.
///
/// Implemented by [`Namespace`] (the local, on-disk tier) and, with the `remote` feature, by
/// `remote::TieredStore` (a namespace in front of a shared tier). Named apart from
/// `wasmtime::Store`, which an embedder's code uses beside it. Every method checks the entry's
/// integrity: a damaged entry is removed and answered as a miss (or, by a reader, as
/// [`Error::Corrupt`] on the read that reaches the damage, which returns no byte of it). An error
/// of the disk is an [`Error::Io`], and removes nothing.
pub trait EntryStore: Send + Sync {
    /// The content stored under `key`, or `None` on a miss.
    fn get(&self, key: &Key) -> Result<Option<Vec<u8>>>;
    /// A reader over the content stored under `key`, or `None` on a miss.
    fn open(&self, key: &Key) -> Result<Option<Box<dyn EntryReader>>>;
    /// Stores `content` under `key`, atomically, replacing any earlier entry.
    fn add(&self, key: &Key, content: &[u8]) -> Result<()>;
    /// Starts streaming a new entry for `key`; nothing is visible before
    /// [`EntryWriter::commit`].
    fn create(&self, key: &Key) -> Result<Box<dyn EntryWriter>>;
    /// Removes the entry under `key`; a missing key is not an error.
    fn delete(&self, key: &Key) -> Result<()>;
    /// Whether an entry is stored under `key` (its header is checked, its content is not read).
    fn contains(&self, key: &Key) -> Result<bool>;
}

/// A stream over one entry's content that verifies as it goes.
pub trait EntryReader: Send {
    /// The content's length in bytes.
    fn size(&self) -> u64;
    /// Reads at most `max` bytes; an empty vector means the end. The read that reaches a damaged
    /// block fails with [`Error::Corrupt`] instead of returning any byte of it: every byte
    /// returned has been checked.
    fn read_chunk(&mut self, max: usize) -> Result<Vec<u8>>;
}

/// A new entry being written. Dropping it without [`EntryWriter::commit`] discards it.
pub trait EntryWriter: Send {
    /// Appends bytes. After an error the writer is spent: every later call fails the same way.
    fn write(&mut self, bytes: &[u8]) -> Result<()>;
    /// Makes the entry visible under its key, atomically.
    fn commit(self: Box<Self>) -> Result<()>;
}

/// Whether writes are made durable before they become visible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// No fsync: an entry may be lost on power loss, but a torn one is never served (its
    /// checksum fails and it is removed). The default, as for most caches.
    #[default]
    Relaxed,
    /// fsync the entry before the rename that publishes it, and its directory after. A commit
    /// succeeds only once both have; if either fails, it fails with [`Error::Io`] and the entry
    /// is not left visible (the entry it would have replaced is then gone too).
    Sync,
}

/// The limits and settings of a namespace, as seen by the process that opens it.
///
/// Built from the defaults with one method per setting (the fields are public to read; the
/// struct may gain settings, so it cannot be written as a literal outside this crate):
///
/// ```
/// use filecache_store::{Durability, NamespaceOptions};
/// let options = NamespaceOptions::default().quota(256 << 20).durability(Durability::Sync);
/// assert_eq!(options.quota, 256 << 20);
/// assert_eq!(options.max_entry_size, NamespaceOptions::default().max_entry_size);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct NamespaceOptions {
    /// The largest content an entry may have, in bytes (default 64 MiB).
    pub max_entry_size: u64,
    /// The most bytes the namespace's entries may take on disk (default 1 GiB): each entry is
    /// charged its file (64-byte header, content, a 4-byte CRC per 64 KiB block) rounded up to a
    /// 4 KiB filesystem block ([`entry::charge`]), so an empty entry costs 4 KiB and the quota
    /// bounds the number of files too; key-value records, their key and value. Least recently used
    /// entries are evicted to make room.
    pub quota: u64,
    /// Refuse `add`, `create` and `delete` (default false). Nothing on disk is changed, not even
    /// recency.
    pub read_only: bool,
    /// Whether to fsync (default [`Durability::Relaxed`]).
    pub durability: Durability,
    /// The granularity of recency (default one second): a hit refreshes an entry's modification
    /// time (its place in least-recently-used order) only when it was set longer ago than this,
    /// so that a hot entry costs no inode write per hit. Eviction order is exact to within it.
    /// The compiled-code cache uses an hour: a refresh changes the file's change time, which
    /// its memo of verified artifacts goes by.
    pub recency: std::time::Duration,
}

impl Default for NamespaceOptions {
    fn default() -> Self {
        NamespaceOptions {
            max_entry_size: 64 << 20,
            quota: 1 << 30,
            read_only: false,
            durability: Durability::Relaxed,
            recency: namespace::RECENCY,
        }
    }
}

impl NamespaceOptions {
    /// Sets [`max_entry_size`](Self::max_entry_size).
    #[must_use]
    pub fn max_entry_size(mut self, bytes: u64) -> Self {
        self.max_entry_size = bytes;
        self
    }

    /// Sets [`quota`](Self::quota).
    #[must_use]
    pub fn quota(mut self, bytes: u64) -> Self {
        self.quota = bytes;
        self
    }

    /// Sets [`read_only`](Self::read_only).
    #[must_use]
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Sets [`durability`](Self::durability).
    #[must_use]
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Sets [`recency`](Self::recency).
    #[must_use]
    pub fn recency(mut self, granularity: std::time::Duration) -> Self {
        self.recency = granularity;
        self
    }
}

/// The name of the namespace a plugin gets when none is chosen.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The longest namespace name, in bytes (every character of one is ASCII).
pub const MAX_NAMESPACE_NAME_LEN: usize = 64;

/// Checks a plugin namespace name: 1–64 characters of `[a-z0-9._-]`, not starting with `.`
/// (such names are reserved for the host's own use).
///
/// ```
/// use filecache_store::validate_namespace_name;
/// assert!(validate_namespace_name("my-plugin.v2").is_ok());
/// assert!(validate_namespace_name("..").is_err());
/// assert!(validate_namespace_name("a/b").is_err());
/// assert!(validate_namespace_name(".compiled").is_err());
/// ```
pub fn validate_namespace_name(name: &str) -> Result<()> {
    let rule = match name.starts_with('.') {
        true => Err("names starting with '.' are reserved for the host"),
        false => validate_chars(name),
    };
    refuse_unless(name, rule)
}

/// A namespace name of either kind: a plugin's, or (starting with `.`) a reserved one.
fn validate_any_name(name: &str) -> Result<()> {
    match name.starts_with('.') {
        true => validate_reserved_name(name),
        false => validate_namespace_name(name),
    }
}

/// `rule`'s verdict on `name`, as an [`Error::InvalidNamespace`].
fn refuse_unless(name: &str, rule: std::result::Result<(), &'static str>) -> Result<()> {
    rule.map_err(|reason| Error::InvalidNamespace {
        name: name.to_string(),
        reason,
    })
}

fn validate_chars(name: &str) -> std::result::Result<(), &'static str> {
    if name.is_empty() {
        return Err("a name has 1 to 64 characters, this one is empty");
    }
    if name.len() > MAX_NAMESPACE_NAME_LEN {
        return Err("a name has 1 to 64 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("a name may only hold lowercase ASCII letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

fn validate_reserved_name(name: &str) -> Result<()> {
    let rule = match name {
        _ if !name.starts_with('.') => Err("a reserved namespace name starts with '.'"),
        "." | ".." => Err("'.' and '..' are not names"),
        _ => validate_chars(name),
    };
    refuse_unless(name, rule)
}

/// A cache root directory holding namespaces.
///
/// ```no_run
/// use filecache_store::{FileCache, Key, NamespaceOptions, EntryStore};
/// let cache = FileCache::open("/var/cache/my-host")?;
/// let ns = cache.namespace("my-plugin", NamespaceOptions::default())?;
/// let key = Key::digest(b"input");
/// ns.add(&key, b"expensive result")?;
/// assert_eq!(ns.get(&key)?.as_deref(), Some(&b"expensive result"[..]));
/// # Ok::<(), filecache_store::Error>(())
/// ```
#[derive(Debug)]
pub struct FileCache {
    root: Dir,
}

impl FileCache {
    /// Opens (creating it if needed) the cache root at `path`.
    ///
    /// This is the only place the store uses ambient authority: everything else goes through
    /// the directory handle opened here. If the directory cannot be created (a read-only
    /// filesystem, say) but exists, it is opened as it is.
    pub fn open(path: impl AsRef<Path>) -> Result<FileCache> {
        let path = path.as_ref();
        let created = Dir::create_ambient_dir_all(path, ambient_authority());
        let root = Dir::open_ambient_dir(path, ambient_authority()).map_err(|e| {
            let e = match created {
                Err(c) if e.kind() == io::ErrorKind::NotFound => c,
                _ => e,
            };
            Error::io(format!("cannot open cache directory {}", path.display()), e)
        })?;
        let cache = FileCache { root };
        cache.write_cachedir_tag();
        Ok(cache)
    }

    /// Uses an already opened directory as the cache root.
    pub fn from_dir(root: Dir) -> FileCache {
        FileCache { root }
    }

    /// The root directory handle.
    pub fn root(&self) -> &Dir {
        &self.root
    }

    /// Marks the root as a cache for backup tools (<https://bford.info/cachedir/>). Best effort.
    fn write_cachedir_tag(&self) {
        const TAG: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
            # This file is a cache directory tag created by filecache.\n\
            # For information about cache directory tags see https://bford.info/cachedir/\n";
        // Created only if there is no such name, never through a symlink (issue 11 finding 8):
        // `create_new` does not follow one, even a dangling one.
        let mut oo = cap_std::fs::OpenOptions::new();
        oo.write(true).create_new(true).follow(cap_fs_ext::FollowSymlinks::No);
        if let Ok(mut file) = self.root.open_with("CACHEDIR.TAG", &oo) {
            let _ = io::Write::write_all(&mut file, TAG.as_bytes());
        }
    }

    /// Opens (creating it if needed, unless read-only) the plugin namespace `name`.
    /// The name is checked with [`validate_namespace_name`]; nothing is created for a bad name.
    pub fn namespace(&self, name: &str, options: NamespaceOptions) -> Result<Namespace> {
        validate_namespace_name(name)?;
        self.open_namespace(name, options)
    }

    /// Opens a namespace reserved for the host (a name starting with `.`, which no plugin can
    /// name), e.g. for compiled code.
    pub fn reserved_namespace(&self, name: &str, options: NamespaceOptions) -> Result<Namespace> {
        validate_reserved_name(name)?;
        self.open_namespace(name, options)
    }

    fn open_namespace(&self, name: &str, options: NamespaceOptions) -> Result<Namespace> {
        let dir = match self.root.open_dir_nofollow(name) {
            Ok(dir) => Some(dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if options.read_only {
                    None
                } else {
                    match self.root.create_dir(name) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(Error::io(format!("cannot create namespace {name:?}"), e)),
                    }
                    Some(
                        self.root
                            .open_dir_nofollow(name)
                            .context(|| format!("cannot open namespace {name:?}"))?,
                    )
                }
            }
            Err(e) => {
                return Err(Error::io(
                    format!("cannot open namespace {name:?} (a namespace must be a real directory, not a symlink)"),
                    e,
                ));
            }
        };
        Namespace::with_dir(name.to_string(), dir, options)
    }

    /// The names of the namespaces present, plugin and reserved, sorted.
    pub fn namespace_names(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in self
            .root
            .entries()
            .context(|| "cannot list the cache directory".into())?
        {
            let entry = entry.context(|| "cannot list the cache directory".into())?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if is_dir && validate_any_name(&name).is_ok() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// Opens an existing namespace of either kind for maintenance.
    pub(crate) fn open_existing(&self, name: &str, options: NamespaceOptions) -> Result<Namespace> {
        validate_any_name(name)?;
        self.open_namespace(name, options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_names() {
        for ok in ["default", "a", "my-plugin_v2.0", &"x".repeat(64)] {
            validate_namespace_name(ok).unwrap();
        }
        for bad in ["", "..", ".", "a/b", ".hidden", "A", "é", "a b", "a\0", &"x".repeat(65)] {
            assert!(validate_namespace_name(bad).is_err(), "{bad:?} accepted");
        }
        validate_reserved_name(".compiled").unwrap();
        for bad in [".", "..", "compiled", "./x", ".A"] {
            assert!(validate_reserved_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}

/// The crate README's examples, compiled as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
