//! `filecache compile`: compile a component (or core module) into the cache ahead of time.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use filecache_host::compiled::{CompiledOptions, ComponentCache, Source};
use wasmtime::Engine;
use wasmtime::component::Component;
use wasmtime_wasi::p2::bindings::sync::CommandPre;

use super::plugin::{Role, expect_role};
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
                .map_err(|e| anyhow!("{e:#}"))
                .with_context(|| format!("{} is not a valid WebAssembly module", path.display()))?
                .1
        } else {
            let (component, source) = compiled
                .load_file::<wasmtime::component::Component>(path)
                .map_err(invalid_component(path))?;
            if let Some(why) = not_runnable(&engine, &component, path) {
                eprintln!("warning: {why}");
            }
            source
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

/// Why `filecache run` would refuse `component`, if it would: what it is when it is not a
/// command (an HTTP handler: `serve` it), or the import that `run` does not provide.
fn not_runnable(engine: &Engine, component: &Component, path: &std::path::Path) -> Option<String> {
    if let Err(e) = expect_role(Role::Command, engine, component, path) {
        return Some(format!("compiled, but `filecache run` will refuse it: {e:#}"));
    }
    let linked = super::run::linker(engine).and_then(|l| {
        l.instantiate_pre(component)
            .and_then(CommandPre::new)
            .map_err(|e| anyhow!("{e:#}"))
    });
    match linked {
        Ok(_) => None,
        Err(e) => Some(format!(
            "compiled, but `filecache run` cannot run {}: {e:#}. `run` provides WASI 0.2, \
             filecache:cache/cache and wasi:keyvalue (0.2.0-draft or 0.2.0-draft2), and runs components \
             that export wasi:cli/run; build it against those (wasm32-wasip2)",
            path.display()
        )),
    }
}
