//! The server of `filecache serve`: the accept loop, one hyper connection per client, the
//! counters flushed while serving, the epoch ticker, and the graceful shutdown on a signal.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use hyper::server::conn::http1;
use wasmtime::Engine;
use wasmtime_wasi_http::io::TokioIo;

use super::handler::Server;

/// How often the engine's epoch advances: a running handler yields to other requests at least
/// this often, and its wall-time limit is checked.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// How often the uses counted in memory (hits and misses) are written to the counters file, so
/// that `filecache stats` sees what the served plugin did while it runs.
const COUNTS_FLUSH: Duration = Duration::from_secs(1);

/// Serves `listener` until a signal, then shuts down gracefully: the requests in flight finish,
/// for at most `request_timeout` (and a second), or until a second signal.
pub(super) async fn run(
    server: Arc<Server>,
    listener: tokio::net::TcpListener,
    mut stopped: tokio::sync::mpsc::Receiver<()>,
    path: &Path,
    local: SocketAddr,
    request_timeout: Duration,
) -> Result<()> {
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
    let bound = request_timeout + Duration::from_secs(1);
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
pub(super) struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochTicker {
    pub(super) fn start(engine: Engine) -> EpochTicker {
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
