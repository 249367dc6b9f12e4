//! `filecache gc`: evict least recently used entries until the cache fits a size.

use anyhow::Result;
use clap::Args;
use filecache_host::size::{format_size, parse_size};

use crate::common::{CacheDirArg, count, progress_bar};

#[derive(Args)]
pub struct GcCommand {
    #[command(flatten)]
    cache: CacheDirArg,
    /// The size to get under, e.g. 512MiB
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_size: u64,
}

impl GcCommand {
    pub fn execute(self) -> Result<()> {
        let (_, cache) = self.cache.open()?;
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
