//! Whole-cache maintenance: stats, gc, verify, clear.

use serde::Serialize;

use super::namespace::EntryInfo;
use super::{Counts, FileCache, Namespace, NamespaceOptions};
use crate::{Error, Key, Result};

/// Entries and bytes of one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct NamespaceStats {
    /// The namespace's name.
    pub name: String,
    /// Whether it is reserved for the host (its name starts with `.`).
    pub reserved: bool,
    /// How many entries it holds.
    pub entries: u64,
    /// What the entries are charged against the quota: each entry file's size (64-byte header,
    /// content, block table) rounded up to 4 KiB, what it takes on disk (see
    /// [`entry::charge_for_file`](crate::entry::charge_for_file)). Key-value data is not
    /// included: see `kv_bytes`.
    pub bytes: u64,
    /// Key-value records (`wasi:keyvalue` data, never evicted). The store does not keep them
    /// (the key-value crate does, in its own database): 0 here, filled in by whoever reads them
    /// (`filecache stats`).
    pub kv_keys: u64,
    /// Bytes of data charged beside the entries: the keys and values of the namespace's
    /// key-value buckets ([`Namespace::data_bytes`]). The quota counts `bytes + kv_bytes`.
    pub kv_bytes: u64,
    /// Hits, misses and other events recorded by the processes that used it.
    #[serde(flatten)]
    pub counts: Counts,
}

/// What [`FileCache::gc`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct GcReport {
    /// Entries removed to get under the size.
    pub removed_entries: u64,
    /// Bytes those entries took.
    pub removed_bytes: u64,
    /// Bytes left in the whole cache.
    pub remaining_bytes: u64,
    /// Temporary files of dead writers reclaimed.
    pub temporary_files: u64,
}

/// What [`FileCache::verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Entries read and checked.
    pub checked: u64,
    /// Entries that passed.
    pub ok: u64,
    /// Entries that failed and were removed.
    pub removed: u64,
    /// Each entry that failed, in the order found.
    pub damaged: Vec<DamagedEntry>,
}

/// An entry that [`FileCache::verify`] found damaged (and removed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DamagedEntry {
    /// Its namespace.
    pub namespace: String,
    /// Its key, in hex (its file name).
    pub key: String,
    /// What the check found.
    pub reason: &'static str,
}

/// Progress of a long operation, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// Units done.
    pub done: u64,
    /// Units in all.
    pub total: u64,
}

/// Options for maintenance: no limits of its own; `read_only` to change nothing on disk.
fn maintenance_options(read_only: bool) -> NamespaceOptions {
    NamespaceOptions {
        quota: u64::MAX,
        max_entry_size: u64::MAX,
        read_only,
        ..NamespaceOptions::default()
    }
}

impl FileCache {
    /// Entries and bytes per namespace. Changes nothing on disk.
    pub fn stats(&self) -> Result<Vec<NamespaceStats>> {
        let read_only = maintenance_options(true);
        self.namespace_names()?
            .into_iter()
            .map(|name| {
                let ns = self.open_existing(&name, read_only)?;
                let scan = ns.scan(0)?;
                Ok(NamespaceStats {
                    reserved: name.starts_with('.'),
                    name,
                    entries: scan.entries,
                    bytes: scan.used - scan.data_bytes,
                    kv_keys: 0,
                    kv_bytes: scan.data_bytes,
                    counts: ns.counts(),
                })
            })
            .collect()
    }

    /// Evicts least recently used entries, across all namespaces, until the whole cache takes
    /// at most `max_size` bytes; reclaims temporary files of dead writers. Key-value records
    /// (data charged beside the entries) count toward the size but are never removed.
    pub fn gc(&self, max_size: u64, progress: &mut dyn FnMut(Progress)) -> Result<GcReport> {
        let mut report = GcReport::default();
        let mut all: Vec<(usize, EntryInfo)> = Vec::new();
        let mut namespaces = Vec::new();
        for name in self.namespace_names()? {
            let ns = self.open_existing(&name, maintenance_options(false))?;
            report.temporary_files += ns.reclaimed_at_open() + ns.reclaim_temporary_files()?;
            let scan = ns.recount()?;
            report.remaining_bytes += scan.used;
            namespaces.push(ns);
        }
        if report.remaining_bytes <= max_size {
            return Ok(report);
        }
        for (i, ns) in namespaces.iter().enumerate() {
            all.extend(ns.scan(usize::MAX)?.oldest.into_iter().map(|e| (i, e)));
        }
        all.sort_by_key(|(_, e)| e.mtime);
        let mut excess = report.remaining_bytes - max_size;
        let mut victims: Vec<Vec<EntryInfo>> = vec![Vec::new(); namespaces.len()];
        for (i, e) in all {
            if excess == 0 {
                break;
            }
            excess = excess.saturating_sub(e.size);
            victims[i].push(e);
        }
        let total: u64 = victims.iter().map(|v| v.len() as u64).sum();
        let mut done = 0;
        for (ns, victims) in namespaces.iter().zip(victims) {
            for chunk in victims.chunks(256) {
                let (entries, bytes) = ns.remove_if_unchanged(chunk)?;
                report.removed_entries += entries;
                report.removed_bytes += bytes;
                done += chunk.len() as u64;
                progress(Progress { done, total });
            }
        }
        report.remaining_bytes = report.remaining_bytes.saturating_sub(report.removed_bytes);
        Ok(report)
    }

    /// Reads every entry of every namespace, checks it, and removes those that fail.
    pub fn verify(&self, progress: &mut dyn FnMut(Progress)) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let mut work: Vec<(Namespace, Vec<Key>)> = Vec::new();
        for name in self.namespace_names()? {
            let ns = match self.open_existing(&name, maintenance_options(false)) {
                Ok(ns) => ns,
                // A cache we may not write to can still be checked.
                Err(Error::Io { .. }) => self.open_existing(&name, maintenance_options(true))?,
                Err(e) => return Err(e),
            };
            let keys = ns.keys()?;
            work.push((ns, keys));
        }
        let total = report.checked + work.iter().map(|(_, k)| k.len() as u64).sum::<u64>();
        for (ns, keys) in work {
            for key in keys {
                match ns.verify_entry(&key)? {
                    None => report.ok += 1,
                    Some(reason) => {
                        report.removed += 1;
                        report.damaged.push(DamagedEntry {
                            namespace: ns.name().to_string(),
                            key: key.to_string(),
                            reason,
                        });
                    }
                }
                report.checked += 1;
                progress(Progress {
                    done: report.checked,
                    total,
                });
            }
        }
        Ok(report)
    }

    /// Removes every entry of one namespace, or of all of them (reserved ones included). Returns
    /// how many were removed. Key-value data is not touched (the key-value crate clears it).
    pub fn clear(&self, namespace: Option<&str>) -> Result<u64> {
        let names = match namespace {
            Some(name) => {
                super::validate_any_name(name)?;
                if self.namespace_names()?.iter().any(|n| n == name) {
                    vec![name.to_string()]
                } else {
                    vec![]
                }
            }
            None => self.namespace_names()?,
        };
        let mut removed = 0;
        for name in names {
            removed += self.open_existing(&name, maintenance_options(false))?.clear()?;
        }
        Ok(removed)
    }
}
