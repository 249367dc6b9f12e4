//! What the compiled cache needs from the platform, apart from mapping artifacts (`mapped`).

use std::fs::File;
use std::io;
use std::time::SystemTime;

use cap_std::fs::Dir;

/// A file's identity for the digest memo (device, inode, size, modification and change times),
/// and when it last changed. `None` where the platform gives no change time that a user cannot
/// set (Windows, through `std`): files are then hashed on every load.
#[cfg(unix)]
pub(crate) fn identity(meta: &std::fs::Metadata) -> Option<([u64; 7], SystemTime)> {
    use std::os::unix::fs::MetadataExt;
    use std::time::{Duration, UNIX_EPOCH};
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

#[cfg(not(unix))]
pub(crate) fn identity(_meta: &std::fs::Metadata) -> Option<([u64; 7], SystemTime)> {
    None
}

/// Whether the file is owned by this user and `forbidden` mode bits are clear (`0o022`: no one
/// else may write it; `0o077`: no one else may read or write it): the reason if not.
#[cfg(unix)]
pub(crate) fn check_private(meta: &std::fs::Metadata, forbidden: u32) -> Result<(), &'static str> {
    use std::os::unix::fs::MetadataExt;
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

/// Windows: access is the ACL's, inherited from the cache directory (keep it in the user's
/// profile, as `%LOCALAPPDATA%` is); nothing to check here.
#[cfg(not(unix))]
pub(crate) fn check_private(_meta: &std::fs::Metadata, _forbidden: u32) -> Result<(), &'static str> {
    Ok(())
}

/// Options to open a file that must not block if it is a FIFO planted by someone else.
#[cfg(unix)]
pub(crate) fn nonblocking(oo: &mut cap_std::fs::OpenOptions) {
    use cap_std::fs::OpenOptionsExt;
    oo.custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32);
}

#[cfg(not(unix))]
pub(crate) fn nonblocking(_oo: &mut cap_std::fs::OpenOptions) {}

/// Created readable and writable by the owner only.
#[cfg(unix)]
pub(crate) fn owner_only(oo: &mut cap_std::fs::OpenOptions) {
    use cap_std::fs::OpenOptionsExt;
    oo.mode(0o600);
}

#[cfg(not(unix))]
pub(crate) fn owner_only(_oo: &mut cap_std::fs::OpenOptions) {}

/// Whether opening failed because the name is a symlink (which `FollowSymlinks::No` refuses).
pub(crate) fn is_symlink_error(e: &io::Error) -> bool {
    #[cfg(unix)]
    {
        e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error())
    }
    #[cfg(not(unix))]
    {
        let _ = e;
        false
    }
}

/// fsyncs the directory `dir` itself, so that a name just linked into it survives power loss.
/// (Not `rustix::fs::fsync(dir)`: cap-std's `Dir` is an `O_PATH` handle on Linux, which cannot
/// be fsynced: EBADF.)
#[cfg(unix)]
pub(crate) fn sync_dir(dir: &Dir) -> io::Result<()> {
    use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt};
    use cap_std::fs::OpenOptionsExt;
    let mut oo = cap_std::fs::OpenOptions::new();
    oo.read(true)
        .follow(FollowSymlinks::No)
        .custom_flags(rustix::fs::OFlags::DIRECTORY.bits() as i32);
    dir.open_with(".", &oo)?.sync_all()
}

/// Nothing: Windows cannot flush a directory handle; NTFS journals the link itself.
#[cfg(not(unix))]
pub(crate) fn sync_dir(_dir: &Dir) -> io::Result<()> {
    Ok(())
}

/// Reads all of `file` from its start.
pub(crate) fn read_all(mut file: &File) -> io::Result<Vec<u8>> {
    use std::io::{Read, Seek};
    file.rewind()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}
