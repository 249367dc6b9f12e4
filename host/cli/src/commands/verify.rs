//! `filecache verify`: check every entry and remove the ones that fail.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

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
        let (_, cache) = self.cache.open()?;
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
        // Damage is news a script must not miss, even though it has been dealt with.
        let damaged = report.removed > 0 || !report.damaged.is_empty();
        Ok(if damaged { ExitCode::from(1) } else { ExitCode::SUCCESS })
    }
}
