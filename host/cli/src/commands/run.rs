//! `filecache run`: run a wasi:cli command component with WASI and the cache linked in.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use clap::Args;
use filecache_host::keyvalue::{KeyValueCtx, KeyValueView};
use filecache_host::{FileCacheCtx, FileCacheView};
use wasmtime::Store;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi::p2::bindings::sync::CommandPre;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::plugin::{PluginArgs, Role, expect_role};

#[derive(Args)]
pub struct RunCommand {
    #[command(flatten)]
    plugin: PluginArgs,
    /// The component (.wasm)
    component: PathBuf,
    /// Arguments for the component
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

struct Host {
    wasi: WasiCtx,
    cache: FileCacheCtx,
    kv: KeyValueCtx,
    table: ResourceTable,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl RunCommand {
    pub fn execute(self) -> Result<ExitCode> {
        let path = &self.component;
        // Check everything the user gave before anything is created.
        let mut plugin = self.plugin.check(path)?;
        let args = self
            .args
            .iter()
            .map(|arg| {
                arg.to_str()
                    .ok_or_else(|| anyhow!("argument {arg:?} is not valid UTF-8, which WASI requires"))
            })
            .collect::<Result<Vec<_>>>()?;

        let config = plugin.config();
        let loaded = plugin.load(config)?;
        // An HTTP handler is refused with a message that says so, before linking would fail on
        // the wasi:http imports `run` does not serve.
        expect_role(Role::Command, &loaded.engine, &loaded.component, path)?;
        let mut linker = Linker::<Host>::new(&loaded.engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        filecache_host::add_to_linker(&mut linker, |h: &mut Host| FileCacheView::new(&h.cache, &mut h.table))?;
        filecache_host::keyvalue::add_to_linker(&mut linker, |h: &mut Host| KeyValueView::new(&h.kv, &mut h.table))?;
        // Resolve the imports before anything is created, so a component that cannot run changes nothing.
        let pre = linker
            .instantiate_pre(&loaded.component)
            .and_then(CommandPre::new)
            .map_err(|e| anyhow!("{e:#}"))
            .with_context(|| {
                format!(
                    "cannot instantiate {}: it must be a wasi:cli command component whose imports are WASI \
                     0.2, filecache:cache/cache and wasi:keyvalue (0.2.0-draft or 0.2.0-draft2)",
                    path.display()
                )
            })?;

        let storage = plugin.open_storage(&loaded)?;
        let mut wasi = storage.wasi()?;
        let program = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "component".into());
        wasi.inherit_stdio().arg(program).args(&args);
        let cache = storage.cache_ctx()?;
        let host = Host {
            wasi: wasi.build(),
            kv: storage.kv_ctx(&cache),
            cache,
            table: ResourceTable::new(),
        };
        let mut store = Store::new(&loaded.engine, host);
        let command = pre
            .instantiate(&mut store)
            .map_err(|e| anyhow!("{e:#}"))
            .with_context(|| format!("cannot instantiate {}", path.display()))?;
        match command.wasi_cli_run().call_run(&mut store) {
            Ok(Ok(())) => Ok(ExitCode::SUCCESS),
            Ok(Err(())) => Ok(ExitCode::FAILURE),
            Err(e) => {
                if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
                    // Exit codes outside 0..=255 are truncated by the OS anyway.
                    return Ok(ExitCode::from(exit.0 as u8));
                }
                eprintln!("error: {} failed: {e:?}", path.display());
                // As wasmtime does: a trap exits like an abort.
                Ok(ExitCode::from(134))
            }
        }
    }
}
