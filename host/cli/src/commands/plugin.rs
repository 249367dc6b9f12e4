//! What `run` and `serve` share: the options that say what a plugin gets (its namespace, limits,
//! buckets, directories, environment, the remote tier, the compiled cache), and the one piece of
//! code that turns them into an engine, a loaded component and per-instance contexts.
//!
//! The order matters and is the same for both commands: everything the user gave is checked
//! before anything is created ([`PluginArgs::check`]); the component is loaded (from the
//! compiled cache when it exists) and its imports resolved ([`Plugin::load`], then the caller's
//! `instantiate_pre`); only then is the cache created and the namespace opened
//! ([`Plugin::open_storage`]), so a component that cannot run changes nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use filecache_host::compiled::{CompiledOptions, ComponentCache};
use filecache_host::keyvalue::{KeyValueCtx, KeyValueView};
use filecache_host::kv::{Bucket, RedisEngine};
use filecache_host::remote::{RemoteOptions, RemoteTier, TieredStore, read_fleet_key};
use filecache_host::size::parse_size;
use filecache_host::store::{DEFAULT_NAMESPACE, validate_namespace_name};
use filecache_host::{Durability, EntryStore, FileCache, FileCacheCtx, FileCacheView, Namespace, NamespaceOptions};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::common::{self, CacheDirArg, WasmArgs, WasmKind, invalid_component, not_a_component, open_cache, probe};

/// The storage, sandbox and engine options of `run` and `serve`.
#[derive(Args)]
pub struct PluginArgs {
    #[command(flatten)]
    cache: CacheDirArg,
    /// The namespace the component gets: 1-64 characters of [a-z0-9._-], not starting with '.'
    #[arg(long, value_name = "NAME", default_value = DEFAULT_NAMESPACE)]
    namespace: String,
    /// The largest entry the component may store [default: 64MiB]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_entry_size: Option<u64>,
    /// What the namespace may take, counted as on disk: each cache entry its file rounded up to
    /// 4KiB (so an empty one costs 4KiB), key-value data its keys' and values' bytes. Least
    /// recently used cache entries are evicted to make room; key-value data never is
    /// [default: 1GiB]
    #[arg(long, value_name = "SIZE", value_parser = parse_quota, allow_hyphen_values = true)]
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
    pub wasm: WasmArgs,
    #[command(flatten)]
    remote: RemoteArgs,
}

#[derive(Args)]
struct RemoteArgs {
    /// Share the cache through a Redis server: local misses are read from it, adds written to it;
    /// wasi:keyvalue buckets live on it (shared by every host, never copied locally)
    #[arg(long, value_name = "redis://HOST:PORT[/DB]")]
    remote: Option<String>,
    /// The fleet key, a file of at least 32 random bytes, the same on every host: every value
    /// this host publishes, of every namespace, and every key-value value carries an HMAC under
    /// it, and a value without a valid one is rejected. Compiled code is shared only under a fleet
    /// key; without one, plugin entries are checked only as local entries are (checksum, key, length)
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

/// Parses `--quota`: a size, at least 1 byte.
fn parse_quota(text: &str) -> std::result::Result<u64, String> {
    if text.trim_start().starts_with('-') {
        return Err(format!(
            "{text:?}: a quota cannot be negative; give the most the namespace may take, e.g. 256MiB \
             or 10GiB (without --quota: 1GiB)"
        ));
    }
    match parse_size(text)? {
        0 => Err(
            "0 would let the component store nothing (every write answers quota-exceeded); to forbid \
                  writes use --read-only, else give a size such as 64MiB"
                .into(),
        ),
        n => Ok(n),
    }
}

/// Parses a duration: a whole number with a unit, `ms`, `s`, `m`, `h` or `d`.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
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
        return Err(format!("{text:?}: a duration must be at least 1ms"));
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

/// Resolves `--env NAME[=VALUE]`.
fn parse_env(spec: &str) -> Result<(String, String)> {
    match spec.split_once('=') {
        Some((k, v)) => Ok((k.to_string(), v.to_string())),
        None => match std::env::var(spec) {
            Ok(v) => Ok((spec.to_string(), v)),
            Err(_) => bail!("--env {spec}: no such variable in this environment"),
        },
    }
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

/// The options, checked; nothing created yet.
pub struct Plugin {
    args: PluginArgs,
    component_path: PathBuf,
    cache_dir: PathBuf,
    remote: Option<RemoteTier>,
    unwritable: bool,
    options: NamespaceOptions,
    dirs: Vec<(PathBuf, String)>,
    envs: Vec<(String, String)>,
    /// The cache, once opened (before loading the component when it exists already).
    cache: Option<FileCache>,
    compiled_options: CompiledOptions,
    /// A component compiled in memory because the cache did not exist yet: its bytes, stored
    /// into the cache once the component has proved runnable.
    compiled_in_memory: Option<Vec<u8>>,
}

/// The engine and the component, loaded.
pub struct Loaded {
    pub engine: Engine,
    pub component: Component,
}

impl PluginArgs {
    /// Checks everything the user gave, before anything is created: names, directories,
    /// environment, the cache directory, the remote tier; and that `component` is readable and
    /// not a core module.
    pub fn check(self, component: &Path) -> Result<Plugin> {
        validate_namespace_name(&self.namespace)?;
        for bucket in &self.buckets {
            validate_namespace_name(bucket).with_context(|| format!("invalid --bucket {bucket:?}"))?;
        }
        let dirs = self.dirs.iter().map(|d| parse_dir(d)).collect::<Result<Vec<_>>>()?;
        let envs = self.envs.iter().map(|e| parse_env(e)).collect::<Result<Vec<_>>>()?;
        let cache_dir = self.cache.resolve()?;
        let remote = self.remote.tier()?;
        // A cache directory that cannot be written (a read-only filesystem, no permission) is still
        // used, read-only, with one warning (in `load`).
        let unwritable = unwritable_dir(&cache_dir);
        let defaults = NamespaceOptions::default();
        let options = defaults
            .max_entry_size(self.max_entry_size.unwrap_or(defaults.max_entry_size))
            .quota(self.quota.unwrap_or(defaults.quota))
            .read_only(self.read_only || unwritable)
            .durability(if self.durable {
                Durability::Sync
            } else {
                Durability::Relaxed
            });
        if probe(component)? == WasmKind::CoreModule {
            return Err(not_a_component(component));
        }
        let mut compiled_options = CompiledOptions::default();
        compiled_options.warn_if_degraded = !unwritable;
        Ok(Plugin {
            args: self,
            component_path: component.to_path_buf(),
            cache_dir,
            remote,
            unwritable,
            options,
            dirs,
            envs,
            cache: None,
            compiled_options,
            compiled_in_memory: None,
        })
    }
}

fn with_remote(compiled: ComponentCache, remote: &Option<RemoteTier>) -> Result<ComponentCache> {
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

    /// Creates the cache if it does not exist yet (storing the component's code compiled in
    /// memory), and opens the namespace and the granted buckets: call it once the component's
    /// imports are resolved.
    pub fn open_storage(mut self, loaded: &Loaded) -> Result<Storage> {
        let cache = match self.cache.take() {
            Some(c) => c,
            None => open_cache(&self.cache_dir)?,
        };
        if let Some(bytes) = self.compiled_in_memory.take() {
            let compiled = with_remote(
                ComponentCache::new(&cache, &loaded.engine, self.compiled_options),
                &self.remote,
            )?;
            let _ = compiled.insert(&bytes, &loaded.component);
        }
        let namespace = cache.namespace(&self.args.namespace, self.options).with_context(|| {
            format!(
                "cannot open namespace {:?} in {}",
                self.args.namespace,
                self.cache_dir.display()
            )
        })?;
        // With --remote, buckets live on the server, shared by every host, never copied here.
        let bucket = |name: &str, ns: &Namespace| -> Result<Bucket> {
            Ok(match &self.remote {
                Some(remote) => Bucket::from_engine(Arc::new(RedisEngine::new(remote.clone(), name, &self.options)?)),
                None => Bucket::new(ns.clone()),
            })
        };
        let own = bucket(&self.args.namespace, &namespace)?;
        let mut granted = Vec::new();
        for name in &self.args.buckets {
            let ns = cache
                .namespace(name, self.options)
                .with_context(|| format!("cannot open --bucket {name:?} in {}", self.cache_dir.display()))?;
            granted.push((name.clone(), ns.clone(), bucket(name, &ns)?));
        }
        let store: Arc<dyn EntryStore> = match self.remote {
            Some(remote) => Arc::new(TieredStore::new(namespace.clone(), remote)?),
            None => Arc::new(namespace.clone()),
        };
        Ok(Storage {
            own,
            namespace,
            granted,
            store,
            max_handles: self.args.max_handles,
            dirs: self.dirs,
            envs: self.envs,
        })
    }
}

/// The opened storage a plugin instance gets: made once, and a context for each instance made
/// from it cheaply (`serve` makes one per request).
pub struct Storage {
    namespace: Namespace,
    own: Bucket,
    granted: Vec<(String, Namespace, Bucket)>,
    store: Arc<dyn EntryStore>,
    max_handles: usize,
    dirs: Vec<(PathBuf, String)>,
    envs: Vec<(String, String)>,
}

impl Storage {
    /// A `filecache:cache` context for one instance: its own handle budget over the shared store.
    pub fn cache_ctx(&self) -> Result<FileCacheCtx> {
        Ok(FileCacheCtx::builder()
            .store(Arc::clone(&self.store))
            .max_handles(self.max_handles)
            .build()?)
    }

    /// A `wasi:keyvalue` context for one instance: its own bucket and the granted ones, drawing
    /// on the handle budget of the instance's `cache` context (one budget for cache readers and
    /// writers, buckets and cas handles).
    pub fn kv_ctx(&self, cache: &FileCacheCtx) -> KeyValueCtx {
        let mut kv = KeyValueCtx::builder().bucket(self.own.clone());
        for (name, _, bucket) in &self.granted {
            kv = kv.grant(name.clone(), bucket.clone());
        }
        kv.handle_budget(cache.handle_budget()).build()
    }

    /// The plugin's namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// The namespaces of the granted buckets.
    pub fn bucket_namespaces(&self) -> impl Iterator<Item = &Namespace> {
        self.granted.iter().map(|(_, ns, _)| ns)
    }

    /// A WASI context builder for one instance, with the `--env` variables and `--dir`
    /// directories (the caller adds arguments and standard I/O).
    pub fn wasi(&self) -> Result<WasiCtxBuilder> {
        let mut wasi = WasiCtxBuilder::new();
        for (k, v) in &self.envs {
            wasi.env(k, v);
        }
        for (host, guest) in &self.dirs {
            wasi.preopened_dir(host, guest, FsPerms::ReadWrite)
                .map_err(|e| anyhow!("cannot open --dir {}: {e:#}", host.display()))?;
        }
        Ok(wasi)
    }
}

/// What every plugin instance's store data gives the cache and key-value bindings.
pub trait PluginView: Send + 'static {
    fn cache(&mut self) -> FileCacheView<'_>;
    fn kv(&mut self) -> KeyValueView<'_>;
}

/// Links `filecache:cache` and `wasi:keyvalue` (both drafts), synchronous, as `run` calls them.
pub fn add_to_linker_sync<T: PluginView>(linker: &mut Linker<T>) -> Result<()> {
    filecache_host::add_to_linker(linker, T::cache)?;
    filecache_host::keyvalue::add_to_linker(linker, T::kv)?;
    Ok(())
}

/// Links `filecache:cache` and `wasi:keyvalue` (both drafts), asynchronous, as `serve` calls
/// them.
pub fn add_to_linker_async<T: PluginView>(linker: &mut Linker<T>) -> Result<()> {
    filecache_host::add_to_linker_async(linker, T::cache)?;
    filecache_host::keyvalue::add_to_linker_async(linker, T::kv)?;
    Ok(())
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
