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

    /// The uses counted so far: (hits, misses).
    pub(super) fn peek(&self) -> (u64, u64) {
        self.shards.iter().fold((0, 0), |(h, m), s| {
            (h + s.hits.load(Ordering::Relaxed), m + s.misses.load(Ordering::Relaxed))
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
        self.shards.iter().fold((0, 0), |(h, m), s| {
            (
                h + s.hits.swap(0, Ordering::Relaxed),
                m + s.misses.swap(0, Ordering::Relaxed),
            )
        })
    }
}
