//! `keyvalue-draft2 SCENARIO [ARGS...]`: a `wasi:keyvalue@0.2.0-draft2` guest (the version Spin
//! speaks): string cursors, `increment` by an `s64`, and compare-and-swap.
//!
//! Results go to stdout; a store error is printed as `error <variant>: <message>`.

mod bindings {
    wit_bindgen::generate!({
        path: "../../wit/deps/keyvalue-0.2.0-draft2",
        world: "wasi:keyvalue/imports",
        generate_all,
    });
}

use bindings::wasi::keyvalue::atomics::{self, Cas, CasError};
use bindings::wasi::keyvalue::batch;
use bindings::wasi::keyvalue::store::{self, Bucket, Error};

const USAGE: &str = "keyvalue-draft2 SCENARIO; scenarios: basics | open ID | cas-loop KEY TIMES | list | get KEY | \
    get-many-same KEY N | hold-cas KEY N | hold-buckets N";

fn describe(e: &Error) -> String {
    match e {
        Error::NoSuchStore => "error no-such-store".into(),
        Error::AccessDenied => "error access-denied".into(),
        Error::Other(m) => format!("error other: {m}"),
    }
}

fn open() -> Bucket {
    store::open("").unwrap_or_else(|e| panic!("open: {}", describe(&e)))
}

fn arg(args: &[String], i: usize) -> &str {
    args.get(i)
        .map(String::as_str)
        .unwrap_or_else(|| panic!("usage: {USAGE}"))
}

fn all_keys(bucket: &Bucket) -> Vec<String> {
    let (mut keys, mut cursor) = (Vec::new(), None::<String>);
    loop {
        let page = bucket.list_keys(cursor.as_deref()).unwrap();
        assert!(page.keys.len() <= 1000);
        keys.extend(page.keys);
        match page.cursor {
            Some(c) => cursor = Some(c),
            None => return keys,
        }
    }
}

fn number(v: Option<Vec<u8>>) -> i64 {
    v.map(|v| String::from_utf8(v).unwrap().parse().unwrap()).unwrap_or(0)
}

fn basics() {
    let bucket = open();
    assert_eq!(bucket.get("k").unwrap(), None);
    bucket.set("k", b"v").unwrap();
    assert_eq!(bucket.get("k").unwrap(), Some(b"v".to_vec()));
    assert!(bucket.exists("k").unwrap());

    // increment is signed here.
    assert_eq!(atomics::increment(&bucket, "n", -5).unwrap(), -5);
    assert_eq!(atomics::increment(&bucket, "n", 7).unwrap(), 2);
    assert!(matches!(atomics::increment(&bucket, "k", 1), Err(Error::Other(_))));

    // CAS: a swap after no other write succeeds.
    let cas = Cas::new(&bucket, "c").unwrap();
    assert_eq!(cas.current().unwrap(), None);
    atomics::swap(cas, b"1").unwrap();
    assert_eq!(bucket.get("c").unwrap(), Some(b"1".to_vec()));
    // A write between `new` and `swap` makes it fail, with a fresh handle for the retry.
    let cas = Cas::new(&bucket, "c").unwrap();
    assert_eq!(cas.current().unwrap(), Some(b"1".to_vec()));
    bucket.set("c", b"2").unwrap();
    match atomics::swap(cas, b"lost") {
        Err(CasError::CasFailed(fresh)) => {
            assert_eq!(fresh.current().unwrap(), Some(b"2".to_vec()));
            atomics::swap(fresh, b"3").unwrap();
        }
        Err(CasError::StoreError(e)) => panic!("swap: {}", describe(&e)),
        Ok(()) => panic!("a swap after a concurrent write succeeded"),
    }
    assert_eq!(bucket.get("c").unwrap(), Some(b"3".to_vec()));

    batch::set_many(&bucket, &[("x".into(), b"1".to_vec()), ("y".into(), b"2".to_vec())]).unwrap();
    let got = batch::get_many(&bucket, &["x".into(), "none".into(), "y".into()]).unwrap();
    assert_eq!(
        got,
        vec![
            Some(("x".into(), b"1".to_vec())),
            None,
            Some(("y".into(), b"2".to_vec()))
        ]
    );
    batch::delete_many(&bucket, &["x".into(), "y".into()]).unwrap();

    let mut keys = all_keys(&bucket);
    keys.sort();
    assert_eq!(keys, vec!["c", "k", "n"]);
    // A cursor that list-keys never returned.
    assert!(matches!(bucket.list_keys(Some("not a cursor")), Err(Error::Other(_))));
    bucket.delete("k").unwrap();
    assert!(!bucket.exists("k").unwrap());
    println!("ok basics");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match arg(&args, 0) {
        "basics" => basics(),
        "open" => match store::open(arg(&args, 1)) {
            Ok(_) => println!("ok"),
            Err(e) => println!("{}", describe(&e)),
        },
        "get" => match open().get(arg(&args, 1)) {
            Ok(Some(v)) => println!("value {}", String::from_utf8_lossy(&v)),
            Ok(None) => println!("none"),
            Err(e) => println!("{}", describe(&e)),
        },
        "list" => {
            for k in all_keys(&open()) {
                println!("{k}");
            }
        }
        "cas-loop" => {
            // TIMES read-add-one-swap loops on KEY, retrying on cas-failed.
            let bucket = open();
            let key = arg(&args, 1);
            let times: u64 = arg(&args, 2).parse().unwrap();
            let mut retries = 0;
            for _ in 0..times {
                let mut cas = Cas::new(&bucket, key).unwrap();
                loop {
                    let n = number(cas.current().unwrap());
                    match atomics::swap(cas, (n + 1).to_string().as_bytes()) {
                        Ok(()) => break,
                        Err(CasError::CasFailed(fresh)) => {
                            retries += 1;
                            cas = fresh;
                        }
                        Err(CasError::StoreError(e)) => panic!("swap: {}", describe(&e)),
                    }
                }
            }
            println!("retries {retries}");
        }
        "get-many-same" => {
            // One get-many asking for KEY N times: how many values came back, or the error.
            let keys = vec![arg(&args, 1).to_string(); arg(&args, 2).parse().unwrap()];
            match batch::get_many(&open(), &keys) {
                Ok(values) => println!("ok {}", values.iter().flatten().count()),
                Err(e) => println!("{}", describe(&e)),
            }
        }
        "hold-cas" => {
            // N cas handles on KEY held at once: how many were made before an error.
            let bucket = open();
            let n: usize = arg(&args, 2).parse().unwrap();
            let mut held = Vec::new();
            for _ in 0..n {
                match Cas::new(&bucket, arg(&args, 1)) {
                    Ok(c) => held.push(c),
                    Err(e) => {
                        println!("held {} then {}", held.len(), describe(&e));
                        return;
                    }
                }
            }
            println!("held {}", held.len());
        }
        "hold-buckets" => {
            // N buckets held at once: how many were opened before an error.
            let n: usize = arg(&args, 1).parse().unwrap();
            let mut held = Vec::new();
            for _ in 0..n {
                match store::open("") {
                    Ok(b) => held.push(b),
                    Err(e) => {
                        println!("held {} then {}", held.len(), describe(&e));
                        return;
                    }
                }
            }
            println!("held {}", held.len());
        }
        _ => panic!("usage: {USAGE}"),
    }
}
