//! Hits and misses counted in memory on the hit path: an add to a counter of the calling
//! thread's own shard (a cache line of its own), so that threads reading one namespace share no
//! written memory; summed and flushed to the counters file in batches.

use std::sync::atomic::{AtomicU64, Ordering};

/// How many shards: threads beyond this share them (still correct, only less spread).
const SHARDS: usize = 16;

#[derive(Default)]
#[repr(align(128))]
struct Shard {
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Per-namespace-handle counts of uses not yet in the counters file.
#[derive(Default)]
pub(super) struct Uses {
    shards: [Shard; SHARDS],
    /// When a flush may next be tried, in milliseconds since [`epoch`] (0: at once): a flush
    /// that found the lock taken puts the next one off, so that the reads counted meanwhile do
    /// not each try again.
    next_flush: AtomicU64,
}

/// A fixed instant of this process, which `next_flush` counts from.
fn epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

/// Milliseconds since [`epoch`], at least 1 (0 means "at once").
fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX).max(1)
}

fn shard_index() -> usize {
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    INDEX.with(|i| *i)
}

impl Uses {
    /// Counts one use; returns how many uses this thread's shard now holds.
    pub(super) fn add(&self, hit: bool) -> u64 {
        let shard = &self.shards[shard_index()];
        let (this, other) = if hit {
            (&shard.hits, &shard.misses)
        } else {
            (&shard.misses, &shard.hits)
        };
        this.fetch_add(1, Ordering::Relaxed) + 1 + other.load(Ordering::Relaxed)
    }

    /// Whether a flush may be tried now (see [`defer_flush`](Self::defer_flush)).
    pub(super) fn may_flush(&self) -> bool {
        let at = self.next_flush.load(Ordering::Relaxed);
        at == 0 || now_ms() >= at
    }

    /// Puts off the next flush by `by`.
    pub(super) fn defer_flush(&self, by: std::time::Duration) {
        let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.next_flush.store(now_ms().saturating_add(by), Ordering::Relaxed);
    }

    /// The uses counted so far: (hits, misses).
    pub(super) fn peek(&self) -> (u64, u64) {
        self.shards.iter().fold((0u64, 0u64), |(h, m), s| {
            (
                h.saturating_add(s.hits.load(Ordering::Relaxed)),
                m.saturating_add(s.misses.load(Ordering::Relaxed)),
            )
        })
    }

    /// Puts back uses taken but not flushed.
    pub(super) fn give_back(&self, hits: u64, misses: u64) {
        let shard = &self.shards[shard_index()];
        shard.hits.fetch_add(hits, Ordering::Relaxed);
        shard.misses.fetch_add(misses, Ordering::Relaxed);
    }

    /// Takes the uses counted so far, leaving zeros: (hits, misses).
    pub(super) fn take(&self) -> (u64, u64) {
        self.shards.iter().fold((0u64, 0u64), |(h, m), s| {
            (
                h.saturating_add(s.hits.swap(0, Ordering::Relaxed)),
                m.saturating_add(s.misses.swap(0, Ordering::Relaxed)),
            )
        })
    }
}
