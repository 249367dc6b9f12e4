//! The remote tier: a cache shared by a fleet of hosts through Redis.
//!
//! [`RemoteTier`] talks to one Redis server (or anything speaking its protocol: Valkey, KeyDB)
//! over blocking sockets, with a small client of its own that bounds every operation in time and
//! every reply in size (see [Failures](#failures)); [`TieredStore`] puts a local [`Namespace`] in
//! front of it (read-through and write-through).
//!
//! # Values
//!
//! An entry of namespace `NS` under key `K` is the Redis string `filecache:v1:NS:<K in hex>`,
//! holding the same 64-byte header as a local entry file (magic, version, length, CRC32C of the
//! content, key; see [`crate::entry`]) followed by the content. `NS` is the local namespace's
//! name, so a namespace that reaches the remote must have one of its own: [`TieredStore::new`]
//! refuses a namespace opened by [`Namespace::open_dir`] (use [`Namespace::open_dir_named`]).
//!
//! With a fleet key ([`RemoteOptions::fleet_key`]), every value, of every namespace, is followed
//! by a 32-byte HMAC-SHA256, under that key, of the namespace, the header and the content; a
//! value without a valid MAC is refused. So whoever can write to Redis but does not hold the key
//! cannot plant content in any host's cache. Without a fleet key, plugin namespaces' values carry
//! no MAC (anyone who can write to Redis can then change what the fleet's plugins read, though
//! never past their checksum and size checks), and entries of reserved namespaces (names starting
//! with `.`, e.g. `.compiled`, which holds native code) are neither published nor accepted. Hosts
//! sharing a Redis server must agree on the key: a host with a key refuses the others' values,
//! and one without refuses the keyed hosts' values (as too long for their header).
//!
//! Every value is checked on arrival (header, key, length, size limit, checksum, and the MAC
//! where one is due); one that fails is neither served nor copied to the local tier: it is
//! logged, counted as rejected and as a remote error, and answered as a miss.
//!
//! # Bounding the server
//!
//! A guest can add entries without end, and every one is published. [`RemoteOptions::ttl`] gives
//! each value an expiry; the bound that holds whatever the hosts do is the server's own: run it
//! with `maxmemory <bytes>` and `maxmemory-policy allkeys-lru` (evict the least recently used
//! keys when full), which is how a shared cache should be run anyway.
//!
//! # Connections
//!
//! Each operation takes an idle connection from a small pool or opens a new one, so concurrent
//! callers (instances on other threads, async host functions on a blocking pool) do not queue on
//! one socket; up to [`MAX_IDLE_CONNECTIONS`] are kept for reuse.
//!
//! # Failures
//!
//! Connecting (with the handshake) must end within [`RemoteOptions::connect_timeout`], and each
//! operation (its request and its whole reply, however the server spreads its bytes) within
//! [`RemoteOptions::op_timeout`] (500 ms each by default), plus one second per
//! [`MIN_TRANSFER_RATE`] bytes of value it moves, so that a large value on a slow link is not cut
//! short. A server that trickles its reply fails the operation at that deadline, not at the
//! end of the reply. A reply is never longer than the operation asked for: a value's reply may
//! hold the largest entry it asked for (with its header and MAC), and a reply declaring more is
//! refused before any of it is read, so a server cannot make a host allocate more than its own
//! size limit.
//!
//! After [`RemoteOptions::breaker_threshold`] consecutive failures a circuit breaker skips the
//! remote for [`RemoteOptions::breaker_cooldown`], then lets one attempt through: a dead or
//! stalled remote costs a run about `threshold × timeout` (1.5 s by default) per cool-down.
//! Failures are logged and counted; they reach the caller only when the remote is
//! [`required`](RemoteOptions::required).

mod options;
mod pool;
mod resp;
#[cfg(test)]
mod tests;
mod tiered;
mod value;

use std::fmt;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use options::{RemoteOptions, read_fleet_key};
pub use resp::Reply;
pub use tiered::{DEFAULT_READER_MEMORY, TieredStore};

use self::options::redact;
use self::pool::{Breaker, Caller, Server, invalid};
use self::resp::Connection;
use crate::Counter;
use crate::entry::HEADER_LEN;
use crate::{Error, Key, Namespace, Result};

/// The shortest fleet key accepted, in bytes.
pub const MIN_FLEET_KEY_LEN: usize = 32;
/// The length of the MAC that follows the content of every value under a fleet key.
pub const MAC_LEN: usize = 32;
/// The default largest content sent to or accepted from the remote: 64 MiB.
pub const DEFAULT_MAX_VALUE_SIZE: u64 = 64 << 20;
/// The default connect and per-operation timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);
/// The slowest transfer an operation is given time for: on top of
/// [`RemoteOptions::op_timeout`], an operation that moves a value gets one second per this many
/// bytes of it (16 MiB), so a large value over a slow link is not cut short, while a server
/// trickling a small reply still fails it on time.
pub const MIN_TRANSFER_RATE: u64 = 16 << 20;
/// How many idle connections a tier keeps for reuse.
pub const MAX_IDLE_CONNECTIONS: usize = 8;
const KEY_PREFIX: &str = "filecache:v1:";
const MAC_DOMAIN: &[u8] = b"filecache remote entry v1\0";

/// A shared cache tier in Redis. Cheap to clone; clones share the connections and the breaker.
#[derive(Clone)]
pub struct RemoteTier {
    inner: Arc<Inner>,
}

struct Inner {
    server: Server,
    options: RemoteOptions,
    /// The URL without credentials, for messages.
    shown: String,
    /// Idle connections, at most [`MAX_IDLE_CONNECTIONS`]; a caller takes one or connects.
    idle: Mutex<Vec<Connection>>,
    breaker: Mutex<Breaker>,
}

impl fmt::Debug for RemoteTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteTier")
            .field("options", &self.inner.options)
            .finish()
    }
}

impl RemoteTier {
    /// Checks the options (URL, fleet key length, non-zero timeouts and TTL) and makes a tier. Nothing is connected yet:
    /// the first operation connects (see [`RemoteTier::ping`] to check the server now).
    pub fn new(options: RemoteOptions) -> Result<RemoteTier> {
        let url = &options.url;
        let server = Server::parse(url)?;
        if let Some(key) = &options.fleet_key
            && key.len() < MIN_FLEET_KEY_LEN
        {
            return Err(Error::io(
                "invalid fleet key",
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "it has {} bytes; a fleet key must hold at least {MIN_FLEET_KEY_LEN} random bytes",
                        key.len()
                    ),
                ),
            ));
        }
        if options.breaker_threshold == 0 {
            return Err(invalid(url, "the breaker threshold must be at least 1"));
        }
        if options.connect_timeout.is_zero() || options.op_timeout.is_zero() {
            return Err(invalid(
                url,
                "the connect and operation timeouts must be at least 1 ms (a zero timeout fails every operation)",
            ));
        }
        if options.ttl.is_some_and(|ttl| ttl.as_millis() == 0) {
            return Err(invalid(url, "a TTL must be at least 1 ms"));
        }
        Ok(RemoteTier {
            inner: Arc::new(Inner {
                server,
                shown: redact(url),
                options,
                idle: Mutex::new(Vec::new()),
                breaker: Mutex::new(Breaker::default()),
            }),
        })
    }

    /// The options it was made with.
    pub fn options(&self) -> &RemoteOptions {
        &self.inner.options
    }

    /// Connects (if needed) and pings the server; an error says why it cannot be reached.
    pub fn ping(&self) -> Result<()> {
        self.call(Caller::Client, "ping", |c, timeout| {
            match c.query(&[b"PING"], 0, timeout)? {
                Reply::Status(s) if s == "PONG" => Ok(()),
                other => Err(unexpected(other)),
            }
        })
        .map_err(|f| self.failure_error("ping", f))
    }

    /// Sends one command (`args`, its name first) on a pooled connection, under the tier's
    /// deadline, connection pool and circuit breaker, and answers the server's reply, an error
    /// reply (`-ERR …`, [`Reply::Error`]) included. The bulk strings of the reply may hold
    /// `max_reply` bytes in all (each array element counts 16 more); a reply declaring more is
    /// refused unread. For clients of the same server that need other commands than the tier's
    /// (key-value buckets): a failure here is always an error, whether the tier is
    /// [`required`](RemoteOptions::required) or not, and counts towards the breaker (`op` names
    /// the operation in messages); the tier does not log it (the caller, which has no local
    /// tier to fall back on, reports it).
    pub fn command(&self, op: &'static str, args: &[&[u8]], max_reply: u64) -> Result<Reply> {
        self.call(Caller::Client, op, |c, timeout| c.query_any(args, max_reply, timeout))
            .map_err(|f| self.failure_error(op, f))
    }

    /// The URL of the server, without credentials (for messages).
    pub fn shown_url(&self) -> &str {
        &self.inner.shown
    }

    /// The Redis key of `key` in `namespace`.
    pub fn redis_key(namespace: &str, key: &Key) -> String {
        format!("{KEY_PREFIX}{namespace}:{}", key.hex().as_str())
    }

    /// The verified content of `key` in `namespace` (the local namespace `local`, where the
    /// remote events are counted), at most `max_len` bytes. `None` on a miss, on a value that
    /// fails its checks (logged, counted, never served), on an entry of a reserved namespace
    /// when there is no fleet key, and, unless the tier is required, when the remote fails.
    ///
    /// Fails with [`Error::InvalidNamespace`] for a namespace without a name of its own (see
    /// [`TieredStore::new`]).
    pub fn fetch(&self, local: &Namespace, key: &Key, max_len: u64) -> Result<Option<Vec<u8>>> {
        require_name(local)?;
        let namespace = local.name();
        let reserved = is_reserved(namespace);
        if reserved && self.inner.options.fleet_key.is_none() {
            return Ok(None);
        }
        let max_len = max_len.min(self.inner.options.max_value_size);
        let trailer = self.trailer() as u64;
        // At most one byte over the largest acceptable value, so a larger one is refused
        // without being transferred (GETRANGE's end is inclusive).
        let last = (HEADER_LEN as u64)
            .saturating_add(max_len)
            .saturating_add(trailer)
            .min(i64::MAX as u64 - 1);
        let rkey = Self::redis_key(namespace, key);
        let end = last.to_string();
        let got = self.call(Caller::Cache, "get", |c, timeout| {
            // The reply holds bytes 0 to `last`: at most `last + 1` of them.
            match c.query(&[b"GETRANGE", rkey.as_bytes(), b"0", end.as_bytes()], last + 1, timeout)? {
                Reply::Bulk(v) => Ok(v.unwrap_or_default()),
                other => Err(unexpected(other)),
            }
        });
        let value = match got {
            Ok(v) => v,
            Err(f) => {
                self.failed(local, "get", f)?;
                return Ok(None);
            }
        };
        if value.is_empty() {
            count(local, &[(Counter::RemoteMisses, 1)]);
            return Ok(None);
        }
        if value.len() as u64 > last {
            // Another host's limit may be larger: not damage, just not for this namespace.
            tracing::debug!(remote = %self.inner.shown, key = %rkey, max_len, "remote entry over the size limit");
            count(local, &[(Counter::RemoteMisses, 1)]);
            return Ok(None);
        }
        match self.decode(namespace, key, value, max_len) {
            Ok(content) => {
                count(local, &[(Counter::RemoteHits, 1)]);
                Ok(Some(content))
            }
            Err(reason) => {
                tracing::warn!(remote = %self.inner.shown, key = %rkey, reason, "rejected a value from the remote tier");
                count(local, &[(Counter::Rejected, 1), (Counter::RemoteErrors, 1)]);
                Ok(None)
            }
        }
    }

    /// Stores `content` under `key` in the remote copy of `local`'s namespace (with the
    /// [TTL](RemoteOptions::ttl), if one is set). Does nothing when the tier is read-only, when the
    /// content is over the size limit, or for a reserved namespace without a fleet key. A failure
    /// is logged and counted, and an error only if the tier is required.
    /// Fails with [`Error::InvalidNamespace`] for a namespace without a name of its own.
    pub fn publish(&self, local: &Namespace, key: &Key, content: &[u8]) -> Result<()> {
        require_name(local)?;
        let namespace = local.name();
        let opts = &self.inner.options;
        if opts.read_only || content.len() as u64 > opts.max_value_size {
            return Ok(());
        }
        let Some(value) = self.encode(namespace, key, content) else {
            return Ok(());
        };
        let rkey = Self::redis_key(namespace, key);
        let ttl_ms = opts
            .ttl
            .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX).to_string());
        let done = self.call(Caller::Cache, "set", |c, timeout| {
            let mut args: Vec<&[u8]> = vec![b"SET", rkey.as_bytes(), &value];
            if let Some(ms) = &ttl_ms {
                args.extend([&b"PX"[..], ms.as_bytes()]);
            }
            match c.query(&args, 0, timeout)? {
                Reply::Status(s) if s == "OK" => Ok(()),
                other => Err(unexpected(other)),
            }
        });
        done.or_else(|f| self.failed(local, "set", f))
    }

    /// Removes `key` from the remote copy of `local`'s namespace (not when read-only).
    pub fn remove(&self, local: &Namespace, key: &Key) -> Result<()> {
        require_name(local)?;
        if self.inner.options.read_only {
            return Ok(());
        }
        let rkey = Self::redis_key(local.name(), key);
        let done = self.call(Caller::Cache, "delete", |c, timeout| {
            match c.query(&[b"DEL", rkey.as_bytes()], 0, timeout)? {
                Reply::Integer(_) => Ok(()),
                other => Err(unexpected(other)),
            }
        });
        done.or_else(|f| self.failed(local, "delete", f))
    }
}

/// A reply of another kind than the command has.
fn unexpected(reply: Reply) -> io::Error {
    let what = match reply {
        Reply::Status(s) => format!("the status {:?}", s.chars().take(32).collect::<String>()),
        Reply::Integer(n) => format!("the integer {n}"),
        Reply::Bulk(None) => "a nil reply".to_string(),
        Reply::Bulk(Some(b)) => format!("a bulk reply of {} bytes", b.len()),
        Reply::Array(items) => format!("an array of {} elements", items.len()),
        Reply::Error(e) => format!("the error {:?}", e.chars().take(64).collect::<String>()),
    };
    io::Error::new(io::ErrorKind::InvalidData, format!("unexpected answer: {what}"))
}

/// Refuses a namespace without a name of its own: its remote keys would be every such
/// namespace's.
fn require_name(local: &Namespace) -> Result<()> {
    if local.is_named() {
        return Ok(());
    }
    Err(Error::InvalidNamespace {
        name: local.name().to_string(),
        reason: "a namespace opened with Namespace::open_dir has no name of its own, and the remote tier keeps \
                 entries by namespace name: open it with Namespace::open_dir_named (or FileCache::namespace)",
    })
}

fn is_reserved(namespace: &str) -> bool {
    namespace.starts_with('.')
}

/// Adds to a namespace's counters; statistics only, so a failure is logged, not returned.
fn count(local: &Namespace, deltas: &[(Counter, u64)]) {
    if let Err(e) = local.count(deltas) {
        tracing::debug!(namespace = local.name(), error = %e.full_message(), "cannot update counters");
    }
}
