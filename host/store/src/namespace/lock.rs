//! The namespace lock (an in-process mutex plus an `flock` on `state`), and the usage counter
//! read and written under it.

use std::fs::File;
use std::io;
use std::sync::MutexGuard;
use std::time::Duration;

use super::Namespace;
use crate::Result;
use crate::error::IoContext;
use crate::fault::{self, Point};
use crate::sys;

const STATE_MAGIC: [u8; 8] = *b"FCUSAGE1";

/// The namespace lock, with the usage counter read under it.
pub(super) struct Locked<'a> {
    pub(super) file: MutexGuard<'a, File>,
    pub(super) used: Option<u64>,
}

impl Locked<'_> {
    pub(super) fn store_used(&mut self, used: u64) -> Result<()> {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&STATE_MAGIC);
        b[8..].copy_from_slice(&used.to_le_bytes());
        fault::check(Point::UpdateCounter)
            .and_then(|()| sys::write_all_at(&self.file, &b, 0))
            .context(|| "cannot update the namespace's usage counter".into())?;
        self.used = Some(used);
        Ok(())
    }
}

/// The longest a process waits for another's namespace lock before its operation fails with an
/// `Io` error (`TimedOut`): a stopped process (SIGSTOP, a debugger) holding it stalls writers
/// that long, not forever. Long enough for the slowest thing done under the lock, a full rescan of
/// a large namespace (about a second per 100 000 entries here; see BENCHMARKS.md).
#[cfg(not(test))]
pub(crate) const LOCK_WAIT: Duration = Duration::from_secs(30);
#[cfg(test)]
pub(crate) const LOCK_WAIT: Duration = Duration::from_secs(3);

/// Takes `file`'s exclusive lock, waiting at most `wait` for another holder to let it go.
fn lock_within(file: &File, wait: Duration) -> io::Result<()> {
    let deadline = std::time::Instant::now() + wait;
    let mut pause = Duration::from_micros(50);
    loop {
        match sys::try_lock(file) {
            Ok(()) => return Ok(()),
            Err(e) if is_contended(&e) => {}
            Err(e) => return Err(e),
        }
        if std::time::Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "another process has held the namespace lock for over {} s (is one stopped?)",
                    wait.as_secs_f32()
                ),
            ));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(2));
    }
}

/// Whether a failed `try_lock` means another holder (not an error of the file).
fn is_contended(e: &io::Error) -> bool {
    // ERROR_LOCK_VIOLATION (33) on Windows.
    e.kind() == io::ErrorKind::WouldBlock || (cfg!(windows) && e.raw_os_error() == Some(33))
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let _ = sys::unlock(&self.file);
    }
}

impl Namespace {
    pub(super) fn lock(&self) -> Result<Locked<'_>> {
        self.locked(self.mutex()?, true, LOCK_WAIT)
    }

    /// The in-process half of the lock, waiting for it.
    pub(super) fn mutex(&self) -> Result<MutexGuard<'_, File>> {
        Ok(self.writable()?.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The in-process half of the lock; `None` when a thread of this process holds it (perhaps
    /// this very one: the mutex is not reentrant).
    pub(super) fn mutex_if_free(&self) -> Result<Option<MutexGuard<'_, File>>> {
        match self.writable()?.state.try_lock() {
            Ok(file) => Ok(Some(file)),
            Err(std::sync::TryLockError::Poisoned(p)) => Ok(Some(p.into_inner())),
            Err(std::sync::TryLockError::WouldBlock) => Ok(None),
        }
    }

    /// The lock, given its in-process half: takes the `flock` (waiting at most `wait` for
    /// another holder) and reads the usage counter. `hooked` lets a fault plan fail taking it
    /// (the write path's plans), which updates of statistics are outside of.
    pub(super) fn locked<'a>(&'a self, file: MutexGuard<'a, File>, hooked: bool, wait: Duration) -> Result<Locked<'a>> {
        let hook = if hooked {
            fault::check(Point::LockNamespace)
        } else {
            Ok(())
        };
        hook.and_then(|()| lock_within(&file, wait))
            .context(|| format!("cannot lock namespace {:?}", self.inner.name))?;
        let mut b = [0u8; 16];
        let used = match sys::read_at(&file, &mut b, 0) {
            Ok(16) if b[..8] == STATE_MAGIC => Some(u64::from_le_bytes(b[8..].try_into().expect("8 bytes"))),
            _ => None,
        };
        Ok(Locked { file, used })
    }
}

/// Takes the lock of the namespace directory `ns_dir` through another open file description of
/// its `state`, as another process (a stopped one, say) would hold it; released when the file is
/// closed.
#[cfg(test)]
pub(crate) fn hold_elsewhere(ns_dir: &std::path::Path) -> File {
    let state = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(ns_dir.join(super::STATE_FILE))
        .unwrap();
    sys::lock(&state).unwrap();
    state
}
