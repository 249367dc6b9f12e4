//! [`RemoteOptions`]: how to reach the remote tier and how to use it, and the fleet key file.

use std::fmt;
use std::io;
use std::path::Path;
use std::time::Duration;

use super::{DEFAULT_MAX_VALUE_SIZE, DEFAULT_TIMEOUT, MIN_FLEET_KEY_LEN};
use crate::{Error, Result};

/// How to reach the remote tier and how to use it. Made with [`RemoteOptions::new`]; set the
/// fields to change the defaults (more may be added, so it cannot be built as a literal).
#[derive(Clone)]
#[non_exhaustive]
pub struct RemoteOptions {
    /// `redis://HOST[:PORT][/DB]` (user and password may be given as `redis://USER:PASS@HOST`).
    pub url: String,
    /// The fleet key (at least 32 bytes): every value is MAC'd under it, and values without a
    /// valid MAC are refused. Without one, reserved namespaces (compiled code) are not shared.
    pub fleet_key: Option<Vec<u8>>,
    /// Never write to the remote (no publish, no delete).
    pub read_only: bool,
    /// Remote failures are errors (`io`) instead of being logged and skipped.
    pub required: bool,
    /// How long connecting (with the handshake) may take; not zero.
    pub connect_timeout: Duration,
    /// How long one operation may take, its request and its whole reply (plus one second per
    /// [`MIN_TRANSFER_RATE`](super::MIN_TRANSFER_RATE) bytes of value it moves); not zero.
    pub op_timeout: Duration,
    /// The largest content sent or accepted, in bytes; larger entries stay local.
    pub max_value_size: u64,
    /// Consecutive failures that open the circuit breaker.
    pub breaker_threshold: u32,
    /// How long an open breaker skips the remote.
    pub breaker_cooldown: Duration,
    /// How long a published value lives in Redis (`SET … PX`); `None` (the default) keeps it
    /// until the server evicts it. Bound the server itself too (see the module docs).
    pub ttl: Option<Duration>,
}

impl RemoteOptions {
    /// Options for `url` with the defaults: no fleet key, read-write, not required, 500 ms
    /// timeouts, 64 MiB values, breaker open after 3 failures for 30 s, no TTL.
    pub fn new(url: impl Into<String>) -> RemoteOptions {
        RemoteOptions {
            url: url.into(),
            fleet_key: None,
            read_only: false,
            required: false,
            connect_timeout: DEFAULT_TIMEOUT,
            op_timeout: DEFAULT_TIMEOUT,
            max_value_size: DEFAULT_MAX_VALUE_SIZE,
            breaker_threshold: 3,
            breaker_cooldown: Duration::from_secs(30),
            ttl: None,
        }
    }
}

/// Reads a fleet key file: its bytes, as they are, are the key; at least 32 are required
/// (e.g. `head -c 32 /dev/urandom > fleet.key`).
pub fn read_fleet_key(path: &Path) -> Result<Vec<u8>> {
    let key =
        std::fs::read(path).map_err(|e| Error::io(format!("cannot read fleet key file {}", path.display()), e))?;
    if key.len() < MIN_FLEET_KEY_LEN {
        return Err(Error::io(
            format!("invalid fleet key file {}", path.display()),
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "it holds {} bytes; a fleet key must hold at least {MIN_FLEET_KEY_LEN} random bytes \
                     (e.g. `head -c 32 /dev/urandom > FILE`)",
                    key.len()
                ),
            ),
        ));
    }
    Ok(key)
}

impl fmt::Debug for RemoteOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteOptions")
            .field("url", &redact(&self.url))
            .field("fleet_key", &self.fleet_key.as_ref().map(|_| "<redacted>"))
            .field("read_only", &self.read_only)
            .field("required", &self.required)
            .field("connect_timeout", &self.connect_timeout)
            .field("op_timeout", &self.op_timeout)
            .field("max_value_size", &self.max_value_size)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// The URL without its password, for messages.
pub(super) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}<credentials>{}", &url[..s + 3], &url[at..]),
        _ => url.to_string(),
    }
}
