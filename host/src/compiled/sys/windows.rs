//! Windows (and any other platform without Unix metadata).

use std::io;
use std::time::SystemTime;

use cap_std::fs::{Dir, OpenOptions};

/// `None`: `std` gives no change time that a user cannot set here, so files are hashed on every
/// load.
pub(crate) fn identity(_meta: &std::fs::Metadata) -> Option<([u64; 7], SystemTime)> {
    None
}

/// Access is the ACL's, inherited from the cache directory (keep it in the user's profile, as
/// `%LOCALAPPDATA%` is); nothing to check here.
pub(crate) fn check_private(_meta: &std::fs::Metadata, _forbidden: u32) -> Result<(), &'static str> {
    Ok(())
}

/// Nothing needed: named pipes do not live in directories.
pub(crate) fn nonblocking(_oo: &mut OpenOptions) {}

/// Nothing narrower than the directory's inherited ACL is set.
pub(crate) fn owner_only(_oo: &mut OpenOptions) {}

/// Not told apart from other failures to open.
pub(crate) fn is_symlink_error(_e: &io::Error) -> bool {
    false
}

/// Nothing: Windows cannot flush a directory handle; NTFS journals the link itself.
pub(crate) fn sync_dir(_dir: &Dir) -> io::Result<()> {
    Ok(())
}
