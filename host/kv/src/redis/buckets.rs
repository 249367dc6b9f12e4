//! [`RedisEngine::buckets`]: every bucket on a server, with its usage (for `filecache stats
//! --remote`: what a fleet holds, whichever hosts wrote it).

use std::io;

use filecache_store::NamespaceOptions;
use filecache_store::remote::RemoteTier;

use super::scan::{ScanError, scan_step};
use super::{KEY_HEAD, META_TAIL, RedisEngine};
use crate::{Result, Usage};

/// The most buckets [`RedisEngine::buckets`] lists: more is refused rather than held.
pub const MAX_BUCKETS_LISTED: usize = 100_000;

/// `SCAN`'s `COUNT` hint per step.
const SCAN_STEP: usize = 1000;

impl RedisEngine {
    /// Every bucket on `tier`'s server that was ever written (its usage hash exists), sorted
    /// by namespace, with its keys and the bytes charged to its namespace's quota. A `SCAN` of
    /// the keyspace: a bucket created or removed meanwhile may or may not be listed. Usage is
    /// the server's count, not checked against the fleet key (it holds no values).
    pub fn buckets(tier: &RemoteTier) -> Result<Vec<(String, Usage)>> {
        let pattern = format!("{KEY_HEAD}*{META_TAIL}");
        let longest = KEY_HEAD.len() + filecache_store::MAX_NAMESPACE_NAME_LEN + META_TAIL.len();
        let mut names = Vec::new();
        let mut cursor = 0;
        loop {
            let (next, keys) = scan_step(tier, "list buckets", cursor, pattern.as_bytes(), SCAN_STEP, longest)
                .map_err(|e| match e {
                    ScanError::Remote(e) => e.into(),
                    ScanError::Unexpected(reply) => unexpected(
                        tier,
                        &format!("a SCAN reply of another shape: {:.80}", format!("{reply:?}")),
                    ),
                })?;
            for key in keys {
                let name = key
                    .strip_prefix(KEY_HEAD.as_bytes())
                    .and_then(|rest| rest.strip_suffix(META_TAIL.as_bytes()))
                    .and_then(|name| std::str::from_utf8(name).ok())
                    .filter(|name| filecache_store::validate_namespace_name(name).is_ok());
                match name {
                    Some(name) => names.push(name.to_string()),
                    // Not written by filecache (or a server answering past its MATCH).
                    None => tracing::debug!(key = %String::from_utf8_lossy(&key), "not a bucket's usage: left out"),
                }
            }
            if names.len() > MAX_BUCKETS_LISTED {
                return Err(unexpected(
                    tier,
                    &format!("more than {MAX_BUCKETS_LISTED} buckets; not listed"),
                ));
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        // A key may be returned more than once (the server resizing its table meanwhile).
        names.sort_unstable();
        names.dedup();
        names
            .into_iter()
            .map(|name| {
                let engine = RedisEngine::new(tier.clone(), &name, &NamespaceOptions::default())?;
                Ok((name, crate::Engine::usage(&engine)?))
            })
            .collect()
    }
}

fn unexpected(tier: &RemoteTier, what: &str) -> crate::Error {
    filecache_store::Error::io(
        format!("remote tier {}: list buckets failed", tier.shown_url()),
        io::Error::new(io::ErrorKind::InvalidData, format!("unexpected answer: {what}")),
    )
    .into()
}
