//! `hostile SCENARIO [ARGS...]`: a guest that pushes the host's limits. None of these may trap
//! the host or make it misbehave; each prints `ok SCENARIO` on success and panics (naming the
//! step) otherwise.

use filecache_test_programs::{
    Ctx, Error, MAX_HANDLES, MIB, Reader, Writer, add, arg, args, contains, content, create, delete, get, key_for,
    open, parse_size,
};

const USAGE: &str = "hostile SCENARIO; scenarios: many-handles | huge-add [SIZE [LIMIT]] | \
    write-after-too-large [LIMIT] | miss-loop N | drop-all | stream-big SIZE | grow-memory SIZE | spin | \
    sleep MS | read-stdin | read-file PATH";

/// The default `--max-entry-size`.
const DEFAULT_LIMIT: u64 = 64 * MIB;

fn main() {
    let args = args();
    let scenario = arg(&args, 0, USAGE).to_owned();
    let rest = &args[1..];
    let opt_size = |i: usize, default: u64| rest.get(i).map_or(default, |s| parse_size(s));
    match scenario.as_str() {
        "many-handles" => many_handles(Ctx::new("hostile", "many-handles")),
        "huge-add" => huge_add(
            Ctx::new("hostile", "huge-add"),
            opt_size(0, 70 * MIB),
            opt_size(1, DEFAULT_LIMIT),
        ),
        "write-after-too-large" => {
            write_after_too_large(Ctx::new("hostile", "write-after-too-large"), opt_size(0, DEFAULT_LIMIT))
        }
        "miss-loop" => miss_loop(
            Ctx::new("hostile", "miss-loop"),
            parse_size(arg(rest, 0, "miss-loop N")),
        ),
        "drop-all" => drop_all(Ctx::new("hostile", "drop-all")),
        "stream-big" => stream_big(
            Ctx::new("hostile", "stream-big"),
            parse_size(arg(rest, 0, "stream-big SIZE")),
        ),
        "grow-memory" => grow_memory(parse_size(arg(rest, 0, "grow-memory SIZE"))),
        "spin" => spin(),
        "sleep" => sleep(
            Ctx::new("hostile", "sleep"),
            arg(rest, 0, "sleep MS")
                .parse()
                .expect("sleep MS: a whole number of milliseconds"),
        ),
        "read-stdin" => read_stdin(),
        "read-file" => read_file(arg(rest, 0, "read-file PATH")),
        other => panic!("unknown scenario {other:?}; usage: {USAGE}"),
    }
    println!("ok {scenario}");
}

#[allow(dead_code)] // the handles are held, never used
enum Handle {
    R(Reader),
    W(Writer),
}

fn open_or_create(cx: Ctx, i: usize, rkey: &[u8]) -> Result<Handle, Error> {
    if i.is_multiple_of(2) {
        match open(rkey)? {
            Some(r) => Ok(Handle::R(r)),
            None => cx.fail(format_args!("open #{i}"), "expected a reader, got none"),
        }
    } else {
        create(&key_for(&format!("hostile/writer/{}", i % 128))).map(Handle::W)
    }
}

fn setup_reader_entry(cx: Ctx) -> Vec<u8> {
    let rkey = key_for("hostile/reader");
    cx.ok("setup: add", add(&rkey, b"hostile reader entry"));
    rkey
}

fn many_handles(cx: Ctx) {
    const ATTEMPTS: usize = 100_000;
    let rkey = setup_reader_entry(cx);
    let mut held = Vec::new();
    let mut refused = 0usize;
    for i in 0..ATTEMPTS {
        match open_or_create(cx, i, &rkey) {
            Ok(h) => {
                cx.check(
                    format_args!("attempt #{i}"),
                    held.len() < MAX_HANDLES && refused == 0,
                    format_args!(
                        "got handle number {} (after {refused} refusals); at most {MAX_HANDLES} \
                         may be open",
                        held.len() + 1
                    ),
                );
                held.push(h);
            }
            Err(Error::TooManyHandles) => {
                cx.check(
                    format_args!("attempt #{i}"),
                    held.len() == MAX_HANDLES,
                    format_args!("too-many-handles with only {} handles open", held.len()),
                );
                refused += 1;
            }
            Err(e) => cx.fail(
                format_args!("attempt #{i}"),
                format_args!("expected Ok or Err(TooManyHandles), got Err({e:?})"),
            ),
        }
    }
    cx.check(
        "totals",
        held.len() == MAX_HANDLES && refused == ATTEMPTS - MAX_HANDLES,
        format_args!("{} handles, {refused} refusals", held.len()),
    );
    // The instance still works for calls that take no handle.
    cx.ok("get while full", get(&rkey));
    drop(held);
    // Every slot came back.
    let again: Vec<Handle> = (0..MAX_HANDLES)
        .map(|i| cx.ok(format_args!("after drop: handle #{i}"), open_or_create(cx, i, &rkey)))
        .collect();
    cx.err_is(
        "after drop: one more",
        open_or_create(cx, 0, &rkey),
        &Error::TooManyHandles,
    );
    drop(again);
    for i in 0..128 {
        let k = key_for(&format!("hostile/writer/{i}"));
        cx.check(
            "uncommitted writers left nothing",
            !cx.ok("contains", contains(&k)),
            format_args!("hostile/writer/{i} is present"),
        );
    }
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Handle::R(_) => f.write_str("reader"),
            Handle::W(_) => f.write_str("writer"),
        }
    }
}

fn huge_add(cx: Ctx, size: u64, limit: u64) {
    let key = key_for("hostile/huge");
    cx.ok("setup: delete", delete(&key));
    let data = vec![0x5au8; usize::try_from(size).expect("size fits")];
    cx.err_is(
        format_args!("add {size} bytes"),
        add(&key, &data),
        &Error::TooLarge(limit),
    );
    cx.check(
        "nothing visible",
        !cx.ok("contains", contains(&key)),
        "entry present after too-large",
    );
    cx.check(
        "nothing visible",
        cx.ok("get", get(&key)).is_none(),
        "get hit after too-large",
    );
}

fn write_after_too_large(cx: Ctx, limit: u64) {
    let tl = Error::TooLarge(limit);
    let key = key_for("hostile/write-after-too-large");
    cx.ok("setup: delete", delete(&key));
    let chunk = content("hostile/chunk", MIB);
    let w = cx.ok("create", create(&key));
    let mut written: u64 = 0;
    loop {
        match w.write(&chunk) {
            Ok(()) => {
                written += MIB;
                cx.check(
                    format_args!("write at {written}"),
                    written <= limit,
                    format_args!("accepted {written} bytes, past the limit {limit}"),
                );
            }
            Err(e) => {
                cx.check(
                    format_args!("write at {written}"),
                    e == tl,
                    format_args!("expected Err({tl:?}), got Err({e:?})"),
                );
                cx.check(
                    format_args!("write at {written}"),
                    written + MIB > limit,
                    format_args!("refused at {written} bytes, before reaching the limit {limit}"),
                );
                break;
            }
        }
    }
    for i in 0..100 {
        let piece: &[u8] = match i % 3 {
            0 => &chunk,
            1 => b"x",
            _ => b"",
        };
        cx.err_is(format_args!("later write #{i}"), w.write(piece), &tl);
    }
    cx.check(
        "nothing visible before commit",
        !cx.ok("contains", contains(&key)),
        "entry present",
    );
    cx.err_is("commit", Writer::commit(w), &tl);
    cx.check(
        "nothing visible after commit",
        cx.ok("get", get(&key)).is_none(),
        "entry present",
    );
    // The instance keeps working (and the spent writer's slot is free again).
    let w = cx.ok("afterwards: create", create(&key));
    cx.ok("afterwards: write", w.write(b"small"));
    cx.ok("afterwards: commit", Writer::commit(w));
    cx.check(
        "afterwards: get",
        cx.ok("afterwards: get", get(&key)).as_deref() == Some(b"small".as_slice()),
        "wrong content",
    );
    cx.ok("cleanup", delete(&key));
}

fn miss_loop(cx: Ctx, n: u64) {
    for i in 0..n {
        let key = key_for(&format!("hostile/miss/{i}"));
        if let Some(v) = cx.ok(format_args!("get #{i}"), get(&key)) {
            cx.fail(format_args!("get #{i}"), format_args!("hit with {} bytes", v.len()));
        }
        if i.is_multiple_of(16) {
            if let Some(r) = cx.ok(format_args!("open #{i}"), open(&key)) {
                cx.fail(format_args!("open #{i}"), format_args!("hit: {r:?}"));
            }
            cx.check(
                format_args!("contains #{i}"),
                !cx.ok(format_args!("contains #{i}"), contains(&key)),
                "true for a missing key",
            );
        }
    }
}

fn drop_all(cx: Ctx) {
    let rkey = setup_reader_entry(cx);
    for round in 0..5 {
        let held: Vec<Handle> = (0..MAX_HANDLES)
            .map(|i| cx.ok(format_args!("round {round}: handle #{i}"), open_or_create(cx, i, &rkey)))
            .collect();
        cx.err_is(
            format_args!("round {round}: one more"),
            open_or_create(cx, 1, &rkey),
            &Error::TooManyHandles,
        );
        drop(held);
    }
}

/// Streams SIZE bytes in (1 MiB writes) and out (reads of `u64::MAX`, which the host caps at
/// 1 MiB), checking every byte; for measuring that the host's memory stays flat while a guest
/// moves an entry far larger than any buffer. Needs `--max-entry-size` and `--quota` ≥ SIZE.
fn stream_big(cx: Ctx, size: u64) {
    let key = key_for("hostile/stream-big");
    let block = |i: u64| -> Vec<u8> { (0..MIB).map(|j| (i.wrapping_mul(31) ^ j) as u8).collect() };
    let blocks = size.div_ceil(MIB);
    let w = cx.ok("create", create(&key));
    for i in 0..blocks {
        let len = (size - i * MIB).min(MIB) as usize;
        cx.ok(format_args!("write block {i}"), w.write(&block(i)[..len]));
    }
    cx.ok("commit", Writer::commit(w));
    let r = open(&key);
    let r = cx
        .ok("open", r)
        .unwrap_or_else(|| cx.fail("open", "miss right after commit"));
    cx.check("size", r.size() == size, format_args!("size() = {}", r.size()));
    let (mut pos, mut pending) = (0u64, Vec::new());
    loop {
        let chunk = cx.ok(format_args!("read at {pos}"), r.read(u64::MAX));
        if chunk.is_empty() {
            break;
        }
        cx.check(
            "read cap",
            chunk.len() as u64 <= MIB,
            format_args!("{} bytes in one read", chunk.len()),
        );
        pending.extend_from_slice(&chunk);
        while pending.len() as u64 >= MIB || (pos + pending.len() as u64 == size && !pending.is_empty()) {
            let i = pos / MIB;
            let len = (size - pos).min(MIB) as usize;
            cx.check(
                format_args!("block {i}"),
                pending[..len] == block(i)[..len],
                "content differs",
            );
            pending.drain(..len);
            pos += len as u64;
        }
    }
    cx.check("length", pos == size, format_args!("read {pos} of {size} bytes"));
    cx.ok("delete", delete(&key));
}

/// Takes SIZE bytes of linear memory, touching every page (for `-W max-memory-size`).
fn grow_memory(size: u64) {
    let mut held = Vec::new();
    let mut taken = 0;
    while taken < size {
        let chunk = vec![1u8; MIB as usize];
        taken += chunk.len() as u64;
        held.push(chunk);
    }
    println!("took {} bytes", std::hint::black_box(&held).len() as u64 * MIB);
}

/// Computes forever, calling nothing (for `-W timeout` and `-W fuel`).
fn spin() {
    let mut n = 0u64;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

/// Commits an entry (`hostile/kept`) and reads it back (a hit), opens a writer
/// (`hostile/pending`) and writes 1 MiB into it, then waits MS milliseconds inside a host call
/// (std's sleep: a wasi:clocks pollable, blocked on) before committing it: for `-W timeout`
/// against a guest that is not running WebAssembly code, and what such a stop leaves behind.
fn sleep(cx: Ctx, ms: u64) {
    let kept = key_for("hostile/kept");
    cx.put_stream("put kept", &kept, &content("hostile/kept", 1000), 1000);
    cx.assert_get("get kept", &kept, &content("hostile/kept", 1000));
    let pending = cx.ok("create pending", create(&key_for("hostile/pending")));
    cx.ok("write pending", pending.write(&content("hostile/pending", MIB)));
    println!("holding a writer; sleeping {ms} ms");
    std::thread::sleep(std::time::Duration::from_millis(ms));
    cx.ok("commit pending", Writer::commit(pending));
}

/// Reads standard input to its end: a host call that waits as long as the input stays open.
fn read_stdin() {
    use std::io::Read;
    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input).expect("read stdin");
    println!("read {} bytes", input.len());
}

/// Reads the file at PATH (in a preopened directory) to its end: a host call that waits as long
/// as the file gives nothing (a FIFO with no writer).
fn read_file(path: &str) {
    let content = std::fs::read(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    println!("read {} bytes", content.len());
}
