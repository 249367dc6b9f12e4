//! `filecache stats`: entries, bytes, hits and misses per namespace; with `--remote`, the
//! `wasi:keyvalue` buckets a fleet shares in Redis too.

use std::time::Duration;

use anyhow::{Result, anyhow};
use clap::Args;
use filecache_host::compiled;
use filecache_host::kv::{RedisEngine, Usage};
use filecache_host::remote::RemoteTier;
use filecache_host::size::format_size;

use crate::commands::plugin::{parse_remote_timeout, remote_options};
use crate::common::{CacheDirArg, count};

#[derive(Args)]
pub struct StatsCommand {
    #[command(flatten)]
    cache: CacheDirArg,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
    /// Also list the wasi:keyvalue buckets a fleet shares in this Redis server (what `run`/`serve
    /// --remote` serve): every namespace's, whichever host wrote it, with its keys and the bytes
    /// charged to its quota
    #[arg(long, value_name = "redis://HOST:PORT[/DB]")]
    remote: Option<String>,
    /// How long connecting to Redis, and then each operation, may take [default: 500ms]
    #[arg(long, value_name = "DURATION", requires = "remote", value_parser = parse_remote_timeout)]
    remote_timeout: Option<Duration>,
}

/// The buckets in the Redis server at `url`, and the server as shown (without credentials).
fn remote_buckets(url: &str, timeout: Option<Duration>) -> Result<(String, Vec<(String, Usage)>)> {
    let tier = RemoteTier::new(remote_options(url, None, timeout)?)?;
    let buckets = RedisEngine::buckets(&tier)
        .map_err(|e| anyhow!("cannot list the key-value buckets in Redis: {}", e.full_message()))?;
    Ok((tier.shown_url().to_string(), buckets))
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
        // Asked before anything is printed: a server that cannot be read fails the command whole.
        let shared = self
            .remote
            .as_deref()
            .map(|url| remote_buckets(url, self.remote_timeout))
            .transpose()?;
        if self.json {
            let mut out = serde_json::json!({
                "cache_dir": dir,
                "namespaces": stats,
                "total": { "entries": entries, "bytes": bytes },
            });
            if let Some((server, buckets)) = &shared {
                let buckets: Vec<_> = buckets
                    .iter()
                    .map(|(name, u)| serde_json::json!({ "namespace": name, "keys": u.keys, "bytes": u.bytes }))
                    .collect();
                out["remote"] = serde_json::json!({ "server": server, "buckets": buckets });
            }
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
        if let Some((server, buckets)) = shared {
            if buckets.is_empty() {
                println!("key-value buckets in Redis ({server}): none");
            } else {
                println!("key-value buckets in Redis ({server}), shared by the fleet, counted in their quotas:");
                let width = buckets
                    .iter()
                    .map(|(n, _)| n.chars().count())
                    .max()
                    .unwrap_or(0)
                    .max(32);
                println!("{:<width$} {:>10} {:>12}", "namespace", "keys", "size");
                for (name, usage) in &buckets {
                    println!("{:<width$} {:>10} {:>12}", name, usage.keys, format_size(usage.bytes));
                }
            }
        }
        Ok(())
    }
}
