//! `filecache verify`: check every entry and remove the ones that fail.

use anyhow::Result;
use clap::Args;

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
        Ok(())
    }
}
