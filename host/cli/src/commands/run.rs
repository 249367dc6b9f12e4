//! `filecache run`: run a wasi:cli command component with WASI and the cache linked in.
//!
//! [`RunCommand::execute`] is the few steps a run is: the options checked, the engine and the
//! component loaded (and linked), the instance's context made, the component run, its outcome
//! turned into an exit code. What `serve` shares (the options, loading, linking, the storage,
//! the limits) lives in [`super::plugin`] and [`crate::limits`].

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use clap::Args;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::p2::bindings::sync::CommandPre;

use super::plugin::{self, Instance, Loaded, PluginArgs, Role, Storage};
use crate::limits::{Hit, Limits, MemoryLimit};

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

/// One run's store data: the instance's, with nothing added.
pub type Host = Instance;

impl RunCommand {
    pub fn execute(self) -> Result<ExitCode> {
        // Options: everything the user gave is checked before anything is created.
        let path = self.component;
        let args = guest_args(&path, &self.args)?;
        let limits = self.plugin.wasm.limits();
        let mut plugin = self.plugin.check(&path)?;
        // Engine and component, imports resolved: a component that cannot run changes nothing.
        let config = plugin.config();
        let loaded = plugin.load(config, Role::Command)?;
        let pre = link(&loaded, &path)?;
        // Context: the storage (the cache created now if need be) and the instance's store.
        let storage = plugin.open_storage(&loaded)?;
        let mut store = context(&storage, &loaded.engine, &args, &limits)?;
        // Run, and the exit code.
        let outcome = run(&pre, &mut store, &path)?;
        Ok(exit_code(outcome, &path, &limits))
    }
}

/// The guest's arguments: the component's file name, then the arguments given (WASI wants UTF-8).
fn guest_args(path: &Path, args: &[OsString]) -> Result<Vec<String>> {
    let program = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "component".into());
    std::iter::once(Ok(program))
        .chain(args.iter().map(|arg| {
            arg.to_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("argument {arg:?} is not valid UTF-8, which WASI requires"))
        }))
        .collect()
}

/// The linker `run` uses: WASI 0.2, `filecache:cache` and `wasi:keyvalue`, synchronous.
pub fn linker(engine: &Engine) -> Result<Linker<Host>> {
    let mut linker = Linker::<Host>::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    plugin::add_to_linker_sync(&mut linker)?;
    Ok(linker)
}

/// The component's imports resolved against what `run` provides.
fn link(loaded: &Loaded, path: &Path) -> Result<CommandPre<Host>> {
    linker(&loaded.engine)?
        .instantiate_pre(&loaded.component)
        .and_then(CommandPre::new)
        .map_err(|e| anyhow!("{e:#}"))
        .with_context(|| {
            format!(
                "cannot instantiate {}: it must be a wasi:cli command component whose imports are WASI \
                 0.2, filecache:cache/cache and wasi:keyvalue (0.2.0-draft or 0.2.0-draft2)",
                path.display()
            )
        })
}

/// The instance's store: WASI with the process's standard I/O and the arguments, the cache and
/// key-value contexts, and the limits.
fn context(storage: &Storage, engine: &Engine, args: &[String], limits: &Limits) -> Result<Store<Host>> {
    let mut wasi = storage.wasi()?;
    wasi.inherit_stdio().args(args);
    let memory = MemoryLimit {
        max: limits.max_memory_size,
        flag: "-W max-memory-size",
    };
    let host = storage.instance(wasi.build(), ResourceTable::new(), memory, ())?;
    let mut store = Store::new(engine, host);
    store.limiter(|h| &mut h.memory);
    if let Some(fuel) = limits.fuel {
        store.set_fuel(fuel)?;
    }
    if let Some(timeout) = limits.timeout {
        // One tick ends the run: a thread gives it when the time is up (detached: the process
        // does not wait for it).
        store.set_epoch_deadline(1);
        let engine = engine.clone();
        std::thread::Builder::new()
            .name("filecache-timeout".into())
            .spawn(move || {
                std::thread::sleep(timeout);
                engine.increment_epoch();
            })
            .context("cannot start the -W timeout thread")?;
    }
    Ok(store)
}

/// Instantiates the component and calls its `wasi:cli/run`: the run's outcome, or an error if it
/// could not be instantiated (but a limit hit while instantiating is the run's outcome).
fn run(pre: &CommandPre<Host>, store: &mut Store<Host>, path: &Path) -> Result<wasmtime::Result<Result<(), ()>>> {
    let command = match pre.instantiate(&mut *store) {
        Ok(command) => command,
        Err(e) if Hit::of(&e).is_some() => return Ok(Err(e)),
        Err(e) => return Err(anyhow!("{e:#}").context(format!("cannot instantiate {}", path.display()))),
    };
    Ok(command.wasi_cli_run().call_run(&mut *store))
}

/// The exit code of a run: the component's own (`exit(N)`, or 1 for `run` returning an error),
/// or, as wasmtime does, 134 (an abort) for a trap, said on stderr, naming the limit when one
/// stopped it.
fn exit_code(outcome: wasmtime::Result<Result<(), ()>>, path: &Path, limits: &Limits) -> ExitCode {
    let e = match outcome {
        Ok(Ok(())) => return ExitCode::SUCCESS,
        Ok(Err(())) => return ExitCode::FAILURE,
        Err(e) => e,
    };
    if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
        // Exit codes outside 0..=255 are truncated by the OS anyway.
        return ExitCode::from(exit.0 as u8);
    }
    match Hit::of(&e) {
        Some(Hit::Memory(m)) => eprintln!("error: {} was stopped: it {m}", path.display()),
        Some(Hit::Timeout) => eprintln!(
            "error: {} was stopped: it ran longer than -W timeout ({:?})",
            path.display(),
            limits.timeout.unwrap_or_default()
        ),
        Some(Hit::Fuel) => eprintln!(
            "error: {} was stopped: it used up its fuel (-W fuel={}); give it more with -W fuel=N",
            path.display(),
            limits.fuel.unwrap_or_default()
        ),
        None => eprintln!("error: {} failed: {e:?}", path.display()),
    }
    ExitCode::from(134)
}
