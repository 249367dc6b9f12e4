//! `filecache serve`: serve a `wasi:http/incoming-handler` component over HTTP, one fresh instance
//! per request, with WASI, `filecache:cache` and `wasi:keyvalue` linked.
//!
//! Shaped like `wasmtime serve` (its `src/commands/serve.rs`): one `InstancePre` made at start-up
//! (the component's code from the compiled cache), a fresh `Store` per request on tokio, hyper's
//! HTTP/1 server, graceful shutdown. What it adds is state that outlives the request: every
//! instance gets the same namespace and buckets, persistent and atomic across requests and
//! processes; and limits per request (wall time, linear memory, resources) answered with a clear
//! 5xx, never a crash of the server.

mod handler;
mod server;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use clap::Args;
use filecache_host::size::parse_size;
use wasmtime::component::Linker;
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use self::handler::{Host, Server};
use self::server::EpochTicker;
use super::plugin::{self, PluginArgs, Role, parse_duration};

/// `wasmtime serve`'s default address.
const DEFAULT_ADDR: &str = "0.0.0.0:8080";

#[derive(Args)]
pub struct ServeCommand {
    /// The address to listen on (port 0: any free port; the start-up line says which)
    #[arg(long, value_name = "HOST:PORT", default_value = DEFAULT_ADDR)]
    addr: SocketAddr,
    /// Wall time a request's handler may run (to its last byte), checked by epoch interruption;
    /// after it the request is cancelled and answered 504 if no response was sent yet (a shorter
    /// `-W timeout` wins, and the 504 names it)
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    request_timeout: Duration,
    /// Most linear memory each of a request's instance memories may grow to; a handler that asks
    /// for more is stopped and the request answered 500 [default: no limit beyond wasm32's 4GiB]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_memory_size: Option<u64>,
    /// Most resources (HTTP fields, bodies, streams, cache handles, buckets) one request's instance
    /// may hold at once; a handler that asks for more is stopped and the request answered 500
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    max_resources: usize,
    /// Most requests handled at once; more wait for a free slot
    #[arg(long, value_name = "N", default_value_t = 256)]
    max_concurrent_requests: usize,
    #[command(flatten)]
    plugin: PluginArgs,
    /// The component (.wasm): a wasi:http/incoming-handler (the wasi:http/proxy world, 0.2.x)
    component: PathBuf,
}

/// The pooling allocator, as `wasmtime serve` uses it: instances come from pre-reserved slots,
/// which makes a fresh instance per request cheap. Sized for `concurrent` requests.
fn pooling(concurrent: usize) -> PoolingAllocationConfig {
    let n = u32::try_from(concurrent).unwrap_or(u32::MAX).max(1);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(16))
        .total_memories(n.saturating_mul(2))
        .total_tables(n.saturating_mul(16))
        .total_stacks(n)
        // componentize-py's and componentize-js's runtimes have large function tables.
        .table_elements(100_000);
    pool
}

impl ServeCommand {
    pub fn execute(self) -> Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the tokio runtime")?;
        let result = runtime.block_on(self.serve());
        // Dropping the runtime would wait for every task on its blocking pool, and one can be
        // stuck for good: a request cut by its timeout while WASI read a FIFO or a hung network
        // file of a --dir (a blocking read cannot be cancelled). The requests are over by now;
        // what is left gets a moment, then the process exits without it.
        runtime.shutdown_timeout(plugin::BLOCKING_WORK_GRACE);
        result
    }

    async fn serve(mut self) -> Result<()> {
        let path = self.component.clone();
        // `-W` limits apply to each request as `run` applies them to a run; with the flags of
        // `serve`, the smaller wins.
        let limits = self.plugin.wasm.limits();
        let mut memory_flag = "--max-memory-size";
        if let Some(w) = limits.max_memory_size
            && self.max_memory_size.is_none_or(|m| w < m)
        {
            self.max_memory_size = Some(w);
            memory_flag = "-W max-memory-size";
        }
        // A `-W timeout` as short as --request-timeout (its default included) is the one that
        // fires, and the one a 504 names.
        let mut timeout_flag = "--request-timeout";
        if let Some(t) = limits.timeout
            && t <= self.request_timeout
        {
            self.request_timeout = t;
            timeout_flag = "-W timeout";
        }
        let mut plugin = self.plugin.check(&path)?;
        let mut config = plugin.config();
        config.epoch_interruption(true);
        let mut pooled = config.clone();
        pooled.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling(
            self.max_concurrent_requests,
        )));
        // The pool reserves address space for every slot up front; where there is not enough,
        // instances are allocated on demand instead.
        let loaded = match Engine::new(&pooled) {
            Ok(_) => plugin.load(pooled, Role::HttpHandler)?,
            Err(e) => {
                tracing::info!("not using the pooling allocator: {e:#}");
                plugin.load(config, Role::HttpHandler)?
            }
        };
        let engine = loaded.engine.clone();
        let mut linker = Linker::<Host>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        plugin::add_to_linker_async(&mut linker)?;
        let pre = linker
            .instantiate_pre(&loaded.component)
            .and_then(ProxyPre::new)
            .map_err(|e| anyhow!("{e:#}"))
            .with_context(|| {
                format!(
                    "cannot serve {}: its imports must be WASI 0.2, wasi:http 0.2, filecache:cache/cache and \
                     wasi:keyvalue (0.2.0-draft or 0.2.0-draft2)",
                    path.display()
                )
            })?;
        let storage = plugin.open_storage(&loaded)?;

        let socket = match self.addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        // As wasmtime serve: rebind an address in TIME_WAIT after a restart on Unix; on Windows
        // SO_REUSEADDR would let two servers share the port.
        socket.set_reuseaddr(!cfg!(windows))?;
        socket
            .bind(self.addr)
            .with_context(|| format!("cannot listen on {}", self.addr))?;
        let listener = socket.listen(1024)?;
        let local = listener.local_addr()?;

        let _epoch = EpochTicker::start(engine.clone());
        let (running, stopped) = tokio::sync::mpsc::channel::<()>(1);
        let server = Arc::new(Server {
            pre,
            storage,
            requests: Arc::new(tokio::sync::Semaphore::new(self.max_concurrent_requests.max(1))),
            request_timeout: self.request_timeout,
            timeout_flag,
            max_memory_size: self.max_memory_size,
            memory_flag,
            fuel: limits.fuel,
            max_resources: self.max_resources,
            _running: running,
        });
        server::run(server, listener, stopped, &path, local, self.request_timeout).await
    }
}
