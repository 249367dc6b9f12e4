//! `filecache run`: run a wasi:cli command component with WASI and the cache linked in.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use filecache_host::compiled::{CompiledOptions, ComponentCache};
use filecache_host::keyvalue::{KeyValueCtx, KeyValueView};
use filecache_host::kv::Bucket;
use filecache_host::remote::{RemoteOptions, RemoteTier, TieredStore, read_fleet_key};
use filecache_host::size::parse_size;
use filecache_host::store::{DEFAULT_NAMESPACE, validate_namespace_name};
use filecache_host::{Durability, FileCacheCtx, FileCacheView, NamespaceOptions};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::p2::bindings::sync::CommandPre;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};

use crate::common::{self, CacheDirArg, WasmArgs, WasmKind, invalid_component, not_a_component, open_cache, probe};

#[derive(Args)]
pub struct RunCommand {
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
    /// Let the component open the namespace NAME as a wasi:keyvalue bucket (`open("NAME")`;
    /// `open("")` is always its own namespace). Repeatable
    #[arg(long = "bucket", value_name = "NAME")]
    buckets: Vec<String>,
    /// Give the component a host directory, at GUEST (default: the same path)
    #[arg(long = "dir", value_name = "HOST[::GUEST]")]
    dirs: Vec<String>,
    /// Set an environment variable for the component (NAME=VALUE, or NAME to pass this one's)
    #[arg(long = "env", value_name = "NAME[=VALUE]")]
    envs: Vec<String>,
    #[command(flatten)]
    wasm: WasmArgs,
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
    /// How long values written to the remote live there (e.g. 30s, 10m, 12h, 7d) [default: until
    /// the server evicts them; run it with maxmemory and maxmemory-policy allkeys-lru]
    #[arg(long, value_name = "DURATION", requires = "remote", value_parser = parse_duration)]
    remote_ttl: Option<Duration>,
}

/// Parses a duration: a whole number with a unit, `ms`, `s`, `m`, `h` or `d`.
fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration: expected a number and a unit, e.g. 30s, 10m, 12h, 7d"))?;
    let millis_per = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{text:?}: unknown unit {unit:?}; use ms, s, m, h or d")),
    };
    let millis = n
        .checked_mul(millis_per)
        .ok_or_else(|| format!("{text:?} is too long"))?;
    if millis == 0 {
        return Err(format!("{text:?}: a TTL must be at least 1ms"));
    }
    Ok(Duration::from_millis(millis))
}

impl RemoteArgs {
    /// The remote tier asked for, checked; a required one must answer now.
    fn tier(&self) -> Result<Option<RemoteTier>> {
        let Some(url) = &self.remote else { return Ok(None) };
        let mut options = RemoteOptions::new(url.clone());
        options.fleet_key = self.remote_key_file.as_deref().map(read_fleet_key).transpose()?;
        options.read_only = self.remote_read_only;
        options.required = self.remote_required;
        options.ttl = self.remote_ttl;
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

/// Whether the component imports any version of `wasi:keyvalue`.
fn imports_keyvalue(engine: &Engine, component: &Component) -> bool {
    component
        .component_type()
        .imports(engine)
        .any(|(name, _)| name.starts_with("wasi:keyvalue/"))
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

/// Whether `dir` exists but cannot be written: a read-only filesystem or no permission.
#[cfg(unix)]
fn unwritable_dir(dir: &Path) -> bool {
    dir.is_dir()
        && rustix::fs::access(dir, rustix::fs::Access::WRITE_OK)
            .is_err_and(|e| e == rustix::io::Errno::ROFS || e == rustix::io::Errno::ACCESS)
}

/// Whether `dir` exists but cannot be written (its read-only attribute; Windows has no cheap
/// equivalent of `access(W_OK)`, and a denied write is reported when it happens).
#[cfg(not(unix))]
fn unwritable_dir(dir: &Path) -> bool {
    std::fs::metadata(dir).is_ok_and(|m| m.is_dir() && m.permissions().readonly())
}

fn with_remote(compiled: ComponentCache, remote: &Option<RemoteTier>) -> Result<ComponentCache> {
    Ok(match remote {
        Some(r) => compiled.with_remote(r.clone())?,
        None => compiled,
    })
}

impl RunCommand {
    pub fn execute(self) -> Result<ExitCode> {
        let args = self;
        // Check everything the user gave before anything is created.
        validate_namespace_name(&args.namespace)?;
        for bucket in &args.buckets {
            validate_namespace_name(bucket).with_context(|| format!("invalid --bucket {bucket:?}"))?;
        }
        let dirs = args.dirs.iter().map(|d| parse_dir(d)).collect::<Result<Vec<_>>>()?;
        let cache_dir = args.cache.resolve()?;
        let remote = args.remote.tier()?;
        // A cache directory that cannot be written (a read-only filesystem, no permission) is still
        // used, read-only, with one warning (below).
        let unwritable = unwritable_dir(&cache_dir);
        let defaults = NamespaceOptions::default();
        let options = defaults
            .max_entry_size(args.max_entry_size.unwrap_or(defaults.max_entry_size))
            .quota(args.quota.unwrap_or(defaults.quota))
            .read_only(args.read_only || unwritable)
            .durability(if args.durable {
                Durability::Sync
            } else {
                Durability::Relaxed
            });

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
        let mut compiled_options = CompiledOptions::default();
        compiled_options.warn_if_degraded = !unwritable;
        let config = common::config(&args.wasm);
        let engine = if use_cache {
            common::engine(config, cache.as_ref(), args.incremental)?
        } else {
            Engine::new(&config).map_err(|e| anyhow!("{e:#}"))?
        };
        let mut compiled_in_memory = None;
        let component = match &cache {
            Some(c) => {
                with_remote(ComponentCache::new(c, &engine, compiled_options), &remote)?
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
        filecache_host::add_to_linker(&mut linker, |h: &mut Host| FileCacheView::new(&h.cache, &mut h.table))?;
        filecache_host::keyvalue::add_to_linker(&mut linker, |h: &mut Host| KeyValueView::new(&h.kv, &mut h.table))?;
        if remote.is_some() && (imports_keyvalue(&engine, &component) || !args.buckets.is_empty()) {
            bail!(
                "{} imports wasi:keyvalue, which --remote does not serve: a key-value bucket is shared \
                 mutable state, and the remote tier is a read-through cache, so buckets behind it would \
                 give stale reads and lost increments across hosts. Run it without --remote",
                args.component.display()
            );
        }
        // Resolve the imports before anything is created, so a component that cannot run changes nothing.
        let pre = linker
            .instantiate_pre(&component)
            .and_then(CommandPre::new)
            .map_err(|e| anyhow!("{e:#}"))
            .with_context(|| {
                format!(
                    "cannot instantiate {}: it must be a wasi:cli command component whose imports are WASI \
                     0.2, filecache:cache/cache and wasi:keyvalue (0.2.0-draft or 0.2.0-draft2)",
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
            let compiled = with_remote(ComponentCache::new(&cache, &engine, compiled_options), &remote)?;
            let _ = compiled.insert_component(&bytes, &component);
        }
        let namespace = cache
            .namespace(&args.namespace, options)
            .with_context(|| format!("cannot open namespace {:?} in {}", args.namespace, cache_dir.display()))?;
        let mut kv = KeyValueCtx::builder().bucket(Bucket::new(namespace.clone()));
        for name in &args.buckets {
            let ns = cache
                .namespace(name, options)
                .with_context(|| format!("cannot open --bucket {name:?} in {}", cache_dir.display()))?;
            kv = kv.grant(name.clone(), Bucket::new(ns));
        }
        let mut cache_ctx = FileCacheCtx::builder();
        match remote {
            Some(remote) => cache_ctx.store(Arc::new(TieredStore::new(namespace, remote)?)),
            None => cache_ctx.namespace(namespace),
        };
        let cache_ctx = cache_ctx.max_handles(args.max_handles).build()?;
        // One handle budget for the instance: cache readers and writers, buckets, cas handles.
        let kv = kv.handle_budget(cache_ctx.handle_budget());
        let host = Host {
            wasi: wasi.build(),
            cache: cache_ctx,
            kv: kv.build(),
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
}
