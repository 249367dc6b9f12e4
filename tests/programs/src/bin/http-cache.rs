//! `http-cache`: a `wasi:http` handler that uses `filecache:cache` and a granted `wasi:keyvalue`
//! bucket, and misbehaves on request, for `filecache serve`'s tests and benchmarks.
//!
//! Routes:
//! - `GET /plain`: no storage.
//! - `GET /cache/get/SIZE`: the entry of SIZE bytes (content from `content("http SIZE", SIZE)`),
//!   added on a miss; header `x-cache: hit|miss`.
//! - `GET /bytes/SIZE`: SIZE bytes from the guest's memory, written out as `/cache/get` writes
//!   its entry, without the cache (the benchmark's split of the store's share from the body's).
//! - `PUT /cache/put/SEED` (the body) and `GET /cache/read/SEED` (404 when absent).
//! - `POST /bucket/NAME/incr/KEY`: increments KEY in the bucket granted as NAME.
//! - `POST /echo`: reads the whole body and answers its length.
//! - `GET /trap`, `GET /spin` (loops forever), `GET /sleep/MS` (waits in a host call),
//!   `GET /alloc/MIB` (allocates), `GET /resources/N` (holds N `fields` resources),
//!   `GET /read-file/PATH...` (reads the file `/PATH` of a `--dir`: waits in a host call as long
//!   as the file gives nothing, a FIFO with no writer).

mod bindings {
    wit_bindgen::generate!({
        path: "../../wit/deps/keyvalue-0.2.0-draft",
        world: "wasi:keyvalue/imports",
        generate_all,
    });
}

use bindings::wasi::keyvalue::{atomics, store};
use filecache_test_programs::http::{body, respond, segments, text};
use filecache_test_programs::{Error, add, content, get, key_for};
use wasip2::http::types::{Fields, IncomingRequest, ResponseOutparam};

struct Handler;

wasip2::http::proxy::export!(Handler);

fn cache_error(e: Error) -> String {
    format!("cache error: {e:?}\n")
}

impl wasip2::exports::http::incoming_handler::Guest for Handler {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = segments(&request);
        let path: Vec<&str> = path.iter().map(String::as_str).collect();
        match path.as_slice() {
            ["plain"] => text(out, 200, "hello\n"),
            ["cache", "get", size] => {
                let size: u64 = size.parse().unwrap_or(0);
                let seed = format!("http {size}");
                let key = key_for(&seed);
                match get(&key) {
                    Ok(Some(bytes)) => respond(out, 200, &[("x-cache", "hit")], &bytes),
                    Ok(None) => {
                        let bytes = content(&seed, size);
                        match add(&key, &bytes) {
                            Ok(()) => respond(out, 200, &[("x-cache", "miss")], &bytes),
                            Err(e) => text(out, 500, &cache_error(e)),
                        }
                    }
                    Err(e) => text(out, 500, &cache_error(e)),
                }
            }
            ["bytes", size] => {
                let size: usize = size.parse().unwrap_or(0).min(1 << 20);
                respond(out, 200, &[], &vec![b'x'; size])
            }
            ["cache", "put", seed] => {
                let bytes = body(request);
                match add(&key_for(seed), &bytes) {
                    Ok(()) => text(out, 200, &format!("stored {} bytes\n", bytes.len())),
                    Err(e) => text(out, 500, &cache_error(e)),
                }
            }
            ["cache", "read", seed] => match get(&key_for(seed)) {
                Ok(Some(bytes)) => respond(out, 200, &[], &bytes),
                Ok(None) => text(out, 404, "absent\n"),
                Err(e) => text(out, 500, &cache_error(e)),
            },
            ["bucket", name, "incr", key] => {
                let result = store::open(name).and_then(|b| atomics::increment(&b, key, 1));
                match result {
                    Ok(n) => text(out, 200, &format!("{n}\n")),
                    Err(store::Error::AccessDenied) => text(out, 403, "access-denied\n"),
                    Err(e) => text(out, 500, &format!("{e:?}\n")),
                }
            }
            ["echo"] => {
                let n = body(request).len();
                text(out, 200, &format!("{n}\n"))
            }
            ["trap"] => panic!("the /trap route traps"),
            ["spin"] => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            ["sleep", ms] => {
                let ms: u64 = ms.parse().unwrap_or(0);
                wasip2::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
                text(out, 200, "slept\n")
            }
            ["read-file", file @ ..] => match std::fs::read(format!("/{}", file.join("/"))) {
                Ok(bytes) => text(out, 200, &format!("read {} bytes\n", bytes.len())),
                Err(e) => text(out, 500, &format!("read: {e}\n")),
            },
            ["alloc", mib] => {
                let mib: usize = mib.parse().unwrap_or(0);
                let bytes = std::hint::black_box(vec![1u8; mib << 20]);
                text(
                    out,
                    200,
                    &format!("{}\n", bytes.iter().map(|&b| b as usize).sum::<usize>()),
                )
            }
            ["resources", n] => {
                let n: usize = n.parse().unwrap_or(0);
                let held: Vec<Fields> = (0..n).map(|_| Fields::new()).collect();
                text(out, 200, &format!("held {}\n", held.len()))
            }
            _ => text(out, 404, "no such route\n"),
        }
    }
}

fn main() {}
