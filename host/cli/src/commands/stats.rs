//! `filecache stats`: entries, bytes, hits and misses per namespace.

use anyhow::Result;
use clap::Args;
use filecache_host::compiled;
use filecache_host::size::format_size;

use crate::common::{CacheDirArg, count};

#[derive(Args)]
pub struct StatsCommand {
    #[command(flatten)]
    cache: CacheDirArg,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
}

impl StatsCommand {
    pub fn execute(self) -> Result<()> {
        let (dir, cache) = self.cache.open_existing()?;
        let mut stats = cache.stats()?;
        // The store counts key-value bytes (they are charged to the quota); the keys are the
        // key-value crate's.
        let buckets =
            filecache_host::kv::maintenance::stats(&cache).map_err(|e| anyhow::anyhow!("{}", e.full_message()))?;
        for (name, usage) in buckets {
            if let Some(s) = stats.iter_mut().find(|s| s.name == name) {
                s.kv_keys = usage.keys;
            }
        }
        let (entries, bytes) = stats.iter().fold((0, 0), |(e, b), s| (e + s.entries, b + s.bytes));
        if self.json {
            let out = serde_json::json!({
                "cache_dir": dir,
                "namespaces": stats,
                "total": { "entries": entries, "bytes": bytes },
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            return Ok(());
        }
        println!("cache directory: {}", dir.display());
        let remote = stats
            .iter()
            .any(|s| s.counts.remote_hits + s.counts.remote_misses + s.counts.remote_errors > 0);
        // The first column as wide as the longest name, so that long names do not shift the rest.
        let width = stats.iter().map(|s| s.name.chars().count()).max().unwrap_or(0).max(32);
        let mut header = format!(
            "{:<width$} {:>10} {:>12} {:>10} {:>10} {:>9}",
            "namespace", "entries", "size", "hits", "misses", "rejected"
        );
        if remote {
            header += &format!(" {:>12} {:>14} {:>14}", "remote hits", "remote misses", "remote errors");
        }
        println!("{header}");
        for s in &stats {
            let c = &s.counts;
            let mut line = format!(
                "{:<width$} {:>10} {:>12} {:>10} {:>10} {:>9}",
                s.name,
                s.entries,
                format_size(s.bytes),
                c.hits,
                c.misses,
                c.rejected
            );
            if remote {
                line += &format!(" {:>12} {:>14} {:>14}", c.remote_hits, c.remote_misses, c.remote_errors);
            }
            println!("{line}");
        }
        println!("{:<width$} {:>10} {:>12}", "total", entries, format_size(bytes));
        for s in stats.iter().filter(|s| s.kv_keys > 0) {
            println!(
                "key-value data of {}: {} ({}, counted in its quota, never evicted)",
                s.name,
                count(s.kv_keys, "key", "keys"),
                format_size(s.kv_bytes)
            );
        }
        if let Some(c) = stats.iter().find(|s| s.name == compiled::COMPILED_NAMESPACE) {
            println!(
                "compiled code: {} ({}); {} from the cache, {}, {} rejected",
                count(c.entries, "artifact", "artifacts"),
                format_size(c.bytes),
                count(c.counts.hits, "load", "loads"),
                count(c.counts.misses, "compile", "compiles"),
                c.counts.rejected
            );
        }
        Ok(())
    }
}
