//! What several subcommands share: the cache directory argument, the engine's configuration,
//! reading a component, progress bars.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use filecache_host::FileCache;
use filecache_host::compiled::IncrementalCache;
use filecache_host::store::{Progress, validate_namespace_name};
use wasmtime::{Config, Engine};

use crate::limits::Limits;
use crate::wasm_features::{self, WasmOption};

#[derive(Args)]
pub struct CacheDirArg {
    /// The cache directory [default: $FILECACHE_DIR, else the platform's cache directory]
    #[arg(long, value_name = "DIR", env = "FILECACHE_DIR", hide_env = true)]
    cache_dir: Option<PathBuf>,
}

impl CacheDirArg {
    pub fn resolve(&self) -> Result<PathBuf> {
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

    pub fn open(&self) -> Result<(PathBuf, FileCache)> {
        let dir = self.resolve()?;
        let cache = open_cache(&dir)?;
        Ok((dir, cache))
    }

    /// Opens the cache for a command that only looks (or removes): one that does not exist is an
    /// error that says so, and nothing is created (no directory, no `CACHEDIR.TAG`).
    pub fn open_existing(&self) -> Result<(PathBuf, FileCache)> {
        let dir = self.resolve()?;
        match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => bail!(
                "{} is not a directory: give the cache directory with --cache-dir or FILECACHE_DIR",
                dir.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "there is no cache at {}: nothing has been stored there (give the cache directory with \
                 --cache-dir or FILECACHE_DIR)",
                dir.display()
            ),
            Err(e) => bail!("cannot open cache directory {}: {e}", dir.display()),
        }
        let root = cap_std::fs::Dir::open_ambient_dir(&dir, cap_std::ambient_authority())
            .with_context(|| format!("cannot open cache directory {}", dir.display()))?;
        Ok((dir, FileCache::from_dir(root)))
    }

    /// Whether the cache directory and its namespace `name` exist (checked without creating
    /// either; a bad name is an error).
    pub fn exists_namespace(&self, name: &str) -> Result<bool> {
        validate_namespace_name(name)?;
        Ok(self.resolve()?.join(name).is_dir())
    }
}

/// Refuses a namespace that does not exist (a typo, most likely) with a message that lists the
/// ones that do; creates nothing.
pub fn require_namespace(cache: &FileCache, dir: &Path, name: &str) -> Result<()> {
    if !name.starts_with('.') {
        validate_namespace_name(name)?;
    }
    let names = cache.namespace_names()?;
    if names.iter().any(|n| n == name) {
        return Ok(());
    }
    let present: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| validate_namespace_name(n).is_ok())
        .collect();
    let present = if present.is_empty() {
        "it has none".to_string()
    } else {
        format!("it has {}", present.join(", "))
    };
    bail!("there is no namespace {name:?} in {} ({present})", dir.display())
}

/// `-W`: the engine's WebAssembly features, shared by `run` and `compile` so that `compile`
/// warms exactly what `run` loads.
#[derive(Args, Clone, Default)]
pub struct WasmArgs {
    /// Limits of a run and WebAssembly features, as wasmtime's CLI takes them: -W
    /// max-memory-size=SIZE, -W timeout=DURATION, -W fuel=N; -W NAME[=y|n] switches a feature on
    /// or off (the defaults are wasmtime's). `-W help` lists them all
    #[arg(short = 'W', long = "wasm", value_name = "OPT[=VALUE]", value_parser = wasm_features::parse)]
    pub options: Vec<Vec<WasmOption>>,
}

impl WasmArgs {
    pub fn options(&self) -> Vec<WasmOption> {
        self.options.iter().flatten().cloned().collect()
    }

    /// The limits of a run given with `-W`.
    pub fn limits(&self) -> Limits {
        wasm_features::limits(&self.options())
    }
}

pub fn open_cache(dir: &Path) -> Result<FileCache> {
    FileCache::open(dir).map_err(|e| anyhow!("{} (use another with --cache-dir or FILECACHE_DIR)", e.full_message()))
}

/// What a component file holds, from its first bytes.
#[derive(PartialEq)]
pub enum WasmKind {
    Component,
    CoreModule,
    /// Not binary wasm: maybe text, which the compiler reads or refuses.
    Other,
}

/// Checks that `path` can be read, and what it holds. A file that is not binary WebAssembly is
/// refused unless its name ends in `.wat` (the text format, which the compiler reads).
pub fn probe(path: &Path) -> Result<WasmKind> {
    let mut head = [0u8; 8];
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot read component {}", path.display()))?;
    let mut n = 0;
    while n < head.len() {
        match std::io::Read::read(&mut file, &mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read component {}", path.display())),
        }
    }
    let kind = match (n, &head[..4], &head[4..8]) {
        (8, b"\0asm", [1, 0, 0, 0]) => WasmKind::CoreModule,
        (8, b"\0asm", _) => WasmKind::Component,
        _ => WasmKind::Other,
    };
    let wat = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("wat"));
    if kind == WasmKind::Other && !wat {
        let what = if n == 0 {
            "it is empty"
        } else if head[..n]
            .iter()
            .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace())
        {
            "it is text"
        } else {
            "it does not start with WebAssembly's magic bytes \\0asm"
        };
        bail!(
            "{} is not a valid WebAssembly component: it is neither a component nor a core module, {what} \
             (a component is built for wasm32-wasip2, e.g. `cargo build --target wasm32-wasip2`; \
             WebAssembly text must be named .wat)",
            path.display()
        );
    }
    Ok(kind)
}

pub fn not_a_component(path: &Path) -> anyhow::Error {
    anyhow!(
        "{} is a core WebAssembly module, not a component: build it for wasm32-wasip2 \
         (or wrap it with `wasm-tools component new`)",
        path.display()
    )
}

pub fn invalid_component(path: &Path) -> impl FnOnce(wasmtime::Error) -> anyhow::Error + '_ {
    // `{:#}`: the causes on one line, never a backtrace (RUST_BACKTRACE is for our bugs, not a
    // user's bad file).
    move |e| anyhow!("{e:#}").context(format!("{} is not a valid WebAssembly component", path.display()))
}

/// Bytes the incremental-compilation cache may take.
const INCREMENTAL_QUOTA: u64 = 1 << 30;

/// The configuration `run` and `compile` share, so `compile` warms what `run` loads.
pub fn config(wasm: &WasmArgs) -> Config {
    let mut config = Config::new();
    wasm_features::apply(&mut config, &wasm.options());
    config
}

/// The engine `run` and `compile` use with the compiled cache.
pub fn engine(mut config: Config, cache: Option<&FileCache>, incremental: bool) -> Result<Engine> {
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

/// A progress bar on stderr when it is a terminal. The bar appears with the first report that
/// knows the total (never as an empty `0/0` bar drawn full), and not at all when there is nothing
/// to do.
pub fn progress_bar(what: &'static str) -> impl FnMut(Progress) {
    let terminal = std::io::stderr().is_terminal();
    let mut bar: Option<indicatif::ProgressBar> = None;
    move |p: Progress| {
        if !terminal || p.total == 0 {
            return;
        }
        let bar = bar.get_or_insert_with(|| {
            let bar = indicatif::ProgressBar::new(p.total);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta})")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_message(what);
            bar
        });
        bar.set_length(p.total);
        bar.set_position(p.done);
        if p.done >= p.total {
            bar.finish_and_clear();
        }
    }
}

/// `1 entry`, `2 entries`: a count with its noun in the right number.
pub fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}
