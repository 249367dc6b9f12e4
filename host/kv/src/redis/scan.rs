//! Walking a Redis bucket: listing its keys with `SCAN`, and what goes over all of them
//! (verifying, clearing).

use filecache_store::remote::{RemoteTier, Reply};

use super::RedisEngine;
use super::frame::Read;
use super::scripts::{DELETE_IF, DELETE_MANY};
use crate::{Error, KeyPage, MAX_KEY_LEN, Result, VerifyReport, short};

/// `SCAN` calls one page may take.
const MAX_SCANS_PER_PAGE: usize = 32;

/// Why one `SCAN` step failed, for its caller to say in its own terms.
pub(super) enum ScanError {
    /// The server could not be asked (see [`RemoteTier::command`]).
    Remote(filecache_store::Error),
    /// It answered something that is not a `SCAN` reply: this part of it.
    Unexpected(Reply),
}

/// One `SCAN cursor MATCH pattern COUNT count` on `tier`'s server (`op` names it in messages):
/// the next cursor and the keys it returned, as they are. COUNT is a hint, so the reply is
/// bounded at four times as many keys as asked, each at most `longest_key` bytes.
pub(super) fn scan_step(
    tier: &RemoteTier,
    op: &'static str,
    cursor: u64,
    pattern: &[u8],
    count: usize,
    longest_key: usize,
) -> std::result::Result<(u64, Vec<Vec<u8>>), ScanError> {
    let cursor = cursor.to_string();
    let count_s = count.to_string();
    let bound = ((count as u64).saturating_mul(4) + 16)
        .saturating_mul(longest_key as u64 + 16)
        .saturating_add(64);
    let reply = tier
        .command(
            op,
            &[
                b"SCAN",
                cursor.as_bytes(),
                b"MATCH",
                pattern,
                b"COUNT",
                count_s.as_bytes(),
            ],
            bound,
        )
        .map_err(ScanError::Remote)?;
    let Reply::Array(mut parts) = reply else {
        return Err(ScanError::Unexpected(reply));
    };
    let (Some(Reply::Array(keys)), Some(Reply::Bulk(Some(next))), None) = (parts.pop(), parts.pop(), parts.pop())
    else {
        return Err(ScanError::Unexpected(Reply::Array(parts)));
    };
    let next = std::str::from_utf8(&next)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| ScanError::Unexpected(Reply::Bulk(Some(next.clone()))))?;
    let keys = keys
        .into_iter()
        .map(|k| match k {
            Reply::Bulk(Some(k)) => Ok(k),
            other => Err(ScanError::Unexpected(other)),
        })
        .collect::<std::result::Result<_, _>>()?;
    Ok((next, keys))
}

impl RedisEngine {
    /// One page of `SCAN`: the next cursor and the bucket's keys it returned.
    fn scan(&self, cursor: u64, count: usize) -> Result<(u64, Vec<String>)> {
        let mut pattern = self.prefix.clone();
        pattern.push(b'*');
        let (next, keys) = scan_step(
            &self.tier,
            "list-keys",
            cursor,
            &pattern,
            count,
            self.prefix.len() + MAX_KEY_LEN,
        )
        .map_err(|e| match e {
            ScanError::Remote(e) => self.remote(e),
            ScanError::Unexpected(reply) => self.unexpected("list-keys", &reply),
        })?;
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let Some(rest) = k.strip_prefix(&self.prefix[..]) else {
                continue; // not ours (a server answering past its MATCH)
            };
            match String::from_utf8(rest.to_vec()) {
                Ok(s) if s.len() <= MAX_KEY_LEN => out.push(s),
                _ => tracing::warn!(
                    namespace = %self.namespace,
                    "a key in the shared bucket is not UTF-8 or too long (not written by filecache): left out"
                ),
            }
        }
        Ok((next, out))
    }

    fn remove_damaged(&self, key: &str, stored: &[u8]) -> Result<()> {
        let plen = self.prefix.len().to_string();
        let dkey = self.data_key(key);
        match self.eval(&DELETE_IF, &[&self.meta, &dkey], &[plen.as_bytes(), stored], 16)? {
            Reply::Integer(_) => Ok(()),
            other => Err(self.unexpected("remove damaged", &other)),
        }
    }

    /// The stored bytes of `key`, unchecked (for `verify`).
    fn raw(&self, key: &str) -> Result<Vec<u8>> {
        let last = self.max_stored().min(i64::MAX as u64 - 1);
        let end = last.to_string();
        let dkey = self.data_key(key);
        match self.command("verify", &[b"GETRANGE", &dkey, b"0", end.as_bytes()], last + 1)? {
            Reply::Bulk(v) => Ok(v.unwrap_or_default()),
            other => Err(self.unexpected("verify", &other)),
        }
    }

    /// [`Engine::list_keys`](crate::Engine::list_keys): `SCAN` steps of a quarter of the page each,
    /// until the page is full or the scan is done.
    pub(super) fn list_page(&self, from: u64, limit: usize) -> Result<KeyPage> {
        let step = (limit / 4).max(1);
        let mut keys = Vec::new();
        let mut cursor = from;
        for _ in 0..MAX_SCANS_PER_PAGE {
            let (next, found) = self.scan(cursor, step)?;
            keys.extend(found);
            cursor = next;
            // Another step could take the page past `limit`.
            if cursor == 0 || keys.len() + step > limit {
                break;
            }
        }
        Ok(KeyPage {
            keys,
            next: (cursor != 0).then_some(cursor),
        })
    }

    /// [`Engine::verify`](crate::Engine::verify): every value of the bucket checked; one that fails
    /// its checks is removed (unless read-only) and reported.
    pub(super) fn verify_values(&self) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let mut from = 0;
        loop {
            let page = self.list_page(from, crate::MAX_PAGE)?;
            for key in page.keys {
                let stored = self.raw(&key)?;
                match self.decode(&key, stored.clone()) {
                    Ok(Read::Found(..)) => report.ok += 1,
                    Ok(Read::Missing) => {}
                    Err(Error::Rejected { reason, .. }) => {
                        if !self.read_only {
                            self.remove_damaged(&key, &stored)?;
                        }
                        report.damaged.push((short(&key), reason));
                    }
                    // Over this host's size limit: another host's value, not damage.
                    Err(Error::Store(filecache_store::Error::TooLarge { .. })) => {}
                    Err(e) => return Err(e),
                }
            }
            match page.next {
                Some(n) => from = n,
                None => return Ok(report),
            }
        }
    }

    /// [`Engine::clear`](crate::Engine::clear): every key of the bucket removed, a page at a time,
    /// by [`DELETE_MANY`].
    pub(super) fn clear_all(&self) -> Result<u64> {
        self.check_writable()?;
        let mut removed = 0u64;
        let mut from = 0;
        loop {
            let page = self.list_page(from, crate::MAX_PAGE)?;
            if !page.keys.is_empty() {
                let dkeys: Vec<Vec<u8>> = page.keys.iter().map(|k| self.data_key(k)).collect();
                let mut all: Vec<&[u8]> = vec![&self.meta];
                all.extend(dkeys.iter().map(Vec::as_slice));
                let plen = self.prefix.len().to_string();
                match self.eval(&DELETE_MANY, &all, &[plen.as_bytes()], 16)? {
                    Reply::Integer(n) => removed += n.max(0) as u64,
                    other => return Err(self.unexpected("clear", &other)),
                }
            }
            match page.next {
                Some(n) => from = n,
                None => return Ok(removed),
            }
        }
    }
}
