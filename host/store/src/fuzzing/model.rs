//! What the store promises, kept in memory, for the `store_ops` target and the model test.

use std::collections::HashMap;

use super::QUOTA;

/// What the store promises, in memory: content per key, and use order (oldest first), and
/// key-value records (never evicted, counted as key and value), under [`QUOTA`]. An entry is
/// charged its file on disk, rounded up to 4 KiB ([`crate::entry::charge`]): an empty one too.
#[derive(Default, Debug)]
pub struct Model {
    pub(super) entries: HashMap<u8, Vec<u8>>,
    pub(super) order: Vec<u8>,
    pub(super) records: HashMap<u8, Vec<u8>>,
    /// Entries whose file was damaged ([`Op::Damage`]), each with whether its header is still
    /// whole (so that `contains`, which reads only the header, still finds it). A damaged
    /// entry keeps its place and size until a read finds the damage and removes it.
    pub(super) damaged: HashMap<u8, bool>,
}

/// The key-value key of record `k`.
/// What an entry of `len` bytes of content is charged: its file (64-byte header, content, a
/// 4-byte CRC per 64 KiB block), rounded up to 4 KiB. Computed here independently of the store.
fn cost(len: u64) -> u64 {
    (64 + len + 4 * len.div_ceil(64 << 10)).div_ceil(4096) * 4096
}

pub(super) fn kv_key(k: u8) -> String {
    format!("key{k}")
}

impl Model {
    /// What is charged: cache entries (their files, rounded up to 4 KiB), and records' keys and
    /// values.
    pub fn used(&self) -> u64 {
        self.entries.values().map(|v| cost(v.len() as u64)).sum::<u64>() + self.records_used()
    }
    pub(super) fn records_used(&self) -> u64 {
        self.records
            .iter()
            .map(|(&k, v)| (kv_key(k).len() + v.len()) as u64)
            .sum()
    }
    /// `set` of record `k`: cache entries are evicted, oldest first, to make room; when even all
    /// of them are not enough it fails, with every one of them evicted on the way.
    pub(super) fn kv_set(&mut self, k: u8, v: Vec<u8>) -> bool {
        let charged = (kv_key(k).len() + v.len()) as u64;
        if charged > QUOTA {
            return false;
        }
        let old = self.records.get(&k).map_or(0, |o| (kv_key(k).len() + o.len()) as u64);
        while self.used() - old + charged > QUOTA {
            let Some(&oldest) = self.order.first() else {
                return false;
            };
            self.delete(oldest);
        }
        self.records.insert(k, v);
        true
    }
    pub(super) fn touch(&mut self, k: u8) {
        self.order.retain(|&x| x != k);
        self.order.push(k);
    }
    /// The keys `add(k, len)` would evict, oldest first; `None` if it is over the quota on its
    /// own. When even evicting every other entry leaves no room (records take the rest), that is
    /// every other entry, and the add fails after evicting them (see [`Model::add`]).
    pub(super) fn victims(&self, k: u8, len: u64) -> Option<Vec<u8>> {
        let charge = cost(len);
        if charge > QUOTA {
            return None;
        }
        let old = self.entries.get(&k).map_or(0, |o| cost(o.len() as u64));
        let mut used = self.used() - old + charge;
        let mut victims = Vec::new();
        for &x in self.order.iter().filter(|&&x| x != k) {
            if used <= QUOTA {
                break;
            }
            used -= cost(self.entries[&x].len() as u64);
            victims.push(x);
        }
        Some(victims)
    }
    pub(super) fn add(&mut self, k: u8, v: Vec<u8>) -> bool {
        let Some(victims) = self.victims(k, v.len() as u64) else {
            return false;
        };
        for x in victims {
            self.delete(x);
        }
        let old = self.entries.get(&k).map_or(0, |o| cost(o.len() as u64));
        if self.used() - old + cost(v.len() as u64) > QUOTA {
            return false;
        }
        self.entries.insert(k, v);
        self.damaged.remove(&k);
        self.touch(k);
        true
    }
    /// A read of the whole entry (`get`, `open`): its content, or `None` on a miss or when
    /// the entry is damaged (which the read removes).
    pub(super) fn read(&mut self, k: u8) -> Option<Vec<u8>> {
        if self.damaged.contains_key(&k) {
            self.delete(k);
            return None;
        }
        self.get(k)
    }
    /// `contains`: reads the header only; a damaged header is found (and removed).
    pub(super) fn contains(&mut self, k: u8) -> bool {
        match self.damaged.get(&k) {
            Some(false) => {
                self.delete(k);
                false
            }
            _ => self.entries.contains_key(&k),
        }
    }
    /// `gc` down to `max` bytes: the oldest entries go until what remains fits (records stay).
    pub(super) fn gc(&mut self, max: u64) {
        let mut excess = self.used().saturating_sub(max);
        while excess > 0 {
            let Some(&oldest) = self.order.first() else { break };
            excess = excess.saturating_sub(cost(self.entries[&oldest].len() as u64));
            self.delete(oldest);
        }
    }
    /// A hit refreshes an entry's recency only when its last refresh is older than the store's
    /// recency granularity (an hour in test and fuzzing builds, longer than any run): never here.
    pub(super) fn get(&mut self, k: u8) -> Option<Vec<u8>> {
        self.entries.get(&k).cloned()
    }
    pub(super) fn delete(&mut self, k: u8) {
        self.entries.remove(&k);
        self.damaged.remove(&k);
        self.order.retain(|&x| x != k);
    }
}
