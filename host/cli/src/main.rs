//! `filecache`: run WebAssembly components with a persistent cache, and look after the cache.
//!
//! One module per subcommand, under `commands/`, each with the clap arguments it takes beside
//! the code that uses them (as wasmtime's CLI does); `common` holds what several share.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;
mod common;
mod limits;
mod wasm_features;

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
    Run(commands::run::RunCommand),
    /// Serve a wasi:http handler component over HTTP, a fresh instance per request, with WASI,
    /// the cache and key-value linked in
    Serve(commands::serve::ServeCommand),
    /// Compile a component (or core module) into the cache ahead of time, as `run` would
    Compile(commands::compile::CompileCommand),
    /// Show entries, bytes, hits and misses per namespace (compiled code under .compiled)
    Stats(commands::stats::StatsCommand),
    /// Evict least recently used entries until the cache is at most SIZE; reclaim temporary files
    Gc(commands::gc::GcCommand),
    /// Check every entry and remove the ones that fail
    Verify(commands::verify::VerifyCommand),
    /// Remove the cache entries of one namespace or of all (key-value data only with --include-kv)
    Clear(commands::clear::ClearCommand),
    /// Get, set, delete or list the wasi:keyvalue data of a namespace
    Kv(commands::kv::KvCommand),
}

/// Colour in log lines only for a person: stderr is a terminal and `NO_COLOR` is unset or empty
/// (<https://no-color.org>). A pipe or a file gets plain text.
fn log_colour() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("FILECACHE_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .with_ansi(log_colour())
        .with_target(false)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Run(c) => c.execute(),
        Cmd::Serve(c) => c.execute().map(|()| ExitCode::SUCCESS),
        Cmd::Compile(c) => c.execute().map(|()| ExitCode::SUCCESS),
        Cmd::Stats(c) => c.execute().map(|()| ExitCode::SUCCESS),
        Cmd::Gc(c) => c.execute().map(|()| ExitCode::SUCCESS),
        Cmd::Verify(c) => c.execute(),
        Cmd::Clear(c) => c.execute().map(|()| ExitCode::SUCCESS),
        Cmd::Kv(c) => c.execute(),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            // 2, as grep, ripgrep and clap's usage errors: 1 is an answer (damage found, no such key).
            ExitCode::from(2)
        }
    }
}
