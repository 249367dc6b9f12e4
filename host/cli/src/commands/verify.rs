//! `filecache verify`: check every entry and every key-value row, and remove the ones that fail.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use filecache_host::kv::maintenance;

use crate::common::{CacheDirArg, count, progress_bar};

/// `verify --help` ends with this. The exit status follows grep and ripgrep: 1 is an answer
/// (damage was found), 2 a failure.
const EXIT_STATUS: &str = "Exit status: 0 if every entry passed; 1 if damaged entries were found (and removed); \
                           2 on an error (the cache could not be checked).";

#[derive(Args)]
#[command(after_help = EXIT_STATUS)]
pub struct VerifyCommand {
    #[command(flatten)]
    cache: CacheDirArg,
}

impl VerifyCommand {
    pub fn execute(self) -> Result<ExitCode> {
        let (_, cache) = self.cache.open_existing()?;
        let report = cache.verify(&mut progress_bar("verify"))?;
        for d in &report.damaged {
            println!("corrupt (removed): {}/{}: {}", d.namespace, d.key, d.reason);
        }
        println!(
            "checked {}: {} ok, {} corrupt (removed)",
            count(report.checked, "entry", "entries"),
            report.ok,
            report.removed
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
                "checked {}: {ok} ok, {removed} corrupt (removed)",
                count(ok + removed, "key-value row", "key-value rows")
            );
        }
        // Damage is news a script must not miss, even though it has been dealt with.
        let damaged = report.removed > 0
            || !report.damaged.is_empty()
            || buckets
                .iter()
                .any(|(_, r)| !r.damaged.is_empty() || r.database.is_some());
        Ok(if damaged { ExitCode::from(1) } else { ExitCode::SUCCESS })
    }
}
