//! `http-hello`: the Rust kit's HTTP handler example, for `filecache serve`.
//!
//! A `wasi:http` handler (the `wasip2` crate's `wasip2::http::proxy::export!`) that
//!
//! - renders `GET /hello/NAME` once per name and serves it from the cache afterwards
//!   ([`filecache_guest::memoize_status`]; the `x-cache` header says `hit` or `miss`), and
//! - counts its visitors in a `wasi:keyvalue` bucket (`POST /visit`, answering the count), the
//!   bucket the host grants as `visits` (`filecache serve --bucket visits`).
//!
//! Build it with `cargo build --release --target wasm32-wasip2 -p filecache-guest --features
//! http-example --bin http-hello`; serve it with
//! `filecache serve --bucket visits target/wasm32-wasip2/release/http-hello.wasm`.

mod keyvalue {
    wit_bindgen::generate!({
        path: "wit/deps/keyvalue-0.2.0-draft",
        world: "wasi:keyvalue/imports",
        generate_all,
    });
    pub use wasi::keyvalue::{atomics, store};
}

use wasip2::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

struct Hello;

wasip2::http::proxy::export!(Hello);

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let path = path.split('?').next().unwrap_or_default().to_owned();
        if let Some(name) = path.strip_prefix("/hello/") {
            // Everything the page depends on goes into the key: a name and version, then the input.
            let (page, outcome) = filecache_guest::memoize_status(&[b"hello-page 1", name.as_bytes()], || {
                format!("<h1>Hello, {name}!</h1>\n").into_bytes()
            });
            let cache = if outcome.is_hit() { "hit" } else { "miss" };
            return respond(out, 200, &[("content-type", "text/html"), ("x-cache", cache)], &page);
        }
        if path == "/visit" {
            let count = keyvalue::store::open("visits").and_then(|b| keyvalue::atomics::increment(&b, "count", 1));
            return match count {
                Ok(n) => respond(out, 200, &[("content-type", "text/plain")], format!("{n}\n").as_bytes()),
                Err(e) => respond(out, 500, &[], format!("key-value error: {e:?}\n").as_bytes()),
            };
        }
        respond(out, 404, &[], b"no such page\n")
    }
}

fn respond(out: ResponseOutparam, status: u16, headers: &[(&str, &str)], body: &[u8]) {
    let fields = Fields::new();
    for (name, value) in headers {
        fields.append(name, value.as_bytes()).expect("a valid header");
    }
    let response = OutgoingResponse::new(fields);
    response.set_status_code(status).expect("a valid status");
    let outgoing = response.body().expect("the body is taken once");
    ResponseOutparam::set(out, Ok(response));
    let stream = outgoing.write().expect("the body's stream is taken once");
    // A wasi:io output stream takes at most 4 KiB per blocking write.
    for chunk in body.chunks(4096) {
        stream.blocking_write_and_flush(chunk).expect("writing the body");
    }
    drop(stream);
    OutgoingBody::finish(outgoing, None).expect("finishing the body");
}

fn main() {}
