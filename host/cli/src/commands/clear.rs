//! `filecache clear`: remove the cache entries of one namespace or of all; with `--include-kv`,
//! their key-value data too.

use anyhow::Result;
use clap::Args;
use filecache_host::kv::maintenance;

use filecache_host::store::validate_namespace_name;

use crate::common::{CacheDirArg, count};

#[derive(Args)]
pub struct ClearCommand {
    #[command(flatten)]
    cache: CacheDirArg,
    /// Only this namespace
    #[arg(long, value_name = "NAME")]
    namespace: Option<String>,
    /// Also remove key-value data (`wasi:keyvalue` buckets), which is data, not cache: without
    /// this flag it is kept
    #[arg(long)]
    include_kv: bool,
}

impl ClearCommand {
    pub fn execute(self) -> Result<()> {
        // Clearing what does not exist is done already (a script may clear before each run): it
        // says so, succeeds, and creates nothing.
        if let Some(ns) = self.namespace.as_deref().filter(|n| !n.starts_with('.')) {
            validate_namespace_name(ns)?;
        }
        let dir = self.cache.resolve()?;
        if !dir.exists() {
            println!("nothing to remove: there is no cache at {}", dir.display());
            return Ok(());
        }
        let (dir, cache) = self.cache.open_existing()?;
        if let Some(ns) = &self.namespace
            && !cache.namespace_names()?.contains(ns)
        {
            println!("nothing to remove: there is no namespace {ns:?} in {}", dir.display());
            return Ok(());
        }
        let removed = cache.clear(self.namespace.as_deref())?;
        match &self.namespace {
            Some(ns) => println!(
                "removed {} from namespace {ns}",
                count(removed, "cache entry", "cache entries")
            ),
            None => println!("removed {}", count(removed, "cache entry", "cache entries")),
        }
        if self.include_kv {
            let cleared = maintenance::clear(&cache, self.namespace.as_deref())
                .map_err(|e| anyhow::anyhow!("{}", e.full_message()))?;
            if cleared.is_empty() {
                println!("no key-value data to remove");
            }
            for (ns, keys) in cleared {
                println!(
                    "removed the key-value bucket of namespace {ns} ({})",
                    count(keys, "key", "keys")
                );
            }
        } else {
            let kept = maintenance::stats(&cache).map_err(|e| anyhow::anyhow!("{}", e.full_message()))?;
            let kept: Vec<_> = kept
                .into_iter()
                .filter(|(ns, _)| self.namespace.as_deref().is_none_or(|n| n == ns))
                .collect();
            if !kept.is_empty() {
                let keys: u64 = kept.iter().map(|(_, u)| u.keys).sum();
                println!(
                    "kept key-value data: {} in {} (remove it with --include-kv)",
                    count(keys, "key", "keys"),
                    count(kept.len() as u64, "namespace", "namespaces")
                );
            }
        }
        Ok(())
    }
}
