//! Unix: Linux, macOS, the BSDs.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt};

/// A file's identity for the digest memo (device, inode, size, modification and change times),
/// and when it last changed.
pub(crate) fn identity(meta: &std::fs::Metadata) -> Option<([u64; 7], SystemTime)> {
    let time =
        |secs: i64, nanos: i64| UNIX_EPOCH + Duration::new(secs.max(0) as u64, nanos.clamp(0, 999_999_999) as u32);
    let changed = time(meta.ctime(), meta.ctime_nsec()).max(time(meta.mtime(), meta.mtime_nsec()));
    let fields = [
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime() as u64,
        meta.mtime_nsec() as u64,
        meta.ctime() as u64,
        meta.ctime_nsec() as u64,
    ];
    Some((fields, changed))
}

/// Whether the file is owned by this user and `forbidden` mode bits are clear (`0o022`: no one
/// else may write it; `0o077`: no one else may read or write it): the reason if not.
pub(crate) fn check_private(meta: &std::fs::Metadata, forbidden: u32) -> Result<(), &'static str> {
    if meta.uid() != rustix::process::geteuid().as_raw() {
        Err("owned by another user")
    } else if meta.mode() & forbidden != 0 {
        Err(if forbidden & 0o044 != 0 {
            "readable or writable by other users"
        } else {
            "writable by another user"
        })
    } else {
        Ok(())
    }
}

/// Options to open a file that must not block if it is a FIFO planted by someone else.
pub(crate) fn nonblocking(oo: &mut OpenOptions) {
    oo.custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32);
}

/// Created readable and writable by the owner only.
pub(crate) fn owner_only(oo: &mut OpenOptions) {
    oo.mode(0o600);
}

/// Whether opening failed because the name is a symlink (which `FollowSymlinks::No` refuses).
pub(crate) fn is_symlink_error(e: &io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error())
}

/// fsyncs the directory `dir` itself, so that a name just linked into it survives power loss.
/// (Not `rustix::fs::fsync(dir)`: cap-std's `Dir` is an `O_PATH` handle on Linux, which cannot
/// be fsynced: EBADF.)
pub(crate) fn sync_dir(dir: &Dir) -> io::Result<()> {
    let mut oo = OpenOptions::new();
    oo.read(true)
        .follow(FollowSymlinks::No)
        .custom_flags(rustix::fs::OFlags::DIRECTORY.bits() as i32);
    dir.open_with(".", &oo)?.sync_all()
}
