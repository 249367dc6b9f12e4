//! `contract SCENARIO [ARGS...]`: checks the `filecache:cache` contract from the guest side.
//!
//! Every scenario asserts with a panic naming the scenario and the step (the host reports a trap
//! and a non-zero exit); on success it prints `ok SCENARIO` on stdout.

use filecache_test_programs::{
    Ctx, Error, MAX_HANDLES, MIB, Reader, Writer, add, arg, args, contains, content, create, delete, entry_cost, get,
    key_for, largest_entry_within, open, parse_size, short,
};
use std::collections::VecDeque;

const USAGE: &str = "contract SCENARIO [ARGS...]; scenarios: basics | handles | all | \
    put SEED SIZE | put-stream SEED SIZE | check SEED SIZE | absent SEED | too-large LIMIT | \
    quota QUOTA | read-only | read-only-check SEED SIZE | corrupt-check SEED | corrupt-stream SEED [SIZE] | \
    stream-damaged SEED SIZE COUNT CHUNK... | empty-entries COUNT | \
    io-error SEED | disk-full SEED SIZE | exit CODE | race SEED OPS | gets SEED HITS MISSES";

fn main() {
    let args = args();
    let scenario = arg(&args, 0, USAGE).to_owned();
    let rest = &args[1..];
    match scenario.as_str() {
        "basics" => basics(Ctx::new("contract", "basics")),
        "handles" => handles(Ctx::new("contract", "handles")),
        "all" => {
            basics(Ctx::new("contract", "all/basics"));
            handles(Ctx::new("contract", "all/handles"));
        }
        "put" => put(
            Ctx::new("contract", "put"),
            arg(rest, 0, "put SEED SIZE"),
            parse_size(arg(rest, 1, "put SEED SIZE")),
        ),
        "put-stream" => put_stream(
            Ctx::new("contract", "put-stream"),
            arg(rest, 0, "put-stream SEED SIZE"),
            parse_size(arg(rest, 1, "put-stream SEED SIZE")),
        ),
        "check" => check(
            Ctx::new("contract", "check"),
            arg(rest, 0, "check SEED SIZE"),
            parse_size(arg(rest, 1, "check SEED SIZE")),
        ),
        "absent" => absent(Ctx::new("contract", "absent"), arg(rest, 0, "absent SEED")),
        "gets" => gets(
            Ctx::new("contract", "gets"),
            arg(rest, 0, "gets SEED HITS MISSES"),
            parse_size(arg(rest, 1, "gets SEED HITS MISSES")),
            parse_size(arg(rest, 2, "gets SEED HITS MISSES")),
        ),
        "too-large" => too_large(
            Ctx::new("contract", "too-large"),
            parse_size(arg(rest, 0, "too-large LIMIT")),
        ),
        "quota" => quota(Ctx::new("contract", "quota"), parse_size(arg(rest, 0, "quota QUOTA"))),
        "empty-entries" => empty_entries(
            Ctx::new("contract", "empty-entries"),
            parse_size(arg(rest, 0, "empty-entries COUNT")),
        ),
        "read-only" => read_only(Ctx::new("contract", "read-only")),
        "read-only-check" => read_only_check(
            Ctx::new("contract", "read-only-check"),
            arg(rest, 0, "read-only-check SEED SIZE"),
            parse_size(arg(rest, 1, "read-only-check SEED SIZE")),
        ),
        "corrupt-check" => corrupt_check(
            Ctx::new("contract", "corrupt-check"),
            arg(rest, 0, "corrupt-check SEED"),
        ),
        "corrupt-stream" => corrupt_stream(
            Ctx::new("contract", "corrupt-stream"),
            arg(rest, 0, "corrupt-stream SEED [SIZE]"),
            rest.get(1).map(|s| parse_size(s)),
        ),
        "stream-damaged" => {
            const U: &str = "stream-damaged SEED SIZE COUNT CHUNK...";
            let chunks: Vec<u64> = rest.get(3..).unwrap_or(&[]).iter().map(|s| parse_size(s)).collect();
            assert!(!chunks.is_empty(), "usage: {U}");
            stream_damaged(
                Ctx::new("contract", "stream-damaged"),
                arg(rest, 0, U),
                parse_size(arg(rest, 1, U)),
                parse_size(arg(rest, 2, U)),
                &chunks,
            )
        }
        "race" => race(
            Ctx::new("contract", "race"),
            arg(rest, 0, "race SEED OPS"),
            arg(rest, 1, "race SEED OPS")
                .parse()
                .expect("race SEED OPS: OPS is a number"),
        ),
        "io-error" => io_error(Ctx::new("contract", "io-error"), arg(rest, 0, "io-error SEED")),
        "disk-full" => disk_full(
            Ctx::new("contract", "disk-full"),
            arg(rest, 0, "disk-full SEED SIZE"),
            parse_size(arg(rest, 1, "disk-full SEED SIZE")),
        ),
        "exit" => {
            let code: i32 = arg(rest, 0, "exit CODE").parse().expect("exit CODE: CODE is a number");
            std::process::exit(code);
        }
        other => panic!("unknown scenario {other:?}; usage: {USAGE}"),
    }
    println!("ok {scenario}");
}

// ---------------------------------------------------------------------------------------------
// basics

fn basics(cx: Ctx) {
    // Fresh keys (never added by any scenario) miss everywhere.
    for i in 0..4 {
        cx.assert_absent(
            format_args!("fresh key #{i}"),
            &key_for(&format!("basics/never-added/{i}")),
        );
    }

    // Make the scenario re-runnable in a used namespace: remove what it adds.
    let sizes: [u64; 4] = [0, 1, 4095, MIB + 7];
    let mut used: Vec<Vec<u8>> = sizes.iter().map(|s| key_for(&format!("basics/size/{s}"))).collect();
    for name in [
        "basics/replace",
        "basics/stream",
        "basics/stream-over",
        "basics/dropped",
        "basics/dropped-over",
        "basics/empty-stream",
    ] {
        used.push(key_for(name));
    }
    for k in &used {
        cx.ok(format_args!("setup: delete({})", short(k)), delete(k));
    }

    add_get_sizes(cx, &sizes);
    read_bounds(cx);
    replace_and_delete(cx);
    streaming(cx);
    invalid_keys(cx);
}

fn add_get_sizes(cx: Ctx, sizes: &[u64]) {
    for &size in sizes {
        let seed = format!("basics/size/{size}");
        let key = key_for(&seed);
        let data = content(&seed, size);
        let step = format!("add+get {size} bytes");
        cx.ok(format_args!("{step}: add"), add(&key, &data));
        cx.check(
            format_args!("{step}: contains"),
            cx.ok(format_args!("{step}: contains"), contains(&key)),
            "expected true after add",
        );
        cx.assert_get(&step, &key, &data);
        let mut chunks = vec![7, 4096, 65536, MIB, MIB + 1, u64::MAX];
        if size <= 4096 {
            chunks.insert(0, 1);
        }
        for chunk in chunks {
            cx.assert_stream(
                format_args!("{step}: open+read in chunks of {chunk}"),
                &key,
                &data,
                chunk,
            );
        }
    }

    // The empty entry: present, get gives an empty list, the reader is at its end at once.
    let key = key_for("basics/size/0");
    let r = cx
        .ok("empty entry: open", open(&key))
        .unwrap_or_else(|| cx.fail("empty entry: open", "expected a reader, got none"));
    cx.check(
        "empty entry: size()",
        r.size() == 0,
        format_args!("expected 0, got {}", r.size()),
    );
    let b = cx.ok("empty entry: read(100)", r.read(100));
    cx.check(
        "empty entry: read(100)",
        b.is_empty(),
        format_args!("expected end (empty list), got {} bytes", b.len()),
    );
}

fn read_bounds(cx: Ctx) {
    let size = MIB + 7;
    let seed = format!("basics/size/{size}");
    let key = key_for(&seed);
    let data = content(&seed, size);

    let r = open_some(cx, "read bounds: open", &key);
    // read(0) returns an empty list and does not advance.
    for i in 0..3 {
        let b = cx.ok(format_args!("read bounds: read(0) #{i}"), r.read(0));
        cx.check(
            format_args!("read bounds: read(0) #{i}"),
            b.is_empty(),
            format_args!("expected an empty list, got {} bytes", b.len()),
        );
    }
    // read(u64::MAX) returns at most 1 MiB (and something, since the entry is not at its end).
    let first = cx.ok("read bounds: read(u64::MAX)", r.read(u64::MAX));
    cx.check(
        "read bounds: read(u64::MAX)",
        !first.is_empty() && first.len() as u64 <= MIB,
        format_args!("expected 1..=1 MiB bytes, got {}", first.len()),
    );
    cx.assert_bytes("read bounds: read(u64::MAX) content", &first, &data[..first.len()]);
    // The rest, then end-of-entry repeatedly.
    let mut all = first;
    all.extend(cx.read_all("read bounds: read rest", &r, 300_000));
    cx.assert_bytes("read bounds: whole content", &all, &data);
    for (i, len) in [10u64, 0, u64::MAX, 1].into_iter().enumerate() {
        let b = cx.ok(format_args!("read bounds: read({len}) after end #{i}"), r.read(len));
        cx.check(
            format_args!("read bounds: read({len}) after end #{i}"),
            b.is_empty(),
            format_args!("expected an empty list, got {} bytes", b.len()),
        );
    }
    drop(r);

    // Two readers over the same entry are independent.
    let r1 = open_some(cx, "two readers: open #1", &key);
    let r2 = open_some(cx, "two readers: open #2", &key);
    let a = cx.ok("two readers: r1.read(1000)", r1.read(1000));
    let got2 = cx.read_all("two readers: r2 read all", &r2, MIB);
    cx.assert_bytes("two readers: r2 content", &got2, &data);
    let mut got1 = a;
    got1.extend(cx.read_all("two readers: r1 read rest", &r1, 12345));
    cx.assert_bytes("two readers: r1 content", &got1, &data);
}

fn replace_and_delete(cx: Ctx) {
    let key = key_for("basics/replace");
    let v1 = content("basics/replace/v1", 3000);
    let v2 = content("basics/replace/v2", 50);
    let v3 = content("basics/replace/v3", 70_000);
    let v4 = content("basics/replace/v4", 5);

    cx.ok("replace: add v1", add(&key, &v1));
    cx.assert_get("replace: after v1", &key, &v1);
    cx.ok("replace: add v2 (smaller)", add(&key, &v2));
    cx.assert_get("replace: after v2", &key, &v2);
    cx.assert_stream("replace: after v2", &key, &v2, 4096);
    cx.ok("replace: add v3 (larger)", add(&key, &v3));
    cx.assert_get("replace: after v3", &key, &v3);
    cx.assert_stream("replace: after v3", &key, &v3, 4096);
    cx.put_stream("replace: stream v4 over v3", &key, &v4, 2);
    cx.assert_get("replace: after streamed v4", &key, &v4);

    cx.check(
        "delete: contains before",
        cx.ok("delete: contains before", contains(&key)),
        "expected true",
    );
    cx.ok("delete: delete existing", delete(&key));
    cx.assert_absent("delete: after delete", &key);
    cx.ok("delete: delete again (missing)", delete(&key));
    cx.ok(
        "delete: delete never-added key",
        delete(&key_for("basics/never-added/delete")),
    );
    cx.assert_absent("delete: after double delete", &key);
    // A deleted key can be added again.
    cx.ok("delete: re-add", add(&key, &v2));
    cx.assert_get("delete: after re-add", &key, &v2);
    cx.ok("delete: cleanup", delete(&key));
}

fn streaming(cx: Ctx) {
    // create / many writes / commit, invisible until commit.
    let key = key_for("basics/stream");
    let data = content("basics/stream", 2 * MIB + 13);
    let w = cx.ok("stream: create", create(&key));
    let sizes = [0usize, 1, 100, 65536, 3, 0, 1_000_000, 17, 4096];
    let mut off = 0;
    let mut i = 0;
    while off < data.len() {
        let n = sizes[i % sizes.len()].min(data.len() - off);
        cx.ok(
            format_args!("stream: write #{i} ({n} bytes at {off})"),
            w.write(&data[off..off + n]),
        );
        off += n;
        i += 1;
        if i.is_multiple_of(4) {
            cx.assert_absent(format_args!("stream: invisible before commit (after write #{i})"), &key);
        }
    }
    cx.assert_absent("stream: invisible before commit (all written)", &key);
    cx.ok("stream: commit", Writer::commit(w));
    cx.assert_get("stream: after commit", &key, &data);
    cx.assert_stream("stream: after commit", &key, &data, 100_000);

    // Streaming over an existing entry: the old entry stays visible until commit.
    let key = key_for("basics/stream-over");
    let old = content("basics/stream-over/old", 1234);
    let new = content("basics/stream-over/new", 4321);
    cx.ok("stream over: add old", add(&key, &old));
    let w = cx.ok("stream over: create", create(&key));
    cx.ok("stream over: write half", w.write(&new[..2000]));
    cx.assert_get("stream over: old visible mid-stream", &key, &old);
    cx.ok("stream over: write rest", w.write(&new[2000..]));
    cx.assert_get("stream over: old visible before commit", &key, &old);
    cx.ok("stream over: commit", Writer::commit(w));
    cx.assert_get("stream over: new after commit", &key, &new);

    // A writer dropped without commit leaves nothing.
    let key = key_for("basics/dropped");
    let w = cx.ok("dropped writer: create", create(&key));
    cx.ok("dropped writer: write", w.write(&content("basics/dropped", 10_000)));
    drop(w);
    cx.assert_absent("dropped writer: after drop", &key);
    let w = cx.ok("dropped writer (no writes): create", create(&key));
    drop(w);
    cx.assert_absent("dropped writer (no writes): after drop", &key);

    // ... and over an existing entry leaves that entry alone.
    let key = key_for("basics/dropped-over");
    let old = content("basics/dropped-over", 777);
    cx.ok("dropped over existing: add", add(&key, &old));
    let w = cx.ok("dropped over existing: create", create(&key));
    cx.ok("dropped over existing: write", w.write(b"replacement"));
    drop(w);
    cx.assert_get("dropped over existing: old intact", &key, &old);

    // A writer committed without any write makes an empty entry.
    let key = key_for("basics/empty-stream");
    let w = cx.ok("empty stream: create", create(&key));
    cx.ok("empty stream: commit", Writer::commit(w));
    cx.assert_get("empty stream: after commit", &key, &[]);
    cx.assert_stream("empty stream: after commit", &key, &[], 10);
}

fn invalid_keys(cx: Ctx) {
    for len in [0usize, 1, 31, 33, 64, 4096] {
        let key = vec![0xa5u8; len];
        let step = |f: &str| format!("invalid key ({len} bytes): {f}");
        cx.err_is(step("get"), get(&key), &Error::InvalidKey);
        cx.err_is(step("open"), open(&key), &Error::InvalidKey);
        cx.err_is(step("add"), add(&key, b"content"), &Error::InvalidKey);
        cx.err_is(step("add empty"), add(&key, b""), &Error::InvalidKey);
        cx.err_is(step("create"), create(&key), &Error::InvalidKey);
        cx.err_is(step("delete"), delete(&key), &Error::InvalidKey);
        cx.err_is(step("contains"), contains(&key), &Error::InvalidKey);
    }
    // A rejected key does not affect the 32-byte key sharing its prefix.
    let mut long = key_for("basics/never-added/prefix");
    long.push(0);
    cx.err_is(
        "invalid key (33 bytes, valid prefix): add",
        add(&long, b"x"),
        &Error::InvalidKey,
    );
    cx.assert_absent("invalid key: valid prefix untouched", &long[..32]);
}

fn open_some(cx: Ctx, step: &str, key: &[u8]) -> Reader {
    cx.ok(step, open(key))
        .unwrap_or_else(|| cx.fail(step, "expected a reader, got none (miss)"))
}

// ---------------------------------------------------------------------------------------------
// handles

#[allow(dead_code)] // writers are only held
enum Handle {
    R(Reader),
    W(Writer),
}

fn handles(cx: Ctx) {
    let rkey = key_for("handles/reader");
    let rdata = content("handles/reader", 10_000);
    let wkey = |i: usize| key_for(&format!("handles/writer/{i}"));
    let committed = key_for("handles/committed");
    let while_full = key_for("handles/added-while-full");
    cx.ok("setup: add reader entry", add(&rkey, &rdata));
    for i in 0..=MAX_HANDLES + 4 {
        cx.ok("setup: delete writer keys", delete(&wkey(i)));
    }
    cx.ok("setup: delete", delete(&committed));
    cx.ok("setup: delete", delete(&while_full));

    let mut held = fill(cx, "fill", &rkey, &wkey);
    full(cx, "at 64", &rkey, &wkey(MAX_HANDLES));

    // Calls that take no handle still work while the table is full.
    cx.assert_get("while full: get", &rkey, &rdata);
    cx.check(
        "while full: contains",
        cx.ok("while full: contains", contains(&rkey)),
        "expected true",
    );
    cx.ok("while full: add", add(&while_full, b"added while full"));
    cx.assert_get("while full: get added", &while_full, b"added while full");
    cx.ok("while full: delete", delete(&while_full));

    // Every held reader still reads correctly.
    for (i, h) in held.iter().enumerate() {
        if let Handle::R(r) = h {
            let got = cx.read_all(format_args!("held reader #{i}: read"), r, 4096);
            cx.assert_bytes(format_args!("held reader #{i}: content"), &got, &rdata);
        }
    }

    // Dropping a reader frees its slot: the next open succeeds, then the table is full again.
    let pos = held.iter().position(|h| matches!(h, Handle::R(_))).expect("a reader");
    drop(held.swap_remove(pos));
    let r = cx
        .ok("after dropping a reader: open", open(&rkey))
        .unwrap_or_else(|| cx.fail("after dropping a reader: open", "got none"));
    held.push(Handle::R(r));
    full(cx, "after re-filling a reader slot", &rkey, &wkey(MAX_HANDLES));

    // Dropping a writer frees its slot: the next create succeeds.
    let pos = held.iter().position(|h| matches!(h, Handle::W(_))).expect("a writer");
    drop(held.swap_remove(pos));
    let w = cx.ok("after dropping a writer: create", create(&committed));
    cx.ok("after dropping a writer: write", w.write(b"committed"));
    full(cx, "after re-filling a writer slot", &rkey, &wkey(MAX_HANDLES));

    // Committing a writer frees its slot too.
    cx.ok("commit a writer", Writer::commit(w));
    cx.assert_get("committed entry", &committed, b"committed");
    let r = cx
        .ok("after commit: open", open(&rkey))
        .unwrap_or_else(|| cx.fail("after commit: open", "got none"));
    held.push(Handle::R(r));
    full(cx, "after re-filling a committed slot", &rkey, &wkey(MAX_HANDLES));

    // Drop everything: uncommitted writers leave nothing, and all 64 slots come back.
    drop(held);
    for i in 0..=MAX_HANDLES {
        cx.assert_absent(format_args!("uncommitted writer #{i} left nothing"), &wkey(i));
    }
    let held = fill(cx, "re-fill after dropping all", &rkey, &wkey);
    full(cx, "re-filled", &rkey, &wkey(MAX_HANDLES));
    drop(held);
    let r = cx.ok("after final drop: open", open(&rkey));
    cx.check("after final drop: open", r.is_some(), "got none");
}

/// Opens `MAX_HANDLES` handles, alternating readers over `rkey` and writers for `wkey(i)`.
fn fill(cx: Ctx, step: &str, rkey: &[u8], wkey: &dyn Fn(usize) -> Vec<u8>) -> Vec<Handle> {
    (0..MAX_HANDLES)
        .map(|i| {
            if i % 3 == 1 {
                Handle::W(cx.ok(format_args!("{step}: create #{i}"), create(&wkey(i))))
            } else {
                Handle::R(
                    cx.ok(format_args!("{step}: open #{i}"), open(rkey))
                        .unwrap_or_else(|| cx.fail(format_args!("{step}: open #{i}"), "got none")),
                )
            }
        })
        .collect()
}

/// Asserts that no further reader or writer can be made.
fn full(cx: Ctx, step: &str, rkey: &[u8], wkey: &[u8]) {
    cx.err_is(
        format_args!("{step}: one more open"),
        open(rkey),
        &Error::TooManyHandles,
    );
    cx.err_is(
        format_args!("{step}: one more create"),
        create(wkey),
        &Error::TooManyHandles,
    );
    cx.err_is(
        format_args!("{step}: one more open (again)"),
        open(rkey),
        &Error::TooManyHandles,
    );
}

// ---------------------------------------------------------------------------------------------
// cross-run helpers

fn put(cx: Ctx, seed: &str, size: u64) {
    let key = key_for(seed);
    cx.ok(
        format_args!("add {size} bytes under {}", short(&key)),
        add(&key, &content(seed, size)),
    );
}

fn put_stream(cx: Ctx, seed: &str, size: u64) {
    let key = key_for(seed);
    cx.put_stream(
        format_args!("stream {size} bytes under {}", short(&key)),
        &key,
        &content(seed, size),
        65_521,
    );
}

fn check(cx: Ctx, seed: &str, size: u64) {
    let key = key_for(seed);
    let data = content(seed, size);
    cx.check("contains", cx.ok("contains", contains(&key)), "expected true");
    cx.assert_get("get", &key, &data);
    cx.assert_stream("open+read", &key, &data, 65_536);
    cx.assert_stream("open+read(u64::MAX)", &key, &data, u64::MAX);
}

/// Stores one entry, then makes exactly `hits` gets of it and `misses` gets of absent keys (for
/// the statistics test: nothing else is looked up).
fn gets(cx: Ctx, seed: &str, hits: u64, misses: u64) {
    let key = key_for(seed);
    let data = content(seed, 1000);
    cx.ok("add", add(&key, &data));
    for i in 0..hits {
        cx.assert_get(format_args!("hit {i}"), &key, &data);
    }
    for i in 0..misses {
        let absent = key_for(&format!("{seed}/absent/{i}"));
        if let Some(v) = cx.ok(format_args!("miss {i}"), get(&absent)) {
            cx.fail(
                format_args!("miss {i}"),
                format_args!("expected a miss, got {} bytes", v.len()),
            );
        }
    }
}

/// Fails the scenario, when it ends, if it took a second or more (the premise of its model).
struct Within(std::time::Instant);

impl Drop for Within {
    fn drop(&mut self) {
        let took = self.0.elapsed();
        if took >= std::time::Duration::from_millis(900) && !std::thread::panicking() {
            panic!("the quota scenario took {took:?}: its model of LRU order assumes under a second");
        }
    }
}

fn absent(cx: Ctx, seed: &str) {
    cx.assert_absent("miss", &key_for(seed));
}

// ---------------------------------------------------------------------------------------------
// race: run by several processes at once on the same namespace. Every key always has the same
// content, whoever writes it, so whatever a read returns must be exactly that content or a miss.

fn race(cx: Ctx, seed: &str, ops: u64) {
    const KEYS: u64 = 8;
    let name = |i: u64| format!("race/{i}");
    let size = |i: u64| (i * 7919 * 37) % 180_000 + 1000;
    let mut state = u64::from_le_bytes(key_for(seed)[..8].try_into().expect("8 bytes"));
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for op in 0..ops {
        let i = next() % KEYS;
        let (key, expected) = (key_for(&name(i)), content(&name(i), size(i)));
        let step = format!("op {op} on {}", name(i));
        match next() % 6 {
            0 => cx.ok(format_args!("{step}: add"), add(&key, &expected)),
            1 => {
                if let Some(got) = cx.ok(format_args!("{step}: get"), get(&key)) {
                    cx.assert_bytes(format_args!("{step}: get"), &got, &expected);
                }
            }
            2 => cx.ok(format_args!("{step}: delete"), delete(&key)),
            3 => {
                if let Some(r) = cx.ok(format_args!("{step}: open"), open(&key)) {
                    let got = cx.read_all(format_args!("{step}: read"), &r, 40_000);
                    cx.assert_bytes(format_args!("{step}: read"), &got, &expected);
                }
            }
            4 => {
                let w = cx.ok(format_args!("{step}: create"), create(&key));
                for chunk in expected.chunks(50_000) {
                    cx.ok(format_args!("{step}: write"), w.write(chunk));
                }
                cx.ok(format_args!("{step}: commit"), Writer::commit(w));
            }
            _ => {
                cx.ok(format_args!("{step}: contains"), contains(&key));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// io-error: run after the test has broken the storage under SEED's key (its fan-out directory
// replaced by a file); every function must answer `io`, and nothing else may break.

fn io_error(cx: Ctx, seed: &str) {
    let key = key_for(seed);
    let is_io = |step: &str, e: Error| match e {
        Error::Io(msg) if !msg.is_empty() => {}
        other => cx.fail(step, format!("expected io(..), got {other:?}")),
    };
    is_io("get", cx.err("get", get(&key)));
    is_io("open", cx.err("open", open(&key).map(|r| r.is_some())));
    is_io("contains", cx.err("contains", contains(&key)));
    is_io("add", cx.err("add", add(&key, b"x")));
    is_io("delete", cx.err("delete", delete(&key)));
    let w = cx.ok("create (the temporary file is elsewhere)", create(&key));
    cx.ok("write", w.write(b"streamed"));
    is_io("commit", cx.err("commit", Writer::commit(w)));
    // Other keys still work.
    let other = key_for(&format!("{seed}/elsewhere"));
    cx.ok("add elsewhere", add(&other, b"fine"));
    cx.assert_get("get elsewhere", &other, b"fine");
}

// ---------------------------------------------------------------------------------------------
// too-large

fn too_large(cx: Ctx, limit: u64) {
    let tl = Error::TooLarge(limit);
    let exact = key_for("too-large/exact");
    let over = key_for("too-large/over");
    let keys: Vec<Vec<u8>> = (0..5).map(|i| key_for(&format!("too-large/stream/{i}"))).collect();
    for k in keys.iter().chain([&exact, &over]) {
        cx.ok("setup: delete", delete(k));
    }
    let at_limit = content("too-large/exact", limit);
    let past = content("too-large/over", limit + 1);

    // add: exactly the limit fits, one byte more does not.
    cx.ok("add LIMIT bytes", add(&exact, &at_limit));
    cx.assert_get("add LIMIT bytes", &exact, &at_limit);
    cx.err_is("add LIMIT+1 bytes", add(&over, &past), &tl);
    cx.assert_absent("add LIMIT+1 bytes: nothing visible", &over);
    cx.err_is("add LIMIT+1 bytes over an existing key", add(&exact, &past), &tl);
    cx.assert_get("existing entry intact after too-large add", &exact, &at_limit);

    let chunk = usize::try_from((limit / 5).clamp(1, 256 * 1024)).expect("chunk fits");

    // Stream exactly LIMIT bytes, then one more byte: that write fails, later writes and commit too.
    let k = &keys[0];
    let w = cx.ok("stream past limit: create", create(k));
    for (i, piece) in past[..at_limit.len()].chunks(chunk).enumerate() {
        cx.ok(format_args!("stream past limit: write #{i}"), w.write(piece));
    }
    cx.err_is(
        "stream past limit: write crossing the limit",
        w.write(&past[at_limit.len()..]),
        &tl,
    );
    cx.err_is("stream past limit: later write of 1 byte", w.write(b"x"), &tl);
    cx.err_is("stream past limit: later write of 0 bytes", w.write(b""), &tl);
    cx.assert_absent("stream past limit: nothing visible before commit", k);
    cx.err_is("stream past limit: commit", Writer::commit(w), &tl);
    cx.assert_absent("stream past limit: nothing visible after commit", k);

    // One write that starts under the limit and ends past it.
    let k = &keys[1];
    let w = cx.ok("straddling write: create", create(k));
    let first = usize::try_from(limit.saturating_sub(1)).expect("fits");
    cx.ok("straddling write: write LIMIT-1", w.write(&past[..first]));
    cx.err_is("straddling write: write 2 more", w.write(&past[first..]), &tl);
    cx.err_is("straddling write: commit", Writer::commit(w), &tl);
    cx.assert_absent("straddling write: nothing visible", k);

    // One write of LIMIT+1 bytes at once.
    let k = &keys[2];
    let w = cx.ok("single big write: create", create(k));
    cx.err_is("single big write: write LIMIT+1", w.write(&past), &tl);
    cx.err_is("single big write: later write", w.write(b"x"), &tl);
    cx.err_is("single big write: commit", Writer::commit(w), &tl);
    cx.assert_absent("single big write: nothing visible", k);

    // A spent writer dropped without commit also leaves nothing.
    let k = &keys[3];
    let w = cx.ok("spent writer dropped: create", create(k));
    cx.err_is("spent writer dropped: write LIMIT+1", w.write(&past), &tl);
    drop(w);
    cx.assert_absent("spent writer dropped: nothing visible", k);

    // Exactly LIMIT bytes stream fine.
    let k = &keys[4];
    cx.put_stream("stream exactly LIMIT", k, &at_limit, chunk);
    cx.assert_get("stream exactly LIMIT", k, &at_limit);
    cx.assert_stream("stream exactly LIMIT", k, &at_limit, 65_536);

    // Streaming past the limit over an existing entry leaves it intact.
    let w = cx.ok("stream past limit over existing: create", create(&exact));
    cx.err_is("stream past limit over existing: write", w.write(&past), &tl);
    cx.err_is("stream past limit over existing: commit", Writer::commit(w), &tl);
    cx.assert_get("stream past limit over existing: intact", &exact, &at_limit);
}

// ---------------------------------------------------------------------------------------------
// quota

/// The host's LRU bookkeeping as the contract describes it.
struct Model {
    quota: u64,
    used: u64,
    /// Oldest first.
    entries: VecDeque<(String, u64)>,
    evicted: Vec<String>,
}

impl Model {
    fn cost(size: u64) -> u64 {
        entry_cost(size)
    }

    /// Adds a new entry (its key must not be present), evicting least-recently-used entries.
    fn add(&mut self, seed: &str, size: u64) {
        assert!(!self.entries.iter().any(|(s, _)| s == seed));
        let cost = Self::cost(size);
        assert!(cost <= self.quota, "model: entry does not fit at all");
        while self.used + cost > self.quota {
            let (s, c) = self.entries.pop_front().expect("something to evict");
            self.used -= c;
            self.evicted.push(s);
        }
        self.used += cost;
        self.entries.push_back((seed.to_owned(), cost));
    }

    /// A hit (`get`, `open`). The host refreshes an entry's recency on a hit only when it was
    /// last refreshed over a second ago, and this scenario runs in far less (`quota` checks that),
    /// so a hit here changes nothing: the order stays the order of adds.
    fn hit(&mut self, _seed: &str) {}

    #[allow(dead_code)]
    fn touch(&mut self, seed: &str) {
        let pos = self
            .entries
            .iter()
            .position(|(s, _)| s == seed)
            .expect("touched entry present");
        let e = self.entries.remove(pos).expect("present");
        self.entries.push_back(e);
    }

    fn remove(&mut self, seed: &str) {
        let pos = self
            .entries
            .iter()
            .position(|(s, _)| s == seed)
            .expect("removed entry present");
        let (_, c) = self.entries.remove(pos).expect("present");
        self.used -= c;
    }

    /// Checks the host agrees: every evicted entry is gone, every modelled entry is present with
    /// its content. Entries are read oldest first, so a `get` refreshing recency keeps the order.
    fn verify(&self, cx: Ctx, step: &str, sizes: &dyn Fn(&str) -> u64) {
        for s in &self.evicted {
            if self.entries.iter().any(|(e, _)| e == s) {
                continue;
            }
            let present = cx.ok(format_args!("{step}: contains({s})"), contains(&key_for(s)));
            cx.check(
                format_args!("{step}: {s} evicted"),
                !present,
                format_args!(
                    "expected {s} to have been evicted (LRU order, oldest first, is now {:?})",
                    self.order()
                ),
            );
        }
        for (s, _) in &self.entries {
            let key = key_for(s);
            match cx.ok(format_args!("{step}: get({s})"), get(&key)) {
                None => cx.fail(
                    format_args!("{step}: {s} kept"),
                    format_args!(
                        "expected {s} to be present (LRU order, oldest first: {:?}; evicted \
                         so far: {:?}), got a miss",
                        self.order(),
                        self.evicted
                    ),
                ),
                Some(v) => cx.assert_bytes(format_args!("{step}: {s} content"), &v, &content(s, sizes(s))),
            }
        }
    }

    fn order(&self) -> Vec<&str> {
        self.entries.iter().map(|(s, _)| s.as_str()).collect()
    }
}

/// Adds `count` empty entries under distinct keys: every add succeeds (the oldest are evicted to
/// make room: an empty entry is charged what its file costs on disk), and the last one reads back
/// empty. Run under a small quota, the host must keep the number of files bounded by it.
fn empty_entries(cx: Ctx, count: u64) {
    for i in 0..count {
        cx.ok(
            format_args!("add empty entry #{i}"),
            add(&key_for(&format!("empty-{i}")), &[]),
        );
    }
    if let Some(last) = count.checked_sub(1) {
        cx.assert_get("the last empty entry", &key_for(&format!("empty-{last}")), &[]);
    }
}

fn quota(cx: Ctx, quota: u64) {
    // Costs two 4 KiB blocks (the quota charges an entry's file, rounded up to 4 KiB).
    const SMALL: u64 = 5000;
    // The model's order holds only while every entry is younger than the host's recency
    // granularity (one second): the scenario must finish well within it.
    let start = std::time::Instant::now();
    let _within = Within(start);
    let n = quota / Model::cost(SMALL);
    assert!(
        n >= 4,
        "quota {quota} is too small for this scenario: it needs room for at least 4 entries of \
         {SMALL} bytes ({} bytes each with the header)",
        Model::cost(SMALL)
    );
    let mut m = Model {
        quota,
        used: 0,
        entries: VecDeque::new(),
        evicted: Vec::new(),
    };
    // Seeds encode their size so `verify` can regenerate content.
    let seed = |name: &str, size: u64| format!("quota/{name}/{size}");
    let size_of = |s: &str| -> u64 { s.rsplit('/').next().and_then(|x| x.parse().ok()).expect("size in seed") };

    let add_only = |m: &mut Model, step: &str, name: &str, size: u64| {
        let s = seed(name, size);
        cx.ok(format_args!("{step}: add {s}"), add(&key_for(&s), &content(&s, size)));
        m.add(&s, size);
    };
    let add_entry = |m: &mut Model, step: &str, name: &str, size: u64| {
        add_only(m, step, name, size);
        m.verify(cx, step, &size_of);
    };

    // 1. Fill: n entries fit without any eviction.
    for i in 0..n {
        add_only(&mut m, &format!("fill #{i}"), &format!("e{i}"), SMALL);
    }
    m.verify(cx, "filled", &size_of);
    cx.check(
        "fill",
        m.evicted.is_empty(),
        "model bug: nothing should be evicted while filling",
    );

    // 2. A get of the oldest, less than a second after it was added, does not refresh it (the
    //    host's recency granularity): the next add evicts it, the oldest.
    let e0 = seed("e0", SMALL);
    cx.assert_get("get the oldest", &key_for(&e0), &content(&e0, SMALL));
    m.hit(&e0);
    add_entry(&mut m, "add after a get", &format!("e{n}"), SMALL);
    cx.check(
        "add after a get",
        m.evicted == [e0.clone()],
        format_args!("model bug: evicted {:?}", m.evicted),
    );

    // 3. An open (reading only part of it) does not refresh either; the next add evicts another.
    let e2 = seed("e2", SMALL);
    {
        let r = open_some(cx, "touch with open", &key_for(&e2));
        cx.ok("touch with open: read(10)", r.read(10));
    }
    m.hit(&e2);
    add_entry(&mut m, "add after open", &format!("e{}", n + 1), SMALL);

    // 4. An entry costing two and a half small ones evicts several.
    add_entry(&mut m, "add a bigger entry", "big", 2 * SMALL + 500);

    // 5. A streamed entry is accounted the same way.
    {
        let s = seed("streamed", SMALL);
        cx.put_stream(
            format_args!("streamed entry: {s}"),
            &key_for(&s),
            &content(&s, SMALL),
            300,
        );
        m.add(&s, SMALL);
        m.verify(cx, "streamed entry", &size_of);
    }

    // 6. Deleting frees room: after a delete the next add evicts nothing.
    {
        let victim = m.entries.back().expect("entries").0.clone();
        cx.ok("delete frees room: delete", delete(&key_for(&victim)));
        m.remove(&victim);
        let before = m.evicted.len();
        add_entry(&mut m, "delete frees room: add", "after-delete", SMALL);
        cx.check(
            "delete frees room",
            m.evicted.len() == before,
            "model bug: the add after a delete should not evict",
        );
        cx.assert_absent("delete frees room: deleted entry", &key_for(&victim));
    }

    // 7. An entry that cannot fit even in an empty namespace: quota-exceeded, nothing visible.
    let too_big = largest_entry_within(quota) + 1;
    let kb = key_for("quota/too-big");
    let data = content("quota/too-big", too_big);
    cx.err_is(
        format_args!("add {too_big} bytes (cost quota+1)"),
        add(&kb, &data),
        &Error::QuotaExceeded,
    );
    cx.assert_absent("quota-exceeded add: nothing visible", &kb);
    {
        let w = cx.ok("quota-exceeded stream: create", create(&kb));
        let mut failed = None;
        for (i, piece) in data.chunks(4096).enumerate() {
            if let Err(e) = w.write(piece) {
                failed = Some((i, e));
                break;
            }
        }
        match failed {
            Some((_, Error::QuotaExceeded)) => drop(w),
            Some((i, e)) => cx.fail(
                format_args!("quota-exceeded stream: write #{i}"),
                format_args!("expected Ok or Err(QuotaExceeded), got Err({e:?})"),
            ),
            None => cx.err_is(
                "quota-exceeded stream: commit",
                Writer::commit(w),
                &Error::QuotaExceeded,
            ),
        }
    }
    cx.assert_absent("quota-exceeded stream: nothing visible", &kb);
    // The contract does not say whether a refused entry may evict others; re-sync the model.
    let lost: Vec<String> = m
        .entries
        .iter()
        .filter(|(s, _)| !cx.ok("resync: contains", contains(&key_for(s))))
        .map(|(s, _)| s.clone())
        .collect();
    if !lost.is_empty() {
        eprintln!("note: refusing an over-quota entry evicted {lost:?}");
        for s in &lost {
            m.remove(s);
            m.evicted.push(s.clone());
        }
    }
    m.verify(cx, "after quota-exceeded", &size_of);

    // 8. An entry costing exactly the quota fits, evicting everything else.
    add_entry(
        &mut m,
        "entry costing at most the quota",
        "whole",
        largest_entry_within(quota),
    );
    cx.check(
        "entry costing exactly the quota",
        m.entries.len() == 1,
        "model bug: everything else should be evicted",
    );

    // 9. And the next small entry evicts it.
    add_entry(&mut m, "small entry after the whole-quota one", "last", SMALL);
}

// ---------------------------------------------------------------------------------------------
// read-only

fn read_only(cx: Ctx) {
    let key = key_for("read-only/probe");
    let ro = Error::ReadOnly;
    cx.err_is("add", add(&key, b"x"), &ro);
    cx.err_is("add empty", add(&key, b""), &ro);
    cx.err_is("create", create(&key), &ro);
    cx.err_is("delete (missing key)", delete(&key), &ro);
    cx.assert_absent("missing key", &key);
}

fn read_only_check(cx: Ctx, seed: &str, size: u64) {
    let key = key_for(seed);
    let data = content(seed, size);
    let ro = Error::ReadOnly;
    check(cx, seed, size);
    cx.err_is("add over existing", add(&key, b"x"), &ro);
    cx.err_is("create over existing", create(&key), &ro);
    cx.err_is("delete existing", delete(&key), &ro);
    cx.assert_get("still intact", &key, &data);
    read_only(cx);
}

// ---------------------------------------------------------------------------------------------
// corruption

fn corrupt_check(cx: Ctx, seed: &str) {
    let key = key_for(seed);
    if let Some(v) = cx.ok("get damaged entry", get(&key)) {
        cx.fail(
            "get damaged entry",
            format_args!("expected none (damage detected), got {} bytes", v.len()),
        );
    }
    cx.assert_absent("damaged entry removed", &key);
}

/// Reads the damaged entry for `seed` through `open`, in reads of 64 KiB: the read that reaches
/// the damage answers `corrupt`, and the entry is removed. With `size` (the entry was `put SEED
/// SIZE`), every byte served before must be the original's: a reader never returns a byte that
/// was not written.
fn corrupt_stream(cx: Ctx, seed: &str, size: Option<u64>) {
    let key = key_for(seed);
    let original = size.map(|size| content(seed, size));
    match cx.ok("open damaged entry", open(&key)) {
        None => eprintln!("note: corrupt-stream: damage detected at open"),
        Some(r) => {
            let size = r.size();
            let mut total: u64 = 0;
            loop {
                match r.read(65_536) {
                    Ok(b) if b.is_empty() => cx.fail(
                        format_args!("read at offset {total}"),
                        format_args!(
                            "reached the end of a damaged entry without `corrupt` \
                             ({total} bytes read, size {size})"
                        ),
                    ),
                    Ok(b) => {
                        if let Some(original) = &original {
                            served_as_written(cx, "read", original, total as usize, &b);
                        }
                        total += b.len() as u64;
                        cx.check(
                            format_args!("read at offset {total}"),
                            total < size,
                            format_args!("returned all {total} bytes of a damaged entry (size {size})"),
                        );
                    }
                    Err(Error::Corrupt) => break,
                    Err(e) => cx.fail(
                        format_args!("read at offset {total}"),
                        format_args!("expected Err(Corrupt), got Err({e:?})"),
                    ),
                }
            }
        }
    }
    cx.assert_absent("damaged entry removed", &key);
}

/// Fails unless `bytes`, served at offset `at`, are the bytes of `original` there.
fn served_as_written(cx: Ctx, step: &str, original: &[u8], at: usize, bytes: &[u8]) {
    let expected = original.get(at..).unwrap_or(&[]);
    if let Some(first) = (0..bytes.len()).find(|&i| expected.get(i) != Some(&bytes[i])) {
        cx.fail(
            format_args!("{step} at offset {at}"),
            format_args!("served a byte that was not written, at offset {}", at + first),
        );
    }
}

/// Reads, through `open`, each damaged copy `SEED-<i>-<chunk>` (`i` below `count`, `chunk` each
/// of `chunks`) that the host planted of the entry `put SEED SIZE`, in reads of `chunk` bytes:
/// every byte served must be the original's; each read must end with `corrupt` (or the copy be a
/// miss at open: damage in its header or checksums), and each copy be removed. Prints how many
/// ended each way.
fn stream_damaged(cx: Ctx, seed: &str, size: u64, count: u64, chunks: &[u64]) {
    let original = content(seed, size);
    let (mut corrupt, mut at_open) = (0u64, 0u64);
    for i in 0..count {
        for &chunk in chunks {
            let copy = format!("{seed}-{i}-{chunk}");
            let key = key_for(&copy);
            match cx.ok(format_args!("{copy}: open"), open(&key)) {
                None => at_open += 1,
                Some(r) => {
                    let mut served = 0;
                    loop {
                        match r.read(chunk) {
                            Ok(b) if b.is_empty() => cx.fail(
                                &copy,
                                format_args!("read to the end ({served} bytes) of a damaged entry without `corrupt`"),
                            ),
                            Ok(b) => {
                                served_as_written(cx, &copy, &original, served, &b);
                                served += b.len();
                            }
                            Err(Error::Corrupt) => {
                                corrupt += 1;
                                break;
                            }
                            Err(e) => cx.fail(&copy, format_args!("expected Err(Corrupt), got Err({e:?})")),
                        }
                    }
                }
            }
            cx.assert_absent(format_args!("{copy}: removed"), &key);
        }
    }
    println!("stream-damaged: {corrupt} corrupt, {at_open} at open");
}

// ---------------------------------------------------------------------------------------------
// disk-full: run with no room left for an entry of SIZE bytes (a full filesystem, or a file size
// limit). `add` and a streamed write must answer `io`, and nothing may become visible.

fn disk_full(cx: Ctx, seed: &str, size: u64) {
    let key = key_for(seed);
    let data = content(seed, size);
    let is_io = |step: &str, e: Error| match e {
        Error::Io(msg) if !msg.is_empty() => eprintln!("{step}: io({msg})"),
        other => cx.fail(step, format!("expected io(..), got {other:?}")),
    };
    is_io("add", cx.err("add", add(&key, &data)));
    cx.assert_absent("after the failed add", &key);

    // The failure comes from a write (once the host's buffer meets the disk) or from commit.
    let w = cx.ok("create", create(&key));
    let mut failed = None;
    for (i, piece) in data.chunks(256 * 1024).enumerate() {
        if let Err(e) = w.write(piece) {
            failed = Some((format!("write #{i}"), e));
            break;
        }
    }
    match failed {
        Some((step, e)) => {
            is_io(&step, e);
            drop(w);
        }
        None => is_io("commit", cx.err("commit", Writer::commit(w))),
    }
    cx.assert_absent("after the failed stream", &key);
}
