//! [`TieredStore`]: a local namespace in front of the remote tier.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::RemoteTier;
use crate::{EntryReader, EntryWriter, FileWriter, MAX_READ_CHUNK};
use crate::{EntryStore, Error, Key, Namespace, Result};

/// The default bound on the remote entries a [`TieredStore`] (with its clones) holds in memory
/// for open readers at once: 64 MiB, the largest value that travels by default.
pub const DEFAULT_READER_MEMORY: u64 = super::DEFAULT_MAX_VALUE_SIZE;

/// A local [`Namespace`] in front of a [`RemoteTier`].
///
/// - Reads go to the local tier first; a local miss asks the remote, and a verified answer is
///   copied to the local tier (unless it is read-only) and served.
/// - `add` and a streamed writer's `commit` write the local tier, then publish to the remote
///   (a streamed entry is read back from the local tier once committed, so memory stays bounded
///   by the remote's size limit whatever the guest streams).
/// - `delete` removes from both; `contains` asks the remote on a local miss (and copies the
///   entry, so that a `get` after a `contains` of `true` finds it).
///
/// Remote failures are logged and counted in the local namespace's counters, and reach the
/// caller only when the remote tier is [`required`](super::RemoteOptions::required).
///
/// A reader (`open`) of a remote entry streams from its local copy. Where there is none (the
/// local tier is read-only, or could not keep it), the reader holds the checked content in
/// memory; all such readers of a store and its clones hold at most
/// [`DEFAULT_READER_MEMORY`] together (see [`with_reader_memory`](Self::with_reader_memory)),
/// and an `open` past that fails with an `Io` error (`OutOfMemory`) until readers are dropped.
#[derive(Clone, Debug)]
pub struct TieredStore {
    local: Namespace,
    remote: RemoteTier,
    /// Bytes held by readers served from memory, and their bound.
    held: Arc<AtomicU64>,
    reader_memory: u64,
}

impl TieredStore {
    /// Puts `local` in front of `remote`; entries live under `local`'s name in both.
    ///
    /// Fails with [`Error::InvalidNamespace`](crate::Error::InvalidNamespace) if `local` has no name of its own (it was opened
    /// with [`Namespace::open_dir`]): every such namespace would share one set of remote entries.
    pub fn new(local: Namespace, remote: RemoteTier) -> Result<TieredStore> {
        super::require_name(&local)?;
        Ok(TieredStore {
            local,
            remote,
            held: Arc::new(AtomicU64::new(0)),
            reader_memory: DEFAULT_READER_MEMORY,
        })
    }

    /// Bounds the remote entries held in memory for open readers (where the local tier cannot
    /// keep a copy to stream from) at `bytes` together. Default [`DEFAULT_READER_MEMORY`].
    pub fn with_reader_memory(mut self, bytes: u64) -> TieredStore {
        self.reader_memory = bytes;
        self
    }

    /// Bytes of remote entries held in memory by open readers now.
    pub fn reader_memory_held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Reserves `len` bytes of the readers' memory, if that stays within the bound.
    fn reserve(&self, len: u64) -> Result<Held> {
        let reserved = self.held.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
            held.checked_add(len).filter(|&total| total <= self.reader_memory)
        });
        match reserved {
            Ok(_) => Ok(Held {
                held: self.held.clone(),
                len,
            }),
            Err(held) => Err(Error::io(
                format!(
                    "cannot open a remote entry of namespace {:?} without a local copy",
                    self.local.name()
                ),
                io::Error::new(
                    io::ErrorKind::OutOfMemory,
                    format!(
                        "readers of remote entries already hold {held} bytes in memory, and this one needs {len}                          more, over the bound of {} (the local tier is read-only or cannot keep them): drop                          readers, or read it with get",
                        self.reader_memory
                    ),
                ),
            )),
        }
    }

    /// The local tier.
    pub fn local(&self) -> &Namespace {
        &self.local
    }

    /// The remote tier.
    pub fn remote(&self) -> &RemoteTier {
        &self.remote
    }

    /// Asks the remote for `key` and copies a verified answer to the local tier.
    /// Returns the content, and whether the local tier now holds it.
    fn fill(&self, key: &Key) -> Result<Option<(Vec<u8>, bool)>> {
        let max = self.local.options().max_entry_size;
        let Some(content) = self.remote.fetch(&self.local, key, max)? else {
            return Ok(None);
        };
        let stored = !self.local.options().read_only
            && match self.local.add(key, &content) {
                Ok(()) => true,
                Err(e) => {
                    tracing::debug!(namespace = self.local.name(), key = %key, error = %e.full_message(),
                        "a remote entry is served but not kept locally");
                    false
                }
            };
        Ok(Some((content, stored)))
    }
}

impl EntryStore for TieredStore {
    fn get(&self, key: &Key) -> Result<Option<Vec<u8>>> {
        if let Some(content) = self.local.get(key)? {
            return Ok(Some(content));
        }
        Ok(self.fill(key)?.map(|(content, _)| content))
    }

    fn open(&self, key: &Key) -> Result<Option<Box<dyn EntryReader>>> {
        if let Some(r) = self.local.open(key)? {
            return Ok(Some(Box::new(r)));
        }
        let Some((content, stored)) = self.fill(key)? else {
            return Ok(None);
        };
        // Stream from the local copy rather than hold the content for the reader's lifetime.
        if stored {
            drop(content);
            if let Some(r) = self.local.open(key)? {
                return Ok(Some(Box::new(r)));
            }
            return Ok(None);
        }
        let held = self.reserve(content.len() as u64)?;
        Ok(Some(Box::new(MemReader {
            content,
            pos: 0,
            _held: held,
        })))
    }

    fn add(&self, key: &Key, content: &[u8]) -> Result<()> {
        self.local.add(key, content)?;
        self.remote.publish(&self.local, key, content)
    }

    fn create(&self, key: &Key) -> Result<Box<dyn EntryWriter>> {
        Ok(Box::new(TieredWriter {
            local: self.local.create(key)?,
            store: self.clone(),
            key: *key,
            len: 0,
        }))
    }

    fn delete(&self, key: &Key) -> Result<()> {
        self.local.delete(key)?;
        self.remote.remove(&self.local, key)
    }

    fn contains(&self, key: &Key) -> Result<bool> {
        if self.local.contains(key)? {
            return Ok(true);
        }
        Ok(self.fill(key)?.is_some())
    }
}

/// A streamed entry: written locally, published to the remote once committed.
struct TieredWriter {
    local: FileWriter,
    store: TieredStore,
    key: Key,
    len: u64,
}

impl EntryWriter for TieredWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.local.write(bytes)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    fn commit(self: Box<Self>) -> Result<()> {
        let TieredWriter { local, store, key, len } = *self;
        local.commit()?;
        let remote = &store.remote;
        if remote.options().read_only || len > remote.options().max_value_size {
            return Ok(());
        }
        // Read back what was committed (or what replaced it since: an entry for the same key).
        match store.local.get(&key) {
            Ok(Some(content)) => remote.publish(&store.local, &key, &content),
            Ok(None) => Ok(()),
            Err(e) => {
                tracing::debug!(namespace = store.local.name(), key = %key, error = %e.full_message(),
                    "cannot read a committed entry back to publish it");
                Ok(())
            }
        }
    }
}

/// A reader over content held in memory: a remote entry the local tier could not keep.
struct MemReader {
    content: Vec<u8>,
    pos: usize,
    _held: Held,
}

/// Bytes of a store's reader memory, given back on drop.
struct Held {
    held: Arc<AtomicU64>,
    len: u64,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.held.fetch_sub(self.len, Ordering::Relaxed);
    }
}

impl EntryReader for MemReader {
    fn size(&self) -> u64 {
        self.content.len() as u64
    }

    fn read_chunk(&mut self, max: usize) -> Result<Vec<u8>> {
        let n = max.min(MAX_READ_CHUNK).min(self.content.len() - self.pos);
        let chunk = self.content[self.pos..self.pos + n].to_vec();
        self.pos += n;
        Ok(chunk)
    }
}
