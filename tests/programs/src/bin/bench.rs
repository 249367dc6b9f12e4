//! The benchmark guest: not a command, but a component the host calls repeatedly (see
//! `wit/bench.wit` beside this crate and `host/benches/guest.rs`). Every operation goes through
//! the `filecache:cache` interface; the host times `run`.

use std::cell::RefCell;

mod bindings {
    wit_bindgen::generate!({
        path: ["../../wit", "wit"],
        world: "filecache:bench/bench",
        generate_all,
    });
}

use bindings::filecache::cache::cache::{Writer, add, create, get, open};

const CHUNK: usize = 1 << 20;

struct Prepared {
    key: Vec<u8>,
    absent: Vec<u8>,
    content: Vec<u8>,
}

thread_local! {
    static PREPARED: RefCell<Option<Prepared>> = const { RefCell::new(None) };
}

struct Bench;

impl bindings::Guest for Bench {
    fn prepare(size: u64) {
        let key = filecache_test_programs::key_for(&format!("bench/{size}"));
        let absent = filecache_test_programs::key_for("bench/absent");
        let content = filecache_test_programs::content("bench", size);
        PREPARED.with(|p| *p.borrow_mut() = Some(Prepared { key, absent, content }));
    }

    fn run(op: String, iterations: u32) -> Result<u64, String> {
        PREPARED.with(|p| {
            let p = p.borrow();
            let p = p.as_ref().ok_or("`prepare` was not called")?;
            let mut moved = 0u64;
            for i in 0..iterations {
                moved += one(&op, p).map_err(|e| format!("{op} #{i}: {e}"))?;
            }
            Ok(moved)
        })
    }
}

fn one(op: &str, p: &Prepared) -> Result<u64, String> {
    let size = p.content.len() as u64;
    match op {
        "get" => match get(&p.key).map_err(|e| format!("{e:?}"))? {
            Some(v) if v.len() as u64 == size => Ok(size),
            Some(v) => Err(format!("{} bytes, expected {size}", v.len())),
            None => Err("a miss".into()),
        },
        "open" => {
            let r = open(&p.key).map_err(|e| format!("{e:?}"))?.ok_or("a miss")?;
            let mut got = 0u64;
            loop {
                let chunk = r.read(CHUNK as u64).map_err(|e| format!("{e:?}"))?;
                if chunk.is_empty() {
                    break;
                }
                got += chunk.len() as u64;
            }
            if got != size {
                return Err(format!("{got} bytes, expected {size}"));
            }
            Ok(got)
        }
        "add" => {
            add(&p.key, &p.content).map_err(|e| format!("{e:?}"))?;
            Ok(size)
        }
        "create" => {
            let w = create(&p.key).map_err(|e| format!("{e:?}"))?;
            for chunk in p.content.chunks(CHUNK) {
                w.write(chunk).map_err(|e| format!("{e:?}"))?;
            }
            Writer::commit(w).map_err(|e| format!("{e:?}"))?;
            Ok(size)
        }
        "miss" => match get(&p.absent).map_err(|e| format!("{e:?}"))? {
            None => Ok(0),
            Some(_) => Err("a hit on a key never written".into()),
        },
        other => Err(format!("unknown op {other:?}")),
    }
}

bindings::export!(Bench with_types_in bindings);

fn main() {
    eprintln!("bench is a component the host calls (`prepare`, `run`), not a command");
    std::process::exit(2);
}
