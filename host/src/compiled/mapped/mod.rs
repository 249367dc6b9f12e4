//! Loading artifacts straight from their cache files.
//!
//! An artifact entry keeps the artifact exactly as wasmtime serialized it (an ELF image) at
//! offset 0 of its file, the store's header after the content
//! ([`Layout::Trailing`](filecache_store::entry::Layout::Trailing)), so wasmtime can map the file
//! itself (`Component::deserialize_file` on the open file, `Module::deserialize_open_file`).
//! Its code then runs from the page cache without a copy, and a module's initial linear-memory
//! image (for a componentize-py plugin, the whole initialized Python interpreter: 11.9 MB) is
//! mapped copy-on-write from the same file at instantiation instead of being copied into a fresh
//! `memfd` on every load, which is what wasmtime does with memory it did not map from a file.
//! wasmtime owns the mapping and unmaps it when the last `Component` made from it is dropped;
//! its own code memory makes the code executable (with whatever instruction-cache maintenance
//! the CPU needs), so no engine configuration is involved.
//!
//! # Where
//!
//! Linux ([`ZERO_COPY_SUPPORTED`]): the open entry file, whose header and MAC were checked, is
//! handed to wasmtime as `/proc/thread-self/fd/N`, which names that very file (not whatever has
//! its name now), in the calling thread's own descriptor table (a thread that unshared its table
//! with `unshare(CLONE_FILES)` has descriptors the process's `/proc/self/fd` does not show).
//! Elsewhere, or where `/proc` is missing, each artifact is read into memory, checked there, and
//! copied into wasmtime's memory (still without compiling).
//!
//! Only from local filesystems: a file on NFS, SMB/CIFS, FUSE, 9p, overlayfs (whose lower layer
//! may be any of those) or any filesystem not known to be local is read into memory instead of
//! mapped, because a page of a mapping that such a filesystem cannot produce later (the file
//! replaced or evicted on the server, the connection lost) kills the process with `SIGBUS`, long
//! after the artifact was checked.

use std::fs::File;

use wasmtime::Engine;

use super::{Artifact, Kind};

/// Whether artifacts are loaded from their cache files without copying on this platform (Linux).
/// Elsewhere they are read and copied into wasmtime's memory, still without compiling.
pub const ZERO_COPY_SUPPORTED: bool = cfg!(target_os = "linux");

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
use linux as platform;
#[cfg(not(target_os = "linux"))]
mod other;
#[cfg(not(target_os = "linux"))]
use other as platform;

pub(crate) use platform::{Mapping, read_exact_at};

/// What a load asks of the platform's mapping: [`Native`], the platform's own answers, in every
/// build. The seam through which tests put a load on a filesystem that is not local, without
/// `/proc`, or through a passing failure to open a file again (`ComponentCache::with_mapper`).
pub(crate) trait Mapper: Send + Sync {
    /// Whether `file` is on a filesystem known to be local (see the module docs).
    fn can_map(&self, file: &File) -> bool {
        platform::can_map(file)
    }

    /// Whether an open file can be opened again by name here (`/proc` is mounted): if not,
    /// [`deserialize_open`](Self::deserialize_open) always fails, and artifacts are better read
    /// at once.
    fn can_reopen(&self) -> bool {
        platform::can_reopen()
    }

    /// Deserializes the artifact at the start of the open entry file `file`, which wasmtime
    /// maps itself (see the module docs).
    ///
    /// # Safety
    /// As for `Component::deserialize_file`: the file holds, from its start, an artifact that an
    /// engine of this configuration serialized (authenticated by the caller), and it is not
    /// changed while wasmtime maps it (cache entries are replaced by rename, never written in
    /// place, and the caller checked that no other user can write it).
    unsafe fn deserialize_open(&self, engine: &Engine, kind: Kind, file: &File) -> wasmtime::Result<Artifact> {
        // SAFETY: forwarded to the caller.
        unsafe { platform::deserialize_open(engine, kind, file) }
    }
}

/// The platform's own answers.
pub(crate) struct Native;

impl Mapper for Native {}
