//! Least-recently-used eviction: the oldest entries a walk found are kept as candidates, and
//! removed oldest first (skipping any used or replaced since) until a new entry fits.

use std::collections::VecDeque;

use super::file::charged_at;
use super::lock::Locked;
use super::walk::{EntryInfo, Scan};
use super::{Namespace, Writable, is_not_found};
use crate::{Error, Key, Result};

/// Stands for "no entry to keep" in eviction (a cache key of all zeros is not a SHA-256 digest
/// anyone can produce).
const NO_KEY: Key = Key::new([0; 32]);
/// How many eviction candidates one scan keeps (the oldest entries).
const CANDIDATES_PER_SCAN: usize = 8192;

/// The oldest entries seen by the last scan, oldest first.
#[derive(Default)]
pub(super) struct Candidates {
    queue: VecDeque<EntryInfo>,
    /// Whether the scan that filled `queue` saw more entries than it kept.
    truncated: bool,
}

impl Namespace {
    /// Evicts least recently used entries (never `keep`) until a file of `size` bytes at `rel`,
    /// replacing one of `old` bytes, fits. Returns the usage once it does.
    pub(super) fn evict(
        &self,
        w: &Writable,
        lk: &mut Locked<'_>,
        keep: Option<&Key>,
        rel: &str,
        mut old: u64,
        size: u64,
    ) -> Result<u64> {
        let keep = keep.unwrap_or(&NO_KEY);
        let dir = self.dir().ok_or(Error::ReadOnly)?;
        let quota = self.inner.options.quota;
        let mut used = lk.used.unwrap_or(0);
        let mut scanned = false;
        loop {
            let mut candidates = w.candidates.lock().unwrap_or_else(|p| p.into_inner());
            // The entry being replaced is not evicted for itself, but stays a candidate (in its
            // place) for the writes after this one, even when this eviction fails part way.
            let mut kept = None;
            let mut evicting = || -> Result<()> {
                while used.saturating_sub(old) + size > quota {
                    let Some(c) = candidates.queue.pop_front() else { break };
                    if c.key == *keep {
                        kept = Some(c);
                        continue;
                    }
                    let rel = c.key.hex().rel_path();
                    // Skip an entry used (or replaced) since the scan: it is no longer among the
                    // oldest.
                    if !c.is_unchanged(dir, &rel) {
                        continue;
                    }
                    match self.remove_entry_file(dir, &rel) {
                        Ok(()) => {
                            tracing::debug!(namespace = %self.inner.name, key = %c.key, "evicted");
                            used = used.saturating_sub(c.size);
                            lk.store_used(used)?;
                        }
                        Err(e) if is_not_found(&e) => {}
                        Err(e) => {
                            // Still there, and still the oldest.
                            candidates.queue.push_front(c);
                            return Err(Error::io("cannot evict an entry", e));
                        }
                    }
                }
                Ok(())
            };
            let evicted = evicting();
            if let Some(c) = kept {
                candidates.queue.push_front(c);
            }
            evicted?;
            if used.saturating_sub(old) + size <= quota {
                return Ok(used.saturating_sub(old) + size);
            }
            if scanned && !candidates.truncated {
                return Err(Error::QuotaExceeded { needed: size, quota });
            }
            drop(candidates);
            let scan = self.rescan(w)?;
            used = scan.used;
            // The entry being replaced may have changed meanwhile; data charged beside the
            // entries (`rel` is then the data file) replaces nothing.
            if rel != super::data::DATA_FILE {
                old = charged_at(dir, rel);
            }
            lk.store_used(used)?;
            scanned = true;
        }
    }

    /// Walks the namespace (under its lock), refreshing the eviction candidates.
    pub(super) fn rescan(&self, w: &Writable) -> Result<Scan> {
        let scan = self.scan(CANDIDATES_PER_SCAN)?;
        let mut c = w.candidates.lock().unwrap_or_else(|p| p.into_inner());
        // (The entry being written stays in the queue: evict() steps over it.)
        c.queue = scan.oldest.iter().cloned().collect();
        c.truncated = scan.truncated;
        Ok(scan)
    }
}
