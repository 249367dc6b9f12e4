//! `filecache clear`: remove all entries, of one namespace or of all.

use anyhow::Result;
use clap::Args;

use crate::common::CacheDirArg;

#[derive(Args)]
pub struct ClearCommand {
    #[command(flatten)]
    cache: CacheDirArg,
    /// Only this namespace
    #[arg(long, value_name = "NAME")]
    namespace: Option<String>,
}

impl ClearCommand {
    pub fn execute(self) -> Result<()> {
        let (_, cache) = self.cache.open()?;
        let removed = cache.clear(self.namespace.as_deref())?;
        match &self.namespace {
            Some(ns) => println!("removed {removed} entries from namespace {ns}"),
            None => println!("removed {removed} entries"),
        }
        Ok(())
    }
}
