//! [`RedisEngine::buckets`]: every bucket on a server, with its usage (for `filecache stats
//! --remote`: what a fleet holds, whichever hosts wrote it).

use std::io;

use filecache_store::NamespaceOptions;
use filecache_store::remote::{RemoteTier, Reply};

use super::RedisEngine;
use crate::{Result, Usage};

/// The most buckets [`RedisEngine::buckets`] lists: more is refused rather than held.
pub const MAX_BUCKETS_LISTED: usize = 100_000;

/// `SCAN`'s `COUNT` hint per step.
const SCAN_STEP: usize = 1000;

/// `filecache:kv1:{`, before a bucket's namespace; `}:meta` after it, for its usage hash.
const META_HEAD: &[u8] = b"filecache:kv1:{";
const META_TAIL: &[u8] = b"}:meta";

impl RedisEngine {
    /// Every bucket on `tier`'s server that was ever written (its usage hash exists), sorted
    /// by namespace, with its keys and the bytes charged to its namespace's quota. A `SCAN` of
    /// the keyspace: a bucket created or removed meanwhile may or may not be listed. Usage is
    /// the server's count, not checked against the fleet key (it holds no values).
    pub fn buckets(tier: &RemoteTier) -> Result<Vec<(String, Usage)>> {
        let mut pattern = META_HEAD.to_vec();
        pattern.push(b'*');
        pattern.extend_from_slice(META_TAIL);
        let count = SCAN_STEP.to_string();
        // SCAN's COUNT is a hint: allow four times as many keys as asked, of the longest name.
        let bound = (SCAN_STEP as u64 * 4 + 16) * (META_HEAD.len() + META_TAIL.len() + 64 + 16) as u64 + 64;
        let mut names = Vec::new();
        let mut cursor = "0".to_string();
        loop {
            let reply = tier.command(
                "list buckets",
                &[
                    b"SCAN",
                    cursor.as_bytes(),
                    b"MATCH",
                    &pattern,
                    b"COUNT",
                    count.as_bytes(),
                ],
                bound,
            )?;
            let (next, keys) = match reply {
                Reply::Array(mut parts) if parts.len() == 2 => match (parts.pop(), parts.pop()) {
                    (Some(Reply::Array(keys)), Some(Reply::Bulk(Some(next)))) => (next, keys),
                    _ => return Err(unexpected(tier, "a SCAN reply of another shape")),
                },
                _ => return Err(unexpected(tier, "a SCAN reply of another shape")),
            };
            for key in keys {
                let Reply::Bulk(Some(key)) = key else {
                    return Err(unexpected(tier, "a SCAN key that is not a string"));
                };
                let name = key
                    .strip_prefix(META_HEAD)
                    .and_then(|rest| rest.strip_suffix(META_TAIL))
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
            cursor = String::from_utf8(next).map_err(|_| unexpected(tier, "a SCAN cursor that is not text"))?;
            if cursor == "0" {
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
