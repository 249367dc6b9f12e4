//! `filecache run`: run a wasi:cli command component with WASI and the cache linked in.
//!
//! [`RunCommand::execute`] is the few steps a run is: the options checked, the engine and the
//! component loaded (and linked), the instance's context made, the component run, its outcome
//! turned into an exit code. What `serve` shares (the options, loading, linking, the storage,
//! the limits) lives in [`super::plugin`] and [`crate::limits`].

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use clap::Args;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::p2::bindings::CommandPre;

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
        let store = context(&storage, &loaded.engine, &args, &limits)?;
        // Run, and the exit code. The guest is called through wasmtime's async API, as `wasmtime
        // run` calls it, so that `-W timeout` also ends a run waiting in a WASI call.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the tokio runtime")?;
        let outcome = runtime.block_on(run(&pre, store, &path, limits.timeout))?;
        let timed_out = matches!(&outcome, Err(e) if matches!(Hit::of(e), Some(Hit::Timeout)));
        let code = exit_code(outcome, &path, &limits);
        if timed_out {
            // The instance is gone (its uncommitted cache writers discarded; no store call was
            // under way: they run on this thread, and the timer fires only while the guest waits
            // in WASI); WASI work already on a blocking thread gets a moment to finish. The
            // storage is then dropped as after any run, which flushes the namespace's counters.
            runtime.shutdown_timeout(plugin::BLOCKING_WORK_GRACE);
        }
        Ok(code)
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

/// The linker `run` uses: WASI 0.2 asynchronous, so that a guest waiting in it (a sleep, a poll,
/// a read of stdin) can be stopped by `-W timeout`; `filecache:cache` and `wasi:keyvalue`
/// synchronous, their store work on the calling thread (a run is one instance: handing each call
/// to tokio's blocking pool, as `serve` must, made a run of 20,000 cache misses 3.9x slower).
pub fn linker(engine: &Engine) -> Result<Linker<Host>> {
    let mut linker = Linker::<Host>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
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
        // One tick ends the run's WebAssembly code: a thread gives it when the time is up
        // (detached: the process does not wait for it). A run waiting in a host call is ended
        // by the timer in `run`.
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

/// Instantiates the component and calls its `wasi:cli/run`, within `timeout` if there is one: the
/// run's outcome, or an error if it could not be instantiated (but a limit hit while
/// instantiating is the run's outcome).
///
/// The epoch ends WebAssembly code that runs past the timeout; the timer ends a run waiting in a
/// WASI call (a sleep, a poll, a read of stdin), as `wasmtime run` does: the call's future is
/// dropped, which unwinds the guest, and the instance with it. Either way the outcome is the same
/// interrupt, said the same way. (A cache or key-value call is synchronous: it returns, bounded by
/// the disk and the remote tier's own timeouts, before either can stop the guest.)
async fn run(
    pre: &CommandPre<Host>,
    mut store: Store<Host>,
    path: &Path,
    timeout: Option<Duration>,
) -> Result<wasmtime::Result<Result<(), ()>>> {
    let call = async {
        let command = match pre.instantiate_async(&mut store).await {
            Ok(command) => command,
            Err(e) if Hit::of(&e).is_some() => return Ok(Err(e)),
            Err(e) => return Err(anyhow!("{e:#}").context(format!("cannot instantiate {}", path.display()))),
        };
        Ok(command.wasi_cli_run().call_run(&mut store).await)
    };
    let outcome = match timeout {
        Some(timeout) => tokio::time::timeout(timeout, call)
            .await
            .unwrap_or_else(|_| Ok(Err(wasmtime::Trap::Interrupt.into()))),
        None => call.await,
    };
    // The instance goes here, inside the runtime that its pending host calls were made on.
    drop(store);
    outcome
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
