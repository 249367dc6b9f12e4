//! The artifact entry format and its MAC.
//!
//! An artifact entry's content is the artifact exactly as wasmtime serialized it (so that it
//! starts the file, for wasmtime to map), then a 96-byte header: 64 bytes of fields (magic, kind,
//! where the artifact starts and its length, the key) and a keyed BLAKE3 MAC, under the cache's
//! secret, over the fields and the artifact. The store's own header follows the content.

use std::any::Any;

use wasmtime::component::Component;
use wasmtime::{Engine, Module};

use super::Kind;
use super::secret::mac;
use crate::Key;

const MAGIC: [u8; 8] = *b"FCCOMP01";
/// Bytes of an artifact entry's own header: the fields (64) and the MAC (32).
pub(super) const ARTIFACT_HEADER: usize = 96;
/// Bytes of the header's fields, which the MAC follows.
const FIELDS: usize = 64;

/// Compiled code in memory: a component or a core module.
#[derive(Clone)]
pub(super) enum Artifact {
    Component(Component),
    Module(Module),
}

impl Artifact {
    /// A component or a module (the only [`Compiled`](super::Compiled) types).
    pub(super) fn of<T: super::Compiled>(compiled: &T) -> Artifact {
        let any: &dyn Any = compiled;
        match (any.downcast_ref::<Component>(), any.downcast_ref::<Module>()) {
            (Some(c), _) => Artifact::Component(c.clone()),
            (_, Some(m)) => Artifact::Module(m.clone()),
            (None, None) => unreachable!("`Compiled` is sealed: a component or a module"),
        }
    }

    /// The component or module, if it is a `T`.
    pub(super) fn downcast<T: super::Compiled>(self) -> Option<T> {
        let any: Box<dyn Any> = match self {
            Artifact::Component(c) => Box::new(c),
            Artifact::Module(m) => Box::new(m),
        };
        any.downcast::<T>().ok().map(|t| *t)
    }

    /// Compiles `wasm` as `kind`.
    pub(super) fn compile(engine: &Engine, kind: Kind, wasm: &[u8]) -> wasmtime::Result<Artifact> {
        Ok(match kind {
            Kind::Component => Artifact::Component(Component::new(engine, wasm)?),
            Kind::Module => Artifact::Module(Module::new(engine, wasm)?),
        })
    }

    /// The artifact as wasmtime serializes it.
    pub(super) fn serialize(&self) -> wasmtime::Result<Vec<u8>> {
        match self {
            Artifact::Component(c) => c.serialize(),
            Artifact::Module(m) => m.serialize(),
        }
    }

    /// # Safety
    /// As for `Component::deserialize`.
    pub(super) unsafe fn deserialize(engine: &Engine, kind: Kind, bytes: &[u8]) -> wasmtime::Result<Artifact> {
        // SAFETY: forwarded to the caller.
        unsafe {
            Ok(match kind {
                Kind::Component => Artifact::Component(Component::deserialize(engine, bytes)?),
                Kind::Module => Artifact::Module(Module::deserialize(engine, bytes)?),
            })
        }
    }
}

/// The fields of an artifact entry's header (which follows the artifact: `offset` is 0).
struct Fields {
    kind: u32,
    offset: u64,
    len: u64,
    key: [u8; 32],
}

impl Fields {
    fn encode(&self) -> [u8; FIELDS] {
        let mut b = [0u8; FIELDS];
        b[..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&self.kind.to_le_bytes());
        b[16..24].copy_from_slice(&self.offset.to_le_bytes());
        b[24..32].copy_from_slice(&self.len.to_le_bytes());
        b[32..64].copy_from_slice(&self.key);
        b
    }

    fn decode(b: &[u8]) -> Option<Fields> {
        if b.len() < FIELDS || b[..8] != MAGIC || b[12..16] != [0; 4] {
            return None;
        }
        Some(Fields {
            kind: u32::from_le_bytes(b[8..12].try_into().ok()?),
            offset: u64::from_le_bytes(b[16..24].try_into().ok()?),
            len: u64::from_le_bytes(b[24..32].try_into().ok()?),
            key: b[32..64].try_into().ok()?,
        })
    }
}

/// The header that follows `artifact` in its entry: the fields, then the MAC under `secret`.
pub(super) fn seal(secret: &[u8; 32], kind: Kind, key: &Key, artifact: &[u8]) -> Vec<u8> {
    let fields = Fields {
        kind: kind as u32,
        offset: 0,
        len: artifact.len() as u64,
        key: *key.as_bytes(),
    }
    .encode();
    let tag = mac(secret, &[&fields, artifact]);
    [&fields[..], tag.as_bytes()].concat()
}

/// What a stored entry must be to hold the artifact of `kind` for `key`: its content is
/// `artifact_len` bytes of artifact, then the header.
pub(super) struct Expected<'a> {
    pub(super) kind: Kind,
    pub(super) key: &'a Key,
    pub(super) artifact_len: usize,
}

impl Expected<'_> {
    /// The artifact's length in an entry of `content_len` bytes, or why it holds none.
    pub(super) fn artifact_len(content_len: u64) -> Result<usize, &'static str> {
        let content_len = usize::try_from(content_len).map_err(|_| "too large")?;
        content_len
            .checked_sub(ARTIFACT_HEADER)
            .ok_or("shorter than an artifact header")
    }

    /// Where the header starts in the entry file.
    pub(super) fn header_at(&self) -> u64 {
        self.artifact_len as u64
    }

    /// Checks the header's fields (its first 64 bytes, `fields`) against what is expected.
    pub(super) fn check_fields(&self, fields: &[u8]) -> Result<(), &'static str> {
        let h = Fields::decode(fields).ok_or("not an artifact header")?;
        if h.kind != self.kind as u32 || h.key != *self.key.as_bytes() {
            return Err("made for another key");
        }
        if h.offset != 0 || h.len != self.artifact_len as u64 {
            return Err("artifact bounds do not match the entry");
        }
        Ok(())
    }

    /// Checks the whole content (the first `artifact_len + 96` bytes of `bytes`): the fields,
    /// then, unless `mac` is `None` (verified before), the MAC over every byte of the content
    /// but the MAC itself.
    pub(super) fn check(&self, bytes: &[u8], mac_secret: Option<&[u8; 32]>) -> Result<(), &'static str> {
        let content = bytes.get(..self.artifact_len + ARTIFACT_HEADER).ok_or("truncated")?;
        let (artifact, header) = content.split_at(self.artifact_len);
        self.check_fields(&header[..FIELDS])?;
        if let Some(secret) = mac_secret {
            let expected = mac(secret, &[&header[..FIELDS], artifact]);
            let tag: [u8; 32] = header[FIELDS..].try_into().map_err(|_| "truncated")?;
            // `blake3::Hash` compares in constant time.
            if expected != blake3::Hash::from_bytes(tag) {
                return Err("not authenticated by this cache's secret");
            }
        }
        Ok(())
    }
}
