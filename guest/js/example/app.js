// The example plugin: renders Markdown files to HTML, memoized through the cache.
//
//   filecache run --dir docs::/docs plugin.wasm render /docs/README.md > README.html
//   filecache run --max-entry-size 1KiB plugin.wasm selftest too-large
//
// `render FILE...` writes each file's HTML to standard output and one line per file to standard
// error: `miss` (rendered and stored) or `hit` (read from the cache), sizes and the time taken.
// `selftest MODE` exercises the contract as JavaScript sees it (see below); the end-to-end tests in
// `host/cli/tests/js.rs` run every mode. The same plugin in Python is guest/python/example/app.py.

import * as cache from "../src/filecache.js";
import { render as renderMarkdown } from "./markdown.js";

// Everything the HTML depends on goes into the key: the renderer and its version, then the source.
const RENDERER = "filecache-js-example markdown 1";

const now = () => (typeof performance !== "undefined" ? performance.now() : Date.now());

function renderFiles(paths) {
  for (const path of paths) {
    const source = cache.readFile(path);
    const start = now();
    const { value: html, outcome } = cache.memoizeWithOutcome(
      [RENDERER, source],
      () => renderMarkdown(cache.utf8Decode(source)),
      { text: true },
    );
    const took = now() - start;
    cache.write(html);
    const htmlBytes = cache.utf8Encode(html).length;
    cache.eprint(`${outcome} ${path}: ${source.length} bytes of Markdown -> ${htmlBytes} bytes of HTML in ${took.toFixed(1)} ms`);
  }
  return 0;
}

// --- selftest: the contract as a JavaScript plugin sees it --------------------------------------

function ok(what) {
  cache.print("ok " + what);
}

function check(condition, what) {
  if (!condition) throw new Error("check failed: " + what);
  ok(what);
}

// Requires `fn()` to throw an `ErrorClass`; returns the error.
function expect(ErrorClass, what, fn) {
  try {
    fn();
  } catch (e) {
    if (e instanceof ErrorClass) {
      ok(`${what} throws ${e.name}: ${e.message}`);
      return e;
    }
    throw new Error(`${what} threw ${e} instead of ${ErrorClass.name}`);
  }
  throw new Error(`${what} did not throw ${ErrorClass.name}`);
}

const bytesEqual = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
const text = (s) => cache.utf8Encode(s);

function selftestContract() {
  // Keys agree with the Rust kit's (guest/src/key.rs known vectors).
  check(String(cache.Key.fromParts()) === "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "key of no parts");
  check(String(cache.Key.fromParts(new Uint8Array(0))) === "af5570f5a1810b7af78caf4bc70a660f0df51e42baf91d4de5b2328de0e83dfc", "key of one empty part");
  check(!cache.Key.fromParts("ab", "c").equals(cache.Key.fromParts("a", "bc")), "part boundaries matter");
  expect(cache.InvalidKey, "new Key(31 bytes)", () => new cache.Key(new Uint8Array(31)));

  for (const length of [0, 31, 33]) {
    const bad = new Uint8Array(length);
    expect(cache.InvalidKey, `get(${length} bytes)`, () => cache.get(bad));
    expect(cache.InvalidKey, `open(${length} bytes)`, () => cache.open(bad));
    expect(cache.InvalidKey, `add(${length} bytes)`, () => cache.add(bad, "x"));
    expect(cache.InvalidKey, `create(${length} bytes)`, () => cache.create(bad));
    expect(cache.InvalidKey, `delete(${length} bytes)`, () => cache.delete(bad));
    expect(cache.InvalidKey, `contains(${length} bytes)`, () => cache.contains(bad));
  }

  let key = cache.Key.fromParts("selftest", "whole");
  cache.delete(key);
  check(cache.get(key) === null && !cache.contains(key), "miss is null");
  cache.add(key, "hello");
  check(bytesEqual(cache.get(key), text("hello")) && cache.contains(key), "add then get");
  cache.add(key, "replaced");
  check(bytesEqual(cache.get(key), text("replaced")), "add replaces");
  cache.delete(key);
  cache.delete(key);
  check(cache.get(key) === null, "delete (twice)");

  const big = new Uint8Array((3 << 20) | 12345);
  for (let i = 0; i < big.length; i++) big[i] = (i * 7) % 251;
  key = cache.Key.fromParts("selftest", "streamed");
  const writer = cache.create(key);
  try {
    for (let at = 0; at < big.length; at += 100000) writer.write(big.subarray(at, at + 100000));
    check(!cache.contains(key), "nothing visible before commit");
    writer.commit();
  } finally {
    writer.close();
  }
  check(writer.closed, "commit closes the writer");
  let escaped = null;
  cache.withReader(key, (reader) => {
    escaped = reader;
    check(reader.size() === big.length, `reader.size() === ${big.length}`);
    const head = reader.read(10);
    check(bytesEqual(head, big.subarray(0, 10)), "read(10)");
    check(reader.read(3 << 20).length === 1 << 20, "one read returns at most 1 MiB");
    const rest = reader.readAll();
    check(bytesEqual(rest, big.subarray(10 + (1 << 20))), "readAll() gives the exact rest");
    check(reader.read().length === 0, "read at the end is empty");
  });
  check(escaped.closed, "withReader releases the reader");
  {
    using reader = cache.open(key);
    escaped = reader;
    check(reader.readAll().length === big.length, "using: read to the end");
  }
  check(escaped.closed, "using releases the reader");

  key = cache.Key.fromParts("selftest", "abandoned");
  cache.delete(key);
  try {
    cache.withWriter(key, (w) => {
      w.write("x".repeat(100000));
      throw new RangeError("simulated failure");
    });
  } catch (e) {
    if (!(e instanceof RangeError)) throw e;
  }
  check(!cache.contains(key), "withWriter: an exception leaves nothing");
  const abandoned = cache.create(key);
  abandoned.write("never committed");
  abandoned.close();
  check(!cache.contains(key), "a writer closed without commit leaves nothing");
  {
    using writer = cache.create(key);
    writer.write("dropped");
  }
  check(!cache.contains(key), "using: a writer left without commit leaves nothing");
  cache.withWriter(key, (w) => w.write("committed"));
  check(bytesEqual(cache.get(key), text("committed")), "withWriter commits");

  const calls = [];
  const double = () => {
    calls.push(1);
    return "abab";
  };
  const parts = ["selftest memo", "ab"];
  cache.delete(cache.Key.fromParts(...parts));
  const first = cache.memoizeWithOutcome(parts, double, { text: true, streamed: true });
  const second = cache.memoizeWithOutcome(parts, double, { text: true, streamed: true });
  check(
    first.value === "abab" && first.outcome === cache.MISS && second.value === "abab" && second.outcome === cache.HIT && calls.length === 1,
    "memoize: miss, then hit",
  );

  expect(cache.NotRunningError, "get outside the run", () => cache.outsideRun(() => cache.get(key)));
}

function selftestTooLarge() {
  // Run with --max-entry-size 1KiB.
  const key = cache.Key.fromParts("selftest", "too large");
  let e = expect(cache.TooLarge, "add(2 KiB)", () => cache.add(key, new Uint8Array(2048)));
  check(e.limit === 1024, "too-large carries the limit, 1024");
  cache.add(key, new Uint8Array(1024));
  check(cache.get(key).length === 1024, "an entry of exactly the limit fits");
  const writer = cache.create(key);
  writer.write(new Uint8Array(1000));
  writer.write(new Uint8Array(1000));
  e = expect(cache.TooLarge, "writer: commit past the limit", () => writer.commit());
  check(e.limit === 1024 && writer.closed, "the writer is closed after a failed commit");
  const second = cache.create(key);
  expect(cache.TooLarge, "writer: 1 MiB write", () => second.write(new Uint8Array(1 << 20)));
  expect(cache.TooLarge, "writer: commit after too-large", () => second.commit());
  check(cache.get(key).length === 1024, "a failed writer leaves the earlier entry");
  let calls = 0;
  const big = () => {
    calls += 1;
    return new Uint8Array(4096);
  };
  const a = cache.memoize(["selftest too large", "4096"], big);
  const b = cache.memoize(["selftest too large", "4096"], big);
  check(a.length === 4096 && b.length === 4096 && calls === 2, "memoize: a value too large to store is computed each time");
}

function selftestReadOnly() {
  // Run with --read-only.
  const key = cache.Key.fromParts("selftest", "read only");
  expect(cache.ReadOnly, "add", () => cache.add(key, "x"));
  expect(cache.ReadOnly, "create", () => cache.create(key));
  expect(cache.ReadOnly, "delete", () => cache.delete(key));
  check(cache.get(key) === null && cache.open(key) === null && !cache.contains(key), "reads still work (miss)");
  const { value, outcome } = cache.memoizeWithOutcome(["selftest read only"], () => "computed", { text: true });
  check(value === "computed" && outcome === cache.MISS, "memoize computes when the cache refuses to store");
}

function selftestTooManyHandles(limit) {
  // Run with --max-handles LIMIT.
  const keys = [];
  for (let i = 0; i <= limit; i++) keys.push(cache.Key.fromParts("selftest", "handle", String(i)));
  const writers = keys.slice(0, limit).map((k) => cache.create(k));
  ok(`${limit} writers open`);
  expect(cache.TooManyHandles, `writer ${limit + 1}`, () => cache.create(keys[limit]));
  writers.pop().close();
  writers.push(cache.create(keys[limit]));
  ok("closing a writer gives its slot back");
  for (const w of writers) {
    w.write("v");
    w.commit();
  }
  ok("committing gives the slots back");
  const committed = [...keys.slice(0, limit - 1), keys[limit]];
  const readers = committed.map((k) => cache.open(k));
  check(readers.every((r) => r !== null), `${limit} readers open`);
  expect(cache.TooManyHandles, `reader ${limit + 1}`, () => cache.open(committed[0]));
  for (const r of readers) r.close();
  for (let i = 0; i < 3 * limit; i++) {
    cache.withReader(keys[0], (r) => r.readAll());
    cache.withWriter(keys[0], (w) => w.write("w"));
  }
  ok(`${3 * limit} withReader/withWriter calls, each released`);
}

function main(args) {
  if (args.length === 0) {
    cache.eprint("usage: render FILE... | selftest contract|too-large|read-only|too-many-handles N");
    return 2;
  }
  if (args[0] === "render") return renderFiles(args.slice(1));
  if (args[0] === "selftest") {
    const mode = args[1] || "contract";
    if (mode === "contract") selftestContract();
    else if (mode === "too-large") selftestTooLarge();
    else if (mode === "read-only") selftestReadOnly();
    else if (mode === "too-many-handles") selftestTooManyHandles(parseInt(args[2], 10));
    else {
      cache.eprint(`unknown selftest mode ${mode}`);
      return 2;
    }
    cache.print(`selftest ${mode}: passed`);
    return 0;
  }
  cache.eprint(`unknown command ${args[0]}`);
  return 2;
}

export const run = cache.command(main);
