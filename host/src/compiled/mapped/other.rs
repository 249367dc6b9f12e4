//! Elsewhere: nothing is mapped; artifacts are read and copied.

use super::*;

/// Nothing is mapped here: artifacts are read.
pub(crate) fn can_map(_file: &File) -> bool {
    false
}

/// Not used where nothing is mapped.
pub(crate) fn can_reopen() -> bool {
    false
}

/// Not used where nothing is mapped.
pub(crate) fn read_exact_at(_file: &File, _buf: &mut [u8], _offset: u64) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// Cannot be made here ([`can_map`] is false).
pub(crate) enum Mapping {}

impl Mapping {
    pub(crate) fn map(_file: &File, _len: usize) -> std::io::Result<Mapping> {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "artifacts are not mapped on this platform",
        ))
    }
    pub(crate) fn bytes(&self) -> &[u8] {
        match *self {}
    }
}

/// Not used where nothing is mapped.
///
/// # Safety
/// None needed: it does nothing.
pub(crate) unsafe fn deserialize_open(_engine: &Engine, _kind: Kind, _file: &File) -> wasmtime::Result<Artifact> {
    Err(wasmtime::Error::msg("artifacts are not mapped on this platform"))
}
