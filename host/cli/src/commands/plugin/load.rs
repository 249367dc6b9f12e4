//! Loading a plugin's component (its compiled code from the cache when there is one) and checking
//! that it is what the command runs ([`Role`], [`expect_role`]).

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use filecache_host::compiled::ComponentCache;
use filecache_host::remote::RemoteTier;
use wasmtime::component::Component;
use wasmtime::{Config, Engine};

use super::{Loaded, Plugin};
use crate::common::{self, invalid_component, open_cache};

pub(super) fn with_remote(compiled: ComponentCache, remote: &Option<RemoteTier>) -> Result<ComponentCache> {
    Ok(match remote {
        Some(r) => compiled.with_remote(r.clone())?,
        None => compiled,
    })
}

impl Plugin {
    /// The engine's configuration from `-W` (the caller adds what its command needs).
    pub fn config(&self) -> Config {
        common::config(&self.args.wasm)
    }

    /// Makes the engine from `config` and loads the component: its compiled code from the cache
    /// when there is one (a cache that does not exist yet is created only once the component has
    /// proved runnable, in [`open_storage`](Self::open_storage), and its code stored then). A
    /// component that is not what the command runs (`role`) is refused with a message that says
    /// what it is ([`expect_role`]).
    pub fn load(&mut self, config: Config, role: Role) -> Result<Loaded> {
        let loaded = self.load_component(config)?;
        expect_role(role, &loaded.engine, &loaded.component, &self.component_path)?;
        Ok(loaded)
    }

    fn load_component(&mut self, config: Config) -> Result<Loaded> {
        let path = &self.component_path;
        let use_cache = !self.args.no_compile_cache;
        // (With a remote tier, the compiled code may come from it: the cache is needed first.)
        if use_cache && (self.cache_dir.is_dir() || self.args.incremental || self.remote.is_some()) {
            self.cache = Some(open_cache(&self.cache_dir)?);
        }
        // A cache directory that cannot be written (a read-only filesystem, no permission) is still
        // used, read-only, with one warning: stored code is loaded, new code is compiled in memory,
        // and the component's writes answer `read-only`.
        if self.unwritable {
            tracing::warn!(
                "the cache directory {} cannot be written: using it read-only (new compiled code stays in \
                 memory; the component's writes answer read-only)",
                self.cache_dir.display()
            );
        }
        let engine = if use_cache {
            common::engine(config, self.cache.as_ref(), self.args.incremental)?
        } else {
            Engine::new(&config).map_err(|e| anyhow!("{e:#}"))?
        };
        let component = match &self.cache {
            Some(c) => {
                with_remote(ComponentCache::new(c, &engine, self.compiled_options), &self.remote)?
                    .load_file::<Component>(path)
                    .map_err(invalid_component(path))?
                    .0
            }
            None => {
                let bytes = std::fs::read(path).with_context(|| format!("cannot read component {}", path.display()))?;
                let component = Component::new(&engine, &bytes).map_err(invalid_component(path))?;
                if use_cache {
                    self.compiled_in_memory = Some(bytes);
                }
                component
            }
        };
        Ok(Loaded { engine, component })
    }
}

/// What a component is, by what it exports.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    /// A `wasi:cli` command: exports `wasi:cli/run`. `filecache run` runs it.
    Command,
    /// A `wasi:http` handler: exports `wasi:http/incoming-handler`. `filecache serve` serves it.
    HttpHandler,
}

impl Role {
    fn export_prefix(self) -> &'static str {
        match self {
            Role::Command => "wasi:cli/run@",
            Role::HttpHandler => "wasi:http/incoming-handler@",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Role::Command => "a wasi:cli command (it exports wasi:cli/run)",
            Role::HttpHandler => "a wasi:http handler (it exports wasi:http/incoming-handler)",
        }
    }
}

/// Checks that `component` is what the command needs (`want`), by its exports, and says what it
/// is and which command takes it when not. (Its imports are checked afterwards, by linking.)
///
/// For `run`: an HTTP handler (it exports `wasi:http/incoming-handler` and imports `wasi:http`,
/// which `run` does not serve) is refused as one, even if it also exports `wasi:cli/run` (a Rust
/// binary built for wasm32-wasip2 does); any other component is left to linking, whose message
/// names what is missing. For `serve`: the component must export the handler.
pub fn expect_role(want: Role, engine: &Engine, component: &Component, path: &Path) -> Result<()> {
    let ty = component.component_type();
    let exports: Vec<String> = ty.exports(engine).map(|(name, _)| name.to_string()).collect();
    let is = |role: Role| exports.iter().any(|e| e.starts_with(role.export_prefix()));
    match want {
        Role::Command => {
            let imports_http = ty.imports(engine).any(|(name, _)| name.starts_with("wasi:http/"));
            if is(Role::HttpHandler) && imports_http {
                bail!(
                    "{} is {}, not a command: `filecache run` runs wasi:cli command components and does \
                     not serve wasi:http; serve it with `filecache serve`",
                    path.display(),
                    Role::HttpHandler.describe()
                );
            }
            Ok(())
        }
        Role::HttpHandler if is(Role::HttpHandler) => Ok(()),
        Role::HttpHandler => {
            let needs = "`filecache serve` needs a component that exports wasi:http/incoming-handler@0.2.x \
                         (the wasi:http/proxy world)";
            if is(Role::Command) {
                bail!(
                    "{} is {}, not an HTTP handler: {needs}; run it with `filecache run`",
                    path.display(),
                    Role::Command.describe()
                );
            }
            let list = if exports.is_empty() {
                "nothing".to_string()
            } else {
                exports.join(", ")
            };
            bail!("{} exports {list}: {needs}", path.display())
        }
    }
}
