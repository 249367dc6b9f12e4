//! The tier's connections and circuit breaker: every operation runs through [`RemoteTier::call`],
//! on a pooled connection (or a new one), unless the breaker is open.

use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use redis::{ConnectionAddr, IntoConnectionInfo};

use super::options::redact;
use super::resp::Connection;
use super::{MAX_IDLE_CONNECTIONS, RemoteTier, count};
use crate::{Counter, Error, Namespace, Result};

/// Why a remote operation did not happen.
pub(super) enum Failure {
    /// The circuit breaker is open.
    Skipped,
    /// It was tried and failed.
    Failed(io::Error),
}

/// Where the server is and how to log in, from the URL.
pub(super) struct Server {
    host: String,
    port: u16,
    username: Option<String>,
    password: Option<String>,
    db: i64,
}

impl Server {
    /// The server named by a `redis://` URL.
    pub(super) fn parse(url: &str) -> Result<Server> {
        if !url.starts_with("redis://") {
            return Err(invalid(url, "expected redis://HOST:PORT[/DB]"));
        }
        // No `CLIENT SETINFO` on connecting: it is a round trip before the first operation,
        // which against a server that accepts connections but never answers cost a second
        // timeout per failure.
        // (The `redis` crate parses the URL, as every Redis client reads one; the connection is
        // this module's own.)
        let info = url.into_connection_info().map_err(|e| invalid(url, e))?;
        let (host, port) = match info.addr() {
            ConnectionAddr::Tcp(host, port) if !host.is_empty() => (host.clone(), *port),
            _ => return Err(invalid(url, "expected redis://HOST:PORT[/DB]")),
        };
        let settings = info.redis_settings();
        Ok(Server {
            host,
            port,
            username: settings.username().map(str::to_string),
            password: settings.password().map(str::to_string),
            db: settings.db(),
        })
    }
}

#[derive(Default)]
pub(super) struct Breaker {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    /// Whether the cache tier's first failure since the last success was logged (so that it is
    /// logged once, whichever caller failed first).
    cache_warned: bool,
}

/// Who runs an operation, which decides what its failure means and who logs it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Caller {
    /// The cache tier ([`RemoteTier::fetch`], `publish`, `remove`): unless the tier is required,
    /// a failure is logged here and the local tier carries on.
    Cache,
    /// A client that gets the error and reports it itself ([`RemoteTier::command`], for
    /// key-value buckets, which have no local fallback; [`RemoteTier::ping`]).
    Client,
}

pub(super) fn invalid(url: &str, why: impl fmt::Display) -> Error {
    Error::io(
        format!("invalid remote URL {:?}", redact(url)),
        io::Error::new(io::ErrorKind::InvalidInput, why.to_string()),
    )
}

impl RemoteTier {
    /// Counts a failure (not a skip), and makes it an error if the tier is required.
    pub(super) fn failed(&self, local: &Namespace, op: &'static str, f: Failure) -> Result<()> {
        if matches!(f, Failure::Failed(_)) {
            count(local, &[(Counter::RemoteErrors, 1)]);
        }
        if self.inner.options.required {
            Err(self.failure_error(op, f))
        } else {
            Ok(())
        }
    }

    pub(super) fn failure_error(&self, op: &str, f: Failure) -> Error {
        let source = match f {
            Failure::Skipped => io::Error::other("skipped after repeated failures (circuit breaker open)"),
            Failure::Failed(e) => e,
        };
        Error::io(format!("remote tier {}: {op} failed", self.inner.shown), source)
    }

    /// Runs `f` on an idle connection, or a new one, unless the breaker is open; `f` is given
    /// the operation's timeout ([`RemoteOptions::op_timeout`]). No lock is held while `f` runs,
    /// so concurrent callers each use their own connection. A connection that failed is dropped
    /// (its state is unknown); one that succeeded goes back to the pool.
    pub(super) fn call<T>(
        &self,
        caller: Caller,
        op: &'static str,
        f: impl FnOnce(&mut Connection, Duration) -> io::Result<T>,
    ) -> std::result::Result<T, Failure> {
        if !self.breaker_allows() {
            return Err(Failure::Skipped);
        }
        let idle = self.inner.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let result = match idle {
            Some(c) => Ok(c),
            None => self.connect(),
        }
        .and_then(|mut c| f(&mut c, self.inner.options.op_timeout).map(|v| (v, c)));
        match result {
            Ok((v, c)) => {
                self.record(caller, op, None);
                let mut idle = self.inner.idle.lock().unwrap_or_else(|p| p.into_inner());
                if idle.len() < MAX_IDLE_CONNECTIONS && c.is_clean() {
                    idle.push(c);
                }
                Ok(v)
            }
            Err(e) => {
                self.record(caller, op, Some(&e));
                Err(Failure::Failed(e))
            }
        }
    }

    /// Idle connections kept now (for tests).
    #[cfg(test)]
    pub(super) fn idle_connections(&self) -> usize {
        self.inner.idle.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub(super) fn connect(&self) -> io::Result<Connection> {
        let s = &self.inner.server;
        Connection::connect(
            &s.host,
            s.port,
            s.username.as_deref(),
            s.password.as_deref(),
            s.db,
            self.inner.options.connect_timeout,
        )
    }

    pub(super) fn breaker_allows(&self) -> bool {
        let b = self.inner.breaker.lock().unwrap_or_else(|p| p.into_inner());
        b.open_until.is_none_or(|until| Instant::now() >= until)
    }

    /// Updates the breaker with an outcome, and logs transitions: the cache tier's first failure
    /// (once until the next success), the breaker opening, the server answering again. A
    /// [`Caller::Client`]'s failure is the client's to report (it gets the error): only a debug
    /// line here.
    pub(super) fn record(&self, caller: Caller, op: &'static str, error: Option<&io::Error>) {
        let opts = &self.inner.options;
        let mut b = self.inner.breaker.lock().unwrap_or_else(|p| p.into_inner());
        let Some(error) = error else {
            if b.consecutive_failures > 0 {
                tracing::info!(remote = %self.inner.shown, "the remote tier answers again");
            }
            *b = Breaker::default();
            return;
        };
        b.consecutive_failures = b.consecutive_failures.saturating_add(1);
        match caller {
            Caller::Cache if !b.cache_warned => {
                b.cache_warned = true;
                if opts.required {
                    tracing::warn!(remote = %self.inner.shown, op, error = %error, "remote tier failed; the cache operation fails (the remote is required)");
                } else {
                    tracing::warn!(remote = %self.inner.shown, op, error = %error, "remote tier failed; the local tier carries on");
                }
            }
            Caller::Cache => {
                tracing::debug!(remote = %self.inner.shown, op, error = %error, "remote tier failed again");
            }
            Caller::Client => {
                tracing::debug!(remote = %self.inner.shown, op, error = %error, "remote operation failed (its caller reports it)");
            }
        }
        if b.consecutive_failures >= opts.breaker_threshold {
            if b.consecutive_failures == opts.breaker_threshold {
                tracing::warn!(
                    remote = %self.inner.shown,
                    failures = b.consecutive_failures,
                    cooldown_ms = opts.breaker_cooldown.as_millis() as u64,
                    "remote tier failing repeatedly; skipping it for the cool-down"
                );
            }
            b.open_until = Some(Instant::now() + opts.breaker_cooldown);
        }
    }
}
