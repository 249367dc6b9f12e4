//! `filecache gc`: evict least recently used entries until the cache fits a size.

use anyhow::Result;
use clap::Args;
use filecache_host::size::{format_size, parse_size};

use crate::common::{CacheDirArg, count, progress_bar};

/// `gc --help` ends with this (the codes of `verify` and `stats`: 2 is a failure).
const EXIT_STATUS: &str = "Exit status: 0 when the cache fits SIZE (after evicting what it had to); 2 on an error, \
                           including a cache directory that does not exist (gc creates none).";

#[derive(Args)]
#[command(after_help = EXIT_STATUS)]
pub struct GcCommand {
    #[command(flatten)]
    cache: CacheDirArg,
    /// The size to get under, e.g. 512MiB
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_size: u64,
}

impl GcCommand {
    pub fn execute(self) -> Result<()> {
        // Collecting a cache that does not exist is a mistake worth hearing about (a wrong
        // --cache-dir, most likely), as `stats` and `verify` say; creating one would hide it.
        let (_, cache) = self.cache.open_existing()?;
        // Key-value data counts toward the size with its exact figure (a crash may have left a
        // namespace's charge too high).
        filecache_host::kv::maintenance::recount(&cache).map_err(|e| anyhow::anyhow!("{}", e.full_message()))?;
        let report = cache.gc(self.max_size, &mut progress_bar("gc"))?;
        println!(
            "removed {} ({}); {} remain; reclaimed {}",
            count(report.removed_entries, "entry", "entries"),
            format_size(report.removed_bytes),
            format_size(report.remaining_bytes),
            count(report.temporary_files, "temporary file", "temporary files")
        );
        Ok(())
    }
}
