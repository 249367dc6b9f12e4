//! Unix: Linux, macOS, the BSDs.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};

use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt};
use rustix::fs::OFlags;

#[cfg(any(target_os = "linux", target_os = "android"))]
const NOATIME: OFlags = OFlags::NOATIME;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const NOATIME: OFlags = OFlags::empty();

/// Whether [`entry_read_options`] with `extra` asks for more than reading (`O_NOATIME`), which
/// may be refused (`PermissionDenied`): then open again without.
pub(crate) const READ_EXTRA_MAY_BE_REFUSED: bool = !NOATIME.is_empty();

pub(crate) fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    file.read_at(buf, offset)
}

pub(crate) fn write_at(file: &File, buf: &[u8], offset: u64) -> io::Result<usize> {
    file.write_at(buf, offset)
}

/// Reads into `buf`'s spare capacity at `offset` (no zeroing first), returning how many bytes.
pub(crate) fn read_spare(file: &File, buf: &mut Vec<u8>, offset: u64) -> io::Result<usize> {
    rustix::io::pread(file, rustix::buffer::spare_capacity(buf), offset).map_err(io::Error::from)
}

/// Reads at most `max` bytes into `buf`'s spare capacity at `offset`, returning how many.
pub(crate) fn read_spare_upto(file: &File, buf: &mut Vec<u8>, offset: u64, max: usize) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    let n = max.min(spare.len());
    let (read, _) = rustix::io::pread(file, &mut spare[..n], offset).map_err(io::Error::from)?;
    let read = read.len();
    // SAFETY: `pread` initialised the first `read` bytes of the spare capacity (rustix returns
    // exactly the initialised part), which are within the capacity.
    unsafe { buf.set_len(buf.len() + read) };
    Ok(read)
}

/// Options for opening an entry file to read: never blocking on a planted FIFO, and with
/// `extra`, asking not to update its access time (which only the file's owner may ask: if
/// opening fails with `PermissionDenied`, open again without it).
pub(crate) fn entry_read_options(oo: &mut OpenOptions, extra: bool) {
    let flags = if extra {
        OFlags::NONBLOCK | NOATIME
    } else {
        OFlags::NONBLOCK
    };
    oo.custom_flags(flags.bits() as i32);
}

/// Options for opening a file that may not be a regular file without blocking.
pub(crate) fn nonblocking(oo: &mut OpenOptions) {
    oo.custom_flags(OFlags::NONBLOCK.bits() as i32);
}

/// Files the namespace creates are readable and writable by their owner only.
pub(crate) fn owner_only(oo: &mut OpenOptions) {
    oo.mode(0o600);
}

/// fsyncs the directory `rel` of `dir` (not through `open_dir_nofollow`: its `O_PATH` handle
/// cannot be fsynced, EBADF).
pub(crate) fn sync_dir(dir: &Dir, rel: &str) -> io::Result<()> {
    let mut oo = OpenOptions::new();
    oo.read(true)
        .follow(FollowSymlinks::No)
        .custom_flags(OFlags::DIRECTORY.bits() as i32);
    dir.open_with(rel, &oo)?.sync_all()
}

/// Removes the file (or symlink) `rel` of `dir`. (`_scratch` is for Windows.)
pub(crate) fn remove_file(dir: &Dir, rel: &str, _scratch: &Dir) -> io::Result<()> {
    use cap_fs_ext::DirExt;
    dir.remove_file_or_symlink(rel)
}

/// Renames `from` in `from_dir` to `to` in `to_dir`, atomically replacing what is there, even
/// while it is open. (`_scratch` is for Windows.)
pub(crate) fn rename_replacing(from_dir: &Dir, from: &str, to_dir: &Dir, to: &str, _scratch: &Dir) -> io::Result<()> {
    from_dir.rename(from, to_dir, to)
}

/// Takes the file's exclusive lock, waiting for it.
pub(crate) fn lock(file: &File) -> io::Result<()> {
    file.lock()
}

/// Takes the file's exclusive lock if it is free; `WouldBlock` if another handle holds it.
pub(crate) fn try_lock(file: &File) -> io::Result<()> {
    file.try_lock().map_err(io::Error::from)
}

pub(crate) fn unlock(file: &File) -> io::Result<()> {
    file.unlock()
}

/// How many names the open `file` has (0 once it is unlinked).
pub(crate) fn link_count(_file: &File, meta: &std::fs::Metadata) -> io::Result<u64> {
    Ok(meta.nlink())
}

/// Whether `rel` in `dir` (not following a symlink) is still the file `file` is open on.
pub(crate) fn is_same_file_at(dir: &Dir, rel: &str, _file: &File, meta: &std::fs::Metadata) -> bool {
    use cap_fs_ext::MetadataExt as CapMetadataExt;
    matches!(dir.symlink_metadata(rel),
        Ok(now) if CapMetadataExt::dev(&now) == MetadataExt::dev(meta) && CapMetadataExt::ino(&now) == MetadataExt::ino(meta))
}

/// The OS errors the fault-injection hooks make operations fail with: a full disk.
#[cfg(any(test, feature = "fault-injection"))]
pub(crate) const DISK_FULL: i32 = rustix::io::Errno::NOSPC.raw_os_error();
/// ... and an I/O error.
#[cfg(test)]
pub(crate) const IO_ERROR: i32 = rustix::io::Errno::IO.raw_os_error();
