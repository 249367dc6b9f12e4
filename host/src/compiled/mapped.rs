//! Loading artifacts straight from their cache files.
//!
//! An artifact entry keeps the artifact exactly as wasmtime serialized it (an ELF image) at
//! offset 0 of its file, the store's header after the content
//! ([`Layout::Trailing`](filecache_store::entry::Layout::Trailing)), so wasmtime can map the file
//! itself (`Component::deserialize_file` on the open file, `Module::deserialize_open_file`).
//! Its code then runs from the page cache without a copy, and a module's initial linear-memory
//! image (for a componentize-py plugin, the whole initialized Python interpreter: 11.9 MB) is
//! mapped copy-on-write from the same file at instantiation instead of being copied into a fresh
//! `memfd` on every load, which is what wasmtime does with memory it did not map from a file.
//! wasmtime owns the mapping and unmaps it when the last `Component` made from it is dropped;
//! its own code memory makes the code executable (with whatever instruction-cache maintenance
//! the CPU needs), so no engine configuration is involved.
//!
//! # Where
//!
//! Linux ([`ZERO_COPY_SUPPORTED`]): the open entry file, whose header and MAC were checked, is
//! handed to wasmtime as `/proc/thread-self/fd/N`, which names that very file (not whatever has
//! its name now), in the calling thread's own descriptor table (a thread that unshared its table
//! with `unshare(CLONE_FILES)` has descriptors the process's `/proc/self/fd` does not show).
//! Elsewhere, or where `/proc` is missing, each artifact is read into memory, checked there, and
//! copied into wasmtime's memory (still without compiling).
//!
//! Only from local filesystems: a file on NFS, SMB/CIFS, FUSE, 9p, overlayfs (whose lower layer
//! may be any of those) or any filesystem not known to be local is read into memory instead of
//! mapped, because a page of a mapping that such a filesystem cannot produce later (the file
//! replaced or evicted on the server, the connection lost) kills the process with `SIGBUS`, long
//! after the artifact was checked.

use std::fs::File;

use wasmtime::Engine;

use super::{Artifact, Kind};

/// Whether artifacts are loaded from their cache files without copying on this platform (Linux).
/// Elsewhere they are read and copied into wasmtime's memory, still without compiling.
pub const ZERO_COPY_SUPPORTED: bool = cfg!(target_os = "linux");

pub(crate) use imp::{Mapping, can_map, can_reopen, deserialize_open, read_exact_at};
#[cfg(all(test, target_os = "linux"))]
pub(crate) use imp::{pretending_no_proc, pretending_not_local, pretending_transient_failure};

#[cfg(target_os = "linux")]
mod imp {
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

    #[cfg(test)]
    thread_local! {
        static PRETEND_NOT_LOCAL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
        static PRETEND_NO_PROC: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
        static PRETEND_TRANSIENT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// Runs `f` with the pretence `flag` on (this thread only).
    #[cfg(test)]
    fn pretending<T>(flag: &'static std::thread::LocalKey<std::cell::Cell<bool>>, f: impl FnOnce() -> T) -> T {
        flag.with(|p| p.set(true));
        let r = f();
        flag.with(|p| p.set(false));
        r
    }

    /// Runs `f` as if every file were on a filesystem that is not local (this thread only).
    #[cfg(test)]
    pub(crate) fn pretending_not_local<T>(f: impl FnOnce() -> T) -> T {
        pretending(&PRETEND_NOT_LOCAL, f)
    }

    /// Runs `f` as if `/proc` were not mounted (this thread only): wasmtime cannot open an
    /// artifact file again.
    #[cfg(test)]
    pub(crate) fn pretending_no_proc<T>(f: impl FnOnce() -> T) -> T {
        pretending(&PRETEND_NO_PROC, f)
    }

    /// Runs `f` as if every attempt to open an artifact file again failed with `EMFILE` (too
    /// many open files: a failure that passes) (this thread only).
    #[cfg(test)]
    pub(crate) fn pretending_transient_failure<T>(f: impl FnOnce() -> T) -> T {
        pretending(&PRETEND_TRANSIENT, f)
    }

    /// Where the calling thread's open files are named (see the module docs).
    fn proc_fd_dir() -> &'static str {
        #[cfg(test)]
        if PRETEND_NO_PROC.with(|p| p.get()) {
            return "/nonexistent-proc/thread-self/fd";
        }
        "/proc/thread-self/fd"
    }

    /// Whether an open file can be opened again by name here (`/proc` is mounted): if not,
    /// [`deserialize_open`] always fails, and artifacts are better read at once.
    pub(crate) fn can_reopen() -> bool {
        std::path::Path::new(proc_fd_dir()).is_dir()
    }

    /// Whether `file` is on a filesystem known to be local (see the module docs).
    pub(crate) fn can_map(file: &File) -> bool {
        #[cfg(test)]
        if PRETEND_NOT_LOCAL.with(|p| p.get()) {
            return false;
        }
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
            let ptr =
                unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, ProtFlags::READ, MapFlags::PRIVATE, file, 0) }?;
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
        #[cfg(test)]
        if PRETEND_NO_PROC.with(|p| p.get()) && kind == Kind::Module {
            return Err(wasmtime::Error::msg("pretending there is no /proc"));
        }
        #[cfg(test)]
        if PRETEND_TRANSIENT.with(|p| p.get()) {
            return Err(wasmtime::Error::new(std::io::Error::from_raw_os_error(
                rustix::io::Errno::MFILE.raw_os_error(),
            )));
        }
        // SAFETY: forwarded to the caller.
        unsafe {
            Ok(match kind {
                // The magic link names the open file itself, even if its name was replaced
                // since: wasmtime opens (and maps) exactly what was checked.
                Kind::Component => Artifact::Component(Component::deserialize_file(
                    engine,
                    format!("{}/{}", proc_fd_dir(), file.as_raw_fd()),
                )?),
                Kind::Module => Artifact::Module(Module::deserialize_open_file(engine, file.try_clone()?)?),
            })
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
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
}
