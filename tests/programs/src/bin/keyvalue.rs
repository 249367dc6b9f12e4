//! `keyvalue SCENARIO [ARGS...]`: a `wasi:keyvalue@0.2.0-draft` guest, as `wasmtime run -S
//! keyvalue` runs them (bindings straight from the vendored WIT, nothing of filecache).
//!
//! `wasmtime-main` is the equivalent of wasmtime's own key-value test program
//! (`crates/test-programs/src/bin/keyvalue_main.rs`). The other scenarios print what they find
//! on stdout, one item a line, for the end-to-end tests to check; a store error is printed as
//! `error <variant>: <message>` (exit code 0), so that the tests can check the variant.

mod bindings {
    wit_bindgen::generate!({
        path: "../../wit/deps/keyvalue-0.2.0-draft",
        world: "wasi:keyvalue/imports",
        generate_all,
    });
}

use bindings::wasi::keyvalue::store::{Bucket, Error};
use bindings::wasi::keyvalue::{atomics, batch, store};

const USAGE: &str = "keyvalue SCENARIO; scenarios: wasmtime-main | open ID | get KEY | set KEY VALUE | \
    set-size KEY BYTES | delete KEY | increment KEY DELTA TIMES | list | fill PREFIX N | \
    set-many PREFIX N VALUE | check-many PREFIX N | odd-keys | bench get|set|increment SIZE ITERS";

fn describe(e: &Error) -> String {
    match e {
        Error::NoSuchStore => "error no-such-store".into(),
        Error::AccessDenied => "error access-denied".into(),
        Error::Other(m) => format!("error other: {m}"),
    }
}

fn report<T>(r: Result<T, Error>, ok: impl FnOnce(T) -> String) {
    match r {
        Ok(v) => println!("{}", ok(v)),
        Err(e) => println!("{}", describe(&e)),
    }
}

fn open() -> Bucket {
    let id = std::env::var("IDENTIFIER").unwrap_or_default();
    store::open(&id).unwrap_or_else(|e| panic!("open({id:?}): {}", describe(&e)))
}

fn arg(args: &[String], i: usize) -> &str {
    args.get(i)
        .map(String::as_str)
        .unwrap_or_else(|| panic!("usage: {USAGE}"))
}

fn num(s: &str) -> u64 {
    s.parse().unwrap_or_else(|_| panic!("not a number: {s}"))
}

/// Every key, paging with the cursor to the end; the page count goes to stderr.
fn all_keys(bucket: &Bucket) -> Vec<String> {
    let (mut keys, mut cursor, mut pages) = (Vec::new(), None, 0);
    loop {
        let page = bucket
            .list_keys(cursor)
            .unwrap_or_else(|e| panic!("list-keys: {}", describe(&e)));
        assert!(page.keys.len() <= 1000, "a page of {} keys", page.keys.len());
        keys.extend(page.keys);
        pages += 1;
        match page.cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    eprintln!("{pages} pages");
    keys
}

fn wasmtime_main() {
    let identifier = std::env::var("IDENTIFIER").unwrap_or_default();
    let bucket = store::open(&identifier).unwrap();
    assert_eq!(atomics::increment(&bucket, "atomics_key", 1).unwrap(), 6);

    let resp = bucket.list_keys(None).unwrap();
    assert_eq!(resp.keys, vec!["atomics_key".to_string()]);

    bucket.set("hello", "world".as_bytes()).unwrap();
    let v = bucket.get("hello").unwrap();
    assert_eq!(String::from_utf8(v.unwrap()).unwrap(), "world");
    assert!(bucket.exists("hello").unwrap());
    bucket.delete("hello").unwrap();
    assert!(!bucket.exists("hello").unwrap());

    batch::set_many(
        &bucket,
        &[
            ("a1".to_string(), b"v1".to_vec()),
            ("b1".to_string(), b"v1".to_vec()),
            ("c1".to_string(), b"v1".to_vec()),
        ],
    )
    .unwrap();
    batch::delete_many(&bucket, &["a1".to_string(), "c1".to_string()]).unwrap();
    let values = batch::get_many(&bucket, &["a1".to_string(), "b1".to_string(), "c1".to_string()]).unwrap();
    assert_eq!(values, vec![None, Some(("b1".to_string(), b"v1".to_vec())), None]);
    println!("ok wasmtime-main");
}

/// Keys that must round-trip as themselves and never name a file.
fn odd_keys() -> Vec<String> {
    vec![
        String::new(),
        "k".repeat(4096),
        "..".into(),
        ".".into(),
        "a/b".into(),
        "../../../etc/passwd".into(),
        "nul\0inside".into(),
        "ключ 鍵 🔑".into(),
        "kv".into(),
        "state".into(),
    ]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let scenario = arg(&args, 0).to_owned();
    match scenario.as_str() {
        "wasmtime-main" => wasmtime_main(),
        "open" => report(store::open(arg(&args, 1)), |_| "ok".into()),
        "get" => report(open().get(arg(&args, 1)), |v| match v {
            Some(v) => format!("value {}", String::from_utf8_lossy(&v)),
            None => "none".into(),
        }),
        "set" => report(open().set(arg(&args, 1), arg(&args, 2).as_bytes()), |()| "ok".into()),
        "set-size" => {
            let value = vec![b'x'; num(arg(&args, 2)) as usize];
            report(open().set(arg(&args, 1), &value), |()| "ok".into())
        }
        "delete" => report(open().delete(arg(&args, 1)), |()| "ok".into()),
        "increment" => {
            let bucket = open();
            let (key, delta, times) = (arg(&args, 1), num(arg(&args, 2)), num(arg(&args, 3)));
            let mut last = Ok(0);
            for _ in 0..times {
                last = atomics::increment(&bucket, key, delta);
                if last.is_err() {
                    break;
                }
            }
            report(last, |v| format!("value {v}"))
        }
        "list" => {
            for k in all_keys(&open()) {
                println!("{k}");
            }
        }
        "fill" => {
            let bucket = open();
            let (prefix, n) = (arg(&args, 1), num(arg(&args, 2)));
            for i in 0..n {
                bucket.set(&format!("{prefix}{i}"), i.to_string().as_bytes()).unwrap();
            }
            println!("ok");
        }
        "set-many" => {
            // One batch of N keys, PREFIX0..: what a kill -9 interrupts.
            let (prefix, n, value) = (arg(&args, 1), num(arg(&args, 2)), arg(&args, 3));
            let kvs: Vec<(String, Vec<u8>)> = (0..n)
                .map(|i| (format!("{prefix}{i}"), value.as_bytes().to_vec()))
                .collect();
            println!("started");
            report(batch::set_many(&open(), &kvs), |()| "ok".into())
        }
        "check-many" => {
            // Prints each distinct value among PREFIX0..PREFIX(N-1) ("none" for a missing key),
            // and checks that list-keys agrees with get.
            let bucket = open();
            let (prefix, n) = (arg(&args, 1), num(arg(&args, 2)));
            let keys: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
            let values = batch::get_many(&bucket, &keys).unwrap();
            let listed: std::collections::HashSet<String> = all_keys(&bucket).into_iter().collect();
            let mut seen = std::collections::BTreeMap::new();
            for (k, v) in keys.iter().zip(values) {
                assert_eq!(listed.contains(k), v.is_some(), "list-keys and get disagree on {k}");
                let v = v.map(|(key, v)| {
                    assert_eq!(&key, k);
                    String::from_utf8_lossy(&v).into_owned()
                });
                *seen.entry(v.unwrap_or_else(|| "none".into())).or_insert(0u64) += 1;
            }
            for (v, count) in seen {
                println!("{v} {count}");
            }
        }
        "bench" => {
            // Times ITERS operations from inside the guest (host calls included) and prints
            // nanoseconds per operation: what host/benches/keyvalue.rs compares across stores.
            let (op, size, iters) = (arg(&args, 1), num(arg(&args, 2)) as usize, num(arg(&args, 3)));
            let bucket = open();
            let mut value = vec![7u8; size];
            bucket.set("bench", &value).unwrap();
            // Every write stores bytes no earlier write (of this run or an earlier one) stored:
            // SQLite skips rewriting a row with identical bytes, which would make a store that
            // rewrites the same value look free.
            let seed = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            let fresh = |value: &mut Vec<u8>, i: u64| {
                let stamp = seed.wrapping_add(i).to_le_bytes();
                let n = stamp.len().min(value.len());
                value[..n].copy_from_slice(&stamp[..n]);
            };
            let keys: Vec<String> = (0..100).map(|i| format!("bench-{i}")).collect();
            if op == "first-get" {
                // ITERS distinct keys written (untimed), then each read once.
                for i in 0..iters {
                    bucket.set(&format!("first-{i}"), &value).unwrap();
                }
                let start = std::time::Instant::now();
                for i in 0..iters {
                    let got = bucket.get(&format!("first-{i}")).unwrap();
                    assert_eq!(got.map(|v| v.len()), Some(size));
                }
                println!("{}", start.elapsed().as_nanos() / u128::from(iters.max(1)));
                return;
            }
            let start = std::time::Instant::now();
            match op {
                "get" => {
                    for _ in 0..iters {
                        let got = bucket.get("bench").unwrap();
                        assert_eq!(got.map(|v| v.len()), Some(size));
                    }
                }
                "set" => {
                    for i in 0..iters {
                        fresh(&mut value, i);
                        bucket.set(&keys[i as usize % keys.len()], &value).unwrap();
                    }
                }
                "increment" => {
                    for _ in 0..iters {
                        atomics::increment(&bucket, "bench-counter", 1).unwrap();
                    }
                }
                "set-distinct" => {
                    for i in 0..iters {
                        fresh(&mut value, i);
                        bucket.set(&format!("distinct-{i}"), &value).unwrap();
                    }
                }
                "set-many" => {
                    // Batches of 100 distinct keys; the time printed is per key.
                    for b in 0..iters.div_ceil(100) {
                        let pairs: Vec<(String, Vec<u8>)> = (0..100)
                            .map(|i| {
                                fresh(&mut value, b * 100 + i);
                                (format!("many-{b}-{i}"), value.clone())
                            })
                            .collect();
                        batch::set_many(&bucket, &pairs).unwrap();
                    }
                }
                _ => panic!("bench OP: get | first-get | set | set-distinct | set-many | increment"),
            }
            println!("{}", start.elapsed().as_nanos() / u128::from(iters.max(1)));
        }
        "odd-keys" => {
            let bucket = open();
            let keys = odd_keys();
            for (i, k) in keys.iter().enumerate() {
                bucket.set(k, format!("v{i}").as_bytes()).unwrap();
            }
            for (i, k) in keys.iter().enumerate() {
                assert_eq!(bucket.get(k).unwrap(), Some(format!("v{i}").into_bytes()), "{k:?}");
            }
            let mut listed = all_keys(&bucket);
            listed.sort();
            let mut expected = keys.clone();
            expected.sort();
            assert_eq!(listed, expected);
            println!("ok odd-keys");
        }
        _ => panic!("usage: {USAGE}"),
    }
}
