//! `filecache kv get|set|delete|list`: inspect and seed a namespace's `wasi:keyvalue` bucket
//! from the shell: the local one, or with `--remote` the one a fleet shares in Redis.
//!
//! A key is any string, newlines and other control characters included; on the command line
//! and in `kv list`'s output it is written in one escaped form ([`escape`], [`unescape`]), so
//! that every key is one line and every line names one key.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use filecache_host::NamespaceOptions;
use filecache_host::kv::{Bucket, DATABASE_FILE, RECORDS_DIR, RedisEngine};
use filecache_host::remote::RemoteTier;
use filecache_host::store::{DEFAULT_NAMESPACE, validate_namespace_name};

use crate::commands::plugin::{parse_remote_timeout, remote_options};
use crate::common::CacheDirArg;

/// `kv --help` ends with this.
const KEYS_AND_EXIT_STATUS: &str = "\
Keys: `kv list` prints one key a line, and KEY arguments are read in the same form: a backslash \
is written \\\\, a newline \\n, a carriage return \\r, a tab \\t, NUL \\0 and any other control \
character \\u{HEX} (e.g. \\u{1b}); every other character stands for itself. So a key holding a \
newline, listed as `a\\nb`, is read back with `filecache kv get 'a\\nb'`.

Exit status: 0 on success; 1 when `kv get` finds no value for the key; 2 on an error (among \
them a cache directory or namespace that does not exist, for `get` and `list`).";

#[derive(Args)]
#[command(after_help = KEYS_AND_EXIT_STATUS)]
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
    /// How long connecting to Redis, and then each operation, may take before the command fails
    /// (e.g. 200ms, 2s) [default: 500ms]
    #[arg(long, value_name = "DURATION", requires = "remote", global = true, value_parser = parse_remote_timeout)]
    remote_timeout: Option<Duration>,
    #[command(subcommand)]
    op: KvOp,
}

#[derive(Subcommand)]
enum KvOp {
    /// Print a key's value (raw bytes) to stdout; exit code 1 if the key has none
    #[command(after_help = KEYS_AND_EXIT_STATUS)]
    Get {
        /// The key, escaped as `kv list` prints it (\\ for a backslash, \n for a newline, ...)
        key: String,
    },
    /// Set a key's value: VALUE, or the bytes of --file, or stdin
    #[command(after_help = KEYS_AND_EXIT_STATUS)]
    Set {
        /// The key, escaped as `kv list` prints it (\\ for a backslash, \n for a newline, ...)
        key: String,
        /// The value (UTF-8 text); without it, the value is read from --file or stdin
        value: Option<String>,
        /// Read the value from this file ("-" for stdin)
        #[arg(long, value_name = "FILE", conflicts_with = "value")]
        file: Option<PathBuf>,
    },
    /// Remove a key (a key without a value is not an error)
    #[command(after_help = KEYS_AND_EXIT_STATUS)]
    Delete {
        /// The key, escaped as `kv list` prints it (\\ for a backslash, \n for a newline, ...)
        key: String,
    },
    /// Print every key, one a line, in the bucket's order; a backslash and control characters
    /// (a newline, say) are escaped, in the form KEY arguments take
    #[command(after_help = KEYS_AND_EXIT_STATUS)]
    List {
        /// Print each key quoted and escaped as Rust's `{:?}` does instead
        #[arg(long)]
        escape: bool,
    },
}

/// A key as `kv list` prints it: `\` as `\\`, control characters as `\n`, `\r`, `\t`, `\0` or
/// `\u{HEX}`; everything else as it is. One line, and [`unescape`] gives the key back.
pub fn escape(key: &str) -> std::borrow::Cow<'_, str> {
    if !key.chars().any(|c| c == '\\' || c.is_control()) {
        return key.into();
    }
    let mut out = String::with_capacity(key.len() + 8);
    for c in key.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.into()
}

/// A KEY argument read back: the inverse of [`escape`] (and `\"`, `\'` for a line of
/// `kv list --escape` without its quotes). A backslash followed by anything else is refused.
pub fn unescape(text: &str) -> Result<String> {
    let bad = |what: &str| {
        anyhow::anyhow!(
            "key {text:?}: {what}; in a KEY a backslash starts an escape (\\\\ \\n \\r \\t \\0 \\u{{HEX}}): \
             write a backslash itself as \\\\"
        )
    };
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('0') => out.push('\0'),
            Some('"') => out.push('"'),
            Some('\'') => out.push('\''),
            Some('u') => {
                if chars.next() != Some('{') {
                    return Err(bad("\\u must be followed by {HEX}"));
                }
                let mut hex = String::new();
                let mut closed = false;
                for c in chars.by_ref() {
                    if c == '}' {
                        closed = true;
                        break;
                    }
                    hex.push(c);
                }
                let c = u32::from_str_radix(&hex, 16)
                    .ok()
                    .filter(|_| closed && !hex.is_empty() && hex.len() <= 6)
                    .and_then(char::from_u32)
                    .ok_or_else(|| bad(&format!("\\u{{{hex}}} is not a character")))?;
                out.push(c);
            }
            Some(other) => return Err(bad(&format!("unknown escape \\{other}"))),
            None => return Err(bad("it ends with a lone backslash")),
        }
    }
    Ok(out)
}

impl KvCommand {
    pub fn execute(self) -> Result<ExitCode> {
        let key = match &self.op {
            KvOp::Get { key } | KvOp::Set { key, .. } | KvOp::Delete { key } => Some(unescape(key)?),
            KvOp::List { .. } => None,
        };
        let read_only = matches!(self.op, KvOp::Get { .. } | KvOp::List { .. });
        // The shell may store what the component's own limits would refuse; the usage counter
        // still counts it.
        let options = NamespaceOptions::default().max_entry_size(u64::MAX).quota(u64::MAX);
        let bucket = match (&self.remote, &self.op) {
            // The fleet's bucket in Redis: the cache directory is not used.
            (Some(url), _) => {
                validate_namespace_name(&self.namespace)?;
                let remote = remote_options(url, self.remote_key_file.as_deref(), self.remote_timeout)?;
                let engine = RedisEngine::new(RemoteTier::new(remote)?, &self.namespace, &options.read_only(read_only))
                    .map_err(|e| anyhow::anyhow!("{}", e.full_message()))?;
                Some(Bucket::from_engine(Arc::new(engine)))
            }
            // Looking creates nothing: a cache or a namespace that does not exist is an error,
            // and one without key-value data is read as empty without opening a database.
            (None, KvOp::Get { .. } | KvOp::List { .. }) => {
                let (dir, cache) = self.cache.open_existing()?;
                crate::common::require_namespace(&cache, &dir, &self.namespace)?;
                let ns = cache
                    .namespace(&self.namespace, options.read_only(true))
                    .with_context(|| format!("cannot open namespace {:?} in {}", self.namespace, dir.display()))?;
                let has_data = ns.directory().is_some_and(|d| {
                    d.symlink_metadata(DATABASE_FILE).is_ok() || d.symlink_metadata(RECORDS_DIR).is_ok()
                });
                has_data.then(|| Bucket::new(ns))
            }
            // Removing from what does not exist is done already, and creates nothing.
            (None, KvOp::Delete { .. }) if !self.cache.exists_namespace(&self.namespace)? => None,
            (None, KvOp::Set { .. } | KvOp::Delete { .. }) => {
                let (dir, cache) = self.cache.open()?;
                let ns = cache
                    .namespace(&self.namespace, options)
                    .with_context(|| format!("cannot open namespace {:?} in {}", self.namespace, dir.display()))?;
                Some(Bucket::new(ns))
            }
        };
        let fail = |e: filecache_host::kv::Error| anyhow::anyhow!("{}", e.full_message());
        match self.op {
            KvOp::Get { .. } => {
                let key = key.expect("get has a key");
                match bucket.map(|b| b.get(&key)).transpose().map_err(fail)?.flatten() {
                    Some(v) => std::io::stdout().write_all(&v).context("cannot write to stdout")?,
                    None => {
                        let place = if self.remote.is_some() { " (in Redis)" } else { "" };
                        eprintln!(
                            "no value for key {} in namespace {}{place}",
                            escape(&key),
                            self.namespace
                        );
                        return Ok(ExitCode::FAILURE);
                    }
                }
            }
            KvOp::Set { value, file, .. } => {
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
                let bucket = bucket.expect("set opens the bucket");
                bucket.set(&key.expect("set has a key"), &value).map_err(fail)?;
            }
            KvOp::Delete { .. } => {
                if let Some(bucket) = bucket {
                    bucket.delete(&key.expect("delete has a key")).map_err(fail)?;
                }
            }
            KvOp::List { escape: debug } => {
                let keys = match bucket {
                    Some(b) => b.keys().map_err(fail)?,
                    None => Vec::new(),
                };
                let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                let written = keys
                    .iter()
                    .try_for_each(|key| {
                        if debug {
                            writeln!(out, "{key:?}")
                        } else {
                            writeln!(out, "{}", escape(key))
                        }
                    })
                    .and_then(|()| out.flush());
                match written {
                    // A reader that stopped early (`kv list | head`) is not an error, as for ripgrep.
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                    other => other.context("cannot write to stdout")?,
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_escapes_to_one_line_and_back() {
        for key in [
            "",
            "plain",
            "a\nb",
            "back\\slash",
            "\\n",
            "tab\there\r\n",
            "nul\0inside",
            "esc\u{1b}[0m",
            "del\u{7f}",
            "c1\u{85}",
            "ünïcödé ✓",
        ] {
            let line = escape(key);
            assert!(!line.contains('\n') && !line.chars().any(char::is_control), "{line:?}");
            assert_eq!(unescape(&line).unwrap(), key, "{line:?}");
        }
        assert_eq!(escape("a\nb"), "a\\nb");
        assert_eq!(escape("a\\nb"), "a\\\\nb");
        assert_eq!(escape("\u{1b}"), "\\u{1b}");
    }

    #[test]
    fn a_backslash_not_starting_an_escape_is_refused() {
        for bad in ["C:\\path", "end\\", "\\u{110000}", "\\u{}", "\\u1b", "\\u{1b"] {
            assert!(unescape(bad).is_err(), "{bad:?} accepted");
        }
        assert!(
            unescape("C:\\path")
                .unwrap_err()
                .to_string()
                .contains("write a backslash itself as \\\\")
        );
    }
}
