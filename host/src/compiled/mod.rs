//! A cache of compiled code: each component (or core module) is compiled by Cranelift once, and
//! every later load maps the stored artifact instead.
//!
//! ```text
//! <cache root>/
//!   compiled.key          the per-cache secret (0600) that authenticates artifacts
//!   .compiled/            artifacts, keyed by SHA-256(format, wasmtime's compatibility hash,
//!                         kind, SHA-256(wasm)); an ordinary reserved namespace (LRU, quota)
//!   .compiled-digests/    SHA-256 of component files remembered by file identity
//!   .incremental/         Cranelift's incremental-compilation cache (--incremental)
//! ```
//!
//! Each artifact entry's content is the artifact exactly as `Component::serialize` wrote it, then
//! a 96-byte header (magic, kind, where the artifact starts and its length, the key, and a keyed
//! BLAKE3 MAC over every other byte of the content); the store's own header follows the content
//! (a trailing header), so the artifact starts the file. A hit checks the header and the MAC and
//! hands the open file to wasmtime, which maps it (see `mapped`): no copy, no compile. An entry
//! that fails the MAC or does not deserialize on this engine is deleted and recompiled.
//!
//! One module per role: `artifact` (the entry format and its MAC), `memo` (what is remembered by
//! file identity: component digests, verified artifacts), `load` (the in-process memo, then the
//! disk, the remote tier, a compile), `secret` (the key file), and the platform's parts, one small
//! module per platform: `sys` and `mapped` (artifacts mapped by wasmtime, on Linux).

mod artifact;
#[cfg(feature = "incremental")]
mod incremental;
mod load;
mod mapped;
mod memo;
mod secret;
mod sys;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cap_std::fs::Dir;
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Engine, Module};

#[cfg(feature = "incremental")]
pub use incremental::{INCREMENTAL_NAMESPACE, IncrementalCache};
pub use mapped::ZERO_COPY_SUPPORTED;
pub use secret::SECRET_FILE;

#[cfg(feature = "remote")]
use crate::remote::RemoteTier;
use crate::store::{Counter, Counts};
use crate::{Durability, FileCache, Key};
use artifact::Artifact;
use load::Disk;
use mapped::{Mapper, Native};

/// The reserved namespace of compiled artifacts.
pub const COMPILED_NAMESPACE: &str = ".compiled";
/// The reserved namespace of remembered component digests.
pub const DIGESTS_NAMESPACE: &str = ".compiled-digests";

/// What was compiled: a component or a core module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A component (`Component`).
    Component = 1,
    /// A core module (`Module`).
    Module = 2,
}

/// Where a load found its code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Loaded before by this `ComponentCache`, in this process.
    Memory,
    /// An artifact of the cache directory, checked and mapped.
    Disk,
    /// Fetched from the remote tier (authenticated by the fleet key), then stored locally.
    Remote,
    /// Compiled now (and stored, if the cache can be written).
    Compiled,
}

/// [`ComponentCache::with_remote`] was called on a cache that already has a remote tier.
#[cfg(feature = "remote")]
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("this ComponentCache (or a clone of it) already has a remote tier; it keeps that one")]
pub struct RemoteAlreadySet;

/// What a [`ComponentCache`] compiles and loads: a [`Component`] or a core [`Module`]. Every
/// `load*` function is generic over it: `cache.load::<Component>(&wasm)`, or with the type
/// inferred from where the result goes.
pub trait Compiled: sealed::Sealed {
    /// Which of the two.
    const KIND: Kind;
}

impl Compiled for Component {
    const KIND: Kind = Kind::Component;
}

impl Compiled for Module {
    const KIND: Kind = Kind::Module;
}

mod sealed {
    /// Only `Component` and `Module` are [`Compiled`](super::Compiled).
    pub trait Sealed: Clone + std::any::Any {
        fn engine(&self) -> &wasmtime::Engine;
    }

    impl Sealed for wasmtime::component::Component {
        fn engine(&self) -> &wasmtime::Engine {
            self.engine()
        }
    }

    impl Sealed for wasmtime::Module {
        fn engine(&self) -> &wasmtime::Engine {
            self.engine()
        }
    }
}

/// Options of the compiled cache. Start from `CompiledOptions::default()` and set fields (more
/// may be added, so it cannot be built as a literal).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct CompiledOptions {
    /// Bytes of artifacts kept; least recently used ones are evicted. Default 4 GiB.
    pub quota: u64,
    /// Whether each artifact is fsynced before it becomes visible. Default: no (a lost
    /// artifact is only a recompile).
    pub durability: Durability,
    /// Whether [`ComponentCache::new`] logs a warning when the cache directory cannot be used
    /// or written (a caller that already warned about the directory turns it off). Default: yes.
    pub warn_if_degraded: bool,
    /// How many remembered digests and verifications (`.compiled-digests`, one small file per
    /// file identity: a component file's, or an artifact's, which changes at least hourly while
    /// it is used) are kept; past it, the least recently used are removed. Checked by each
    /// process when it first remembers one, then after every quarter of this many more, so the
    /// count may pass it by that much between checks. Default [`DEFAULT_MAX_REMEMBERED`].
    pub max_remembered: u64,
    /// How recently a file may have changed and still be remembered (`memo::RACY`; tests use
    /// less).
    pub(crate) racy: Duration,
}

/// The default [`CompiledOptions::max_remembered`]: 4096 files.
pub const DEFAULT_MAX_REMEMBERED: u64 = 4096;

impl Default for CompiledOptions {
    fn default() -> Self {
        CompiledOptions {
            quota: 4 << 30,
            durability: Durability::Relaxed,
            warn_if_degraded: true,
            max_remembered: DEFAULT_MAX_REMEMBERED,
            racy: memo::RACY,
        }
    }
}

/// A cache of compiled components and modules for one [`Engine`], over a [`FileCache`].
///
/// Cheap to clone; clones share everything. Loads of the same code in one process share one
/// compile (others wait for it) and one `Component`, which the cache keeps for as long as it
/// (or a clone) lives.
///
/// Any engine loads from the cache without copying where [`ZERO_COPY_SUPPORTED`] (Linux); no
/// configuration is needed.
#[derive(Clone)]
pub struct ComponentCache {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    disk: Option<Disk>,
    /// Shares artifacts with other hosts (only under a fleet key; see `filecache_store::remote`).
    #[cfg(feature = "remote")]
    remote: std::sync::OnceLock<RemoteTier>,
    /// SHA-256 state over the format and the engine's compatibility hash.
    prefix: Sha256,
    loaded: Mutex<HashMap<Key, Arc<Mutex<Option<Artifact>>>>>,
    zero_copy: AtomicBool,
    /// Loads in a row that could not map their artifact though `/proc` is there (a passing
    /// failure, `EMFILE` or `ENOMEM`, or one of this engine): at `load::ZERO_COPY_ATTEMPTS`,
    /// loads copy from then on.
    zero_copy_failures: AtomicU32,
    /// What a load asks of the platform's mapping.
    mapper: Arc<dyn Mapper>,
    /// How many artifact MACs this cache computed.
    macs_checked: AtomicU64,
    store_warned: AtomicBool,
}

impl std::fmt::Debug for ComponentCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComponentCache")
            .field("persistent", &self.is_persistent())
            .field("writable", &self.is_writable())
            .finish()
    }
}

/// A `Hasher` that feeds SHA-256, for wasmtime's `precompile_compatibility_hash`.
struct ShaHasher<'a>(&'a mut Sha256);

impl std::hash::Hasher for ShaHasher<'_> {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// SHA-256 of `bytes`.
fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl ComponentCache {
    /// A compiled cache for `engine` over `cache`. Never fails: if the cache directory cannot be
    /// used (a read-only filesystem, no permission), loads still work, compiling in memory, and
    /// one warning says why. If it can be read but not written, stored artifacts are still used.
    pub fn new(cache: &FileCache, engine: &Engine, options: CompiledOptions) -> ComponentCache {
        ComponentCache::with_mapper(cache, engine, options, Arc::new(Native))
    }

    /// As [`new`](Self::new), asking `mapper` about mapping artifacts.
    fn with_mapper(
        cache: &FileCache,
        engine: &Engine,
        options: CompiledOptions,
        mapper: Arc<dyn Mapper>,
    ) -> ComponentCache {
        let disk = match Disk::open(cache, options) {
            Ok(disk) => {
                if !disk.writable && options.warn_if_degraded {
                    tracing::warn!(
                        "the compiled-code cache cannot be written: components it does not hold are compiled in memory"
                    );
                }
                Some(disk)
            }
            Err(e) => {
                if options.warn_if_degraded {
                    tracing::warn!(
                        "the compiled-code cache is unusable ({}): components are compiled in memory",
                        e.full_message()
                    );
                }
                None
            }
        };
        ComponentCache::with_disk(engine, disk, mapper)
    }

    #[cfg(feature = "remote")]
    /// Also shares artifacts through `remote`: a local miss asks it before compiling, and a
    /// compile is published to it. Artifacts travel only under the tier's fleet key (without
    /// one, the tier neither sends nor accepts them) and are checked against it on arrival.
    ///
    /// Clones share the tier, so it can be set once: if this cache (or a clone of it) already has
    /// one, nothing changes and [`RemoteAlreadySet`] says so.
    pub fn with_remote(self, remote: RemoteTier) -> Result<ComponentCache, RemoteAlreadySet> {
        match self.inner.remote.set(remote) {
            Ok(()) => Ok(self),
            Err(_) => Err(RemoteAlreadySet),
        }
    }

    /// A cache that keeps compiled code in this process only.
    pub fn in_memory(engine: &Engine) -> ComponentCache {
        ComponentCache::with_disk(engine, None, Arc::new(Native))
    }

    /// A cache over `disk` that asks `mapper` about mapping artifacts (the platform, or a
    /// test's stand-in).
    fn with_disk(engine: &Engine, disk: Option<Disk>, mapper: Arc<dyn Mapper>) -> ComponentCache {
        let mut prefix = Sha256::new();
        // v2: the artifact starts its entry file (trailing headers), for wasmtime to map.
        prefix.update(b"filecache compiled artifact key v2\0");
        prefix.update(env!("CARGO_PKG_VERSION").as_bytes());
        prefix.update(b"\0");
        // Target, Cranelift flags, tunables, wasm features and wasmtime's version.
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut ShaHasher(&mut prefix));
        ComponentCache {
            inner: Arc::new(Inner {
                engine: engine.clone(),
                disk,
                #[cfg(feature = "remote")]
                remote: std::sync::OnceLock::new(),
                prefix,
                loaded: Mutex::new(HashMap::new()),
                zero_copy: AtomicBool::new(true),
                zero_copy_failures: AtomicU32::new(0),
                mapper,
                macs_checked: AtomicU64::new(0),
                store_warned: AtomicBool::new(false),
            }),
        }
    }

    /// The engine this cache compiles for.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Whether compiled code is kept in the cache directory (else only in this process).
    pub fn is_persistent(&self) -> bool {
        self.inner.disk.is_some()
    }

    /// Whether new artifacts can be stored in the cache directory.
    pub fn is_writable(&self) -> bool {
        self.inner.disk.as_ref().is_some_and(|d| d.writable)
    }

    /// Hits, misses (compiles) and rejected artifacts, as recorded on disk by every process.
    pub fn counts(&self) -> Counts {
        self.inner
            .disk
            .as_ref()
            .map(|d| d.artifacts.counts())
            .unwrap_or_default()
    }

    /// The cache key of `wasm` compiled as `kind` by this engine.
    pub fn key(&self, kind: Kind, wasm: &[u8]) -> Key {
        self.inner.artifact_key(kind, &sha256(wasm))
    }

    /// The component or core module in `wasm` (binary or text), compiled or loaded from the
    /// cache, and where its code came from.
    ///
    /// Every `load*` function returns the same shape: the [`Component`] or [`Module`] (see
    /// [`Compiled`]) and its [`Source`].
    pub fn load<T: Compiled>(&self, wasm: &[u8]) -> wasmtime::Result<(T, Source)> {
        take(self.inner.load_bytes(T::KIND, wasm)?)
    }

    /// What the file at `path` holds (opened with ambient authority; see
    /// [`load_file_at`](Self::load_file_at) for a capability). The file's SHA-256 is remembered
    /// by its identity (device, inode, size, modification and change times), so a warm load does
    /// not read it.
    pub fn load_file<T: Compiled>(&self, path: impl AsRef<Path>) -> wasmtime::Result<(T, Source)> {
        let path = path.as_ref();
        let file =
            File::open(path).map_err(|e| wasmtime::Error::new(e).context(format!("cannot open {}", path.display())))?;
        take(self.inner.load_file(T::KIND, &file, &path.display())?)
    }

    /// What the file at `path` under `dir` holds (opened through the directory handle, as
    /// cap-std does: `path` cannot leave `dir`).
    pub fn load_file_at<T: Compiled>(&self, dir: &Dir, path: impl AsRef<Path>) -> wasmtime::Result<(T, Source)> {
        let path = path.as_ref();
        let file = dir
            .open(path)
            .map(|f| f.into_std())
            .map_err(|e| wasmtime::Error::new(e).context(format!("cannot open {}", path.display())))?;
        take(self.inner.load_file(T::KIND, &file, &path.display())?)
    }

    /// What an open file holds, read from its start (the file's position is moved).
    pub fn load_open_file<T: Compiled>(&self, file: &File) -> wasmtime::Result<(T, Source)> {
        take(self.inner.load_file(T::KIND, file, &"the open file")?)
    }

    /// Stores `compiled`, which this cache's engine compiled from `wasm`, as if this cache had
    /// compiled it: for a caller that had to compile before the cache could be opened.
    pub fn insert<T: Compiled>(&self, wasm: &[u8], compiled: &T) -> wasmtime::Result<()> {
        if !Engine::same(compiled.engine(), &self.inner.engine) {
            return Err(wasmtime::Error::msg("the code was compiled by another engine"));
        }
        let key = self.key(T::KIND, wasm);
        let slot = self.inner.slot(key);
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() && !self.inner.is_stored(&key) {
            let a = Artifact::of(compiled);
            self.inner.count(Counter::Misses);
            self.inner.store(T::KIND, &key, &a);
            *slot = Some(a);
        }
        Ok(())
    }
}

/// The loaded code as the kind asked for (the key covers the kind, so it is always that kind).
fn take<T: Compiled>((a, source): (Artifact, Source)) -> wasmtime::Result<(T, Source)> {
    let compiled = a
        .downcast::<T>()
        .ok_or_else(|| wasmtime::Error::msg("compiled code of another kind"))?;
    Ok((compiled, source))
}
