//! Executable memory for artifacts mapped straight from cache files.
//!
//! wasmtime can run a deserialized artifact in place (`Component::deserialize_raw`), but it only
//! makes such "externally owned" memory executable through a [`CustomCodeMemory`](wasmtime::CustomCodeMemory) installed in the
//! engine's [`Config`]. [`FileCodeMemory`] is that hook: it changes page protections with
//! `mprotect`, for wasmtime's own code memory and for the cache's mappings alike.
//!
//! # Where
//!
//! Only on x86-64 Linux ([`ZERO_COPY_SUPPORTED`]). Code written through one mapping and run
//! through another needs no instruction-cache maintenance on x86-64; on aarch64 it does (and
//! BTI), which `mprotect` cannot do, so there [`FileCodeMemory::new`] gives `None`,
//! [`configure`] installs nothing, and the cache copies each artifact into wasmtime's own memory
//! (still without compiling). The type cannot be made where it would be wrong.
//!
//! Only from local filesystems: a file on NFS, SMB/CIFS, FUSE, 9p, overlayfs (whose lower layer
//! may be any of those) or any filesystem not known to be local is read into memory instead of
//! mapped, because a page of a mapping that such a filesystem cannot produce later (the file
//! replaced or evicted on the server, the connection lost) kills the process with `SIGBUS`, long
//! after the artifact was checked.
//!
//! # Lifetime
//!
//! A mapping handed to wasmtime must stay mapped, unchanged, for as long as any `Component` made
//! from it lives, and wasmtime offers no notice of when that ends that is safe to unmap on (it
//! calls `unpublish_executable` first, then still reads the memory to deregister unwind tables).
//! So mappings that wasmtime accepted are never unmapped: they are kept in a process-wide
//! registry, by the identity of the file they map, and a later load of the same file (by this
//! `ComponentCache` or any other) reuses the mapping instead of mapping it again; a process that
//! makes a `ComponentCache` per request maps each distinct artifact once. The pages are
//! file-backed and clean, so the kernel can reclaim them under memory pressure. A mapping whose
//! artifact was rejected (before deserializing, or by wasmtime) is unmapped at once.

use std::sync::Arc;

use wasmtime::Config;

/// Whether zero-copy loading is supported on this platform: x86-64 Linux, where instruction
/// caches need no explicit maintenance after code is written, which is all `mprotect` cannot do.
pub const ZERO_COPY_SUPPORTED: bool = cfg!(all(target_arch = "x86_64", target_os = "linux"));

/// Installs [`FileCodeMemory`] in `config`, so that engines made from it can run artifacts
/// mapped from the cache without copying them. Does nothing where zero-copy loading is not
/// supported (the cache then copies artifacts into wasmtime's own memory, still without
/// compiling).
pub fn configure(config: &mut Config) -> &mut Config {
    if let Some(memory) = FileCodeMemory::new() {
        config.with_custom_code_memory(Some(Arc::new(memory)));
    }
    config
}

/// The [`CustomCodeMemory`](wasmtime::CustomCodeMemory) of engines that load artifacts from the cache in place. Exists only
/// where that is correct ([`ZERO_COPY_SUPPORTED`]); install it with [`configure`].
#[derive(Debug)]
pub struct FileCodeMemory {
    _only_where_supported: imp::Supported,
}

impl FileCodeMemory {
    /// The code memory hook, or `None` where zero-copy loading is not supported.
    pub fn new() -> Option<FileCodeMemory> {
        imp::supported().map(|s| FileCodeMemory {
            _only_where_supported: s,
        })
    }
}

/// Bytes of cache files mapped for the life of this process (artifacts loaded without copying).
pub fn kept_bytes() -> usize {
    imp::kept_bytes()
}

pub(crate) use imp::{MappedFile, can_map};
#[cfg(all(test, target_arch = "x86_64", target_os = "linux"))]
pub(crate) use imp::{mappings_of, pretending_not_local};

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod imp {
    use std::fs::File;
    use std::os::unix::fs::MetadataExt;
    use std::ptr::NonNull;
    use std::sync::Mutex;

    use rustix::mm::{MapFlags, MprotectFlags, ProtFlags};

    use super::FileCodeMemory;

    #[derive(Debug)]
    pub(super) struct Supported;

    pub(super) fn supported() -> Option<Supported> {
        Some(Supported)
    }

    /// A mapping wasmtime was given, kept for the life of the process.
    struct Kept {
        start: usize,
        len: usize,
        /// The mapped file: device, inode, length. The mapping holds the inode, so its number
        /// cannot name another file while the mapping lives.
        file: (u64, u64, u64),
        /// Published (executable) code ranges of it: wasmtime's code memory made from it lives.
        published: usize,
        /// A load has it (between mapping or finding it and wasmtime's verdict).
        claimed: bool,
    }

    impl Kept {
        /// Whether a new load may hand it to wasmtime: nothing made from it lives (wasmtime
        /// registers code by address, once: two live code memories cannot share one mapping).
        fn is_free(&self) -> bool {
            self.published == 0 && !self.claimed
        }
    }

    static KEPT: Mutex<Vec<Kept>> = Mutex::new(Vec::new());

    fn kept() -> std::sync::MutexGuard<'static, Vec<Kept>> {
        KEPT.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn kept_bytes() -> usize {
        kept().iter().map(|k| k.len).sum()
    }

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
    }

    /// Runs `f` as if every file were on a filesystem that is not local (this thread only).
    #[cfg(test)]
    pub(crate) fn pretending_not_local<T>(f: impl FnOnce() -> T) -> T {
        PRETEND_NOT_LOCAL.with(|p| p.set(true));
        let r = f();
        PRETEND_NOT_LOCAL.with(|p| p.set(false));
        r
    }

    /// How many kept mappings there are of the file with metadata `meta`.
    #[cfg(test)]
    pub(crate) fn mappings_of(meta: &std::fs::Metadata) -> usize {
        kept()
            .iter()
            .filter(|k| (k.file.0, k.file.1) == (meta.dev(), meta.ino()))
            .count()
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

    impl wasmtime::CustomCodeMemory for FileCodeMemory {
        fn required_alignment(&self) -> usize {
            rustix::param::page_size()
        }

        fn publish_executable(&self, ptr: *const u8, len: usize) -> wasmtime::Result<()> {
            let mut kept = kept();
            // SAFETY: wasmtime passes a page-aligned range of memory it owns or was given (a
            // kept mapping), which nothing writes while it is published: mapped artifacts are
            // read-only, and wasmtime's own code memory is written only before publishing.
            unsafe { rustix::mm::mprotect(ptr as *mut _, len, MprotectFlags::READ | MprotectFlags::EXEC) }
                .map_err(|e| wasmtime::Error::msg(format!("cannot make compiled code executable: {e}")))?;
            if let Some(k) = find(&mut kept, ptr as usize, len) {
                k.published += 1;
            }
            Ok(())
        }

        fn unpublish_executable(&self, ptr: *const u8, len: usize) -> wasmtime::Result<()> {
            // wasmtime's own memory goes back to read-write (it unmaps it next); a kept mapping
            // goes back to read-only, and is free for the next load of its file (wasmtime calls
            // this as the code memory made from it is dropped, after unregistering it). wasmtime
            // panics if this fails, so a failure is logged instead: the range is about to be
            // unmapped or is never run again.
            let mut kept = kept();
            let flags = match find(&mut kept, ptr as usize, len) {
                Some(k) => {
                    k.published = k.published.saturating_sub(1);
                    MprotectFlags::READ
                }
                None => MprotectFlags::READ | MprotectFlags::WRITE,
            };
            // SAFETY: as above; wasmtime guarantees no code runs from the range any more, and
            // for a kept mapping no other use of the range is published.
            if let Err(e) = unsafe { rustix::mm::mprotect(ptr as *mut _, len, flags) } {
                tracing::warn!("cannot reset the protection of unloaded compiled code: {e}");
            }
            Ok(())
        }
    }

    fn find(kept: &mut [Kept], ptr: usize, len: usize) -> Option<&mut Kept> {
        kept.iter_mut().find(|k| ptr >= k.start && ptr + len <= k.start + k.len)
    }

    /// A private, read-only memory map of the first `len` bytes of an entry file: fresh, or one
    /// kept from an earlier load of the same file. A fresh mapping is unmapped on drop unless
    /// [`keep`](Self::keep) was called and [`loaded`](Self::loaded) confirmed it.
    pub(crate) struct MappedFile {
        ptr: NonNull<u8>,
        len: usize,
        file: (u64, u64, u64),
        /// Mapped by this value (not found in the registry).
        fresh: bool,
        /// Registered, for wasmtime to publish.
        registered: bool,
        /// wasmtime accepted it: never unmapped.
        loaded: bool,
    }

    // SAFETY: the mapping is read-only memory that nothing writes to; the raw pointer is only
    // an address of it.
    unsafe impl Send for MappedFile {}
    // SAFETY: as above.
    unsafe impl Sync for MappedFile {}

    impl MappedFile {
        /// Maps `len` bytes of `file` from its start (its metadata `meta`), or finds the mapping
        /// kept from an earlier load of it. `len` must be at most the file's size, and the file
        /// must not be written in place while mapped (cache entries never are, and the caller
        /// checks that no other user can write it).
        pub(crate) fn map(file: &File, meta: &std::fs::Metadata, len: usize) -> std::io::Result<MappedFile> {
            if len == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "empty file"));
            }
            let id = (meta.dev(), meta.ino(), len as u64);
            if let Some(k) = kept().iter_mut().find(|k| k.file == id && k.is_free()) {
                k.claimed = true;
                return Ok(MappedFile {
                    ptr: NonNull::new(k.start as *mut u8).expect("kept mappings are not null"),
                    len: k.len,
                    file: id,
                    fresh: false,
                    registered: true,
                    loaded: false,
                });
            }
            // SAFETY: a fresh private read-only mapping, at an address the kernel chooses, of
            // `len` bytes of a regular file at least that long (so every page is backed), on a
            // local filesystem (`can_map`), which is never written in place.
            let ptr =
                unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, ProtFlags::READ, MapFlags::PRIVATE, file, 0) }?;
            Ok(MappedFile {
                ptr: NonNull::new(ptr.cast()).ok_or_else(|| std::io::Error::other("mmap returned null"))?,
                len,
                file: id,
                fresh: true,
                registered: false,
                loaded: false,
            })
        }

        pub(crate) fn bytes(&self) -> &[u8] {
            // SAFETY: `len` bytes mapped readable at `ptr`, alive as long as `self` (a fresh
            // mapping is unmapped only on drop, a kept one never).
            unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
        }

        /// Registers the mapping (before wasmtime sees it, so that [`FileCodeMemory`] knows it)
        /// and returns the memory of `range`, for `deserialize_raw`.
        pub(crate) fn keep(&mut self, range: std::ops::Range<usize>) -> NonNull<[u8]> {
            assert!(range.start <= range.end && range.end <= self.len);
            if !self.registered {
                kept().push(Kept {
                    start: self.ptr.as_ptr() as usize,
                    len: self.len,
                    file: self.file,
                    published: 0,
                    claimed: true,
                });
                self.registered = true;
            }
            NonNull::from(&self.bytes()[range])
        }

        /// wasmtime accepted the memory: it stays mapped for the life of the process.
        pub(crate) fn loaded(mut self) {
            self.loaded = true;
        }
    }

    impl Drop for MappedFile {
        fn drop(&mut self) {
            let start = self.ptr.as_ptr() as usize;
            if !self.fresh || self.loaded {
                // Kept; the next load may have it once what wasmtime made of it is gone.
                if let Some(k) = kept().iter_mut().find(|k| k.start == start) {
                    k.claimed = false;
                }
                return;
            }
            if self.registered {
                kept().retain(|k| k.start != start);
            }
            // SAFETY: mapped by `map` and not accepted by wasmtime: either never handed to it,
            // or `deserialize_raw` failed, and a failed deserialization leaves nothing that
            // refers to the memory (every object it made is dropped before it returns). Nothing
            // borrowed from `bytes` outlives `self`.
            let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
        }
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
mod imp {
    use std::fs::File;
    use std::ptr::NonNull;

    use super::FileCodeMemory;

    /// No value: [`FileCodeMemory`] cannot be made here.
    #[derive(Debug)]
    pub(super) enum Supported {}

    pub(super) fn supported() -> Option<Supported> {
        None
    }

    pub(super) fn kept_bytes() -> usize {
        0
    }

    /// Nothing is mapped here: artifacts are read.
    pub(crate) fn can_map(_file: &File) -> bool {
        false
    }

    impl wasmtime::CustomCodeMemory for FileCodeMemory {
        fn required_alignment(&self) -> usize {
            match self._only_where_supported {}
        }
        fn publish_executable(&self, _ptr: *const u8, _len: usize) -> wasmtime::Result<()> {
            match self._only_where_supported {}
        }
        fn unpublish_executable(&self, _ptr: *const u8, _len: usize) -> wasmtime::Result<()> {
            match self._only_where_supported {}
        }
    }

    /// Cannot be made here ([`can_map`] is false).
    pub(crate) enum MappedFile {}

    impl MappedFile {
        pub(crate) fn map(_file: &File, _meta: &std::fs::Metadata, _len: usize) -> std::io::Result<MappedFile> {
            Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "artifacts are not mapped on this platform",
            ))
        }
        pub(crate) fn bytes(&self) -> &[u8] {
            match *self {}
        }
        pub(crate) fn keep(&mut self, _range: std::ops::Range<usize>) -> NonNull<[u8]> {
            match *self {}
        }
        pub(crate) fn loaded(self) {
            match self {}
        }
    }
}
