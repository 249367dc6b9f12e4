//! The namespace lock (an in-process mutex plus an `flock` on `state`) and the usage counter and event counters read and written under it.

use super::*;

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

/// The longest a best-effort locker waits for the `flock` (the removal of a damaged record found
/// by a read, the first fix of a damaged key-value generation, a flush of use counts by a handle
/// that is not the last): such work is left for later rather than stall the operation that
/// found it. The holder may be another handle of this very thread (a read made within
/// `Bucket::update` on another handle), which no wait would outlast.
pub(crate) const LOCK_TRY_WAIT: Duration = Duration::from_millis(100);

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

    /// The lock if no thread of this process holds this handle's half of it, and no other
    /// holds the `flock` for longer than [`LOCK_TRY_WAIT`]; `None` otherwise, or on any failure.
    pub(super) fn lock_if_free(&self) -> Option<Locked<'_>> {
        self.locked(self.mutex_if_free().ok()??, false, LOCK_TRY_WAIT).ok()
    }

    /// The in-process half of the lock, waiting for it.
    fn mutex(&self) -> Result<MutexGuard<'_, File>> {
        Ok(self.writable()?.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The in-process half of the lock; `None` when a thread of this process holds it (perhaps
    /// this very one: the mutex is not reentrant).
    fn mutex_if_free(&self) -> Result<Option<MutexGuard<'_, File>>> {
        match self.writable()?.state.try_lock() {
            Ok(file) => Ok(Some(file)),
            Err(std::sync::TryLockError::Poisoned(p)) => Ok(Some(p.into_inner())),
            Err(std::sync::TryLockError::WouldBlock) => Ok(None),
        }
    }

    /// The lock, given its in-process half: takes the `flock` (waiting at most `wait` for
    /// another holder) and reads the usage counter. `hooked` lets a fault plan fail taking it
    /// (the write path's plans), which updates of statistics are outside of.
    fn locked<'a>(&'a self, file: MutexGuard<'a, File>, hooked: bool, wait: Duration) -> Result<Locked<'a>> {
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

    /// Adds to this namespace's event counters on disk (see [`Counter`]), under the namespace
    /// lock so that processes add up exactly. A read-only namespace counts nothing.
    pub fn count(&self, deltas: &[(Counter, u64)]) -> Result<()> {
        self.count_with(deltas, true).map(|_| ())
    }

    /// [`count`](Self::count); without `wait`, counts nothing and answers `false` when the lock
    /// is not free (see [`lock_if_free`](Self::lock_if_free)).
    fn count_with(&self, deltas: &[(Counter, u64)], wait: bool) -> Result<bool> {
        let (Some(dir), Some(_)) = (self.dir(), &self.inner.writable) else {
            return Ok(true);
        };
        let _lk = if wait {
            self.locked(self.mutex()?, false, LOCK_WAIT)?
        } else {
            match self.lock_if_free() {
                Some(lk) => lk,
                None => return Ok(false),
            }
        };
        let ctx = || format!("cannot update the counters of namespace {:?}", self.inner.name);
        let file = dir
            .open_with(COUNTERS_FILE, &private_rw_options())
            .context(ctx)?
            .into_std();
        counters::add(&file, deltas).context(ctx)?;
        Ok(true)
    }

    /// This namespace's event counters: as last written, plus this process's uses not yet
    /// flushed (zeros when there are none).
    pub fn counts(&self) -> Counts {
        let mut oo = OpenOptions::new();
        oo.read(true).follow(FollowSymlinks::No);
        let mut counts = match self.dir().map(|d| d.open_with(COUNTERS_FILE, &oo)) {
            Some(Ok(file)) => counters::counts(&file.into_std()),
            _ => Counts::default(),
        };
        let (hits, misses) = self.inner.uses.peek();
        counts.hits += hits;
        counts.misses += misses;
        counts
    }

    /// Counts one use of an entry by `get`, `open` or `contains`: a hit or a miss. In memory
    /// only, until [`USES_PER_FLUSH`] have gathered or the handle is dropped.
    pub(super) fn count_use(&self, hit: bool) {
        if self.inner.uses.add(hit) >= USES_PER_FLUSH {
            self.flush_uses(false);
        }
    }

    /// Adds the uses counted in memory to the counters file now. Best effort: statistics are
    /// not worth failing a cache operation for (a failure is logged, and the uses are lost).
    pub fn flush_counts(&self) {
        self.flush_uses(true);
    }

    /// Flushes the uses counted in memory; without `wait`, only if no thread of this process
    /// holds the namespace lock (else they stay in memory for a later flush): a handle may be
    /// dropped, or a use counted, by a thread that holds the lock itself (a key-value write
    /// drops a handle under it), and waiting then would deadlock.
    pub(super) fn flush_uses(&self, wait: bool) {
        let (hits, misses) = self.inner.uses.take();
        if hits + misses == 0 {
            return;
        }
        match self.count_with(&[(Counter::Hits, hits), (Counter::Misses, misses)], wait) {
            Ok(true) => {}
            Ok(false) => self.inner.uses.give_back(hits, misses),
            Err(e) => tracing::debug!(
                "cannot count uses of namespace {:?}: {}",
                self.inner.name,
                e.full_message()
            ),
        }
    }
}
