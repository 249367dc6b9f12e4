//! `filecache serve`: serve a `wasi:http/incoming-handler` component over HTTP, one fresh instance
//! per request, with WASI, `filecache:cache` and `wasi:keyvalue` linked.
//!
//! Shaped like `wasmtime serve` (its `src/commands/serve.rs`): one `InstancePre` made at start-up
//! (the component's code from the compiled cache), a fresh `Store` per request on tokio, hyper's
//! HTTP/1 server, graceful shutdown. What it adds is state that outlives the request: every
//! instance gets the same namespace and buckets, persistent and atomic across requests and
//! processes; and limits per request (wall time, linear memory, resources) answered with a clear
//! 5xx, never a crash of the server.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use clap::Args;
use filecache_host::keyvalue::{KeyValueCtx, KeyValueView};
use filecache_host::size::parse_size;
use filecache_host::{FileCacheCtx, FileCacheView};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use wasmtime::component::{Linker, ResourceTable, ResourceTableError};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use super::plugin::{self, PluginArgs, PluginView, Role, Storage, parse_duration};
use crate::limits::{Hit, MemoryLimit};

/// `wasmtime serve`'s default address.
const DEFAULT_ADDR: &str = "0.0.0.0:8080";

/// How often the engine's epoch advances: a running handler yields to other requests at least
/// this often, and its wall-time limit is checked.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// How often the uses counted in memory (hits and misses) are written to the counters file, so
/// that `filecache stats` sees what the served plugin did while it runs.
const COUNTS_FLUSH: Duration = Duration::from_secs(1);

#[derive(Args)]
pub struct ServeCommand {
    /// The address to listen on (port 0: any free port; the start-up line says which)
    #[arg(long, value_name = "HOST:PORT", default_value = DEFAULT_ADDR)]
    addr: SocketAddr,
    /// Wall time a request's handler may run (to its last byte), checked by epoch interruption;
    /// after it the request is cancelled and answered 504 if no response was sent yet
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

/// A request's store data.
struct Host {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: NoOutgoing,
    cache: FileCacheCtx,
    kv: KeyValueCtx,
    table: ResourceTable,
    memory: MemoryLimit,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl PluginView for Host {
    fn cache(&mut self) -> FileCacheView<'_> {
        FileCacheView::new(&self.cache, &mut self.table)
    }

    fn kv(&mut self) -> KeyValueView<'_> {
        KeyValueView::new(&self.kv, &mut self.table)
    }
}

impl WasiHttpView for Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Outgoing HTTP is refused (`HTTP-request-denied`): a served plugin's outside world is its
/// cache and its buckets. (It also keeps a TLS stack out of the build.)
struct NoOutgoing;

impl WasiHttpHooks for NoOutgoing {
    fn send_request(
        &mut self,
        _request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = wasmtime_wasi_http::Result<(
                    http::Response<wasmtime_wasi_http::WasiBody>,
                    Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                )>,
            > + Send,
    > {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

/// What the server shares between requests.
struct Server {
    pre: ProxyPre<Host>,
    storage: Storage,
    requests: Arc<tokio::sync::Semaphore>,
    request_timeout: Duration,
    max_memory_size: Option<u64>,
    /// The flag that set `max_memory_size`, for the message when it is hit.
    memory_flag: &'static str,
    /// `-W fuel`, per request.
    fuel: Option<u64>,
    max_resources: usize,
    /// Held by every connection and request task: the shutdown waits until every clone is gone.
    _running: tokio::sync::mpsc::Sender<()>,
}

type Response = hyper::Response<HyperOutgoingBody>;

/// A request that could not be answered by the handler: the 5xx the client gets.
struct Failure {
    status: hyper::StatusCode,
    message: String,
}

impl Failure {
    fn new(status: u16, message: impl Into<String>) -> Failure {
        Failure {
            status: hyper::StatusCode::from_u16(status).expect("a valid status"),
            message: message.into(),
        }
    }

    fn response(self) -> Response {
        let mut body = self.message;
        body.push('\n');
        let mut response = hyper::Response::new(
            Full::new(Bytes::from(body))
                .map_err(|never: Infallible| match never {})
                .boxed_unsync(),
        );
        *response.status_mut() = self.status;
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    }
}

/// Aborts a request's task if the client goes before the response head is ready (hyper drops the
/// future waiting for it): its instance is dropped, and what it stored so far stays consistent
/// (a writer not committed is discarded; each key-value write is atomic).
struct AbortOnDrop(Option<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

impl Server {
    fn new_store(&self, deadline: Instant) -> Result<Store<Host>> {
        let mut wasi = self.storage.wasi()?;
        wasi.inherit_stdout().inherit_stderr();
        let mut table = ResourceTable::new();
        table.set_max_capacity(self.max_resources);
        let cache = self.storage.cache_ctx()?;
        let host = Host {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            hooks: NoOutgoing,
            kv: self.storage.kv_ctx(&cache),
            cache,
            table,
            memory: MemoryLimit {
                max: self.max_memory_size,
                flag: self.memory_flag,
            },
        };
        let mut store = Store::new(self.pre.instance_pre().engine(), host);
        store.limiter(|h| &mut h.memory);
        if let Some(fuel) = self.fuel {
            store.set_fuel(fuel)?;
        }
        // Yield to other requests at every tick; stop at the deadline (the request's task is also
        // cancelled then, which covers a handler waiting in a host call).
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            Ok(if Instant::now() >= deadline {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Yield(1)
            })
        });
        Ok(store)
    }

    /// Handles one request: a fresh instance, called with it; its response, or the 5xx that says
    /// why there is none.
    async fn respond(self: &Arc<Self>, request: hyper::Request<hyper::body::Incoming>) -> Result<Response, Failure> {
        let permit = Arc::clone(&self.requests)
            .acquire_owned()
            .await
            .map_err(|_| Failure::new(503, "the server is shutting down"))?;
        let deadline = Instant::now() + self.request_timeout;
        let mut store = self
            .new_store(deadline)
            .map_err(|e| Failure::new(500, format!("cannot set up the request: {e:#}")))?;
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let (request, out) = {
            let mut http = store.data_mut().http();
            let request = http.new_incoming_request(Scheme::Http, request);
            let out = http.new_response_outparam(sender);
            match (request, out) {
                (Ok(r), Ok(o)) => (r, o),
                (Err(e), _) | (_, Err(e)) => return Err(Failure::new(400, format!("bad request: {e:#}"))),
            }
        };
        let server = Arc::clone(self);
        let task = tokio::spawn(async move {
            let _permit = permit;
            let run = async {
                let proxy = server.pre.instantiate_async(&mut store).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, request, out)
                    .await
            };
            let result = tokio::time::timeout(server.request_timeout, run).await;
            drop(store);
            drop(server);
            result
        });
        let mut abort = AbortOnDrop(Some(task.abort_handle()));
        match receiver.await {
            Ok(Ok(response)) => {
                // The head is out; the body may still be streaming from the instance. Its task
                // goes on, and a failure after this point cuts the body short and is logged.
                abort.0 = None;
                let limits = self.limits();
                tokio::spawn(async move {
                    if let Ok(Err(failure)) = task.await.map(|r| outcome(r, &limits)) {
                        tracing::warn!("the handler failed after its response started: {}", failure.message);
                    }
                });
                Ok(response)
            }
            Ok(Err(code)) => Err(Failure::new(
                500,
                format!("the handler answered with an error: {code:?}"),
            )),
            // The handler ended (or was stopped) without a response.
            Err(_) => {
                abort.0 = None;
                let limits = self.limits();
                match task.await {
                    Ok(result) => Err(match outcome(result, &limits) {
                        Ok(()) => Failure::new(500, "the handler returned without sending a response"),
                        Err(failure) => failure,
                    }),
                    Err(e) => Err(Failure::new(500, format!("the handler's task failed: {e}"))),
                }
            }
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            request_timeout: self.request_timeout,
            max_resources: self.max_resources,
        }
    }
}

/// The limits a failure is explained by.
struct Limits {
    request_timeout: Duration,
    max_resources: usize,
}

/// How a handler's run ended: fine, or the 5xx that says why not.
fn outcome(
    result: std::result::Result<wasmtime::Result<()>, tokio::time::error::Elapsed>,
    limits: &Limits,
) -> std::result::Result<(), Failure> {
    let error = match result {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(e)) => e,
        Err(_) => return Err(timed_out(limits)),
    };
    if error.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) {
        return Err(timed_out(limits));
    }
    match Hit::of(&error) {
        Some(Hit::Memory(memory)) => return Err(Failure::new(500, format!("the handler {memory}"))),
        Some(Hit::Fuel) => return Err(Failure::new(500, "the handler used up its fuel (-W fuel)")),
        _ => {}
    }
    if error.chain().any(|c| {
        c.downcast_ref::<ResourceTableError>()
            .is_some_and(|e| matches!(e, ResourceTableError::Full))
    }) {
        return Err(Failure::new(
            500,
            format!(
                "the handler held more than --max-resources ({}) resources at once",
                limits.max_resources
            ),
        ));
    }
    if error.downcast_ref::<wasmtime::PoolConcurrencyLimitError>().is_some() {
        return Err(Failure::new(
            503,
            "the server is at its limit of concurrent instances; try again",
        ));
    }
    Err(Failure::new(500, format!("the handler failed: {error}")))
}

fn timed_out(limits: &Limits) -> Failure {
    Failure::new(
        504,
        format!(
            "the handler did not finish within --request-timeout ({:?})",
            limits.request_timeout
        ),
    )
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
        runtime.block_on(self.serve())
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
        if let Some(t) = limits.timeout {
            self.request_timeout = self.request_timeout.min(t);
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
        let (running, mut stopped) = tokio::sync::mpsc::channel::<()>(1);
        let server = Arc::new(Server {
            pre,
            storage,
            requests: Arc::new(tokio::sync::Semaphore::new(self.max_concurrent_requests.max(1))),
            request_timeout: self.request_timeout,
            max_memory_size: self.max_memory_size,
            memory_flag,
            fuel: limits.fuel,
            max_resources: self.max_resources,
            _running: running,
        });
        let flusher = tokio::spawn(flush_counts(Arc::clone(&server)));
        let (shutdown, _) = tokio::sync::watch::channel(false);
        eprintln!("Serving HTTP on http://{local}/");
        tracing::info!(
            "serving {} on http://{local}/ (namespace {:?})",
            path.display(),
            server.storage.namespace().name()
        );

        let mut signals = Signals::new()?;
        loop {
            let stream = tokio::select! {
                signal = signals.next() => {
                    eprintln!("{signal}: shutting down; finishing the requests in flight (again to stop now)");
                    break;
                }
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors, say: wait a little rather than spin.
                        tracing::warn!("cannot accept a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let server = Arc::clone(&server);
            let mut shutdown = shutdown.subscribe();
            tokio::spawn(async move {
                let service = {
                    let server = Arc::clone(&server);
                    hyper::service::service_fn(move |request| {
                        let server = Arc::clone(&server);
                        async move { Ok::<_, Infallible>(server.handle(request).await) }
                    })
                };
                let connection = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(connection);
                let result = tokio::select! {
                    result = connection.as_mut() => result,
                    _ = shutdown.changed() => {
                        connection.as_mut().graceful_shutdown();
                        connection.await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!("connection ended: {e}");
                }
                drop(server);
            });
        }
        drop(listener);
        let _ = shutdown.send(true);
        // Every connection and request task holds the server; when the last is gone, `stopped`
        // ends. A request runs at most --request-timeout, so that bounds the wait.
        flusher.abort();
        let bound = self.request_timeout + Duration::from_secs(1);
        drop(server);
        tokio::select! {
            _ = stopped.recv() => {}
            _ = tokio::time::sleep(bound) => {
                eprintln!("requests still running after {bound:?}: stopping them");
            }
            signal = signals.next() => {
                eprintln!("{signal} again: stopping the requests in flight");
            }
        }
        Ok(())
    }
}

impl Server {
    /// One request, start to head: the response and one log line.
    async fn handle(self: &Arc<Self>, request: hyper::Request<hyper::body::Incoming>) -> Response {
        let start = Instant::now();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let response = match self.respond(request).await {
            Ok(response) => response,
            Err(failure) => {
                if failure.status.is_server_error() {
                    tracing::warn!("{method} {path}: {}", failure.message);
                }
                failure.response()
            }
        };
        tracing::info!(
            "{method} {path} {} {:.3}ms",
            response.status().as_u16(),
            start.elapsed().as_secs_f64() * 1e3
        );
        response
    }
}

/// Writes the uses counted in memory to the counters files every [`COUNTS_FLUSH`], off the
/// executor.
async fn flush_counts(server: Arc<Server>) {
    let mut tick = tokio::time::interval(COUNTS_FLUSH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let namespaces: Vec<_> = std::iter::once(server.storage.namespace().clone())
        .chain(server.storage.bucket_namespaces().cloned())
        .collect();
    // Not holding the server: the shutdown waits for every holder.
    drop(server);
    loop {
        tick.tick().await;
        let namespaces = namespaces.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for ns in &namespaces {
                ns.flush_counts();
            }
        })
        .await;
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] on a thread of its own, until dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> EpochTicker {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("filecache-epoch".into())
            .spawn({
                let stop = Arc::clone(&stop);
                move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                }
            })
            .ok();
        EpochTicker { stop, thread }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// SIGINT and SIGTERM (Ctrl-C elsewhere).
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
                terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// The next signal's name.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => "SIGINT",
                _ = self.terminate.recv() => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}
