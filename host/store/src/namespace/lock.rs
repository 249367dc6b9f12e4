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
            .and_then(|()| self.file.write_all_at(&b, 0))
            .context(|| "cannot update the namespace's usage counter".into())?;
        self.used = Some(used);
        Ok(())
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

impl Namespace {
    pub(super) fn lock(&self) -> Result<Locked<'_>> {
        let w = self.writable()?;
        let file = w.state.lock().unwrap_or_else(|p| p.into_inner());
        fault::check(Point::LockNamespace)
            .and_then(|()| file.lock())
            .context(|| format!("cannot lock namespace {:?}", self.inner.name))?;
        let mut b = [0u8; 16];
        let used = match file.read_at(&mut b, 0) {
            Ok(16) if b[..8] == STATE_MAGIC => Some(u64::from_le_bytes(b[8..].try_into().expect("8 bytes"))),
            _ => None,
        };
        Ok(Locked { file, used })
    }

    /// Adds to this namespace's event counters on disk (see [`Counter`]), under the namespace
    /// lock so that processes add up exactly. A read-only namespace counts nothing.
    pub fn count(&self, deltas: &[(Counter, u64)]) -> Result<()> {
        let (Some(dir), Some(_)) = (self.dir(), &self.inner.writable) else {
            return Ok(());
        };
        let _lk = self.lock()?;
        let ctx = || format!("cannot update the counters of namespace {:?}", self.inner.name);
        let file = dir
            .open_with(COUNTERS_FILE, &private_rw_options())
            .context(ctx)?
            .into_std();
        counters::add(&file, deltas).context(ctx)
    }

    /// This namespace's event counters as last written (zeros when there are none).
    pub fn counts(&self) -> Counts {
        let mut oo = OpenOptions::new();
        oo.read(true).follow(FollowSymlinks::No);
        match self.dir().map(|d| d.open_with(COUNTERS_FILE, &oo)) {
            Some(Ok(file)) => counters::counts(&file.into_std()),
            _ => Counts::default(),
        }
    }
}
