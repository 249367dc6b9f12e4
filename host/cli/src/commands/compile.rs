//! `filecache compile`: compile a component (or core module) into the cache ahead of time.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use filecache_host::compiled::{CompiledOptions, ComponentCache, Source};

use crate::common::{self, CacheDirArg, WasmArgs, WasmKind, invalid_component, probe};

#[derive(Args)]
pub struct CompileCommand {
    #[command(flatten)]
    cache: CacheDirArg,
    /// Let Cranelift reuse the compiled code of unchanged functions from the cache
    #[arg(long)]
    incremental: bool,
    #[command(flatten)]
    wasm: WasmArgs,
    /// The component or module (.wasm or .wat)
    component: PathBuf,
}

impl CompileCommand {
    pub fn execute(self) -> Result<()> {
        let path = &self.component;
        let kind = probe(path)?;
        let (dir, cache) = self.cache.open()?;
        let engine = common::engine(common::config(&self.wasm), Some(&cache), self.incremental)?;
        let compiled = ComponentCache::new(&cache, &engine, CompiledOptions::default());
        if !compiled.is_writable() {
            bail!("cannot store compiled code in {}", dir.display());
        }
        let start = std::time::Instant::now();
        let source = if kind == WasmKind::CoreModule {
            compiled
                .load_file::<wasmtime::Module>(path)
                .map_err(|e| anyhow!("{e:?}"))
                .with_context(|| format!("{} is not a valid WebAssembly module", path.display()))?
                .1
        } else {
            compiled
                .load_file::<wasmtime::component::Component>(path)
                .map_err(invalid_component(path))?
                .1
        };
        let what = if kind == WasmKind::CoreModule {
            "module"
        } else {
            "component"
        };
        match source {
            Source::Compiled => println!(
                "compiled {what} {} in {:.0?} into {}",
                path.display(),
                start.elapsed(),
                dir.display()
            ),
            _ => println!("{what} {} is already compiled in {}", path.display(), dir.display()),
        }
        Ok(())
    }
}
