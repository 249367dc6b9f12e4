//! Event counters of a namespace (hits, misses, remote traffic), kept on disk so that
//! `filecache stats` can show what runs of other processes did.
//!
//! The file `<namespace>/counters` holds a magic and one little-endian `u64` per [`Counter`].
//! It is updated under the namespace lock, so concurrent processes add up exactly. Counters are
//! statistics, not data: a damaged file reads as zeros and is rewritten on the next update.

use std::fs::File;

use serde::Serialize;

/// The file's name inside the namespace directory.
pub(crate) const COUNTERS_FILE: &str = "counters";
const MAGIC: [u8; 8] = *b"FCSTATS1";

/// One kind of event counted per namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum Counter {
    /// Lookups answered from this cache (for the compiled cache: loads without compiling).
    Hits = 0,
    /// Lookups that found nothing (for the compiled cache: compiles).
    Misses = 1,
    /// Entries found damaged, unauthenticated or unusable, removed and answered as misses.
    Rejected = 2,
    /// Local misses answered by the remote tier.
    RemoteHits = 3,
    /// Local misses the remote tier could not answer either.
    RemoteMisses = 4,
    /// Remote operations that failed (timeouts, refused connections, bad values).
    RemoteErrors = 5,
}

const SLOTS: usize = 6;

/// A snapshot of a namespace's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Counts {
    /// See [`Counter::Hits`].
    pub hits: u64,
    /// See [`Counter::Misses`].
    pub misses: u64,
    /// See [`Counter::Rejected`].
    pub rejected: u64,
    /// See [`Counter::RemoteHits`].
    pub remote_hits: u64,
    /// See [`Counter::RemoteMisses`].
    pub remote_misses: u64,
    /// See [`Counter::RemoteErrors`].
    pub remote_errors: u64,
}

impl Counts {
    fn from_slots(s: [u64; SLOTS]) -> Counts {
        Counts {
            hits: s[Counter::Hits as usize],
            misses: s[Counter::Misses as usize],
            rejected: s[Counter::Rejected as usize],
            remote_hits: s[Counter::RemoteHits as usize],
            remote_misses: s[Counter::RemoteMisses as usize],
            remote_errors: s[Counter::RemoteErrors as usize],
        }
    }

    /// Whether every counter is zero.
    pub fn is_zero(&self) -> bool {
        *self == Counts::default()
    }
}

/// Reads the counters from an open counters file (zeros when it is empty or damaged).
pub(crate) fn read(file: &File) -> [u64; SLOTS] {
    let mut b = [0u8; 8 + 8 * SLOTS];
    let mut slots = [0u64; SLOTS];
    let Ok(n) = crate::sys::read_at(file, &mut b, 0) else {
        return slots;
    };
    if n < 8 || b[..8] != MAGIC {
        return slots;
    }
    for (i, slot) in slots.iter_mut().enumerate() {
        let at = 8 + 8 * i;
        if at + 8 <= n {
            *slot = u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        }
    }
    slots
}

/// Adds `deltas` to the counters in `file`. The caller holds the namespace lock.
pub(crate) fn add(file: &File, deltas: &[(Counter, u64)]) -> std::io::Result<()> {
    let mut slots = read(file);
    for &(c, n) in deltas {
        slots[c as usize] = slots[c as usize].saturating_add(n);
    }
    let mut b = [0u8; 8 + 8 * SLOTS];
    b[..8].copy_from_slice(&MAGIC);
    for (i, v) in slots.iter().enumerate() {
        b[8 + 8 * i..16 + 8 * i].copy_from_slice(&v.to_le_bytes());
    }
    crate::sys::write_all_at(file, &b, 0)
}

pub(crate) fn counts(file: &File) -> Counts {
    Counts::from_slots(read(file))
}
