//! The remote form of an entry: its Redis key, and its value (header, content, and the MAC under
//! a fleet key), checked on arrival.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{MAC_DOMAIN, MAC_LEN, RemoteTier, is_reserved};
use crate::Key;
use crate::entry::{Checksum, HEADER_LEN, Header};

impl RemoteTier {
    pub(super) fn mac(&self, namespace: &str) -> Option<Hmac<Sha256>> {
        let key = self.inner.options.fleet_key.as_ref()?;
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
        mac.update(MAC_DOMAIN);
        mac.update(&[namespace.len() as u8]);
        mac.update(namespace.as_bytes());
        Some(mac)
    }

    /// Bytes after the content: a MAC under a fleet key, else none.
    pub(super) fn trailer(&self) -> usize {
        if self.inner.options.fleet_key.is_some() {
            MAC_LEN
        } else {
            0
        }
    }

    /// The value stored for `content`: header, content, and the MAC under a fleet key
    /// (`None` for a reserved namespace without a fleet key).
    pub(crate) fn encode(&self, namespace: &str, key: &Key, content: &[u8]) -> Option<Vec<u8>> {
        if is_reserved(namespace) && self.inner.options.fleet_key.is_none() {
            return None;
        }
        let header = Header {
            len: content.len() as u64,
            crc: Checksum::of(content),
            key: *key,
        }
        .encode();
        let mut value = Vec::with_capacity(HEADER_LEN + content.len() + self.trailer());
        value.extend_from_slice(&header);
        value.extend_from_slice(content);
        if let Some(mut mac) = self.mac(namespace) {
            mac.update(&value);
            value.extend_from_slice(&mac.finalize().into_bytes());
        }
        Some(value)
    }

    /// Checks a value from the remote and returns its content, or why it is refused.
    pub(crate) fn decode(
        &self,
        namespace: &str,
        key: &Key,
        mut value: Vec<u8>,
        max_len: u64,
    ) -> std::result::Result<Vec<u8>, &'static str> {
        if is_reserved(namespace) && self.inner.options.fleet_key.is_none() {
            return Err("no fleet key to check its MAC");
        }
        let trailer = self.trailer();
        if value.len() < HEADER_LEN + trailer {
            return Err(if trailer > 0 {
                "shorter than a header and a MAC"
            } else {
                "shorter than a header"
            });
        }
        if value.len() as u64
            > (HEADER_LEN as u64)
                .saturating_add(max_len)
                .saturating_add(trailer as u64)
        {
            return Err("larger than the size limit");
        }
        if let Some(mut mac) = self.mac(namespace) {
            let (body, tag) = value.split_at(value.len() - MAC_LEN);
            mac.update(body);
            mac.verify_slice(tag)
                .map_err(|_| "MAC mismatch (not written under this fleet key)")?;
            value.truncate(value.len() - MAC_LEN);
        }
        let header_bytes: &[u8; HEADER_LEN] = value[..HEADER_LEN].try_into().expect("checked length");
        let header = Header::decode(header_bytes).map_err(|e| e.describe())?;
        if header.key != *key {
            return Err("written under another key");
        }
        if header.len != (value.len() - HEADER_LEN) as u64 {
            return Err("length does not match the value's size");
        }
        if Checksum::of(&value[HEADER_LEN..]) != header.crc {
            return Err("content checksum mismatch");
        }
        value.drain(..HEADER_LEN);
        Ok(value)
    }
}
