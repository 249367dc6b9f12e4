//! What the HTTP handler test programs share: reading a request and writing a response with the
//! `wasip2` crate's `wasi:http` bindings.

use wasip2::http::types::{Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam};

/// The request's method, as text.
pub fn method(request: &IncomingRequest) -> String {
    match request.method() {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Patch => "PATCH".into(),
        Method::Options => "OPTIONS".into(),
        Method::Connect => "CONNECT".into(),
        Method::Trace => "TRACE".into(),
        Method::Other(m) => m,
    }
}

/// The request's path segments (without the query), e.g. `/kv/get/a` -> `["kv", "get", "a"]`.
pub fn segments(request: &IncomingRequest) -> Vec<String> {
    let path = request.path_with_query().unwrap_or_default();
    let path = path.split('?').next().unwrap_or_default();
    path.split('/').filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// The whole request body.
pub fn body(request: IncomingRequest) -> Vec<u8> {
    let body = request.consume().expect("the body is consumed once");
    let stream = body.stream().expect("the body's stream is taken once");
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(wasip2::io::streams::StreamError::Closed) => break,
            Err(e) => panic!("reading the request body: {e:?}"),
        }
    }
    drop(stream);
    bytes
}

/// Sends a response: `status`, `headers`, and `body` in chunks of at most 4 KiB (what a
/// `wasi:io` output stream takes per `blocking-write-and-flush`).
pub fn respond(out: ResponseOutparam, status: u16, headers: &[(&str, &str)], body: &[u8]) {
    let fields = Fields::new();
    for (name, value) in headers {
        fields.append(name, value.as_bytes()).expect("a valid header");
    }
    let response = OutgoingResponse::new(fields);
    response.set_status_code(status).expect("a valid status");
    let outgoing = response.body().expect("the body is taken once");
    ResponseOutparam::set(out, Ok(response));
    let stream = outgoing.write().expect("the body's stream is taken once");
    for chunk in body.chunks(4096) {
        stream
            .blocking_write_and_flush(chunk)
            .expect("writing the response body");
    }
    drop(stream);
    OutgoingBody::finish(outgoing, None).expect("finishing the response body");
}

/// A plain-text response.
pub fn text(out: ResponseOutparam, status: u16, body: &str) {
    respond(out, status, &[("content-type", "text/plain")], body.as_bytes());
}
