//! `filecache`: run WebAssembly components with a persistent cache, and look after the cache.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use filecache_host::compiled::{self, CompiledOptions, ComponentCache, IncrementalCache, Source};
use filecache_host::remote::{RemoteOptions, RemoteTier, TieredStore, read_fleet_key};
use filecache_host::size::{format_size, parse_size};
use filecache_host::store::{DEFAULT_NAMESPACE, Progress, validate_namespace_name};
use filecache_host::{Durability, FileCache, FileCacheCtx, FileCacheView, NamespaceOptions};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
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
    /// Compile a component (or core module) into the cache ahead of time, as `run` would
    Compile {
        #[command(flatten)]
        cache: CacheDirArg,
        /// Let Cranelift reuse the compiled code of unchanged functions from the cache
        #[arg(long)]
        incremental: bool,
        /// The component or module (.wasm or .wat)
        component: PathBuf,
    },
    /// Show entries, bytes, hits and misses per namespace (compiled code under .compiled)
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
    /// Compile the component every time instead of loading its compiled code from the cache
    #[arg(long)]
    no_compile_cache: bool,
    /// Let Cranelift reuse the compiled code of unchanged functions from the cache (helps when
    /// a component changes a little between runs)
    #[arg(long)]
    incremental: bool,
    /// Most readers and writers the component may hold open at once
    #[arg(long, value_name = "N", default_value_t = filecache_host::bindings::DEFAULT_MAX_HANDLES)]
    max_handles: usize,
    /// Give the component a host directory, at GUEST (default: the same path)
    #[arg(long = "dir", value_name = "HOST[::GUEST]")]
    dirs: Vec<String>,
    /// Set an environment variable for the component (NAME=VALUE, or NAME to pass this one's)
    #[arg(long = "env", value_name = "NAME[=VALUE]")]
    envs: Vec<String>,
    #[command(flatten)]
    remote: RemoteArgs,
    /// The component (.wasm)
    component: PathBuf,
    /// Arguments for the component
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

#[derive(Args)]
struct RemoteArgs {
    /// Share the cache through a Redis server: local misses are read from it, adds written to it
    #[arg(long, value_name = "redis://HOST:PORT[/DB]")]
    remote: Option<String>,
    /// The fleet key (a file of at least 32 random bytes) that authenticates the host's own
    /// entries (compiled code) in the remote; without it they are neither shared nor accepted
    #[arg(long, value_name = "FILE", requires = "remote")]
    remote_key_file: Option<PathBuf>,
    /// Read from the remote but never write to it
    #[arg(long, requires = "remote")]
    remote_read_only: bool,
    /// Fail (an `io` error to the component) when the remote fails, instead of carrying on locally
    #[arg(long, requires = "remote")]
    remote_required: bool,
}

impl RemoteArgs {
    /// The remote tier asked for, checked; a required one must answer now.
    fn tier(&self) -> Result<Option<RemoteTier>> {
        let Some(url) = &self.remote else { return Ok(None) };
        let mut options = RemoteOptions::new(url.clone());
        options.fleet_key = self.remote_key_file.as_deref().map(read_fleet_key).transpose()?;
        options.read_only = self.remote_read_only;
        options.required = self.remote_required;
        let tier = RemoteTier::new(options)?;
        if self.remote_required {
            tier.ping()
                .map_err(|e| anyhow!("{} (--remote-required)", e.full_message()))?;
        }
        Ok(Some(tier))
    }
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
        Cmd::Compile {
            cache,
            incremental,
            component,
        } => compile(&cache, incremental, &component).map(|()| ExitCode::SUCCESS),
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

/// What a component file holds, from its first bytes.
#[derive(PartialEq)]
enum WasmKind {
    Component,
    CoreModule,
    /// Not binary wasm: maybe text, which the compiler reads or refuses.
    Other,
}

/// Checks that `path` can be read, and what it holds.
fn probe(path: &Path) -> Result<WasmKind> {
    let mut head = [0u8; 8];
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot read component {}", path.display()))?;
    let n = std::io::Read::read(&mut file, &mut head)
        .with_context(|| format!("cannot read component {}", path.display()))?;
    Ok(match (n, &head[..4], &head[4..8]) {
        (8, b"\0asm", [1, 0, 0, 0]) => WasmKind::CoreModule,
        (8, b"\0asm", _) => WasmKind::Component,
        _ => WasmKind::Other,
    })
}

fn not_a_component(path: &Path) -> anyhow::Error {
    anyhow!(
        "{} is a core WebAssembly module, not a component: build it for wasm32-wasip2 \
         (or wrap it with `wasm-tools component new`)",
        path.display()
    )
}

fn invalid_component(path: &Path) -> impl FnOnce(wasmtime::Error) -> anyhow::Error + '_ {
    move |e| anyhow!("{e:?}").context(format!("{} is not a valid WebAssembly component", path.display()))
}

/// The engine `run` and `compile` use: the same configuration, so `compile` warms what `run` loads.
fn engine(cache: Option<&FileCache>, incremental: bool) -> Result<Engine> {
    let mut config = Config::new();
    compiled::configure(&mut config);
    if incremental {
        let cache = cache.expect("incremental compilation needs the cache");
        let store = IncrementalCache::open(cache, INCREMENTAL_QUOTA)
            .map_err(|e| anyhow!("cannot open the incremental-compilation cache: {}", e.full_message()))?;
        config
            .enable_incremental_compilation(store)
            .map_err(|e| anyhow!("{e:#}"))?;
    }
    Engine::new(&config).map_err(|e| anyhow!("{e:#}"))
}

/// Whether `dir` exists but cannot be written: a read-only filesystem or no permission.
fn unwritable_dir(dir: &Path) -> bool {
    dir.is_dir()
        && rustix::fs::access(dir, rustix::fs::Access::WRITE_OK)
            .is_err_and(|e| e == rustix::io::Errno::ROFS || e == rustix::io::Errno::ACCESS)
}

fn with_remote(compiled: ComponentCache, remote: &Option<RemoteTier>) -> ComponentCache {
    match remote {
        Some(r) => compiled.with_remote(r.clone()),
        None => compiled,
    }
}

/// Bytes the incremental-compilation cache may take.
const INCREMENTAL_QUOTA: u64 = 1 << 30;

fn run(args: RunArgs) -> Result<ExitCode> {
    // Check everything the user gave before anything is created.
    validate_namespace_name(&args.namespace)?;
    let dirs = args.dirs.iter().map(|d| parse_dir(d)).collect::<Result<Vec<_>>>()?;
    let cache_dir = args.cache.resolve()?;
    let remote = args.remote.tier()?;
    // A cache directory that cannot be written (a read-only filesystem, no permission) is still
    // used, read-only, with one warning (below).
    let unwritable = unwritable_dir(&cache_dir);
    let defaults = NamespaceOptions::default();
    let options = NamespaceOptions {
        max_entry_size: args.max_entry_size.unwrap_or(defaults.max_entry_size),
        quota: args.quota.unwrap_or(defaults.quota),
        read_only: args.read_only || unwritable,
        durability: if args.durable {
            Durability::Sync
        } else {
            Durability::Relaxed
        },
    };

    if probe(&args.component)? == WasmKind::CoreModule {
        return Err(not_a_component(&args.component));
    }
    // A cache that does not exist yet is created only once the component has proved runnable;
    // its compiled code is stored then.
    let use_cache = !args.no_compile_cache;
    let mut cache = None;
    // (With a remote tier, the compiled code may come from it: the cache is needed first.)
    if use_cache && (cache_dir.is_dir() || args.incremental || remote.is_some()) {
        cache = Some(open_cache(&cache_dir)?);
    }
    // A cache directory that cannot be written (a read-only filesystem, no permission) is still
    // used, read-only, with one warning: stored code is loaded, new code is compiled in memory,
    // and the component's writes answer `read-only`.
    if unwritable {
        tracing::warn!(
            "the cache directory {} cannot be written: using it read-only (new compiled code stays in \
             memory; the component's writes answer read-only)",
            cache_dir.display()
        );
    }
    let compiled_options = CompiledOptions {
        warn_if_degraded: !unwritable,
        ..CompiledOptions::default()
    };
    let engine = if use_cache {
        engine(cache.as_ref(), args.incremental)?
    } else {
        Engine::default()
    };
    let mut compiled_in_memory = None;
    let component = match &cache {
        Some(c) => {
            with_remote(ComponentCache::new(c, &engine, compiled_options), &remote)
                .load_component_file(&args.component)
                .map_err(invalid_component(&args.component))?
                .0
        }
        None => {
            let bytes = std::fs::read(&args.component)
                .with_context(|| format!("cannot read component {}", args.component.display()))?;
            let component = Component::new(&engine, &bytes).map_err(invalid_component(&args.component))?;
            if use_cache {
                compiled_in_memory = Some(bytes);
            }
            component
        }
    };
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

    let cache = match cache {
        Some(c) => c,
        None => open_cache(&cache_dir)?,
    };
    if let Some(bytes) = compiled_in_memory {
        let compiled = with_remote(ComponentCache::new(&cache, &engine, compiled_options), &remote);
        let _ = compiled.insert_component(&bytes, &component);
    }
    let namespace = cache
        .namespace(&args.namespace, options)
        .with_context(|| format!("cannot open namespace {:?} in {}", args.namespace, cache_dir.display()))?;
    let mut cache_ctx = FileCacheCtx::builder();
    match remote {
        Some(remote) => cache_ctx.store(Arc::new(TieredStore::new(namespace, remote))),
        None => cache_ctx.namespace(namespace),
    };
    let host = Host {
        wasi: wasi.build(),
        cache: cache_ctx.max_handles(args.max_handles).build()?,
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

fn compile(cache_arg: &CacheDirArg, incremental: bool, path: &Path) -> Result<()> {
    let kind = probe(path)?;
    let (dir, cache) = cache_arg.open()?;
    let engine = engine(Some(&cache), incremental)?;
    let compiled = ComponentCache::new(&cache, &engine, CompiledOptions::default());
    if !compiled.is_writable() {
        bail!("cannot store compiled code in {}", dir.display());
    }
    let start = std::time::Instant::now();
    let source = if kind == WasmKind::CoreModule {
        compiled
            .load_module_file(path)
            .map_err(|e| anyhow!("{e:?}"))
            .with_context(|| format!("{} is not a valid WebAssembly module", path.display()))?
            .1
    } else {
        compiled.load_component_file(path).map_err(invalid_component(path))?.1
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
    let remote = stats
        .iter()
        .any(|s| s.counts.remote_hits + s.counts.remote_misses + s.counts.remote_errors > 0);
    let mut header = format!(
        "{:<32} {:>10} {:>12} {:>10} {:>10} {:>9}",
        "namespace", "entries", "size", "hits", "misses", "rejected"
    );
    if remote {
        header += &format!(" {:>12} {:>14} {:>14}", "remote hits", "remote misses", "remote errors");
    }
    println!("{header}");
    for s in &stats {
        let c = &s.counts;
        let mut line = format!(
            "{:<32} {:>10} {:>12} {:>10} {:>10} {:>9}",
            s.name,
            s.entries,
            format_size(s.bytes),
            c.hits,
            c.misses,
            c.rejected
        );
        if remote {
            line += &format!(" {:>12} {:>14} {:>14}", c.remote_hits, c.remote_misses, c.remote_errors);
        }
        println!("{line}");
    }
    println!("{:<32} {:>10} {:>12}", "total", entries, format_size(bytes));
    if let Some(c) = stats.iter().find(|s| s.name == compiled::COMPILED_NAMESPACE) {
        println!(
            "compiled code: {} artifacts ({}); {} loads from the cache, {} compiles, {} rejected",
            c.entries,
            format_size(c.bytes),
            c.counts.hits,
            c.counts.misses,
            c.counts.rejected
        );
    }
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
