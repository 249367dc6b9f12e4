//! What the store needs from the operating system that differs between platforms, one small
//! module per platform (as `cap-primitives` does), so that the namespace's logic has no `cfg`s.
//!
//! | need | Unix (Linux, macOS, BSDs) | Windows |
//! |------|---------------------------|---------|
//! | positional reads and writes | `pread`/`pwrite` | `ReadFile`/`WriteFile` at an offset (moves the file's cursor, which the store never uses after) |
//! | namespace and writer locks | `flock` (whole file) | `LockFileEx` on one byte far past any file's end, so that the lock never blocks a reader of the file's bytes |
//! | private files | created `0600` | the directory's inherited ACL (nothing narrower is set) |
//! | opening a planted FIFO must not hang | `O_NONBLOCK` | nothing needed: named pipes do not live in directories |
//! | a hit writes the inode once | `O_NOATIME` (Linux, the file's owner only) | nothing (NTFS updates access times lazily, if at all) |
//! | fsync of a directory after a rename | `fsync` of the directory | nothing: Windows cannot flush a directory handle; NTFS journals the rename |
//! | file identity, hard-link count | `st_dev`/`st_ino`/`st_nlink` | `GetFileInformationByHandle` (volume serial, file index, links) |
//!
//! Every function takes what the namespace already holds (an open file, a directory handle),
//! so each platform does only the work it needs.

#[cfg(unix)]
mod unix;
#[cfg(unix)]
use unix as platform;
#[cfg(unix)]
pub(crate) use unix::*;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as platform;
#[cfg(windows)]
pub(crate) use windows::*;

use std::fs::File;
use std::io;

use cap_std::fs::Dir;

use crate::fault::{self, Point};

// The operations below carry the fault-injection hooks (`crate::fault`; nothing in a normal
// build), once for every platform: they shadow the platform module's functions of the same name.

/// Reads into `buf` at `offset`, returning how many bytes (0 at the end).
pub(crate) fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let n = fault::len(Point::Read, buf.len())?;
    platform::read_at(file, &mut buf[..n], offset)
}

/// Writes some of `buf` at `offset`, returning how many bytes.
pub(crate) fn write_at(file: &File, buf: &[u8], offset: u64) -> io::Result<usize> {
    let n = fault::len(Point::Write, buf.len())?;
    platform::write_at(file, &buf[..n], offset)
}

/// Reads into `buf`'s spare capacity at `offset` (no zeroing first), returning how many bytes.
pub(crate) fn read_spare(file: &File, buf: &mut Vec<u8>, offset: u64) -> io::Result<usize> {
    let spare = buf.capacity() - buf.len();
    match fault::len(Point::Read, spare)? {
        n if n < spare => platform::read_spare_upto(file, buf, offset, n),
        _ => platform::read_spare(file, buf, offset),
    }
}

/// Reads at most `max` bytes into `buf`'s spare capacity at `offset`, returning how many.
pub(crate) fn read_spare_upto(file: &File, buf: &mut Vec<u8>, offset: u64, max: usize) -> io::Result<usize> {
    let max = fault::len(Point::Read, max.min(buf.capacity() - buf.len()))?;
    platform::read_spare_upto(file, buf, offset, max)
}

/// fsyncs an open file, data and metadata.
pub(crate) fn sync_file(file: &File) -> io::Result<()> {
    fault::after(Point::SyncFile, file.sync_all())
}

/// fsyncs the directory `rel` of `dir` where the platform can (see the table above).
pub(crate) fn sync_dir(dir: &Dir, rel: &str) -> io::Result<()> {
    fault::after(Point::SyncDir, platform::sync_dir(dir, rel))
}

/// Removes the file (or symlink) `rel` of `dir`; `scratch` is where Windows moves it first.
pub(crate) fn remove_file(dir: &Dir, rel: &str, scratch: &Dir) -> io::Result<()> {
    fault::check(Point::RemoveFile)?;
    fault::after(Point::RemoveFile, platform::remove_file(dir, rel, scratch))
}

/// Renames `from` in `from_dir` to `to` in `to_dir`, atomically replacing what is there, even
/// while it is open (see the platform's version).
pub(crate) fn rename_replacing(from_dir: &Dir, from: &str, to_dir: &Dir, to: &str, scratch: &Dir) -> io::Result<()> {
    fault::after(
        Point::Rename,
        platform::rename_replacing(from_dir, from, to_dir, to, scratch),
    )
}

/// Reads exactly `buf.len()` bytes of `file` at `offset`.
pub(crate) fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match read_at(file, buf, offset) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes all of `buf` to `file` at `offset`.
pub(crate) fn write_all_at(file: &File, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match write_at(file, buf, offset) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                buf = &buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positional_io_round_trips_and_locks_exclude_other_handles() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("f");
        let a = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        write_all_at(&a, b"hello world", 0).unwrap();
        write_all_at(&a, b"W", 6).unwrap();
        let mut buf = [0u8; 11];
        read_exact_at(&a, &mut buf, 0).unwrap();
        assert_eq!(&buf, b"hello World");
        assert_eq!(read_at(&a, &mut buf, 11).unwrap(), 0, "nothing past the end");
        let mut v = Vec::with_capacity(5);
        assert_eq!(read_spare(&a, &mut v, 6).unwrap(), 5);
        assert_eq!(v, b"World");

        // A held lock excludes another handle of the same file, and does not stop it reading.
        let b = File::options().read(true).write(true).open(&path).unwrap();
        lock(&a).unwrap();
        assert_eq!(try_lock(&b).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        let mut head = [0u8; 5];
        read_exact_at(&b, &mut head, 0).expect("a locked file's bytes stay readable");
        assert_eq!(&head, b"hello");
        unlock(&a).unwrap();
        try_lock(&b).unwrap();
        assert_eq!(try_lock(&a).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        drop(b);
        // Closing the handle released its lock.
        try_lock(&a).unwrap();
        unlock(&a).unwrap();
    }

    #[test]
    fn file_identity_and_links() {
        let d = tempfile::tempdir().unwrap();
        let dir = cap_std::fs::Dir::open_ambient_dir(d.path(), cap_std::ambient_authority()).unwrap();
        dir.write("a", b"1").unwrap();
        dir.write("b", b"1").unwrap();
        let a = dir.open("a").unwrap().into_std();
        let meta = a.metadata().unwrap();
        assert_eq!(link_count(&a, &meta).unwrap(), 1);
        assert!(is_same_file_at(&dir, "a", &a, &meta));
        assert!(
            !is_same_file_at(&dir, "b", &a, &meta),
            "another file of the same size and content"
        );
        assert!(!is_same_file_at(&dir, "missing", &a, &meta));
        dir.hard_link("a", &dir, "c").unwrap();
        assert_eq!(link_count(&a, &a.metadata().unwrap()).unwrap(), 2);
        assert!(is_same_file_at(&dir, "c", &a, &meta));
        // Replaced by rename (while open): another file under the old name.
        dir.create_dir("scratch").unwrap();
        let scratch = dir.open_dir("scratch").unwrap();
        rename_replacing(&dir, "b", &dir, "a", &scratch).unwrap();
        assert!(!is_same_file_at(&dir, "a", &a, &meta));
        drop(a);
        assert_eq!(
            scratch.entries().unwrap().count(),
            0,
            "the replaced file is gone once closed"
        );
    }

    #[test]
    fn an_open_file_can_be_replaced_and_removed_and_its_name_is_free_at_once() {
        // Windows refuses both while a reader has the file open, unless the file is moved aside.
        let d = tempfile::tempdir().unwrap();
        let dir = cap_std::fs::Dir::open_ambient_dir(d.path(), cap_std::ambient_authority()).unwrap();
        dir.create_dir("scratch").unwrap();
        let scratch = dir.open_dir("scratch").unwrap();
        dir.write("entry", b"old").unwrap();
        let reader = dir.open("entry").unwrap().into_std();
        dir.write("new", b"new").unwrap();
        rename_replacing(&dir, "new", &dir, "entry", &scratch).unwrap();
        assert_eq!(dir.read("entry").unwrap(), b"new");
        let mut old = [0u8; 3];
        read_exact_at(&reader, &mut old, 0).unwrap();
        assert_eq!(&old, b"old", "the reader keeps reading what it opened");

        let reader2 = dir.open("entry").unwrap().into_std();
        remove_file(&dir, "entry", &scratch).unwrap();
        assert!(
            !d.path().join("entry").exists(),
            "the name is free while the file is open"
        );
        dir.write("new", b"newer").unwrap();
        rename_replacing(&dir, "new", &dir, "entry", &scratch).unwrap();
        assert_eq!(dir.read("entry").unwrap(), b"newer");
        assert_eq!(
            remove_file(&dir, "missing", &scratch).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        drop((reader, reader2));
        assert_eq!(
            scratch.entries().unwrap().count(),
            0,
            "nothing left once the readers close"
        );
    }
}
