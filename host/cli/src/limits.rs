//! Resource limits per instance, shared by `run` (set with `-W max-memory-size=`, `-W timeout=`,
//! `-W fuel=`) and `serve` (per request): linear memory through a [`wasmtime::ResourceLimiter`],
//! wall time through epoch interruption, computation through fuel. Each limit, when hit, stops
//! the instance with an error that names the limit and how to raise it.

use std::time::Duration;

use filecache_host::size::format_size;

/// The limits asked for; `None` is no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes each linear memory may grow to.
    pub max_memory_size: Option<u64>,
    /// Wall time the instance may run.
    pub timeout: Option<Duration>,
    /// Fuel the instance may consume (about one unit per WebAssembly instruction).
    pub fuel: Option<u64>,
}

/// The memory limit of one store, as its [`wasmtime::ResourceLimiter`]. `flag` is how the user
/// set it, for the message.
pub struct MemoryLimit {
    pub max: Option<u64>,
    pub flag: &'static str,
}

/// The error an instance stopped by its memory limit traps with.
#[derive(Debug)]
pub struct MemoryExceeded {
    desired: usize,
    max: u64,
    flag: &'static str,
}

impl std::fmt::Display for MemoryExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "asked for {} bytes of linear memory, over {} ({} bytes, {})",
            self.desired,
            self.flag,
            self.max,
            format_size(self.max)
        )
    }
}

impl std::error::Error for MemoryExceeded {}

impl wasmtime::ResourceLimiter for MemoryLimit {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        match self.max {
            Some(max) if desired as u64 > max => Err(wasmtime::Error::new(MemoryExceeded {
                desired,
                max,
                flag: self.flag,
            })),
            _ => Ok(true),
        }
    }

    fn table_growing(&mut self, _current: usize, _desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(true)
    }
}

/// Which limit stopped an instance, if one did: the memory limit, wall time (an epoch
/// interruption) or fuel.
pub enum Hit<'a> {
    Memory(&'a MemoryExceeded),
    Timeout,
    Fuel,
}

impl Hit<'_> {
    /// The limit `error` reports, if any.
    pub fn of(error: &wasmtime::Error) -> Option<Hit<'_>> {
        if let Some(m) = error.downcast_ref::<MemoryExceeded>() {
            return Some(Hit::Memory(m));
        }
        match error.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => Some(Hit::Timeout),
            Some(wasmtime::Trap::OutOfFuel) => Some(Hit::Fuel),
            _ => None,
        }
    }
}
