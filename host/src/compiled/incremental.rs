//! Cranelift's incremental-compilation cache, kept in a reserved namespace of the store.
//!
//! With `Config::enable_incremental_compilation`, Cranelift asks this store for each function's
//! compiled code before compiling it. Entries are native code, so each carries a keyed BLAKE3
//! MAC under the cache's secret; one that fails is removed and answered as a miss.

use std::borrow::Cow;
use std::sync::Arc;

use wasmtime::CacheStore;

use super::secret::{Secret, mac};
use crate::store::Counter;
use crate::{FileCache, Key, Namespace, NamespaceOptions, Result};

/// The reserved namespace of incremental-compilation entries.
pub const INCREMENTAL_NAMESPACE: &str = ".incremental";

/// A persistent [`CacheStore`] for `Config::enable_incremental_compilation`.
pub struct IncrementalCache {
    ns: Namespace,
    key: [u8; 32],
}

impl std::fmt::Debug for IncrementalCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncrementalCache")
            .field("namespace", &self.ns.name())
            .finish()
    }
}

impl IncrementalCache {
    /// Opens the incremental cache of `cache` (with its quota in bytes).
    pub fn open(cache: &FileCache, quota: u64) -> Result<Arc<IncrementalCache>> {
        let secret = Secret::load_or_create(cache.root())?;
        let ns = cache.reserved_namespace(
            INCREMENTAL_NAMESPACE,
            NamespaceOptions {
                max_entry_size: 64 << 20,
                quota,
                ..NamespaceOptions::default()
            },
        )?;
        Ok(Arc::new(IncrementalCache {
            ns,
            key: secret.incremental,
        }))
    }

    fn entry_key(key: &[u8]) -> Key {
        Key::digest(key)
    }
}

impl CacheStore for IncrementalCache {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        let k = Self::entry_key(key);
        let mut record = match self.ns.get(&k) {
            Ok(Some(r)) => r,
            Ok(None) => {
                let _ = self.ns.count(&[(Counter::Misses, 1)]);
                return None;
            }
            Err(e) => {
                tracing::debug!("incremental cache: {}", e.full_message());
                return None;
            }
        };
        if record.len() < 32 {
            let _ = self.ns.delete(&k);
            return None;
        }
        let value = record.split_off(32);
        if mac(&self.key, &[key, &value]) != blake3::Hash::from_bytes(record[..32].try_into().expect("32 bytes")) {
            tracing::warn!(key = %k, "incremental-compilation entry not authenticated: removed");
            let _ = self.ns.delete(&k);
            let _ = self.ns.count(&[(Counter::Rejected, 1)]);
            return None;
        }
        let _ = self.ns.count(&[(Counter::Hits, 1)]);
        Some(Cow::Owned(value))
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        let tag = mac(&self.key, &[key, &value]);
        let mut record = Vec::with_capacity(32 + value.len());
        record.extend_from_slice(tag.as_bytes());
        record.extend_from_slice(&value);
        match self.ns.add(&Self::entry_key(key), &record) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!("incremental cache: {}", e.full_message());
                false
            }
        }
    }
}
