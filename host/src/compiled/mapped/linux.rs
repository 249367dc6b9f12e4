//! Linux: artifacts mapped by wasmtime from `/proc/thread-self/fd/N`.

use super::*;

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::ptr::NonNull;

use rustix::mm::{MapFlags, ProtFlags};
use wasmtime::Module;
use wasmtime::component::Component;

/// Filesystems known to be local: a mapped page of theirs can always be read back.
/// (`statfs(2)` magic numbers.)
const LOCAL_FILESYSTEMS: &[i64] = &[
    0xEF53,      // ext2, ext3, ext4
    0x5846_5342, // xfs
    0x9123_683E, // btrfs
    0x0102_1994, // tmpfs
    0x8584_58F6, // ramfs
    0x2FC1_2FC1, // zfs
    0xF2F5_2010, // f2fs
    0xCA45_1A4E, // bcachefs
    0x5265_4973, // reiserfs
    0x3153_464A, // jfs
    0x7371_7368, // squashfs
    0xE0F5_E1E2, // erofs
];

/// Where the calling thread's open files are named (see the module docs).
const PROC_FD_DIR: &str = "/proc/thread-self/fd";

/// Whether an open file can be opened again by name here (`/proc` is mounted): if not,
/// [`deserialize_open`] always fails, and artifacts are better read at once.
pub(crate) fn can_reopen() -> bool {
    std::path::Path::new(PROC_FD_DIR).is_dir()
}

/// Whether `file` is on a filesystem known to be local (see the module docs).
pub(crate) fn can_map(file: &File) -> bool {
    match rustix::fs::fstatfs(file) {
        // `f_type`'s type differs between C libraries (glibc's `i64`, musl's `u64`).
        #[allow(clippy::unnecessary_cast)]
        Ok(st) => LOCAL_FILESYSTEMS.contains(&(st.f_type as i64)),
        Err(_) => false,
    }
}

/// Reads exactly `buf.len()` bytes of `file` at `offset`.
pub(crate) fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    FileExt::read_exact_at(file, buf, offset)
}

/// A private, read-only memory map of the first `len` bytes of a file, for checking its MAC
/// without reading it into the heap; unmapped on drop.
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    /// Maps `len` bytes of `file` from its start. `len` must be at most the file's size, and
    /// the file must not be written in place while mapped (cache entries never are, and the
    /// caller checks that no other user can write it).
    pub(crate) fn map(file: &File, len: usize) -> std::io::Result<Mapping> {
        if len == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "empty file"));
        }
        // SAFETY: a fresh private read-only mapping, at an address the kernel chooses, of
        // `len` bytes of a regular file at least that long (so every page is backed), on a
        // local filesystem (`can_map`), which is never written in place.
        let ptr = unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, ProtFlags::READ, MapFlags::PRIVATE, file, 0) }?;
        Ok(Mapping {
            ptr: NonNull::new(ptr.cast()).ok_or_else(|| std::io::Error::other("mmap returned null"))?,
            len,
        })
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `len` bytes mapped readable at `ptr`, alive as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: mapped by `map`; nothing borrowed from `bytes` outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Deserializes the artifact at the start of the open entry file `file`, which wasmtime
/// maps itself (see the module docs).
///
/// # Safety
/// As for `Component::deserialize_file`: the file holds, from its start, an artifact that an
/// engine of this configuration serialized (authenticated by the caller), and it is not
/// changed while wasmtime maps it (cache entries are replaced by rename, never written in
/// place, and the caller checked that no other user can write it).
pub(crate) unsafe fn deserialize_open(engine: &Engine, kind: Kind, file: &File) -> wasmtime::Result<Artifact> {
    // SAFETY: forwarded to the caller.
    unsafe {
        Ok(match kind {
            // The magic link names the open file itself, even if its name was replaced
            // since: wasmtime opens (and maps) exactly what was checked.
            Kind::Component => Artifact::Component(Component::deserialize_file(
                engine,
                format!("{PROC_FD_DIR}/{}", file.as_raw_fd()),
            )?),
            Kind::Module => Artifact::Module(Module::deserialize_open_file(engine, file.try_clone()?)?),
        })
    }
}
