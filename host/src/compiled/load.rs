//! Loading: the in-process memo and single flight, then the stored artifact (checked, and mapped
//! or copied), then the remote tier, then a compile, which is stored.

use std::borrow::Cow;
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::artifact::{self, Artifact, Expected};
use super::memo::file_identity;
use super::secret::Secret;
use super::{COMPILED_NAMESPACE, CompiledOptions, DIGESTS_NAMESPACE, Inner, Kind, Source, sha256, sys};
use crate::entry::Layout;
use crate::store::{Counter, RawEntry};
use crate::{FileCache, Key, Namespace, NamespaceOptions};

/// The recency granularity of artifacts: an artifact's place in LRU order is refreshed at most
/// once an hour. A refresh sets the file's modification time, which changes its change time and
/// so its identity, and the next load (after the racy window) verifies the whole artifact again
/// and remembers the new identity; an hour makes that once an hour per artifact at most.
const ARTIFACT_RECENCY: Duration = Duration::from_secs(3600);

/// How many loads in a row may fail to map their artifact (and load it by copying) before the
/// cache stops trying: one failure may pass (too many open files for a moment).
pub(super) const ZERO_COPY_ATTEMPTS: u32 = 3;

/// The cache directory's part: the artifacts, the memo, and the secret that authenticates both.
pub(super) struct Disk {
    pub(super) artifacts: Namespace,
    pub(super) digests: Namespace,
    pub(super) secret: Secret,
    pub(super) writable: bool,
    /// See [`CompiledOptions::max_remembered`].
    pub(super) max_remembered: u64,
    /// Records this cache added to `digests`: the bound is checked at the first, then every
    /// quarter of `max_remembered`.
    pub(super) remembered: AtomicU64,
    /// See `memo::RACY`.
    pub(super) racy: Duration,
}

impl Disk {
    pub(super) fn open(cache: &FileCache, options: CompiledOptions) -> crate::Result<Disk> {
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
            remembered: AtomicU64::new(0),
            racy: options.racy,
        })
    }
}

/// A stored artifact entry, open, with what the checks need to know of its file.
struct Stored<'a> {
    raw: &'a RawEntry,
    expected: Expected<'a>,
    /// On a filesystem known to be local (see `mapped`).
    local: bool,
    /// No other user can write it, or why not.
    private: Result<(), &'static str>,
    /// Its identity, where identities can be trusted (local and private).
    identity: Option<(Key, SystemTime)>,
    /// This very file (by identity) was verified in full before.
    verified_before: bool,
}

impl Inner {
    pub(super) fn artifact_key(&self, kind: Kind, wasm_digest: &[u8; 32]) -> Key {
        let mut h = self.prefix.clone();
        sha2::Digest::update(&mut h, [kind as u8]);
        sha2::Digest::update(&mut h, wasm_digest);
        Key::new(sha2::Digest::finalize(h).into())
    }

    pub(super) fn load_bytes(&self, kind: Kind, wasm: &[u8]) -> wasmtime::Result<(Artifact, Source)> {
        let key = self.artifact_key(kind, &sha256(wasm));
        self.load(kind, key, || Ok(Cow::Borrowed(wasm)))
    }

    /// Loads what `file` (shown in messages as `path`) holds.
    pub(super) fn load_file(
        &self,
        kind: Kind,
        file: &File,
        path: &dyn std::fmt::Display,
    ) -> wasmtime::Result<(Artifact, Source)> {
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
                Ok(Cow::Owned(wasm))
            });
        }
        let wasm = sys::read_all(file).map_err(|e| wasmtime::Error::new(e).context(ctx("read")))?;
        let digest = sha256(&wasm);
        if let Some((id, changed)) = &identity {
            self.remember_digest(id, *changed, &digest);
        }
        let key = self.artifact_key(kind, &digest);
        self.load(kind, key, || Ok(Cow::Borrowed(&wasm)))
    }

    /// The in-process memo and single flight: one load per key at a time.
    fn load<'w>(
        &self,
        kind: Kind,
        key: Key,
        wasm: impl FnOnce() -> wasmtime::Result<Cow<'w, [u8]>>,
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
        let a = Artifact::compile(&self.engine, kind, &wasm()?)?;
        self.count(Counter::Misses);
        self.store(kind, &key, &a);
        *slot = Some(a.clone());
        Ok((a, Source::Compiled))
    }

    pub(super) fn slot(&self, key: Key) -> Arc<Mutex<Option<Artifact>>> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        loaded.entry(key).or_default().clone()
    }

    pub(super) fn is_stored(&self, key: &Key) -> bool {
        self.disk
            .as_ref()
            .is_some_and(|d| d.artifacts.is_stored(key).unwrap_or(false))
    }

    /// Counts an event. A hit or a miss never waits for the namespace lock (a process stopped
    /// while holding it must not stall every warm start): it is added to the counters file if
    /// the lock is free at once, else kept in memory for a later flush. A rejection, rare and
    /// already waiting for the lock to remove the artifact, is added at once.
    pub(super) fn count(&self, counter: Counter) {
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
        let stored = match self.examine(&raw, kind, key) {
            Ok(stored) => stored,
            Err(reason) => return reject(reason),
        };
        // Handed to wasmtime to map only where the mapping stays what was checked (see
        // `mapped`): on Linux, from a local filesystem, a file no other user can write.
        let mut fell_back = false;
        if self.zero_copy.load(Ordering::Relaxed) && stored.local {
            match self.load_mapped(&stored) {
                Mapped::Loaded(a) => return Some(a),
                Mapped::Rejected(reason) => return reject(reason),
                Mapped::Unreadable => return None,
                Mapped::Copy => fell_back = true,
            }
        }
        let bytes = match sys::read_all(raw.file()) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("cannot read compiled code from the cache: {e}");
                return None;
            }
        };
        if let Err(reason) = self.check(&stored, &bytes, stored.verified_before) {
            return reject(reason);
        }
        // SAFETY: the bytes were authenticated (after they were read into memory, where nothing
        // else can change them) as an artifact this cache serialized for an engine with this
        // configuration; `deserialize` copies them into wasmtime's memory.
        match unsafe { Artifact::deserialize(&self.engine, kind, &bytes[..stored.expected.artifact_len]) } {
            Ok(a) => {
                if fell_back {
                    self.zero_copy_failed();
                }
                Some(a)
            }
            Err(e) => {
                tracing::debug!("compiled artifact does not deserialize: {e:#}");
                reject("does not load on this engine")
            }
        }
    }

    /// What the checks need to know of a stored entry's file, or why it is no artifact entry.
    fn examine<'a>(&self, raw: &'a RawEntry, kind: Kind, key: &'a Key) -> Result<Stored<'a>, &'static str> {
        // The artifact starts the file; the store's header follows the content.
        if raw.layout() != Layout::Trailing {
            return Err("not an artifact entry (its header is not after the content)");
        }
        let artifact_len = Expected::artifact_len(raw.content_len())?;
        // Whether the file is on a filesystem known to be local, and whether no other user can
        // write it: the checks of the mapped path, under which a file's identity (its change
        // time above all) says whether anything wrote to it. Elsewhere (NFS, sshfs, SMB, FUSE)
        // timestamps may be the server's to set (sshfs reports the mtime as the ctime), so a
        // file rewritten with its times put back would keep its identity.
        let local = self.mapper.can_map(raw.file());
        let private = sys::check_private(raw.metadata(), 0o022);
        // Only where identities can be trusted; elsewhere the MAC runs on every load, and
        // nothing is remembered.
        let identity = file_identity(raw.metadata()).filter(|_| local && private.is_ok());
        let verified_before = identity
            .as_ref()
            .is_some_and(|(id, _)| self.remembered_verified(id, key));
        Ok(Stored {
            raw,
            expected: Expected {
                kind,
                key,
                artifact_len,
            },
            local,
            private,
            identity,
            verified_before,
        })
    }

    /// Checks the whole content (`bytes`, from the file's start): the header, then the MAC,
    /// unless this very file was verified before; a verification is remembered.
    fn check(&self, stored: &Stored<'_>, bytes: &[u8], verified_before: bool) -> Result<(), &'static str> {
        let disk = self.disk.as_ref().ok_or("no cache directory")?;
        if verified_before {
            return stored.expected.check(bytes, None);
        }
        self.macs_checked.fetch_add(1, Ordering::Relaxed);
        stored.expected.check(bytes, Some(&disk.secret.artifact))?;
        if let Some((id, changed)) = &stored.identity {
            self.remember_verified(id, *changed, stored.expected.key);
        }
        Ok(())
    }

    /// Checks a stored artifact where it lies and hands the open file to wasmtime to map.
    fn load_mapped(&self, stored: &Stored<'_>) -> Mapped {
        if let Err(reason) = stored.private {
            return Mapped::Rejected(reason);
        }
        let file = stored.raw.file();
        let checked = if stored.verified_before {
            let mut fields = [0u8; 64];
            match super::mapped::read_exact_at(file, &mut fields, stored.expected.header_at()) {
                Ok(()) => stored.expected.check_fields(&fields),
                Err(_) => Err("truncated"),
            }
        } else {
            let content_len = stored.expected.artifact_len + artifact::ARTIFACT_HEADER;
            match super::mapped::Mapping::map(file, content_len) {
                // Unmapped at the end of this statement: wasmtime maps the file itself.
                Ok(m) => self.check(stored, m.bytes(), false),
                Err(e) => {
                    tracing::warn!("cannot map compiled code from the cache: {e}");
                    return Mapped::Unreadable;
                }
            }
        };
        if let Err(reason) = checked {
            return Mapped::Rejected(reason);
        }
        // SAFETY: the file's first `artifact_len` bytes were authenticated (now, or when this
        // very file was verified before) as an artifact this cache serialized for an engine
        // with this configuration. It is a regular file on a local filesystem (no SIGBUS from
        // a page the server no longer has) that no other user can write and that the cache
        // never writes in place (it replaces entries by rename), so the bytes wasmtime maps
        // are the bytes that were checked. What follows the artifact (its header, the store's
        // header) is not part of the ELF image wasmtime reads.
        match unsafe { self.mapper.deserialize_open(&self.engine, stored.expected.kind, file) } {
            Ok(a) => {
                self.zero_copy_failures.store(0, Ordering::Relaxed);
                Mapped::Loaded(a)
            }
            // Either the file could not be opened again (no `/proc`), or the artifact does not
            // fit this engine; loading a copy tells which.
            Err(e) => {
                tracing::debug!("cannot load compiled code from its file, copying it: {e:#}");
                Mapped::Copy
            }
        }
    }

    /// A load could not map its artifact, and loaded a copy: loads copy from then on if that is
    /// all they can do here (no `/proc`), or after [`ZERO_COPY_ATTEMPTS`] such loads in a row;
    /// a single failure that passes (`EMFILE`, `ENOMEM`) does not turn zero copy off.
    fn zero_copy_failed(&self) {
        let failures = self.zero_copy_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if !self.mapper.can_reopen() || failures >= ZERO_COPY_ATTEMPTS {
            self.zero_copy.store(false, Ordering::Relaxed);
            tracing::info!("loading compiled code by copying: it cannot be loaded from its file here");
        }
    }

    /// Stores a freshly compiled artifact, and publishes it to the remote tier. Best effort: a
    /// failure is logged once.
    pub(super) fn store(&self, kind: Kind, key: &Key, a: &Artifact) {
        #[cfg_attr(not(feature = "remote"), allow(unused_variables))]
        let Some(disk) = self.disk.as_ref().filter(|d| d.writable) else {
            return;
        };
        let artifact = match a.serialize() {
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
        match unsafe { Artifact::deserialize(&self.engine, kind, &artifact) } {
            Ok(a) => Some(a),
            Err(e) => {
                tracing::warn!(key = %key, "compiled code from the remote tier does not load: {e:#}");
                None
            }
        }
    }

    /// Writes an artifact entry: the artifact, then its header and MAC; the store's header
    /// after them, so that the artifact starts the file.
    pub(super) fn store_bytes(&self, kind: Kind, key: &Key, artifact: &[u8]) {
        let Some(disk) = self.disk.as_ref().filter(|d| d.writable) else {
            return;
        };
        let result = (|| -> wasmtime::Result<()> {
            let header = artifact::seal(&disk.secret.artifact, kind, key, artifact);
            let mut w = disk.artifacts.create_trailing(key)?;
            w.write(artifact)?;
            w.write(&header)?;
            w.commit()?;
            Ok(())
        })();
        if let Err(e) = result
            && !self.store_warned.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!("cannot store compiled code in the cache (it stays in memory): {e:#}");
        }
    }
}

/// How a mapped load ended.
enum Mapped {
    Loaded(Artifact),
    /// Not authentic, or not this cache's to map: removed, and compiled afresh.
    Rejected(&'static str),
    /// Could not be read (logged): compiled afresh, left in place.
    Unreadable,
    /// Checked, but wasmtime could not map it: load a copy.
    Copy,
}
