//! Cranelift's incremental-compilation cache, kept in a reserved namespace of the store.
//!
//! With `Config::enable_incremental_compilation`, Cranelift asks this store for each function's
//! compiled code before compiling it. Entries are native code, so each carries a keyed BLAKE3
//! MAC under the cache's secret; one that fails is removed and answered as a miss. The MAC covers
//! a format tag, the length of Cranelift's key, the key and the value, so that no split of the
//! same bytes into another key and value verifies (the entry file is found by a digest of the
//! tag and the key: an entry of the unframed format is a miss, never accepted).

use std::borrow::Cow;
use std::sync::Arc;

use wasmtime::CacheStore;

use super::secret::{Secret, mac};
use crate::store::Counter;
use crate::{FileCache, Key, Namespace, NamespaceOptions, Result};

/// The reserved namespace of incremental-compilation entries.
pub const INCREMENTAL_NAMESPACE: &str = ".incremental";

/// Domain separation for entry keys and MACs; a new format gets a new tag.
const FORMAT: &[u8] = b"filecache incremental v2\0";

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
            NamespaceOptions::default().max_entry_size(64 << 20).quota(quota),
        )?;
        Ok(Arc::new(IncrementalCache {
            ns,
            key: secret.incremental,
        }))
    }

    fn entry_key(key: &[u8]) -> Key {
        Key::digest([FORMAT, key].concat())
    }

    /// The MAC of a record: over the format, the key's length, the key and the value.
    fn tag(&self, key: &[u8], value: &[u8]) -> blake3::Hash {
        mac(&self.key, &[FORMAT, &(key.len() as u64).to_le_bytes(), key, value])
    }
}

impl CacheStore for IncrementalCache {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        let k = Self::entry_key(key);
        let mut record = match self.ns.get(&k) {
            Ok(Some(r)) => r,
            // (Hits and misses are counted by the namespace itself.)
            Ok(None) => return None,
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
        if self.tag(key, &value) != blake3::Hash::from_bytes(record[..32].try_into().expect("32 bytes")) {
            tracing::warn!(key = %k, "incremental-compilation entry not authenticated: removed");
            let _ = self.ns.delete(&k);
            let _ = self.ns.count(&[(Counter::Rejected, 1)]);
            return None;
        }
        Some(Cow::Owned(value))
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        let tag = self.tag(key, &value);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Finding 8 of the hardening review: with key and value concatenated unframed, a record made
    /// for (`k1`, `v1`) verified as (`k2`, `v2`) whenever `k1 ‖ v1 == k2 ‖ v2`.
    #[test]
    fn incremental_mac_frames_key_and_value() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileCache::open(dir.path()).unwrap();
        let inc = IncrementalCache::open(&cache, 1 << 20).unwrap();
        let (k1, v1) = (b"function-key".to_vec(), b"Xcompiled code".to_vec());
        assert!(inc.insert(&k1, v1.clone()));
        assert_eq!(inc.get(&k1).as_deref(), Some(&v1[..]));
        // The same bytes split one byte later: key "function-keyX", value "compiled code".
        let k2 = [&k1[..], &v1[..1]].concat();
        let record = inc.ns.get(&IncrementalCache::entry_key(&k1)).unwrap().unwrap();
        inc.ns.add(&IncrementalCache::entry_key(&k2), &record).unwrap();
        assert_eq!(
            inc.get(&k2),
            None,
            "a record moved to another split of its bytes is refused"
        );
        assert!(
            !inc.ns.contains(&IncrementalCache::entry_key(&k2)).unwrap(),
            "and removed"
        );
        assert_eq!(
            inc.get(&k1).as_deref(),
            Some(&v1[..]),
            "the genuine record still verifies"
        );
    }

    #[test]
    fn incremental_entries_are_authenticated() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileCache::open(dir.path()).unwrap();
        let store = IncrementalCache::open(&cache, 1 << 20).unwrap();
        assert!(store.insert(b"k1", b"native code".to_vec()));
        assert_eq!(store.get(b"k1").as_deref(), Some(&b"native code"[..]));
        assert_eq!(store.get(b"k2"), None);
        // Tamper with the stored value (the store's CRC is recomputed, the MAC cannot be).
        let ns = cache
            .reserved_namespace(INCREMENTAL_NAMESPACE, NamespaceOptions::default())
            .unwrap();
        let k = IncrementalCache::entry_key(b"k1");
        let mut record = ns.get(&k).unwrap().unwrap();
        *record.last_mut().unwrap() ^= 1;
        ns.add(&k, &record).unwrap();
        assert_eq!(store.get(b"k1"), None);
        assert!(!ns.contains(&k).unwrap(), "removed");
    }
}
