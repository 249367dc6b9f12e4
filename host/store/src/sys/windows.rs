//! Windows.

use std::fs::File;
use std::io;
use std::os::windows::fs::FileExt;
use std::os::windows::io::AsRawHandle;

use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::{Dir, OpenOptions};
use windows_sys::Win32::Foundation::{ERROR_LOCK_VIOLATION, HANDLE};
use windows_sys::Win32::Storage::FileSystem::{
    BY_HANDLE_FILE_INFORMATION, GetFileInformationByHandle, LOCKFILE_EXCLUSIVE_LOCK, LOCKFILE_FAIL_IMMEDIATELY,
    LockFileEx, UnlockFile,
};
use windows_sys::Win32::System::IO::OVERLAPPED;

/// Whether [`entry_read_options`] with `extra` asks for more than reading (the right to set the
/// file's times, for recency), which may be refused (`PermissionDenied`: read-only media, another
/// user's file): then open again without.
pub(crate) const READ_EXTRA_MAY_BE_REFUSED: bool = true;

/// Where the lock byte lies: far past the end of any file the store writes, so that a held lock
/// (which Windows enforces on reads and writes of its range) never stands in a reader's way.
const LOCK_OFFSET: u64 = 1 << 62;

pub(crate) fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    file.seek_read(buf, offset)
}

pub(crate) fn write_at(file: &File, buf: &[u8], offset: u64) -> io::Result<usize> {
    file.seek_write(buf, offset)
}

/// Reads into `buf`'s spare capacity at `offset`, returning how many bytes.
pub(crate) fn read_spare(file: &File, buf: &mut Vec<u8>, offset: u64) -> io::Result<usize> {
    let start = buf.len();
    buf.resize(buf.capacity(), 0);
    let read = file.seek_read(&mut buf[start..], offset);
    buf.truncate(start + *read.as_ref().unwrap_or(&0));
    read
}

/// Reads at most `max` bytes into `buf`'s spare capacity at `offset`, returning how many.
pub(crate) fn read_spare_upto(file: &File, buf: &mut Vec<u8>, offset: u64, max: usize) -> io::Result<usize> {
    let start = buf.len();
    let end = start + max.min(buf.capacity() - start);
    buf.resize(end, 0);
    let read = file.seek_read(&mut buf[start..], offset);
    buf.truncate(start + *read.as_ref().unwrap_or(&0));
    read
}

/// Options for opening an entry file to read. With `extra`, also the right to set its times: a
/// hit sets the modification time (recency) through the handle it read with, and Windows refuses
/// that on a handle opened only to read (`FILE_WRITE_ATTRIBUTES`). (No FIFO can be planted in a
/// Windows directory, and there is no `O_NOATIME`.)
pub(crate) fn entry_read_options(oo: &mut OpenOptions, extra: bool) {
    use cap_std::fs::OpenOptionsExt;
    use windows_sys::Win32::Storage::FileSystem::{FILE_GENERIC_READ, FILE_WRITE_ATTRIBUTES};
    oo.access_mode(if extra {
        FILE_GENERIC_READ | FILE_WRITE_ATTRIBUTES
    } else {
        FILE_GENERIC_READ
    });
}

/// Nothing to add (see [`entry_read_options`]).
pub(crate) fn nonblocking(_oo: &mut OpenOptions) {}

/// Nothing narrower than the directory's inherited ACL is set: keep the cache under the user's
/// profile (as `%LOCALAPPDATA%` is).
pub(crate) fn owner_only(_oo: &mut OpenOptions) {}

/// Nothing: a directory handle cannot be flushed on Windows (`FlushFileBuffers` wants write
/// access, which directories are not opened with); NTFS journals the rename itself.
pub(crate) fn sync_dir(_dir: &Dir, _rel: &str) -> io::Result<()> {
    Ok(())
}

/// A fresh name in the scratch directory for a file on its way out.
fn scratch_name() -> String {
    let mut b = [0u8; 8];
    // A failure of the OS RNG leaves the time to tell names apart.
    let _ = getrandom::fill(&mut b);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{:016x}.{}.removed",
        u64::from_le_bytes(b) ^ t.as_nanos() as u64,
        std::process::id()
    )
}

/// Removes the file (or symlink) `rel` of `dir`. A file that is open (a reader has it) cannot
/// lose its name on Windows: deleting it only marks it "delete pending", and until the last
/// handle closes its name can be neither opened nor replaced. So it is renamed into `scratch`
/// first (renaming an open file is allowed: the store opens every file sharing delete access),
/// which frees the name at once, and deleted there.
pub(crate) fn remove_file(dir: &Dir, rel: &str, scratch: &Dir) -> io::Result<()> {
    use cap_fs_ext::DirExt;
    let away = scratch_name();
    match dir.rename(rel, scratch, &away) {
        Ok(()) => {
            // Gone for good when the last handle closes; a dead writer's reclaim removes what
            // a crash leaves.
            let _ = scratch.remove_file_or_symlink(&away);
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(e),
        Err(_) => dir.remove_file_or_symlink(rel),
    }
}

/// Renames `from` in `from_dir` to `to` in `to_dir`, replacing what is there. Windows refuses
/// to rename over a file that is open (`ERROR_ACCESS_DENIED`), so that one is first moved into
/// `scratch` (see [`remove_file`]); readers in between miss. The caller holds the namespace lock,
/// so no other publisher races this.
pub(crate) fn rename_replacing(from_dir: &Dir, from: &str, to_dir: &Dir, to: &str, scratch: &Dir) -> io::Result<()> {
    use cap_fs_ext::DirExt;
    match from_dir.rename(from, to_dir, to) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            let away = scratch_name();
            if to_dir.rename(to, scratch, &away).is_err() {
                return Err(e);
            }
            match from_dir.rename(from, to_dir, to) {
                Ok(()) => {
                    let _ = scratch.remove_file_or_symlink(&away);
                    Ok(())
                }
                Err(e) => {
                    let _ = scratch.rename(&away, to_dir, to);
                    Err(e)
                }
            }
        }
        r => r,
    }
}

fn lock_byte(file: &File, flags: u32) -> io::Result<()> {
    // SAFETY: an all-zero OVERLAPPED is a valid value (no event, offset 0).
    let mut ov: OVERLAPPED = unsafe { std::mem::zeroed() };
    ov.Anonymous.Anonymous.Offset = LOCK_OFFSET as u32;
    ov.Anonymous.Anonymous.OffsetHigh = (LOCK_OFFSET >> 32) as u32;
    // SAFETY: the handle is open for as long as `file` is borrowed; `ov` outlives the call,
    // which completes before returning because the store never opens files for overlapped I/O.
    let ok = unsafe { LockFileEx(file.as_raw_handle() as HANDLE, flags, 0, 1, 0, &mut ov) };
    if ok != 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(ERROR_LOCK_VIOLATION as i32) {
        return Err(io::ErrorKind::WouldBlock.into());
    }
    Err(e)
}

/// Takes the file's exclusive lock, waiting for it.
pub(crate) fn lock(file: &File) -> io::Result<()> {
    lock_byte(file, LOCKFILE_EXCLUSIVE_LOCK)
}

/// Takes the file's exclusive lock if it is free; `WouldBlock` if another handle holds it.
pub(crate) fn try_lock(file: &File) -> io::Result<()> {
    lock_byte(file, LOCKFILE_EXCLUSIVE_LOCK | LOCKFILE_FAIL_IMMEDIATELY)
}

pub(crate) fn unlock(file: &File) -> io::Result<()> {
    // SAFETY: the handle is open for as long as `file` is borrowed.
    let ok = unsafe {
        UnlockFile(
            file.as_raw_handle() as HANDLE,
            LOCK_OFFSET as u32,
            (LOCK_OFFSET >> 32) as u32,
            1,
            0,
        )
    };
    if ok != 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn info(file: &File) -> io::Result<BY_HANDLE_FILE_INFORMATION> {
    // SAFETY: an all-zero BY_HANDLE_FILE_INFORMATION is a valid value (plain integers).
    let mut info: BY_HANDLE_FILE_INFORMATION = unsafe { std::mem::zeroed() };
    // SAFETY: the handle is open for as long as `file` is borrowed; `info` is writable.
    if unsafe { GetFileInformationByHandle(file.as_raw_handle() as HANDLE, &mut info) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info)
}

/// How many names the open `file` has.
pub(crate) fn link_count(file: &File, _meta: &std::fs::Metadata) -> io::Result<u64> {
    Ok(info(file)?.nNumberOfLinks.into())
}

/// Whether `rel` in `dir` (not following a symlink) is still the file `file` is open on.
/// Windows gives a file's identity only through a handle, so `rel` is opened to compare.
pub(crate) fn is_same_file_at(dir: &Dir, rel: &str, file: &File, _meta: &std::fs::Metadata) -> bool {
    let mut oo = OpenOptions::new();
    oo.read(true).follow(FollowSymlinks::No);
    let (Ok(now), Ok(then)) = (dir.open_with(rel, &oo).and_then(|f| info(&f.into_std())), info(file)) else {
        return false;
    };
    now.dwVolumeSerialNumber == then.dwVolumeSerialNumber
        && now.nFileIndexHigh == then.nFileIndexHigh
        && now.nFileIndexLow == then.nFileIndexLow
}

/// The OS errors the fault-injection hooks make operations fail with: a full disk.
#[cfg(any(test, feature = "fault-injection"))]
pub(crate) const DISK_FULL: i32 = windows_sys::Win32::Foundation::ERROR_DISK_FULL as i32;
/// ... and an I/O error.
#[cfg(test)]
pub(crate) const IO_ERROR: i32 = windows_sys::Win32::Foundation::ERROR_IO_DEVICE as i32;
