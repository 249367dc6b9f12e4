//! Executable memory for artifacts mapped straight from cache files.
//!
//! wasmtime can run a deserialized artifact in place (`Component::deserialize_raw`), but it only
//! makes such "externally owned" memory executable through a [`CustomCodeMemory`] installed in the
//! engine's [`Config`]. [`FileCodeMemory`] is that hook: it changes page protections with
//! `mprotect`, for wasmtime's own code memory and for the cache's mappings alike.
//!
//! A mapping handed to wasmtime must stay mapped, unchanged, for as long as any `Component` made
//! from it lives, and wasmtime offers no notice of when that ends that is safe to unmap on (it
//! calls `unpublish_executable` first, then still reads the memory to deregister unwind tables).
//! So mappings of the cache are never unmapped: [`Mapping::keep`] records them for the life of the
//! process. The compiled cache keeps one `Component` per artifact in memory, so a process maps each
//! distinct artifact at most once; the pages are file-backed and clean, so the kernel can reclaim
//! them under memory pressure.

use std::fs::File;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use rustix::mm::{MapFlags, MprotectFlags, ProtFlags};
use wasmtime::{Config, CustomCodeMemory};

/// The system's page size.
pub(crate) fn page_size() -> usize {
    rustix::param::page_size()
}

/// Whether zero-copy loading is supported on this platform: where instruction caches need no
/// explicit maintenance after code is written (x86-64), which is all `mprotect` cannot do.
pub const ZERO_COPY_SUPPORTED: bool = cfg!(all(target_arch = "x86_64", target_os = "linux"));

/// Installs [`FileCodeMemory`] in `config`, so that engines made from it can run artifacts
/// mapped from the cache without copying them. Does nothing where zero-copy loading is not
/// supported (the cache then copies artifacts into wasmtime's own memory, still without
/// compiling).
pub fn configure(config: &mut Config) -> &mut Config {
    if ZERO_COPY_SUPPORTED {
        config.with_custom_code_memory(Some(Arc::new(FileCodeMemory)));
    }
    config
}

/// The [`CustomCodeMemory`] of engines that load artifacts from the cache in place.
#[derive(Debug, Default)]
pub struct FileCodeMemory;

/// The ranges of the mappings kept for the life of the process: `(start, len)`.
static KEPT: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());

fn is_kept(ptr: usize, len: usize) -> bool {
    let kept = KEPT.lock().unwrap_or_else(|p| p.into_inner());
    kept.iter().any(|&(start, l)| ptr >= start && ptr + len <= start + l)
}

/// Bytes of cache files mapped for the life of this process (artifacts loaded without copying).
pub fn kept_bytes() -> usize {
    KEPT.lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|&(_, len)| len)
        .sum()
}

impl CustomCodeMemory for FileCodeMemory {
    fn required_alignment(&self) -> usize {
        page_size()
    }

    fn publish_executable(&self, ptr: *const u8, len: usize) -> wasmtime::Result<()> {
        // SAFETY: wasmtime passes a page-aligned range of memory it owns or was given, which
        // nothing else uses while it publishes it.
        unsafe { rustix::mm::mprotect(ptr as *mut _, len, MprotectFlags::READ | MprotectFlags::EXEC) }
            .map_err(|e| wasmtime::Error::msg(format!("cannot make compiled code executable: {e}")))
    }

    fn unpublish_executable(&self, ptr: *const u8, len: usize) -> wasmtime::Result<()> {
        // wasmtime's own memory goes back to read-write (it unmaps it next); a kept mapping of
        // the cache goes back to read-only, as it was mapped. wasmtime panics if this fails, so
        // a failure is logged instead: the range is about to be unmapped or is never used again.
        let flags = if is_kept(ptr as usize, len) {
            MprotectFlags::READ
        } else {
            MprotectFlags::READ | MprotectFlags::WRITE
        };
        // SAFETY: as above; wasmtime guarantees no code runs from the range any more.
        if let Err(e) = unsafe { rustix::mm::mprotect(ptr as *mut _, len, flags) } {
            tracing::warn!("cannot reset the protection of unloaded compiled code: {e}");
        }
        Ok(())
    }
}

/// A private, read-only memory map of a whole file. Unmapped on drop unless [kept](Self::keep).
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is read-only memory that nothing writes to.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `file` from its start. `len` must be at most the file's size, and the
    /// file must not be written in place while mapped (cache entries never are).
    pub(crate) fn map(file: &File, len: usize) -> std::io::Result<Mapping> {
        if len == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "empty file"));
        }
        // SAFETY: a fresh private read-only mapping, at an address the kernel chooses.
        let ptr = unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, ProtFlags::READ, MapFlags::PRIVATE, file, 0) }?;
        Ok(Mapping {
            ptr: NonNull::new(ptr.cast()).expect("mmap never returns null on success"),
            len,
        })
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `len` bytes mapped readable at `ptr`, alive as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// Keeps the mapping for the rest of the process, and returns the memory of `range`.
    pub(crate) fn keep(self, range: std::ops::Range<usize>) -> NonNull<[u8]> {
        assert!(range.start <= range.end && range.end <= self.len);
        KEPT.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((self.ptr.as_ptr() as usize, self.len));
        let bytes = &self.bytes()[range];
        let memory = NonNull::from(bytes);
        std::mem::forget(self);
        memory
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: mapped by `map`, and nothing borrowed from it outlives `self` (see `keep`).
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
