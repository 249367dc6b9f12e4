//! Whole-cache maintenance of key-value buckets, for `filecache stats`, `verify`, `clear` and
//! `gc`: each works on every plugin namespace's bucket (reserved namespaces hold none).

use filecache_store::{FileCache, NamespaceOptions};

use crate::{Bucket, Result, Usage, VerifyReport};

/// Maintenance has no limits of its own; `read_only` to change nothing on disk.
fn options(read_only: bool) -> NamespaceOptions {
    NamespaceOptions::default()
        .quota(u64::MAX)
        .max_entry_size(u64::MAX)
        .read_only(read_only)
}

/// The plugin namespaces present.
fn names(cache: &FileCache) -> Result<Vec<String>> {
    Ok(cache
        .namespace_names()?
        .into_iter()
        .filter(|n| filecache_store::validate_namespace_name(n).is_ok())
        .collect())
}

/// Keys and bytes of each namespace's bucket (namespaces without one are left out). Changes
/// nothing on disk.
pub fn stats(cache: &FileCache) -> Result<Vec<(String, Usage)>> {
    let mut out = Vec::new();
    for name in names(cache)? {
        let usage = Bucket::new(cache.namespace(&name, options(true))?).usage()?;
        if usage.keys > 0 {
            out.push((name, usage));
        }
    }
    Ok(out)
}

/// Reads and checks every bucket; removes damaged rows; makes each namespace's data charge
/// exact. Each namespace with a bucket, and what was found.
pub fn verify(cache: &FileCache) -> Result<Vec<(String, VerifyReport)>> {
    let mut out = Vec::new();
    for name in names(cache)? {
        let ns = cache.namespace(&name, options(false))?;
        let Some(dir) = ns.directory() else { continue };
        if dir.symlink_metadata(crate::DATABASE_FILE).is_err() && !crate::import::has_old_records(dir) {
            continue;
        }
        out.push((name, Bucket::new(ns).verify()?));
    }
    Ok(out)
}

/// Removes every key of one namespace's bucket, or of every bucket: each namespace that had a
/// bucket, and how many keys it lost. A namespace that does not exist is left alone (and not
/// created).
pub fn clear(cache: &FileCache, namespace: Option<&str>) -> Result<Vec<(String, u64)>> {
    let names = match namespace {
        Some(n) => {
            filecache_store::validate_namespace_name(n)?;
            names(cache)?.into_iter().filter(|x| x == n).collect()
        }
        None => names(cache)?,
    };
    let mut out = Vec::new();
    for name in names {
        let ns = cache.namespace(&name, options(false))?;
        let Some(dir) = ns.directory() else { continue };
        if dir.symlink_metadata(crate::DATABASE_FILE).is_err() && !crate::import::has_old_records(dir) {
            continue;
        }
        let removed = Bucket::new(ns).clear()?;
        out.push((name, removed));
    }
    Ok(out)
}

/// Makes each namespace's data charge exactly what its bucket holds (a crash may leave it too
/// high), so that `gc` and eviction work with true figures.
pub fn recount(cache: &FileCache) -> Result<()> {
    for name in names(cache)? {
        // Looked for through a read-only handle first: a writable open reclaims the namespace's
        // dead writers' temporary files, which `gc`, run next, counts and reports itself.
        let has_database = cache
            .namespace(&name, options(true))?
            .directory()
            .is_some_and(|dir| dir.symlink_metadata(crate::DATABASE_FILE).is_ok());
        if has_database {
            crate::SqliteEngine::new(cache.namespace(&name, options(false))?).recount_charge()?;
        }
    }
    Ok(())
}
