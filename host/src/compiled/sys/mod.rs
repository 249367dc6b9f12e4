//! What the compiled cache needs from the operating system that differs between platforms, one
//! small module per platform (as the store's `sys` and `cap-primitives` do), so that the cache's
//! logic has no `cfg`s. Mapping artifacts is `mapped`'s.
//!
//! | need | Unix | Windows |
//! |------|------|---------|
//! | a file's identity for the digest memo | `st_dev`, `st_ino`, size, `st_mtime`, `st_ctime` | none: `std` gives no change time a user cannot set, so files are hashed on every load |
//! | files no other user can write (or read) | owner and mode bits | the directory's inherited ACL (nothing to check) |
//! | opening a planted FIFO must not hang | `O_NONBLOCK` | nothing needed: named pipes do not live in directories |
//! | a secret created private | mode `0600` | the directory's inherited ACL |
//! | a symlink refused by `FollowSymlinks::No` | `ELOOP` | not told apart |
//! | fsync of a directory after a link | `fsync` of the directory | nothing: NTFS journals the link |

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub(crate) use unix::*;

#[cfg(not(unix))]
mod windows;
#[cfg(not(unix))]
pub(crate) use windows::*;

use std::fs::File;
use std::io;

/// Reads all of `file` from its start.
pub(crate) fn read_all(mut file: &File) -> io::Result<Vec<u8>> {
    use std::io::{Read, Seek};
    file.rewind()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}
