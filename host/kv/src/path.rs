//! The path of a directory we hold a handle to: SQLite opens files by path. One small function
//! per platform; each asks the operating system where the handle's directory is now.

use std::path::PathBuf;

use cap_std::fs::Dir;

/// Where `dir` is now.
#[cfg(target_os = "linux")]
pub(crate) fn dir_path(dir: &Dir) -> std::io::Result<PathBuf> {
    use std::os::fd::AsRawFd;
    let fd = dir.as_raw_fd();
    // The calling thread's own table first (a thread may have unshared it).
    std::fs::read_link(format!("/proc/thread-self/fd/{fd}"))
        .or_else(|_| std::fs::read_link(format!("/proc/self/fd/{fd}")))
}

/// Where `dir` is now.
#[cfg(target_vendor = "apple")]
pub(crate) fn dir_path(dir: &Dir) -> std::io::Result<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    let path = rustix::fs::getpath(dir)?;
    Ok(PathBuf::from(std::ffi::OsString::from_vec(path.into_bytes())))
}

/// Where `dir` is now.
#[cfg(windows)]
pub(crate) fn dir_path(dir: &Dir) -> std::io::Result<PathBuf> {
    use std::os::windows::ffi::OsStringExt;
    use std::os::windows::io::AsRawHandle;
    use windows_sys::Win32::Storage::FileSystem::{FILE_NAME_NORMALIZED, GetFinalPathNameByHandleW};
    let handle = dir.as_raw_handle();
    let mut buf = vec![0u16; 512];
    loop {
        // SAFETY: `handle` is the directory's open handle (borrowed from `dir` for the call);
        // `buf` is writable for the length given.
        let n =
            unsafe { GetFinalPathNameByHandleW(handle as _, buf.as_mut_ptr(), buf.len() as u32, FILE_NAME_NORMALIZED) };
        let n = n as usize;
        if n == 0 {
            return Err(std::io::Error::last_os_error());
        }
        if n < buf.len() {
            buf.truncate(n);
            break;
        }
        buf.resize(n + 1, 0);
    }
    let path = std::ffi::OsString::from_wide(&buf);
    // `\\?\C:\…` → `C:\…` (SQLite builds its log's name from this one).
    let s = path.to_string_lossy();
    match s.strip_prefix(r"\\?\") {
        Some(rest) if rest.as_bytes().get(1) == Some(&b':') => Ok(PathBuf::from(rest)),
        _ => Ok(PathBuf::from(path)),
    }
}

/// Where `dir` is now.
#[cfg(not(any(target_os = "linux", target_vendor = "apple", windows)))]
pub(crate) fn dir_path(_dir: &Dir) -> std::io::Result<PathBuf> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "key-value buckets need the path of their namespace directory, which this platform does not tell",
    ))
}

/// Whether `path` names the directory `dir` (so that no rename since its path was taken sends
/// SQLite elsewhere).
#[cfg(unix)]
pub(crate) fn is_same_dir(dir: &Dir, path: &std::path::Path) -> bool {
    use cap_fs_ext::MetadataExt as _;
    use std::os::unix::fs::MetadataExt as StdMetadataExt;
    match (dir.dir_metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == StdMetadataExt::dev(&b) && a.ino() == StdMetadataExt::ino(&b),
        _ => false,
    }
}

/// Whether `path` names the directory `dir`. (Windows: the path was just read from the handle,
/// and a directory that a process holds open cannot be renamed there.)
#[cfg(not(unix))]
pub(crate) fn is_same_dir(_dir: &Dir, path: &std::path::Path) -> bool {
    path.is_dir()
}
