//! `http-keyvalue`: a `wasi:http` handler that keeps a counter and values in `wasi:keyvalue`
//! (0.2.0-draft), written for `wasmtime serve -S cli -S keyvalue` and nothing of filecache: what
//! a user brings to `filecache serve` unmodified (under wasmtime it forgets everything between
//! requests; under filecache it remembers).
//!
//! Routes: `GET /plain` (no storage), `GET /kv/get/KEY` (404 when absent), `PUT /kv/set/KEY`
//! (the body), `POST /kv/incr/KEY` (answers the new count), `GET /trap` (the handler panics).

mod bindings {
    wit_bindgen::generate!({
        path: "../../wit/deps/keyvalue-0.2.0-draft",
        world: "wasi:keyvalue/imports",
        generate_all,
    });
}

use bindings::wasi::keyvalue::{atomics, store};
use filecache_test_programs::http::{body, segments, text};
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct Handler;

wasip2::http::proxy::export!(Handler);

fn describe(e: store::Error) -> String {
    match e {
        store::Error::NoSuchStore => "no-such-store".into(),
        store::Error::AccessDenied => "access-denied".into(),
        store::Error::Other(m) => format!("other: {m}"),
    }
}

impl wasip2::exports::http::incoming_handler::Guest for Handler {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = segments(&request);
        let path: Vec<&str> = path.iter().map(String::as_str).collect();
        if path == ["plain"] {
            return text(out, 200, "hello\n");
        }
        if path == ["trap"] {
            panic!("the /trap route traps");
        }
        let bucket = match store::open("") {
            Ok(b) => b,
            Err(e) => return text(out, 500, &format!("open: {}\n", describe(e))),
        };
        match path.as_slice() {
            ["kv", "get", key] => match bucket.get(key) {
                Ok(Some(value)) => filecache_test_programs::http::respond(out, 200, &[], &value),
                Ok(None) => text(out, 404, "absent\n"),
                Err(e) => text(out, 500, &format!("get: {}\n", describe(e))),
            },
            ["kv", "set", key] => {
                let value = body(request);
                match bucket.set(key, &value) {
                    Ok(()) => text(out, 200, &format!("stored {} bytes\n", value.len())),
                    Err(e) => text(out, 500, &format!("set: {}\n", describe(e))),
                }
            }
            ["kv", "incr", key] => match atomics::increment(&bucket, key, 1) {
                Ok(n) => text(out, 200, &format!("{n}\n")),
                Err(e) => text(out, 500, &format!("increment: {}\n", describe(e))),
            },
            _ => text(out, 404, "no such route\n"),
        }
    }
}

fn main() {}
