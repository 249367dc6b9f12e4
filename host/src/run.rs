//! Where host functions do their store work: the one sync/async technique of this crate's
//! bindings (`filecache:cache`, and both `wasi:keyvalue` drafts).
//!
//! Each host function is written once, inside a macro that stamps it into the synchronous and the
//! asynchronous bindings' traits (`bindgen!` generates a trait of each kind). The body hands its
//! store work to `$run!`, which is [`run_sync!`] (the work runs here, on the calling thread) or
//! [`run_async!`] (it runs on tokio's blocking pool, so that a slow disk or a remote that does
//! not answer never blocks an executor thread, and is awaited).
//!
//! Both take a closure, `$run!(move || work)`, or a handle to lend the work:
//! `$run!(self.table.get(&h)?.field => |field| work)` borrows the field for synchronous work and
//! clones it (an `Arc`, a bucket) into the blocking task for asynchronous work.

/// A blocking task that did not finish (it panicked: a bug in the host); the guest traps.
#[derive(Debug, thiserror::Error)]
#[error("a host task failed: {0}")]
pub(crate) struct TaskFailed(String);

/// Runs `work` on tokio's blocking pool and waits for it without blocking the executor; outside
/// a tokio runtime, runs it here.
pub(crate) async fn blocking<R: Send + 'static>(work: impl FnOnce() -> R + Send + 'static) -> Result<R, TaskFailed> {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => runtime
            .spawn_blocking(work)
            .await
            .map_err(|e| TaskFailed(e.to_string())),
        Err(_) => Ok(work()),
    }
}

/// Runs store work on the calling thread (the synchronous host functions).
macro_rules! run_sync {
    ($handle:expr => |$h:ident| $work:expr) => {{
        let $h = &$handle;
        $work
    }};
    ($work:expr) => {
        ($work)()
    };
}

/// Runs store work on tokio's blocking pool (the asynchronous host functions); a task that
/// fails is the function's error (`From<TaskFailed>`).
macro_rules! run_async {
    ($handle:expr => |$h:ident| $work:expr) => {{
        let $h = $handle.clone();
        $crate::run::blocking(move || {
            let $h = &$h;
            $work
        })
        .await?
    }};
    ($work:expr) => {
        $crate::run::blocking($work).await?
    };
}

pub(crate) use {run_async, run_sync};
