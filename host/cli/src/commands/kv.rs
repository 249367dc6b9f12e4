//! `filecache kv get|set|delete|list`: inspect and seed a namespace's `wasi:keyvalue` bucket
//! from the shell: the local one, or with `--remote` the one a fleet shares in Redis.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use filecache_host::NamespaceOptions;
use filecache_host::kv::{Bucket, RedisEngine};
use filecache_host::remote::{RemoteOptions, RemoteTier, read_fleet_key};
use filecache_host::store::{DEFAULT_NAMESPACE, validate_namespace_name};

use crate::common::CacheDirArg;

#[derive(Args)]
pub struct KvCommand {
    #[command(flatten)]
    cache: CacheDirArg,
    /// The namespace whose bucket to use (what a component run with --namespace NAME opens as "")
    #[arg(long, value_name = "NAME", default_value = DEFAULT_NAMESPACE, global = true)]
    namespace: String,
    /// Use the bucket a fleet shares in this Redis server (what `run`/`serve --remote` serve)
    /// instead of the local one; the cache directory is not used
    #[arg(long, value_name = "redis://HOST:PORT[/DB]", global = true)]
    remote: Option<String>,
    /// The fleet's key file (see `run --remote-key-file`): values are MAC'd under it, and values
    /// without a valid MAC are refused
    #[arg(long, value_name = "FILE", requires = "remote", global = true)]
    remote_key_file: Option<PathBuf>,
    #[command(subcommand)]
    op: KvOp,
}

#[derive(Subcommand)]
enum KvOp {
    /// Print a key's value (raw bytes) to stdout; exit code 1 if the key has none
    Get {
        /// The key
        key: String,
    },
    /// Set a key's value: VALUE, or the bytes of --file, or stdin
    Set {
        /// The key
        key: String,
        /// The value (UTF-8 text); without it, the value is read from --file or stdin
        value: Option<String>,
        /// Read the value from this file ("-" for stdin)
        #[arg(long, value_name = "FILE", conflicts_with = "value")]
        file: Option<PathBuf>,
    },
    /// Remove a key (a key without a value is not an error)
    Delete {
        /// The key
        key: String,
    },
    /// Print every key, one a line, in the bucket's order (keys holding a newline are printed
    /// escaped, as Rust's `{:?}` does, with --escape)
    List {
        /// Print each key quoted and escaped, so that any key fits on one line
        #[arg(long)]
        escape: bool,
    },
}

impl KvCommand {
    pub fn execute(self) -> Result<std::process::ExitCode> {
        let read_only = matches!(self.op, KvOp::Get { .. } | KvOp::List { .. });
        // The shell may store what the component's own limits would refuse; the usage counter
        // still counts it.
        let options = NamespaceOptions::default()
            .read_only(read_only)
            .max_entry_size(u64::MAX)
            .quota(u64::MAX);
        let bucket = match &self.remote {
            Some(url) => {
                validate_namespace_name(&self.namespace)?;
                let mut remote = RemoteOptions::new(url.clone());
                remote.fleet_key = self.remote_key_file.as_deref().map(read_fleet_key).transpose()?;
                let engine = RedisEngine::new(RemoteTier::new(remote)?, &self.namespace, &options)
                    .map_err(|e| anyhow::anyhow!("{}", e.full_message()))?;
                Bucket::from_engine(Arc::new(engine))
            }
            None => {
                let (dir, cache) = self.cache.open()?;
                let ns = cache
                    .namespace(&self.namespace, options)
                    .with_context(|| format!("cannot open namespace {:?} in {}", self.namespace, dir.display()))?;
                Bucket::new(ns)
            }
        };
        let fail = |e: filecache_host::kv::Error| anyhow::anyhow!("{}", e.full_message());
        match self.op {
            KvOp::Get { key } => match bucket.get(&key).map_err(fail)? {
                Some(v) => {
                    std::io::stdout().write_all(&v).context("cannot write to stdout")?;
                }
                None => {
                    let place = if self.remote.is_some() { " (in Redis)" } else { "" };
                    eprintln!("no value for key {key:?} in namespace {}{place}", self.namespace);
                    return Ok(std::process::ExitCode::FAILURE);
                }
            },
            KvOp::Set { key, value, file } => {
                let value = match (value, file) {
                    (Some(v), _) => v.into_bytes(),
                    (None, Some(f)) if f.as_os_str() != "-" => {
                        std::fs::read(&f).with_context(|| format!("cannot read {}", f.display()))?
                    }
                    (None, _) => {
                        let mut v = Vec::new();
                        std::io::stdin().read_to_end(&mut v).context("cannot read stdin")?;
                        v
                    }
                };
                bucket.set(&key, &value).map_err(fail)?;
            }
            KvOp::Delete { key } => bucket.delete(&key).map_err(fail)?,
            KvOp::List { escape } => {
                let mut out = std::io::stdout().lock();
                for key in bucket.keys().map_err(fail)? {
                    if escape {
                        writeln!(out, "{key:?}")?;
                    } else if key.contains('\n') {
                        bail!("key {key:?} holds a newline: use --escape");
                    } else {
                        writeln!(out, "{key}")?;
                    }
                }
            }
        }
        Ok(std::process::ExitCode::SUCCESS)
    }
}
