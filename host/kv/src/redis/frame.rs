//! The frame of a value in Redis: magic, version, CRC32C of key, version and value, the value,
//! and with a fleet key an HMAC-SHA256 of the namespace, the key and all of that.

use filecache_store::entry::Checksum;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::RedisEngine;
use crate::{Error, Result, Version, short};

const MAGIC: &[u8; 4] = b"fkv1";
/// Magic, version, CRC32C.
pub(super) const HEAD: usize = 16;
pub(super) const MAC_LEN: usize = 32;
const MAC_DOMAIN: &[u8] = b"filecache kv value v1\0";

/// A value as read: its content and version, or why it is refused.
pub(super) enum Read {
    Missing,
    Found(Vec<u8>, Version),
}

impl RedisEngine {
    pub(super) fn trailer(&self) -> usize {
        if self.tier.options().fleet_key.is_some() {
            MAC_LEN
        } else {
            0
        }
    }

    /// The longest stored value accepted (an acceptable value, framed).
    pub(super) fn max_stored(&self) -> u64 {
        (HEAD as u64 + self.trailer() as u64).saturating_add(self.max_value)
    }

    fn mac(&self, key: &str) -> Option<Hmac<Sha256>> {
        let fleet_key = self.tier.options().fleet_key.as_ref()?;
        let mut mac = Hmac::<Sha256>::new_from_slice(fleet_key).expect("HMAC takes keys of any length");
        mac.update(MAC_DOMAIN);
        mac.update(&[self.namespace.len() as u8]);
        mac.update(self.namespace.as_bytes());
        mac.update(&(key.len() as u32).to_le_bytes());
        mac.update(key.as_bytes());
        Some(mac)
    }

    fn crc(key: &str, version: &[u8], value: &[u8]) -> u32 {
        let mut c = Checksum::default();
        c.update(key.as_bytes());
        c.update(version);
        c.update(value);
        c.value()
    }

    pub(super) fn encode(&self, key: &str, version: Version, value: &[u8]) -> Vec<u8> {
        let v = version.0.to_le_bytes();
        let mut out = Vec::with_capacity(HEAD + value.len() + self.trailer());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&v);
        out.extend_from_slice(&Self::crc(key, &v, value).to_le_bytes());
        out.extend_from_slice(value);
        if let Some(mut mac) = self.mac(key) {
            mac.update(&out);
            out.extend_from_slice(&mac.finalize().into_bytes());
        }
        out
    }

    /// Checks a stored value (at most [`max_stored`](Self::max_stored) + 1 bytes of it).
    pub(super) fn decode(&self, key: &str, mut stored: Vec<u8>) -> Result<Read> {
        if stored.is_empty() {
            return Ok(Read::Missing);
        }
        if stored.len() as u64 > self.max_stored() {
            // Written by a host with a larger limit: not damage, but not for this host.
            return Err(filecache_store::Error::TooLarge { limit: self.max_value }.into());
        }
        let reject = |reason: &'static str| {
            tracing::warn!(
                server = %self.tier.shown_url(),
                namespace = %self.namespace,
                key = %short(key),
                reason,
                "refused a key-value value from Redis"
            );
            Error::Rejected {
                namespace: self.namespace.clone(),
                key: short(key),
                reason,
            }
        };
        let trailer = self.trailer();
        if stored.len() < HEAD + trailer {
            return Err(reject(if trailer > 0 {
                "shorter than a frame and a MAC"
            } else {
                "shorter than a frame"
            }));
        }
        if let Some(mut mac) = self.mac(key) {
            let (body, tag) = stored.split_at(stored.len() - MAC_LEN);
            mac.update(body);
            mac.verify_slice(tag)
                .map_err(|_| reject("MAC mismatch (not written under this host's fleet key)"))?;
            stored.truncate(stored.len() - MAC_LEN);
        }
        if &stored[..4] != MAGIC {
            return Err(reject("not a key-value value (no frame)"));
        }
        let v: [u8; 8] = stored[4..12].try_into().expect("checked length");
        let crc = u32::from_le_bytes(stored[12..16].try_into().expect("checked length"));
        if Self::crc(key, &v, &stored[HEAD..]) != crc {
            return Err(reject("checksum mismatch"));
        }
        stored.drain(..HEAD);
        Ok(Read::Found(stored, Version(u64::from_le_bytes(v))))
    }
}
