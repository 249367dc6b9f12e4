//! Model-based test: random sequences of operations against the store and against a simple
//! in-memory model of what it promises (exact content, LRU eviction under a quota, nothing
//! visible from an uncommitted writer, persistence across reopening), which must agree.

use std::collections::HashMap;
use std::io::Read;

use proptest::prelude::*;

use super::*;

const QUOTA: u64 = 4000;

#[derive(Debug, Clone)]
enum Op {
    Add(u8, u16),
    Get(u8),
    Open(u8),
    Stream(u8, u16, u16),
    AbandonedStream(u8, u16),
    Delete(u8),
    Contains(u8),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0u8..6;
    let len = 0u16..1800;
    prop_oneof![
        4 => (key.clone(), len.clone()).prop_map(|(k, l)| Op::Add(k, l)),
        3 => key.clone().prop_map(Op::Get),
        2 => key.clone().prop_map(Op::Open),
        2 => (key.clone(), len.clone(), 1u16..700).prop_map(|(k, l, c)| Op::Stream(k, l, c)),
        1 => (key.clone(), len).prop_map(|(k, l)| Op::AbandonedStream(k, l)),
        2 => key.clone().prop_map(Op::Delete),
        1 => key.prop_map(Op::Contains),
        1 => Just(Op::Reopen),
    ]
}

/// What the store promises, in memory: content per key, and use order (oldest first).
#[derive(Default)]
struct Model {
    entries: HashMap<u8, Vec<u8>>,
    order: Vec<u8>,
}

impl Model {
    fn used(&self) -> u64 {
        self.entries.values().map(|v| v.len() as u64).sum()
    }
    fn touch(&mut self, k: u8) {
        self.order.retain(|&x| x != k);
        self.order.push(k);
    }
    fn add(&mut self, k: u8, v: Vec<u8>) -> bool {
        if v.len() as u64 > QUOTA {
            return false;
        }
        let old = self.entries.get(&k).map_or(0, |o| o.len() as u64);
        while self.used() - old + v.len() as u64 > QUOTA {
            let victim = *self.order.iter().find(|&&x| x != k).expect("something to evict");
            self.entries.remove(&victim);
            self.order.retain(|&x| x != victim);
        }
        self.entries.insert(k, v);
        self.touch(k);
        true
    }
    fn get(&mut self, k: u8) -> Option<Vec<u8>> {
        let v = self.entries.get(&k).cloned();
        if v.is_some() {
            self.touch(k);
        }
        v
    }
    fn delete(&mut self, k: u8) {
        self.entries.remove(&k);
        self.order.retain(|&x| x != k);
    }
}

fn value(k: u8, len: u16, salt: u64) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((i * 31 + k as u64 * 7 + salt) % 251) as u8)
        .collect()
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let options = NamespaceOptions {
        quota: QUOTA,
        ..Default::default()
    };
    let open = || {
        FileCache::open(dir.path())
            .unwrap()
            .namespace("model", options)
            .unwrap()
    };
    let mut ns = open();
    let mut model = Model::default();
    for (step, op) in ops.into_iter().enumerate() {
        let key = |k: u8| Key::digest([k]);
        let salt = step as u64;
        match op {
            Op::Add(k, len) => {
                let v = value(k, len, salt);
                let r = ns.add(&key(k), &v);
                prop_assert_eq!(r.is_ok(), model.add(k, v), "step {}: {:?}", step, r);
            }
            Op::Get(k) => {
                prop_assert_eq!(ns.get(&key(k)).unwrap(), model.get(k), "step {}: get {}", step, k);
            }
            Op::Open(k) => {
                let got = ns.open(&key(k)).unwrap().map(|mut r| {
                    let mut v = Vec::new();
                    r.read_to_end(&mut v).unwrap();
                    v
                });
                prop_assert_eq!(got, model.get(k), "step {}: open {}", step, k);
            }
            Op::Stream(k, len, chunk) => {
                let v = value(k, len, salt);
                let mut w = ns.create(&key(k)).unwrap();
                for c in v.chunks(chunk as usize) {
                    w.write(c).unwrap();
                }
                prop_assert_eq!(w.commit().is_ok(), model.add(k, v), "step {}", step);
            }
            Op::AbandonedStream(k, len) => {
                let mut w = ns.create(&key(k)).unwrap();
                w.write(&value(k, len, salt)).unwrap();
                drop(w);
            }
            Op::Delete(k) => {
                ns.delete(&key(k)).unwrap();
                model.delete(k);
            }
            Op::Contains(k) => {
                prop_assert_eq!(
                    ns.contains(&key(k)).unwrap(),
                    model.entries.contains_key(&k),
                    "step {}",
                    step
                );
            }
            Op::Reopen => {
                drop(ns);
                ns = open();
            }
        }
        let stats = FileCache::open(dir.path()).unwrap().stats().unwrap();
        let used = stats.iter().map(|s| s.bytes).sum::<u64>();
        prop_assert_eq!(used, model.used(), "step {}: usage", step);
        prop_assert!(used <= QUOTA);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn store_agrees_with_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops)?;
    }
}
