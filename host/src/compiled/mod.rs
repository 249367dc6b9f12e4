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

#[cfg(feature = "incremental")]
mod incremental;
mod mapped;
mod secret;
mod sys;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use cap_std::fs::Dir;
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Engine, Module};

pub use mapped::ZERO_COPY_SUPPORTED;

/// Does nothing: the cache no longer needs anything of the engine's configuration to load
/// artifacts without copying (wasmtime maps each artifact file itself; see
/// [`ZERO_COPY_SUPPORTED`]). It used to install a `CustomCodeMemory` for mapped artifacts.
#[deprecated(
    since = "0.1.0",
    note = "no longer needed: any engine loads cached artifacts without copying"
)]
pub fn configure(config: &mut wasmtime::Config) -> &mut wasmtime::Config {
    config
}
#[cfg(feature = "incremental")]
pub use incremental::{INCREMENTAL_NAMESPACE, IncrementalCache};
pub use secret::SECRET_FILE;

use crate::entry::Layout;
#[cfg(feature = "remote")]
use crate::remote::RemoteTier;
use crate::store::{Counter, Counts};
use crate::{Durability, FileCache, Key, Namespace, NamespaceOptions};
use secret::{Secret, mac};

/// The reserved namespace of compiled artifacts.
pub const COMPILED_NAMESPACE: &str = ".compiled";
/// The reserved namespace of remembered component digests.
pub const DIGESTS_NAMESPACE: &str = ".compiled-digests";

const MAGIC: [u8; 8] = *b"FCCOMP01";
/// Bytes of an artifact entry's own header: the fields (64) and the MAC (32).
const ARTIFACT_HEADER: usize = 96;
/// A file changed this recently may change again within the same timestamp tick, so its digest
/// is not remembered (git's "racy" rule).
/// (Two seconds covers the coarsest timestamps in use, FAT's; tests use less.)
#[cfg(not(test))]
const RACY: Duration = Duration::from_secs(2);
#[cfg(test)]
const RACY: Duration = Duration::from_millis(300);

/// The recency granularity of artifacts: an artifact's place in LRU order is refreshed at most
/// once an hour. A refresh sets the file's modification time, which changes its change time and
/// so its identity, and the next load (after the racy window) verifies the whole artifact again
/// and remembers the new identity; an hour makes that once an hour per artifact at most.
const ARTIFACT_RECENCY: Duration = Duration::from_secs(3600);

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
    /// failure, `EMFILE` or `ENOMEM`, or one of this engine): at [`ZERO_COPY_ATTEMPTS`], loads
    /// copy from then on.
    zero_copy_failures: std::sync::atomic::AtomicU32,
    store_warned: AtomicBool,
}

/// How many loads in a row may fail to map their artifact (and load it by copying) before the
/// cache stops trying: one failure may pass (too many open files for a moment).
const ZERO_COPY_ATTEMPTS: u32 = 3;

struct Disk {
    artifacts: Namespace,
    digests: Namespace,
    secret: Secret,
    writable: bool,
    /// See [`CompiledOptions::max_remembered`].
    max_remembered: u64,
    /// Records this cache added to `digests`: the bound is checked at the first, then every
    /// quarter of `max_remembered`.
    remembered: std::sync::atomic::AtomicU64,
}

#[derive(Clone)]
enum Artifact {
    Component(Component),
    Module(Module),
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
        ComponentCache::with_disk(engine, disk)
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
        ComponentCache::with_disk(engine, None)
    }

    fn with_disk(engine: &Engine, disk: Option<Disk>) -> ComponentCache {
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
                zero_copy_failures: std::sync::atomic::AtomicU32::new(0),
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

    /// The component in `wasm` (binary or text), compiled or loaded from the cache, and where
    /// its code came from.
    ///
    /// Every `load_*` function returns the same shape: the component (or module) and its
    /// [`Source`].
    pub fn load_component(&self, wasm: &[u8]) -> wasmtime::Result<(Component, Source)> {
        let (a, s) = self.inner.load_bytes(Kind::Component, wasm)?;
        Ok((a.into_component(), s))
    }

    /// The component in the file at `path` (opened with ambient authority; see
    /// [`load_component_file_at`](Self::load_component_file_at) for a capability). The file's
    /// SHA-256 is remembered by its identity (device, inode, size, modification and change
    /// times), so a warm load does not read it.
    pub fn load_component_file(&self, path: impl AsRef<Path>) -> wasmtime::Result<(Component, Source)> {
        let path = path.as_ref();
        let file = open_ambient(path)?;
        let (a, s) = self.inner.load_file(Kind::Component, &file, &path.display())?;
        Ok((a.into_component(), s))
    }

    /// The component in the file at `path` under `dir` (opened through the directory handle,
    /// as cap-std does: `path` cannot leave `dir`).
    pub fn load_component_file_at(&self, dir: &Dir, path: impl AsRef<Path>) -> wasmtime::Result<(Component, Source)> {
        let path = path.as_ref();
        let file = open_at(dir, path)?;
        let (a, s) = self.inner.load_file(Kind::Component, &file, &path.display())?;
        Ok((a.into_component(), s))
    }

    /// The component in an open file, read from its start (the file's position is moved).
    pub fn load_component_open_file(&self, file: &File) -> wasmtime::Result<(Component, Source)> {
        let (a, s) = self.inner.load_file(Kind::Component, file, &"the open file")?;
        Ok((a.into_component(), s))
    }

    /// Stores `component`, which this cache's engine compiled from `wasm`, as if this cache had
    /// compiled it: for a caller that had to compile before the cache could be opened.
    pub fn insert_component(&self, wasm: &[u8], component: &Component) -> wasmtime::Result<()> {
        if !Engine::same(component.engine(), &self.inner.engine) {
            return Err(wasmtime::Error::msg("the component was compiled by another engine"));
        }
        let key = self.key(Kind::Component, wasm);
        let slot = self.inner.slot(key);
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() && !self.inner.is_stored(&key) {
            let a = Artifact::Component(component.clone());
            self.inner.count(Counter::Misses);
            self.inner.store(Kind::Component, &key, &a);
            *slot = Some(a);
        }
        Ok(())
    }

    /// The core module in `wasm`, compiled or loaded from the cache, and where its code came
    /// from.
    pub fn load_module(&self, wasm: &[u8]) -> wasmtime::Result<(Module, Source)> {
        let (a, s) = self.inner.load_bytes(Kind::Module, wasm)?;
        Ok((a.into_module(), s))
    }

    /// The core module in the file at `path` (see [`load_component_file`](Self::load_component_file)).
    pub fn load_module_file(&self, path: impl AsRef<Path>) -> wasmtime::Result<(Module, Source)> {
        let path = path.as_ref();
        let file = open_ambient(path)?;
        let (a, s) = self.inner.load_file(Kind::Module, &file, &path.display())?;
        Ok((a.into_module(), s))
    }

    /// The core module in the file at `path` under `dir` (see
    /// [`load_component_file_at`](Self::load_component_file_at)).
    pub fn load_module_file_at(&self, dir: &Dir, path: impl AsRef<Path>) -> wasmtime::Result<(Module, Source)> {
        let path = path.as_ref();
        let file = open_at(dir, path)?;
        let (a, s) = self.inner.load_file(Kind::Module, &file, &path.display())?;
        Ok((a.into_module(), s))
    }

    /// The core module in an open file, read from its start (the file's position is moved).
    pub fn load_module_open_file(&self, file: &File) -> wasmtime::Result<(Module, Source)> {
        let (a, s) = self.inner.load_file(Kind::Module, file, &"the open file")?;
        Ok((a.into_module(), s))
    }
}

/// Opens the file at `path` with ambient authority, for the `load_*_file` functions.
fn open_ambient(path: &Path) -> wasmtime::Result<File> {
    File::open(path).map_err(|e| wasmtime::Error::new(e).context(format!("cannot open {}", path.display())))
}

/// Opens the file at `path` under `dir`, for the `load_*_file_at` functions.
fn open_at(dir: &Dir, path: &Path) -> wasmtime::Result<File> {
    dir.open(path)
        .map(|f| f.into_std())
        .map_err(|e| wasmtime::Error::new(e).context(format!("cannot open {}", path.display())))
}

impl Artifact {
    fn into_component(self) -> Component {
        match self {
            Artifact::Component(c) => c,
            Artifact::Module(_) => unreachable!("keys differ by kind"),
        }
    }
    fn into_module(self) -> Module {
        match self {
            Artifact::Module(m) => m,
            Artifact::Component(_) => unreachable!("keys differ by kind"),
        }
    }
}

impl Disk {
    fn open(cache: &FileCache, options: CompiledOptions) -> crate::Result<Disk> {
        // With no secret there is nothing to trust: a cache that cannot even create one is not
        // used at all. A read-only cache with a trusted secret still serves its artifacts.
        let secret = Secret::load_or_create(cache.root())?;
        let open = |read_only| -> crate::Result<(Namespace, Namespace)> {
            let options = NamespaceOptions::default()
                .max_entry_size(u64::MAX)
                .quota(options.quota)
                .read_only(read_only)
                .durability(options.durability);
            Ok((
                // A refresh of an artifact's recency changes its file's change time, which makes
                // the next load verify it in full again (see `ARTIFACT_RECENCY`).
                cache.reserved_namespace(COMPILED_NAMESPACE, options.recency(ARTIFACT_RECENCY))?,
                cache.reserved_namespace(DIGESTS_NAMESPACE, options)?,
            ))
        };
        let (artifacts, digests, writable) = match open(false) {
            Ok((a, d)) => (a, d, true),
            Err(crate::Error::Io { .. }) => {
                let (a, d) = open(true)?;
                (a, d, false)
            }
            Err(e) => return Err(e),
        };
        Ok(Disk {
            artifacts,
            digests,
            secret,
            writable,
            max_remembered: options.max_remembered,
            remembered: std::sync::atomic::AtomicU64::new(0),
        })
    }
}

impl Disk {
    /// Keeps at most `max_remembered` records in the digests namespace: past it, removes the
    /// least recently used, down to three quarters of the bound (so the next check is not
    /// due at once).
    fn forget_least_recently_used(&self) -> crate::Result<()> {
        let entries = self.digests.scan(0)?.entries;
        if entries <= self.max_remembered {
            return Ok(());
        }
        let keep = self.max_remembered - self.max_remembered / 4;
        let excess = usize::try_from(entries - keep).unwrap_or(usize::MAX);
        for old in self.digests.scan(excess)?.oldest {
            self.digests.delete(&old.key)?;
        }
        Ok(())
    }
}

/// The fields of an artifact entry's header (which follows the artifact: `offset` is 0).
struct ArtifactHeader {
    kind: u32,
    offset: u64,
    len: u64,
    key: [u8; 32],
}

impl ArtifactHeader {
    fn encode(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&self.kind.to_le_bytes());
        b[16..24].copy_from_slice(&self.offset.to_le_bytes());
        b[24..32].copy_from_slice(&self.len.to_le_bytes());
        b[32..64].copy_from_slice(&self.key);
        b
    }

    fn decode(b: &[u8]) -> Option<ArtifactHeader> {
        if b.len() < 64 || b[..8] != MAGIC || b[12..16] != [0; 4] {
            return None;
        }
        Some(ArtifactHeader {
            kind: u32::from_le_bytes(b[8..12].try_into().ok()?),
            offset: u64::from_le_bytes(b[16..24].try_into().ok()?),
            len: u64::from_le_bytes(b[24..32].try_into().ok()?),
            key: b[32..64].try_into().ok()?,
        })
    }
}

impl Inner {
    fn artifact_key(&self, kind: Kind, wasm_digest: &[u8; 32]) -> Key {
        let mut h = self.prefix.clone();
        h.update([kind as u8]);
        h.update(wasm_digest);
        Key::new(h.finalize().into())
    }

    fn load_bytes(&self, kind: Kind, wasm: &[u8]) -> wasmtime::Result<(Artifact, Source)> {
        let key = self.artifact_key(kind, &sha256(wasm));
        self.load(kind, key, || Ok(std::borrow::Cow::Borrowed(wasm)))
    }

    /// Loads what `file` (shown in messages as `path`) holds.
    fn load_file(&self, kind: Kind, file: &File, path: &dyn std::fmt::Display) -> wasmtime::Result<(Artifact, Source)> {
        let ctx = |what: &str| format!("cannot {what} {path}");
        let meta = file
            .metadata()
            .map_err(|e| wasmtime::Error::new(e).context(ctx("stat")))?;
        if !meta.is_file() {
            return Err(wasmtime::Error::msg(format!("{path} is not a regular file")));
        }
        let identity = file_identity(&meta);
        if let Some(digest) = identity.as_ref().and_then(|(id, _)| self.remembered_digest(id)) {
            let key = self.artifact_key(kind, &digest);
            return self.load(kind, key, || {
                // The code must be compiled after all: read it, and check that it is still the
                // file whose digest was remembered (else the key is wrong; load it afresh).
                let wasm = sys::read_all(file).map_err(|e| wasmtime::Error::new(e).context(ctx("read")))?;
                if sha256(&wasm) != digest {
                    return Err(wasmtime::Error::msg(format!("{path} changed while it was loaded")));
                }
                Ok(std::borrow::Cow::Owned(wasm))
            });
        }
        let wasm = sys::read_all(file).map_err(|e| wasmtime::Error::new(e).context(ctx("read")))?;
        let digest = sha256(&wasm);
        if let Some((id, changed)) = &identity {
            self.remember_digest(id, *changed, &digest);
        }
        let key = self.artifact_key(kind, &digest);
        self.load(kind, key, || Ok(std::borrow::Cow::Borrowed(&wasm)))
    }

    /// The in-process memo and single flight: one load per key at a time.
    fn load<'w>(
        &self,
        kind: Kind,
        key: Key,
        wasm: impl FnOnce() -> wasmtime::Result<std::borrow::Cow<'w, [u8]>>,
    ) -> wasmtime::Result<(Artifact, Source)> {
        let slot = self.slot(key);
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = &*slot {
            return Ok((a.clone(), Source::Memory));
        }
        if let Some(a) = self.load_stored(kind, &key) {
            self.count(Counter::Hits);
            *slot = Some(a.clone());
            return Ok((a, Source::Disk));
        }
        #[cfg(feature = "remote")]
        if let Some(a) = self.load_remote(kind, &key) {
            *slot = Some(a.clone());
            return Ok((a, Source::Remote));
        }
        let wasm = wasm()?;
        let a = match kind {
            Kind::Component => Artifact::Component(Component::new(&self.engine, &*wasm)?),
            Kind::Module => Artifact::Module(Module::new(&self.engine, &*wasm)?),
        };
        self.count(Counter::Misses);
        self.store(kind, &key, &a);
        *slot = Some(a.clone());
        Ok((a, Source::Compiled))
    }

    fn slot(&self, key: Key) -> Arc<Mutex<Option<Artifact>>> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        loaded.entry(key).or_default().clone()
    }

    fn is_stored(&self, key: &Key) -> bool {
        self.disk
            .as_ref()
            .is_some_and(|d| d.artifacts.is_stored(key).unwrap_or(false))
    }

    /// Counts an event. A hit or a miss never waits for the namespace lock (a process stopped
    /// while holding it must not stall every warm start): it is added to the counters file if
    /// the lock is free at once, else kept in memory for a later flush. A rejection, rare and
    /// already waiting for the lock to remove the artifact, is added at once.
    fn count(&self, counter: Counter) {
        let Some(d) = &self.disk else { return };
        if let Counter::Hits | Counter::Misses = counter {
            d.artifacts.count_use(counter == Counter::Hits);
            d.artifacts.flush_counts_if_free();
            return;
        }
        if let Err(e) = d.artifacts.count(&[(counter, 1)]) {
            tracing::debug!("cannot count a compiled-cache {counter:?}: {}", e.full_message());
        }
    }

    /// The stored artifact for `key`, authenticated and deserialized; `None` on a miss. An
    /// artifact that fails is removed (and counted as rejected), so it is compiled afresh.
    fn load_stored(&self, kind: Kind, key: &Key) -> Option<Artifact> {
        let disk = self.disk.as_ref()?;
        let raw = match disk.artifacts.open_raw(key) {
            Ok(Some(raw)) => raw,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!("cannot read compiled code from the cache: {}", e.full_message());
                return None;
            }
        };
        let reject = |reason: &'static str| {
            // (The store's own warning, as it removes the entry, says it once.)
            tracing::debug!(key = %key, reason, "compiled artifact rejected: compiling afresh");
            disk.artifacts.discard_raw(&raw, reason);
            self.count(Counter::Rejected);
            None
        };
        // The artifact starts the file; the store's header follows the content.
        if raw.layout() != Layout::Trailing {
            return reject("not an artifact entry (its header is not after the content)");
        }
        let Ok(content_len) = usize::try_from(raw.content_len()) else {
            return reject("too large");
        };
        let Some(artifact_len) = content_len.checked_sub(ARTIFACT_HEADER) else {
            return reject("shorter than an artifact header");
        };
        // Whether the file is on a filesystem known to be local, and whether no other user can
        // write it: the checks of the mapped path, under which a file's identity (its change
        // time above all) says whether anything wrote to it. Elsewhere (NFS, sshfs, SMB, FUSE)
        // timestamps may be the server's to set (sshfs reports the mtime as the ctime), so a
        // file rewritten with its times put back would keep its identity.
        let local = mapped::can_map(raw.file());
        let private = sys::check_private(raw.metadata(), 0o022);
        // This very file (by identity) was verified in full before, since when nothing has
        // written to it: its MAC need not be computed again (see `remembered_verified`). Only
        // where identities can be trusted; elsewhere the MAC runs on every load, and nothing
        // is remembered.
        let identity = file_identity(raw.metadata()).filter(|_| local && private.is_ok());
        let verified_before = identity
            .as_ref()
            .is_some_and(|(id, _)| self.remembered_verified(id, key));
        // The artifact header's fields (the first 64 of its bytes).
        let check_fields = |fields: &[u8]| -> std::result::Result<(), &'static str> {
            let h = ArtifactHeader::decode(fields).ok_or("not an artifact header")?;
            if h.kind != kind as u32 || h.key != *key.as_bytes() {
                return Err("made for another key");
            }
            if h.offset != 0 || h.len != artifact_len as u64 {
                return Err("artifact bounds do not match the entry");
            }
            Ok(())
        };
        // The whole content (the file's first `content_len` bytes): the header, then the MAC
        // over every byte of the content but the MAC itself, unless verified before.
        let check = |bytes: &[u8], verified_before: bool| -> std::result::Result<(), &'static str> {
            let content = bytes.get(..content_len).ok_or("truncated")?;
            let (artifact, header) = content.split_at(artifact_len);
            check_fields(&header[..64])?;
            if !verified_before {
                #[cfg(test)]
                tests::MACS_CHECKED.with(|n| n.set(n.get() + 1));
                let expected = mac(&disk.secret.artifact, &[&header[..64], artifact]);
                // `blake3::Hash` compares in constant time.
                if expected != blake3::Hash::from_bytes(header[64..96].try_into().expect("32 bytes")) {
                    return Err("not authenticated by this cache's secret");
                }
                if let Some((id, changed)) = &identity {
                    self.remember_verified(id, *changed, key);
                }
            }
            Ok(())
        };
        let not_loaded = |e: wasmtime::Error| {
            tracing::debug!("compiled artifact does not deserialize: {e:#}");
            reject("does not load on this engine")
        };
        // Handed to wasmtime to map only where the mapping stays what was checked (see
        // `mapped`): on Linux, from a local filesystem, a file no other user can write.
        let mut fell_back = false;
        if self.zero_copy.load(Ordering::Relaxed) && local {
            if let Err(reason) = private {
                return reject(reason);
            }
            let checked = if verified_before {
                let mut fields = [0u8; 64];
                match mapped::read_exact_at(raw.file(), &mut fields, artifact_len as u64) {
                    Ok(()) => check_fields(&fields),
                    Err(_) => Err("truncated"),
                }
            } else {
                match mapped::Mapping::map(raw.file(), content_len) {
                    // Unmapped at the end of this statement: wasmtime maps the file itself.
                    Ok(m) => check(m.bytes(), false),
                    Err(e) => {
                        tracing::warn!("cannot map compiled code from the cache: {e}");
                        return None;
                    }
                }
            };
            if let Err(reason) = checked {
                return reject(reason);
            }
            // SAFETY: the file's first `artifact_len` bytes were authenticated (now, or when this
            // very file was verified before) as an artifact this cache serialized for an engine
            // with this configuration. It is a regular file on a local filesystem (no SIGBUS from
            // a page the server no longer has) that no other user can write and that the cache
            // never writes in place (it replaces entries by rename), so the bytes wasmtime maps
            // are the bytes that were checked. What follows the artifact (its header, the
            // store's header) is not part of the ELF image wasmtime reads.
            match unsafe { mapped::deserialize_open(&self.engine, kind, raw.file()) } {
                Ok(a) => {
                    self.zero_copy_failures.store(0, Ordering::Relaxed);
                    return Some(a);
                }
                // Either the file could not be opened again (no `/proc`), or the artifact does
                // not fit this engine; loading a copy (below) tells which.
                Err(e) => {
                    tracing::debug!("cannot load compiled code from its file, copying it: {e:#}");
                    fell_back = true;
                }
            }
        }
        let bytes = match sys::read_all(raw.file()) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("cannot read compiled code from the cache: {e}");
                return None;
            }
        };
        if let Err(reason) = check(&bytes, verified_before) {
            return reject(reason);
        }
        // SAFETY: the bytes were authenticated (after they were read into memory, where nothing
        // else can change them) as an artifact this cache serialized for an engine with this
        // configuration; `deserialize` copies them into wasmtime's memory.
        match unsafe { deserialize(&self.engine, kind, &bytes[..artifact_len]) } {
            Ok(a) => {
                if fell_back {
                    self.zero_copy_failed();
                }
                Some(a)
            }
            Err(e) => not_loaded(e),
        }
    }

    /// A load could not map its artifact, and loaded a copy: loads copy from then on if that is
    /// all they can do here (no `/proc`), or after [`ZERO_COPY_ATTEMPTS`] such loads in a row;
    /// a single failure that passes (`EMFILE`, `ENOMEM`) does not turn zero copy off.
    fn zero_copy_failed(&self) {
        let failures = self.zero_copy_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if !mapped::can_reopen() || failures >= ZERO_COPY_ATTEMPTS {
            self.zero_copy.store(false, Ordering::Relaxed);
            tracing::info!("loading compiled code by copying: it cannot be loaded from its file here");
        }
    }

    /// Stores a freshly compiled artifact, and publishes it to the remote tier. Best effort: a
    /// failure is logged once.
    fn store(&self, kind: Kind, key: &Key, a: &Artifact) {
        #[cfg_attr(not(feature = "remote"), allow(unused_variables))]
        let Some(disk) = self.disk.as_ref().filter(|d| d.writable) else {
            return;
        };
        let artifact = match a {
            Artifact::Component(c) => c.serialize(),
            Artifact::Module(m) => m.serialize(),
        };
        let artifact = match artifact {
            Ok(artifact) => artifact,
            Err(e) => return tracing::warn!("cannot serialize compiled code: {e:#}"),
        };
        self.store_bytes(kind, key, &artifact);
        #[cfg(feature = "remote")]
        if let Some(remote) = self.remote.get()
            && let Err(e) = remote.publish(&disk.artifacts, key, &artifact)
        {
            tracing::warn!("cannot publish compiled code to the remote tier: {}", e.full_message());
        }
    }

    #[cfg(feature = "remote")]
    /// The artifact for `key` from the remote tier, authenticated there by the fleet key, then
    /// stored under this cache's own MAC and loaded like any stored artifact.
    fn load_remote(&self, kind: Kind, key: &Key) -> Option<Artifact> {
        let (disk, remote) = (self.disk.as_ref()?, self.remote.get()?);
        let artifact = match remote.fetch(&disk.artifacts, key, u64::MAX) {
            Ok(found) => found?,
            Err(e) => {
                tracing::warn!("cannot fetch compiled code from the remote tier: {}", e.full_message());
                return None;
            }
        };
        if disk.writable {
            self.store_bytes(kind, key, &artifact);
            return self.load_stored(kind, key);
        }
        // SAFETY: authenticated by the fleet key as an artifact a host of the fleet serialized
        // for this key, which covers this engine's configuration; copied into wasmtime's memory.
        match unsafe { deserialize(&self.engine, kind, &artifact) } {
            Ok(a) => Some(a),
            Err(e) => {
                tracing::warn!(key = %key, "compiled code from the remote tier does not load: {e:#}");
                None
            }
        }
    }

    /// Writes an artifact entry: the artifact, then its header and MAC; the store's header
    /// after them, so that the artifact starts the file.
    fn store_bytes(&self, kind: Kind, key: &Key, artifact: &[u8]) {
        let Some(disk) = self.disk.as_ref().filter(|d| d.writable) else {
            return;
        };
        let result = (|| -> wasmtime::Result<()> {
            let header = ArtifactHeader {
                kind: kind as u32,
                offset: 0,
                len: artifact.len() as u64,
                key: *key.as_bytes(),
            }
            .encode();
            let tag = mac(&disk.secret.artifact, &[&header, artifact]);
            let mut w = disk.artifacts.create_trailing(key)?;
            w.write(artifact)?;
            w.write(&header)?;
            w.write(tag.as_bytes())?;
            w.commit()?;
            Ok(())
        })();
        if let Err(e) = result
            && !self.store_warned.swap(true, Ordering::Relaxed)
        {
            tracing::warn!("cannot store compiled code in the cache (it stays in memory): {e:#}");
        }
    }

    /// The digest remembered for a file identity, if its record is authentic.
    fn remembered_digest(&self, identity: &Key) -> Option<[u8; 32]> {
        let disk = self.disk.as_ref()?;
        let record = disk.digests.get(identity).ok()??;
        let (digest, tag) = record.split_at_checked(32)?;
        let expected = mac(&disk.secret.digest, &[identity.as_bytes(), digest]);
        (tag.len() == 32 && expected == blake3::Hash::from_bytes(tag.try_into().ok()?))
            .then(|| digest.try_into().ok())?
    }

    /// Whether the artifact file of identity `identity` was verified as the artifact for `key`
    /// before: a record under a key derived from both, holding a MAC of both under the secret of
    /// remembered digests. The file's identity includes its change time, which any write to it
    /// changes and no user can set, so a file written since (in place, or replaced) is verified
    /// in full again.
    fn remembered_verified(&self, identity: &Key, key: &Key) -> bool {
        let Some(disk) = self.disk.as_ref() else {
            return false;
        };
        let Ok(Some(record)) = disk.digests.get(&verified_key(identity, key)) else {
            return false;
        };
        <[u8; 32]>::try_from(record.as_slice())
            .is_ok_and(|tag| verified_tag(disk, identity, key) == blake3::Hash::from_bytes(tag))
    }

    /// Remembers that the artifact file of identity `identity` was verified in full as the
    /// artifact for `key`, unless it changed too recently for its timestamps to tell a later
    /// change apart.
    fn remember_verified(&self, identity: &Key, changed: SystemTime, key: &Key) {
        self.remember(changed, "a verified artifact", |disk| {
            (
                verified_key(identity, key),
                verified_tag(disk, identity, key).as_bytes().to_vec(),
            )
        });
    }

    /// Remembers a file's digest by its identity, unless the file changed too recently for its
    /// timestamps to tell a later change apart.
    fn remember_digest(&self, identity: &Key, changed: SystemTime, digest: &[u8; 32]) {
        self.remember(changed, "a component's digest", |disk| {
            let tag = mac(&disk.secret.digest, &[identity.as_bytes(), digest]);
            let mut record = digest.to_vec();
            record.extend_from_slice(tag.as_bytes());
            (*identity, record)
        });
    }

    /// Stores the memo `record` (key and bytes) in the digests namespace, unless the file it is
    /// about changed (at `changed`) too recently for its timestamps to tell a later change apart
    /// (git's "racy" rule), or the cache cannot be written. Best effort: a failure is logged.
    fn remember(&self, changed: SystemTime, what: &str, record: impl FnOnce(&Disk) -> (Key, Vec<u8>)) {
        let Some(disk) = self.disk.as_ref().filter(|d| d.writable) else {
            return;
        };
        if SystemTime::now().duration_since(changed).unwrap_or_default() < RACY {
            return;
        }
        let (key, bytes) = record(disk);
        if let Err(e) = disk.digests.add(&key, &bytes) {
            tracing::debug!("cannot remember {what}: {}", e.full_message());
            return;
        }
        let added = disk.remembered.fetch_add(1, Ordering::Relaxed);
        if added % (disk.max_remembered / 4).max(1) == 0
            && let Err(e) = disk.forget_least_recently_used()
        {
            tracing::debug!("cannot bound the remembered digests: {}", e.full_message());
        }
    }
}

/// A key naming a file's identity: device, inode, size, modification and change times (any
/// write to the file changes its change time, which no user can set), and when it last changed.
/// `None` where the platform cannot tell (see `sys::identity`): the file is then hashed.
fn file_identity(meta: &std::fs::Metadata) -> Option<(Key, SystemTime)> {
    let (fields, changed) = sys::identity(meta)?;
    let mut h = Sha256::new();
    h.update(b"filecache file identity v1\0");
    for v in fields {
        h.update(v.to_le_bytes());
    }
    Some((Key::new(h.finalize().into()), changed))
}

/// What the MAC of a remembered verification starts with (apart from remembered digests, which
/// share the secret).
const VERIFIED_LABEL: &[u8] = b"filecache verified artifact v1\0";

/// The MAC a memo of a verified artifact file carries: of its identity and its key, under the
/// secret of remembered digests.
fn verified_tag(disk: &Disk, identity: &Key, key: &Key) -> blake3::Hash {
    mac(
        &disk.secret.digest,
        &[VERIFIED_LABEL, identity.as_bytes(), key.as_bytes()],
    )
}

/// Where the memo of a verified artifact file lives in the digests namespace.
fn verified_key(identity: &Key, key: &Key) -> Key {
    let mut h = Sha256::new();
    h.update(VERIFIED_LABEL);
    h.update(identity.as_bytes());
    h.update(key.as_bytes());
    Key::new(h.finalize().into())
}

/// # Safety
/// As for `Component::deserialize`.
unsafe fn deserialize(engine: &Engine, kind: Kind, bytes: &[u8]) -> wasmtime::Result<Artifact> {
    // SAFETY: forwarded to the caller.
    unsafe {
        Ok(match kind {
            Kind::Component => Artifact::Component(Component::deserialize(engine, bytes)?),
            Kind::Module => Artifact::Module(Module::deserialize(engine, bytes)?),
        })
    }
}
