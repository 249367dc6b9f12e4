//! The options of `run` and `serve` that say what a plugin gets, their parsers, and
//! [`PluginArgs::check`], which checks them all before anything is created.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use filecache_host::compiled::CompiledOptions;
use filecache_host::remote::{DEFAULT_TIMEOUT, RemoteOptions, RemoteTier, read_fleet_key};
use filecache_host::size::parse_size;
use filecache_host::store::{DEFAULT_NAMESPACE, validate_namespace_name};
use filecache_host::{Durability, NamespaceOptions};

use super::Plugin;
use crate::common::{CacheDirArg, WasmArgs, WasmKind, not_a_component, probe};

/// The storage, sandbox and engine options of `run` and `serve`.
#[derive(Args)]
pub struct PluginArgs {
    #[command(flatten)]
    cache: CacheDirArg,
    /// The namespace the component gets: 1-64 characters of [a-z0-9._-], not starting with '.'
    #[arg(long, value_name = "NAME", default_value = DEFAULT_NAMESPACE)]
    pub(super) namespace: String,
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
    pub(super) no_compile_cache: bool,
    /// Let Cranelift reuse the compiled code of unchanged functions from the cache (helps when
    /// a component changes a little between runs)
    #[arg(long)]
    pub(super) incremental: bool,
    /// Most readers and writers the component may hold open at once
    #[arg(long, value_name = "N", default_value_t = filecache_host::bindings::DEFAULT_MAX_HANDLES)]
    pub(super) max_handles: usize,
    /// Let the component open the namespace NAME as a wasi:keyvalue bucket (`open("NAME")`;
    /// `open("")` is always its own namespace). Repeatable
    #[arg(long = "bucket", value_name = "NAME")]
    pub(super) buckets: Vec<String>,
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
    /// How long connecting to the remote, and then each operation on it, may take before it
    /// fails (e.g. 200ms, 2s): a cache operation then carries on locally (an `io` error with
    /// --remote-required), a key-value call answers `other` [default: 500ms]
    #[arg(long, value_name = "DURATION", requires = "remote", value_parser = parse_remote_timeout)]
    remote_timeout: Option<Duration>,
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

/// Parses `--remote-timeout`: a duration (as `--remote-ttl`), at least 1 ms.
pub fn parse_remote_timeout(text: &str) -> std::result::Result<Duration, String> {
    let number = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    if !number.is_empty() && number.bytes().all(|b| b == b'0') {
        return Err(format!(
            "{text:?}: a timeout of 0 would fail every remote operation before it is sent; give how long \
             one may take, e.g. 200ms or 2s (without --remote-timeout: {}ms)",
            DEFAULT_TIMEOUT.as_millis()
        ));
    }
    parse_duration(text)
}

/// The options of the remote at `url` with `--remote-key-file` and `--remote-timeout` applied:
/// what `run`, `serve`, `kv --remote` and `stats --remote` connect with (the timeout is both the
/// connect and the per-operation one).
pub fn remote_options(url: &str, key_file: Option<&Path>, timeout: Option<Duration>) -> Result<RemoteOptions> {
    let mut options = RemoteOptions::new(url);
    options.fleet_key = key_file.map(read_fleet_key).transpose()?;
    if let Some(timeout) = timeout {
        options.connect_timeout = timeout;
        options.op_timeout = timeout;
    }
    Ok(options)
}

impl RemoteArgs {
    /// The remote tier asked for, checked; a required one must answer now.
    fn tier(&self) -> Result<Option<RemoteTier>> {
        let Some(url) = &self.remote else { return Ok(None) };
        let mut options = remote_options(url, self.remote_key_file.as_deref(), self.remote_timeout)?;
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
