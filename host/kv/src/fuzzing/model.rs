//! The model a bucket must agree with: a `HashMap` and the limits, and the refusals it predicts.

use std::collections::HashMap;

use filecache_store::NamespaceOptions;

use crate::{Error, MAX_KEY_LEN};

/// Why a write is refused (or `Fine`: it is not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    Fine,
    KeyTooLong,
    TooLarge,
    Quota,
    NotANumber,
    Overflow,
}

pub(super) fn refusal_of<T: std::fmt::Debug>(r: &Result<T, Error>) -> Result<Refusal, String> {
    Ok(match r {
        Ok(_) => Refusal::Fine,
        Err(Error::KeyTooLong { .. }) => Refusal::KeyTooLong,
        Err(Error::Store(filecache_store::Error::TooLarge { .. })) => Refusal::TooLarge,
        Err(Error::Store(filecache_store::Error::QuotaExceeded { .. })) => Refusal::Quota,
        Err(Error::NotANumber { .. }) => Refusal::NotANumber,
        Err(Error::Overflow { .. }) => Refusal::Overflow,
        Err(e) => return Err(format!("unexpected error: {}", e.full_message())),
    })
}

/// What the bucket must hold: each key's value and the generation of its last write (what a
/// compare-and-swap compares), and the limits it must enforce.
#[derive(Debug, Clone)]
pub struct Model {
    pub(super) map: HashMap<String, (Vec<u8>, u64)>,
    generation: u64,
    quota: u64,
    max_entry_size: u64,
}

fn charged(k: &str, v: &[u8]) -> u64 {
    (k.len() + v.len()) as u64
}

impl Model {
    /// An empty bucket with the limits of `options`.
    pub(super) fn new(options: &NamespaceOptions) -> Model {
        Model {
            map: HashMap::new(),
            generation: 0,
            quota: options.quota,
            max_entry_size: options.max_entry_size,
        }
    }

    pub(super) fn bytes(&self) -> u64 {
        self.map.iter().map(|(k, (v, _))| charged(k, v)).sum()
    }

    pub(super) fn size_of(&self, k: &str) -> u64 {
        self.map.get(k).map_or(0, |(v, _)| charged(k, v))
    }

    pub(super) fn value(&self, k: &str) -> Option<Vec<u8>> {
        self.map.get(k).map(|(v, _)| v.clone())
    }

    /// The limits one pair must keep on its own.
    pub(super) fn check_pair(&self, k: &str, v: &[u8]) -> Refusal {
        if v.len() as u64 > self.max_entry_size {
            Refusal::TooLarge
        } else if charged(k, v) > self.quota {
            Refusal::Quota
        } else {
            Refusal::Fine
        }
    }

    /// Whether writing these pairs (the last value of a key given twice) fits the quota, given
    /// what is held (no cache entries in the namespace: nothing can be evicted to make room).
    pub(super) fn fits(&self, pairs: &[(String, Vec<u8>)]) -> bool {
        let last: HashMap<&str, &[u8]> = pairs.iter().map(|(k, v)| (k.as_str(), &v[..])).collect();
        let old: u64 = last.keys().map(|k| self.size_of(k)).sum();
        let new: u64 = last.iter().map(|(k, v)| charged(k, v)).sum();
        new <= old || self.bytes() - old + new <= self.quota
    }

    /// How `set-many` of `pairs` must end: checks in the order the bucket makes them.
    pub(super) fn set_many(&self, pairs: &[(String, Vec<u8>)]) -> Refusal {
        if pairs.iter().any(|(k, _)| k.len() > MAX_KEY_LEN) {
            return Refusal::KeyTooLong;
        }
        if let Some(r) = pairs
            .iter()
            .map(|(k, v)| self.check_pair(k, v))
            .find(|r| *r != Refusal::Fine)
        {
            return r;
        }
        if self.fits(pairs) {
            Refusal::Fine
        } else {
            Refusal::Quota
        }
    }

    pub(super) fn write(&mut self, pairs: Vec<(String, Vec<u8>)>) {
        for (k, v) in pairs {
            self.generation += 1;
            self.map.insert(k, (v, self.generation));
        }
    }

    /// How an increment must end, and the value it stores.
    pub(super) fn increment<T>(&self, k: &str, add: impl Fn(T) -> Option<T>) -> (Refusal, Option<(T, Vec<u8>)>)
    where
        T: std::str::FromStr + Default + ToString + Copy,
    {
        if k.len() > MAX_KEY_LEN {
            return (Refusal::KeyTooLong, None);
        }
        let cur = match self.map.get(k) {
            None => T::default(),
            Some((v, _)) => match std::str::from_utf8(v).ok().and_then(|s| s.parse::<T>().ok()) {
                Some(n) => n,
                None => return (Refusal::NotANumber, None),
            },
        };
        let Some(sum) = add(cur) else {
            return (Refusal::Overflow, None);
        };
        let stored = sum.to_string().into_bytes();
        let r = match self.check_pair(k, &stored) {
            Refusal::Fine if !self.fits(&[(k.to_string(), stored.clone())]) => Refusal::Quota,
            r => r,
        };
        (r, Some((sum, stored)))
    }
}
