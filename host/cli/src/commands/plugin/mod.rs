//! What `run` and `serve` share: the options that say what a plugin gets (its namespace, limits,
//! buckets, directories, environment, the remote tier, the compiled cache), and the one piece of
//! code that turns them into an engine, a loaded component and per-instance contexts.
//!
//! The order matters and is the same for both commands: everything the user gave is checked
//! before anything is created ([`PluginArgs::check`]); the component is loaded (from the
//! compiled cache when it exists) and its imports resolved ([`Plugin::load`], then the caller's
//! `instantiate_pre`); only then is the cache created and the namespace opened
//! ([`Plugin::open_storage`]), so a component that cannot run changes nothing.

mod args;
mod load;
mod storage;

use std::path::PathBuf;

use filecache_host::compiled::CompiledOptions;
use filecache_host::remote::RemoteTier;
use filecache_host::{FileCache, NamespaceOptions};
use wasmtime::Engine;
use wasmtime::component::Component;

pub use self::args::{PluginArgs, parse_duration, parse_remote_timeout, remote_options};
pub use self::load::{Role, expect_role};
pub use self::storage::{Instance, Storage, add_to_linker_async, add_to_linker_sync};

/// How long a run stopped by its timeout, or a server shutting down, waits for WASI work already
/// handed to tokio's blocking pool (a read of a FIFO or of a hung network file in a `--dir`
/// cannot be cancelled) before the process goes on without it.
pub const BLOCKING_WORK_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

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
