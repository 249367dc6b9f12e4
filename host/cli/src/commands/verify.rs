//! `filecache verify`: check every entry and every key-value row, and remove the ones that fail.

use anyhow::Result;
use clap::Args;
use filecache_host::kv::maintenance;

use crate::common::{CacheDirArg, progress_bar};

#[derive(Args)]
pub struct VerifyCommand {
    #[command(flatten)]
    cache: CacheDirArg,
}

impl VerifyCommand {
    pub fn execute(self) -> Result<()> {
        let (_, cache) = self.cache.open()?;
        let report = cache.verify(&mut progress_bar("verify"))?;
        for d in &report.damaged {
            println!("corrupt (removed): {}/{}: {}", d.namespace, d.key, d.reason);
        }
        println!(
            "checked {} entries: {} ok, {} corrupt (removed)",
            report.checked, report.ok, report.removed
        );
        let buckets = maintenance::verify(&cache).map_err(|e| anyhow::anyhow!("{}", e.full_message()))?;
        let (mut ok, mut removed) = (0, 0);
        for (ns, r) in &buckets {
            for (key, reason) in &r.damaged {
                println!("corrupt (removed): {ns}/kv:{key:?}: {reason}");
            }
            if let Some(message) = &r.database {
                println!(
                    "damaged key-value database of namespace {ns}: {message}; its data cannot be read: \
                     remove it with `filecache clear --include-kv --namespace {ns}`"
                );
            }
            ok += r.ok;
            removed += r.damaged.len() as u64;
        }
        if !buckets.is_empty() {
            println!(
                "checked {} key-value rows: {ok} ok, {removed} corrupt (removed)",
                ok + removed
            );
        }
        Ok(())
    }
}
