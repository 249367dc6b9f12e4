//! Model-based test (issue 22): random sequences of operations on a real [`Bucket`] (SQLite, in
//! a temporary cache directory) and on a `HashMap`, which must agree after every step: values
//! read (get, exists, get-many and its bound), every key listed exactly once however the listing
//! is paged, increments (and their refusals), data kept across reopening, batches (set-many,
//! delete-many) applied whole, and refused whole when over the quota or the entry size limit or
//! when their commit fails (the `BeforeCommit` fault hook). After every step the namespace's
//! data charge (`Namespace::data_bytes`) and the bucket's usage equal the bytes of keys and
//! values the model holds.
//!
//! Keys come from a small set (so that batches collide with keys already held and with each
//! other), the empty key and a key with a newline among them. A failing case's seed is kept in
//! `proptest-regressions/model_tests.txt`; set `PROPTEST_RNG_SEED` to replay a run.

use std::collections::{HashMap, HashSet};

use filecache_store::{FileCache, NamespaceOptions};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

use super::*;

const KEYS: &[&str] = &["", "a", "b", "line\nbreak", "ключ", "n", "dir/x"];

#[derive(Debug, Clone)]
enum Op {
    Set(usize, Vec<u8>),
    Get(usize),
    Delete(usize),
    Exists(usize),
    SetMany(Vec<(usize, Vec<u8>)>),
    DeleteMany(Vec<usize>),
    /// Keys, and the bound on the bytes of values gathered.
    GetMany(Vec<usize>, u64),
    IncU(usize, u64),
    IncI(usize, i64),
    /// Page size.
    List(usize),
    Reopen,
    /// A batch whose commit fails: set-many (`Some`) or delete-many of the keys.
    FailedBatch(Vec<(usize, Option<Vec<u8>>)>, bool),
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => proptest::collection::vec(any::<u8>(), 0..24),
        1 => (-20i64..20).prop_map(|n| n.to_string().into_bytes()),
        1 => prop_oneof![Just(u64::MAX.to_string()), Just(i64::MAX.to_string()), Just("+7".to_string()), Just(String::new())]
            .prop_map(String::into_bytes),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0..KEYS.len();
    let keys = proptest::collection::vec(key.clone(), 0..6);
    let pairs = proptest::collection::vec((key.clone(), value()), 0..6);
    prop_oneof![
        4 => (key.clone(), value()).prop_map(|(k, v)| Op::Set(k, v)),
        3 => key.clone().prop_map(Op::Get),
        2 => key.clone().prop_map(Op::Delete),
        1 => key.clone().prop_map(Op::Exists),
        4 => pairs.prop_map(Op::SetMany),
        2 => keys.clone().prop_map(Op::DeleteMany),
        2 => (keys, prop_oneof![Just(u64::MAX), 0u64..48]).prop_map(|(k, m)| Op::GetMany(k, m)),
        2 => (key.clone(), prop_oneof![0u64..5, Just(u64::MAX)]).prop_map(|(k, d)| Op::IncU(k, d)),
        2 => (key.clone(), prop_oneof![-5i64..5, Just(i64::MAX), Just(i64::MIN)]).prop_map(|(k, d)| Op::IncI(k, d)),
        2 => (1usize..5).prop_map(Op::List),
        1 => Just(Op::Reopen),
        2 => (proptest::collection::vec((key, proptest::option::of(value())), 0..6), any::<bool>())
            .prop_map(|(b, set)| Op::FailedBatch(b, set)),
    ]
}

/// What the bucket must hold, and the limits it must enforce.
struct Model {
    map: HashMap<String, Vec<u8>>,
    quota: u64,
    max_entry_size: u64,
}

impl Model {
    fn bytes(&self) -> u64 {
        self.map.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum()
    }

    fn size_of(&self, k: &str) -> u64 {
        self.map.get(k).map_or(0, |v| (k.len() + v.len()) as u64)
    }

    /// Whether writing these pairs (the last value of a key given twice) fits the limits: each
    /// pair on its own, then the change of the data charge (no cache entries in the namespace,
    /// so nothing can be evicted to make room).
    fn fits(&self, pairs: &[(String, Vec<u8>)]) -> bool {
        if pairs
            .iter()
            .any(|(k, v)| v.len() as u64 > self.max_entry_size || (k.len() + v.len()) as u64 > self.quota)
        {
            return false;
        }
        let last: HashMap<&str, &[u8]> = pairs.iter().map(|(k, v)| (k.as_str(), &v[..])).collect();
        let old: u64 = last.keys().map(|k| self.size_of(k)).sum();
        let new: u64 = last.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
        new <= old || self.bytes() - old + new <= self.quota
    }

    /// What an increment must answer (`None`: refused) and the value it must store.
    fn increment<T>(&self, key: &str, add: impl Fn(T) -> Option<T>) -> Option<T>
    where
        T: std::str::FromStr + Default,
    {
        let cur = match self.map.get(key) {
            None => T::default(),
            Some(v) => std::str::from_utf8(v).ok()?.parse::<T>().ok()?,
        };
        add(cur)
    }
}

struct Run {
    root: std::path::PathBuf,
    options: NamespaceOptions,
    ns: Namespace,
    bucket: Bucket,
}

impl Run {
    fn open(root: std::path::PathBuf, options: NamespaceOptions) -> Run {
        let cache = FileCache::open(&root).unwrap();
        let ns = cache.namespace("model", options).unwrap();
        Run {
            root,
            options,
            bucket: Bucket::new(ns.clone()),
            ns,
        }
    }
}

fn key(i: usize) -> String {
    KEYS[i].to_string()
}

fn check_ops(quota: Option<u64>, ops: &[Op]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut options = NamespaceOptions::default();
    if let Some(q) = quota {
        // A small namespace: batches go over its quota, values over its entry size limit.
        options = options.quota(q).max_entry_size(20);
    }
    let mut model = Model {
        map: HashMap::new(),
        quota: options.quota,
        max_entry_size: options.max_entry_size,
    };
    let mut run = Run::open(dir.path().join("cache"), options);
    for (step, op) in ops.iter().enumerate() {
        let b = &run.bucket;
        match op {
            Op::Set(k, v) => {
                let k = key(*k);
                let fits = model.fits(&[(k.clone(), v.clone())]);
                let r = b.set(&k, v);
                prop_assert_eq!(r.is_ok(), fits, "step {}: set {:?}: {:?}", step, k, r);
                if fits {
                    model.map.insert(k, v.clone());
                }
            }
            Op::Get(k) => {
                let k = key(*k);
                prop_assert_eq!(
                    b.get(&k).unwrap(),
                    model.map.get(&k).cloned(),
                    "step {}: get {:?}",
                    step,
                    k
                );
            }
            Op::Delete(k) => {
                let k = key(*k);
                b.delete(&k).unwrap();
                model.map.remove(&k);
            }
            Op::Exists(k) => {
                let k = key(*k);
                prop_assert_eq!(
                    b.exists(&k).unwrap(),
                    model.map.contains_key(&k),
                    "step {}: exists {:?}",
                    step,
                    k
                );
            }
            Op::SetMany(pairs) => {
                let pairs: Vec<(String, Vec<u8>)> = pairs.iter().map(|(k, v)| (key(*k), v.clone())).collect();
                let fits = model.fits(&pairs);
                let r = b.set_many(&pairs);
                prop_assert_eq!(r.is_ok(), fits, "step {}: set_many {:?}: {:?}", step, pairs, r);
                if fits {
                    model.map.extend(pairs);
                }
            }
            Op::DeleteMany(keys) => {
                let keys: Vec<String> = keys.iter().map(|k| key(*k)).collect();
                b.delete_many(&keys).unwrap();
                for k in &keys {
                    model.map.remove(k);
                }
            }
            Op::GetMany(keys, max) => {
                let keys: Vec<String> = keys.iter().map(|k| key(*k)).collect();
                let want: Vec<Option<Vec<u8>>> = keys.iter().map(|k| model.map.get(k).cloned()).collect();
                let total: u64 = want.iter().flatten().map(|v| v.len() as u64).sum();
                match b.get_many(&keys, *max) {
                    Ok(got) => {
                        prop_assert!(total <= *max, "step {}: get_many past its bound {}", step, max);
                        prop_assert_eq!(got, want, "step {}: get_many {:?}", step, keys);
                    }
                    Err(Error::TooMuchAtOnce { .. }) => {
                        prop_assert!(total > *max, "step {}: get_many refused {} <= {}", step, total, max)
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("step {step}: get_many: {e:?}"))),
                }
            }
            Op::IncU(k, d) => {
                let k = key(*k);
                let want = model.increment(&k, |c: u64| c.checked_add(*d));
                let stored = want.map(|n| n.to_string().into_bytes());
                let fits = stored.as_ref().is_some_and(|v| model.fits(&[(k.clone(), v.clone())]));
                let r = b.increment_u64(&k, *d);
                prop_assert_eq!(
                    r.as_ref().ok().copied(),
                    want.filter(|_| fits),
                    "step {}: increment_u64 {:?}: {:?}",
                    step,
                    k,
                    r
                );
                if fits {
                    model.map.insert(k, stored.unwrap());
                }
            }
            Op::IncI(k, d) => {
                let k = key(*k);
                let want = model.increment(&k, |c: i64| c.checked_add(*d));
                let stored = want.map(|n| n.to_string().into_bytes());
                let fits = stored.as_ref().is_some_and(|v| model.fits(&[(k.clone(), v.clone())]));
                let r = b.increment_i64(&k, *d);
                prop_assert_eq!(
                    r.as_ref().ok().copied(),
                    want.filter(|_| fits),
                    "step {}: increment_i64 {:?}: {:?}",
                    step,
                    k,
                    r
                );
                if fits {
                    model.map.insert(k, stored.unwrap());
                }
            }
            Op::List(size) => {
                let mut listed = Vec::new();
                let mut from = 0;
                loop {
                    let page = b.list_keys(from, *size).unwrap();
                    prop_assert!(page.keys.len() <= *size);
                    listed.extend(page.keys);
                    match page.next {
                        Some(n) => from = n,
                        None => break,
                    }
                    prop_assert!(
                        listed.len() <= model.map.len(),
                        "step {}: listing runs on: {:?}",
                        step,
                        listed
                    );
                }
                let unique: HashSet<&String> = listed.iter().collect();
                prop_assert_eq!(
                    unique.len(),
                    listed.len(),
                    "step {}: a key listed twice: {:?}",
                    step,
                    listed
                );
                prop_assert_eq!(
                    unique,
                    model.map.keys().collect::<HashSet<_>>(),
                    "step {}: listing",
                    step
                );
            }
            Op::Reopen => {
                let (root, options) = (run.root.clone(), run.options);
                drop(run);
                run = Run::open(root, options);
            }
            Op::FailedBatch(batch, set) => {
                let r = {
                    let _f = fault::inject(fault::Point::BeforeCommit);
                    if *set {
                        let pairs: Vec<(String, Vec<u8>)> = batch
                            .iter()
                            .map(|(k, v)| (key(*k), v.clone().unwrap_or_default()))
                            .collect();
                        b.set_many(&pairs)
                    } else {
                        b.delete_many(&batch.iter().map(|(k, _)| key(*k)).collect::<Vec<_>>())
                    }
                };
                prop_assert!(r.is_err(), "step {}: a batch whose commit fails succeeded", step);
                // The model is unchanged: every key of the batch still has its old value.
                for (k, _) in batch {
                    let k = key(*k);
                    prop_assert_eq!(
                        run.bucket.get(&k).unwrap(),
                        model.map.get(&k).cloned(),
                        "step {}: failed batch left {:?}",
                        step,
                        k
                    );
                }
            }
        }
        // After every step: the data charge and the usage are what the model holds.
        let bytes = model.bytes();
        prop_assert_eq!(
            run.ns.data_bytes().unwrap(),
            bytes,
            "step {}: data charge after {:?}",
            step,
            op
        );
        let usage = run.bucket.usage().unwrap();
        prop_assert_eq!(
            (usage.keys, usage.bytes),
            (model.map.len() as u64, bytes),
            "step {}: usage after {:?}",
            step,
            op
        );
    }
    // At the end, every key's value.
    for k in KEYS {
        prop_assert_eq!(run.bucket.get(k).unwrap(), model.map.get(*k).cloned(), "end: {:?}", k);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: Some(Box::new(FileFailurePersistence::SourceParallel("proptest-regressions"))),
        rng_seed: proptest::test_runner::RngSeed::Fixed(filecache_tests::model_test_seed("kv model test")),
        ..ProptestConfig::default()
    })]

    #[test]
    fn bucket_agrees_with_model(
        quota in prop_oneof![Just(None), (40u64..120).prop_map(Some)],
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        check_ops(quota, &ops)?;
    }
}
