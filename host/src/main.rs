//! `filecache`: run WebAssembly components with a persistent cache, and look after the cache.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use filecache_host::size::{format_size, parse_size};
use filecache_host::store::{DEFAULT_NAMESPACE, Progress, validate_namespace_name};
use filecache_host::{Durability, FileCache, FileCacheCtx, FileCacheView, NamespaceOptions};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::p2::bindings::sync::CommandPre;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};

/// Run WebAssembly components with a persistent, sandboxed cache.
///
/// A component that imports `filecache:cache/cache` gets a namespace of the cache and nothing
/// else of the filesystem (beyond the directories given with --dir).
#[derive(Parser)]
#[command(name = "filecache", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a wasi:cli command component with WASI and the cache linked in
    Run(RunArgs),
    /// Show entries and bytes per namespace
    Stats {
        #[command(flatten)]
        cache: CacheDirArg,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Evict least recently used entries until the cache is at most SIZE; reclaim temporary files
    Gc {
        #[command(flatten)]
        cache: CacheDirArg,
        /// The size to get under, e.g. 512MiB
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        max_size: u64,
    },
    /// Check every entry and remove the ones that fail
    Verify {
        #[command(flatten)]
        cache: CacheDirArg,
    },
    /// Remove all entries, of one namespace or of all
    Clear {
        #[command(flatten)]
        cache: CacheDirArg,
        /// Only this namespace
        #[arg(long, value_name = "NAME")]
        namespace: Option<String>,
    },
}

#[derive(Args)]
struct CacheDirArg {
    /// The cache directory [default: $FILECACHE_DIR, else the platform's cache directory]
    #[arg(long, value_name = "DIR", env = "FILECACHE_DIR", hide_env = true)]
    cache_dir: Option<PathBuf>,
}

impl CacheDirArg {
    fn resolve(&self) -> Result<PathBuf> {
        match &self.cache_dir {
            Some(dir) if dir.as_os_str().is_empty() => {
                bail!("the cache directory is empty: give a path with --cache-dir")
            }
            Some(dir) => Ok(dir.clone()),
            None => dirs::cache_dir().map(|d| d.join("filecache")).ok_or_else(|| {
                anyhow!("no cache directory: this platform has none; set FILECACHE_DIR or pass --cache-dir")
            }),
        }
    }

    fn open(&self) -> Result<(PathBuf, FileCache)> {
        let dir = self.resolve()?;
        let cache = open_cache(&dir)?;
        Ok((dir, cache))
    }
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    cache: CacheDirArg,
    /// The namespace the component gets: 1-64 characters of [a-z0-9._-], not starting with '.'
    #[arg(long, value_name = "NAME", default_value = DEFAULT_NAMESPACE)]
    namespace: String,
    /// The largest entry the component may store [default: 64MiB]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_entry_size: Option<u64>,
    /// Bytes on disk the namespace may take; least recently used entries are evicted [default: 1GiB]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    quota: Option<u64>,
    /// The component may read the cache but not write to it
    #[arg(long)]
    read_only: bool,
    /// fsync each entry and its directory before it becomes visible
    #[arg(long)]
    durable: bool,
    /// Most readers and writers the component may hold open at once
    #[arg(long, value_name = "N", default_value_t = filecache_host::bindings::DEFAULT_MAX_HANDLES)]
    max_handles: usize,
    /// Give the component a host directory, at GUEST (default: the same path)
    #[arg(long = "dir", value_name = "HOST[::GUEST]")]
    dirs: Vec<String>,
    /// Set an environment variable for the component (NAME=VALUE, or NAME to pass this one's)
    #[arg(long = "env", value_name = "NAME[=VALUE]")]
    envs: Vec<String>,
    /// The component (.wasm)
    component: PathBuf,
    /// Arguments for the component
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

struct Host {
    wasi: WasiCtx,
    cache: FileCacheCtx,
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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("FILECACHE_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Run(args) => run(args),
        Cmd::Stats { cache, json } => stats(&cache, json).map(|()| ExitCode::SUCCESS),
        Cmd::Gc { cache, max_size } => gc(&cache, max_size).map(|()| ExitCode::SUCCESS),
        Cmd::Verify { cache } => verify(&cache).map(|()| ExitCode::SUCCESS),
        Cmd::Clear { cache, namespace } => clear(&cache, namespace.as_deref()).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn open_cache(dir: &Path) -> Result<FileCache> {
    FileCache::open(dir).map_err(|e| anyhow!("{} (use another with --cache-dir or FILECACHE_DIR)", e.full_message()))
}

/// Splits `HOST[::GUEST]`.
fn parse_dir(spec: &str) -> Result<(PathBuf, String)> {
    let (host, guest) = match spec.split_once("::") {
        Some((h, g)) => (h, g.to_string()),
        None => (spec, spec.to_string()),
    };
    if host.is_empty() || guest.is_empty() {
        bail!("invalid --dir {spec:?}: expected HOST or HOST::GUEST");
    }
    let host = PathBuf::from(host);
    if !host.is_dir() {
        bail!("invalid --dir {spec:?}: {} is not a directory", host.display());
    }
    Ok((host, guest))
}

fn load_component(engine: &Engine, path: &Path) -> Result<Component> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read component {}", path.display()))?;
    if bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[4..8] == [1, 0, 0, 0] {
        bail!(
            "{} is a core WebAssembly module, not a component: build it for wasm32-wasip2 \
             (or wrap it with `wasm-tools component new`)",
            path.display()
        );
    }
    Component::from_binary(engine, &bytes)
        .map_err(|e| anyhow!("{e:?}"))
        .with_context(|| format!("{} is not a valid WebAssembly component", path.display()))
}

fn run(args: RunArgs) -> Result<ExitCode> {
    // Check everything the user gave before anything is created.
    validate_namespace_name(&args.namespace)?;
    let dirs = args.dirs.iter().map(|d| parse_dir(d)).collect::<Result<Vec<_>>>()?;
    let cache_dir = args.cache.resolve()?;
    let defaults = NamespaceOptions::default();
    let options = NamespaceOptions {
        max_entry_size: args.max_entry_size.unwrap_or(defaults.max_entry_size),
        quota: args.quota.unwrap_or(defaults.quota),
        read_only: args.read_only,
        durability: if args.durable {
            Durability::Sync
        } else {
            Durability::Relaxed
        },
    };

    let engine = Engine::default();
    let component = load_component(&engine, &args.component)?;
    let mut linker = Linker::<Host>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    filecache_host::add_to_linker(&mut linker, |h: &mut Host| {
        FileCacheView::new(&mut h.cache, &mut h.table)
    })?;
    // Resolve the imports before anything is created, so a component that cannot run changes nothing.
    let pre = linker
        .instantiate_pre(&component)
        .and_then(CommandPre::new)
        .map_err(|e| anyhow!("{e:#}"))
        .with_context(|| {
            format!(
                "cannot instantiate {}: it must be a wasi:cli command component whose imports are WASI \
                 0.2 and filecache:cache/cache",
                args.component.display()
            )
        })?;

    let mut wasi = WasiCtx::builder();
    wasi.inherit_stdio();
    let program = args
        .component
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "component".into());
    wasi.arg(program);
    for arg in &args.args {
        let arg = arg
            .to_str()
            .ok_or_else(|| anyhow!("argument {arg:?} is not valid UTF-8, which WASI requires"))?;
        wasi.arg(arg);
    }
    for env in &args.envs {
        match env.split_once('=') {
            Some((k, v)) => wasi.env(k, v),
            None => match std::env::var(env) {
                Ok(v) => wasi.env(env, v),
                Err(_) => bail!("--env {env}: no such variable in this environment"),
            },
        };
    }
    for (host, guest) in &dirs {
        wasi.preopened_dir(host, guest, FsPerms::ReadWrite)
            .map_err(|e| anyhow!("cannot open --dir {}: {e:#}", host.display()))?;
    }

    let cache = open_cache(&cache_dir)?;
    let namespace = cache
        .namespace(&args.namespace, options)
        .with_context(|| format!("cannot open namespace {:?} in {}", args.namespace, cache_dir.display()))?;
    let host = Host {
        wasi: wasi.build(),
        cache: FileCacheCtx::builder()
            .namespace(namespace)
            .max_handles(args.max_handles)
            .build()?,
        table: ResourceTable::new(),
    };
    let mut store = Store::new(&engine, host);
    let command = pre
        .instantiate(&mut store)
        .map_err(|e| anyhow!("{e:#}"))
        .with_context(|| format!("cannot instantiate {}", args.component.display()))?;
    match command.wasi_cli_run().call_run(&mut store) {
        Ok(Ok(())) => Ok(ExitCode::SUCCESS),
        Ok(Err(())) => Ok(ExitCode::FAILURE),
        Err(e) => {
            if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
                // Exit codes outside 0..=255 are truncated by the OS anyway.
                return Ok(ExitCode::from(exit.0 as u8));
            }
            eprintln!("error: {} failed: {e:?}", args.component.display());
            // As wasmtime does: a trap exits like an abort.
            Ok(ExitCode::from(134))
        }
    }
}

fn progress_bar(what: &'static str) -> impl FnMut(Progress) {
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta})")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_message(what);
        bar
    });
    move |p: Progress| {
        if let Some(bar) = &bar {
            bar.set_length(p.total);
            bar.set_position(p.done);
            if p.done == p.total {
                bar.finish_and_clear();
            }
        }
    }
}

fn stats(cache: &CacheDirArg, json: bool) -> Result<()> {
    let (dir, cache) = cache.open()?;
    let stats = cache.stats()?;
    let (entries, bytes) = stats.iter().fold((0, 0), |(e, b), s| (e + s.entries, b + s.bytes));
    if json {
        let out = serde_json::json!({
            "cache_dir": dir,
            "namespaces": stats,
            "total": { "entries": entries, "bytes": bytes },
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("cache directory: {}", dir.display());
    println!("{:<32} {:>10} {:>12}", "namespace", "entries", "size");
    for s in &stats {
        println!("{:<32} {:>10} {:>12}", s.name, s.entries, format_size(s.bytes));
    }
    println!("{:<32} {:>10} {:>12}", "total", entries, format_size(bytes));
    Ok(())
}

fn gc(cache: &CacheDirArg, max_size: u64) -> Result<()> {
    let (_, cache) = cache.open()?;
    let report = cache.gc(max_size, &mut progress_bar("gc"))?;
    println!(
        "removed {} entries ({}); {} remain; reclaimed {} temporary files",
        report.removed_entries,
        format_size(report.removed_bytes),
        format_size(report.remaining_bytes),
        report.temporary_files
    );
    Ok(())
}

fn verify(cache: &CacheDirArg) -> Result<()> {
    let (_, cache) = cache.open()?;
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

fn clear(cache: &CacheDirArg, namespace: Option<&str>) -> Result<()> {
    let (_, cache) = cache.open()?;
    let removed = cache.clear(namespace)?;
    match namespace {
        Some(ns) => println!("removed {removed} entries from namespace {ns}"),
        None => println!("removed {removed} entries"),
    }
    Ok(())
}
