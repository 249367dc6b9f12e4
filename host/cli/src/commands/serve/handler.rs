//! One request of `filecache serve`: its store (a fresh instance with the request's limits), the
//! call of the handler, and the 5xx that says why there is no response when there is none.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use wasmtime::component::{ResourceTable, ResourceTableError};
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use super::super::plugin::{Instance, Storage};
use crate::limits::{Hit, MemoryLimit};

/// A request's store data.
pub(super) type Host = Instance<Http>;

/// What `serve` adds to an instance's store data: the `wasi:http` context and its hooks.
pub(super) struct Http {
    ctx: WasiHttpCtx,
    hooks: NoOutgoing,
}

impl WasiHttpView for Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.extra.ctx,
            table: &mut self.table,
            hooks: &mut self.extra.hooks,
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
pub(super) struct Server {
    pub(super) pre: ProxyPre<Host>,
    pub(super) storage: Storage,
    pub(super) requests: Arc<tokio::sync::Semaphore>,
    pub(super) request_timeout: Duration,
    /// The flag that set `request_timeout` (`--request-timeout` or `-W timeout`), for the 504.
    pub(super) timeout_flag: &'static str,
    pub(super) max_memory_size: Option<u64>,
    /// The flag that set `max_memory_size`, for the message when it is hit.
    pub(super) memory_flag: &'static str,
    /// `-W fuel`, per request.
    pub(super) fuel: Option<u64>,
    pub(super) max_resources: usize,
    /// Held by every connection and request task: the shutdown waits until every clone is gone.
    pub(super) _running: tokio::sync::mpsc::Sender<()>,
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
        let memory = MemoryLimit {
            max: self.max_memory_size,
            flag: self.memory_flag,
        };
        let http = Http {
            ctx: WasiHttpCtx::new(),
            hooks: NoOutgoing,
        };
        let host = self.storage.instance(wasi.build(), table, memory, http)?;
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
            timeout_flag: self.timeout_flag,
            max_resources: self.max_resources,
        }
    }
}

/// The limits a failure is explained by.
struct Limits {
    request_timeout: Duration,
    timeout_flag: &'static str,
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
            "the handler did not finish within {} ({:?})",
            limits.timeout_flag, limits.request_timeout
        ),
    )
}

impl Server {
    /// One request, start to head: the response and one log line.
    pub(super) async fn handle(self: &Arc<Self>, request: hyper::Request<hyper::body::Incoming>) -> Response {
        let start = Instant::now();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        tracing::debug!("{method} {path} started");
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
