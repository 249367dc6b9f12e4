// Idiomatic JavaScript for writing filecache plugins with componentize-js (or jco's QuickJS
// backend).
//
// A plugin is a `wasi:cli` command component that imports `filecache:cache/cache@0.1.0` (see
// `wit/cache.wit`). This module wraps the bindings the tools generate for it:
//
// - `Key.fromParts` derives a key from everything a result depends on (SHA-256 over
//   length-prefixed parts: the same keys as the Rust and Python kits);
// - `get`, `add`, `contains` and `delete` move whole entries; `open` and `create` stream them
//   through a `Reader` and a `Writer`, released by `withReader` / `withWriter` (or
//   `Symbol.dispose`, for engines with `using`);
// - `memoize`, `memoizeWithOutcome` and `Memo` cache a computation's result, treating the cache
//   as best effort: a cache failure costs a recomputation, never an exception;
// - `command(main)` makes the `wasi:cli/run` export from a `main(args)`, and `print` / `eprint`
//   write to standard output and error (QuickJS has no `console`).
//
// Every cache failure throws a subclass of `CacheError`, one per case of the contract's `error`
// variant: `InvalidKey`, `TooLarge` (with `.limit`), `QuotaExceeded`, `ReadOnly`,
// `TooManyHandles`, `Corrupt` and `StorageError` (with `.detail`).
//
// The tools run the module's top-level code when they *build* the component and snapshot the
// result: a handle taken then is dead when the plugin runs. So everything here that reaches the
// host throws `NotRunningError` unless it is called while `main` runs, and nothing is acquired
// before it is first used.
//
//   import * as cache from "./filecache.js";
//
//   function main(args) {
//     const { value, outcome } = cache.memoizeWithOutcome(["shout 1.0", args[0]], () => args[0].toUpperCase(), { text: true });
//     cache.print(outcome + " " + value);
//     return 0;
//   }
//   export const run = cache.command(main);

import * as raw from "filecache:cache/cache@0.1.0";
import { getArguments } from "wasi:cli/environment@0.2.12";
import { getStdout } from "wasi:cli/stdout@0.2.12";
import { getStderr } from "wasi:cli/stderr@0.2.12";
import { getDirectories } from "wasi:filesystem/preopens@0.2.12";

// The most bytes moved across the host boundary in one `read` or `write` call (1 MiB, the most the
// host's `reader.read` ever returns).
export const MAX_CHUNK = 1 << 20;
// How many bytes a `Writer` gathers before it hands them to the host.
const WRITE_BUFFER = 64 << 10;

// --- errors ------------------------------------------------------------------------------------

// A cache operation failed: one case of the contract's `error` variant (`kind` is its WIT name).
export class CacheError extends Error {
  constructor(kind, message) {
    super(message);
    this.name = this.constructor.name;
    this.kind = kind;
  }
}
// The key is not exactly 32 bytes.
export class InvalidKey extends CacheError {
  constructor() {
    super("invalid-key", "the cache key is not exactly 32 bytes");
  }
}
// The entry exceeds the namespace's maximum entry size, `limit` bytes (a number).
export class TooLarge extends CacheError {
  constructor(limit) {
    super("too-large", "the cache entry exceeds the maximum entry size of " + limit + " bytes");
    this.limit = limit;
  }
}
// The entry cannot fit in the namespace's quota even after evicting every other entry.
export class QuotaExceeded extends CacheError {
  constructor() {
    super("quota-exceeded", "the cache entry does not fit in the cache quota");
  }
}
// The namespace is read-only: `add`, `create` and `delete` are refused.
export class ReadOnly extends CacheError {
  constructor() {
    super("read-only", "the cache is read-only");
  }
}
// This instance holds as many readers and writers as it may; releasing one frees a slot.
export class TooManyHandles extends CacheError {
  constructor() {
    super("too-many-handles", "too many cache readers and writers are open");
  }
}
// The entry failed its integrity check; the host has removed it from the cache.
export class Corrupt extends CacheError {
  constructor() {
    super("corrupt", "the cache entry failed its integrity check and has been removed from the cache");
  }
}
// The host's storage failed; `detail` is meant for humans.
export class StorageError extends CacheError {
  constructor(detail) {
    super("io", "the cache storage failed: " + detail);
    this.detail = detail;
  }
}
// The cache was used outside the plugin's run (e.g. in top-level code, which runs at build time).
export class NotRunningError extends Error {
  constructor(what) {
    super(
      "filecache: " + what + " can only be used while the plugin runs (from the `main` given to " +
        "command()), not in top-level code: the build tools run top-level code when they build the " +
        "component, and host handles taken then are dead when the plugin runs",
    );
    this.name = "NotRunningError";
  }
}

let running = false;

function host(what) {
  if (!running) throw new NotRunningError(what);
  return raw;
}

// The payload of an error the bindings throw for `result::err` (componentize-js throws an
// Error with `payload`; other generators throw the variant itself).
function cacheError(e) {
  const payload = e && typeof e === "object" && "payload" in e ? e.payload : e;
  if (!payload || typeof payload !== "object" || typeof payload.tag !== "string") return e;
  switch (payload.tag) {
    case "invalid-key":
      return new InvalidKey();
    case "too-large":
      return new TooLarge(Number(payload.val));
    case "quota-exceeded":
      return new QuotaExceeded();
    case "read-only":
      return new ReadOnly();
    case "too-many-handles":
      return new TooManyHandles();
    case "corrupt":
      return new Corrupt();
    case "io":
      return new StorageError(String(payload.val));
    default:
      return new StorageError("unknown error from the host: " + payload.tag);
  }
}

function call(what, fn) {
  host(what);
  try {
    return fn();
  } catch (e) {
    throw cacheError(e);
  }
}

// --- bytes -------------------------------------------------------------------------------------

// UTF-8, without TextEncoder (QuickJS has none).
export function utf8Encode(text) {
  if (typeof TextEncoder !== "undefined") return new TextEncoder().encode(text);
  const out = new Uint8Array(text.length * 3);
  let n = 0;
  for (let i = 0; i < text.length; i++) {
    let c = text.charCodeAt(i);
    if (c < 0x80) {
      out[n++] = c;
      continue;
    }
    if (c >= 0xd800 && c < 0xdc00 && i + 1 < text.length) {
      const d = text.charCodeAt(i + 1);
      if (d >= 0xdc00 && d < 0xe000) {
        c = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00);
        i++;
      }
    }
    if (c >= 0xd800 && c < 0xe000) c = 0xfffd; // a lone surrogate
    if (c < 0x800) {
      out[n++] = 0xc0 | (c >> 6);
      out[n++] = 0x80 | (c & 63);
    } else if (c < 0x10000) {
      out[n++] = 0xe0 | (c >> 12);
      out[n++] = 0x80 | ((c >> 6) & 63);
      out[n++] = 0x80 | (c & 63);
    } else {
      out[n++] = 0xf0 | (c >> 18);
      out[n++] = 0x80 | ((c >> 12) & 63);
      out[n++] = 0x80 | ((c >> 6) & 63);
      out[n++] = 0x80 | (c & 63);
    }
  }
  return out.slice(0, n);
}

// UTF-8 to a string, without TextDecoder; bad sequences become U+FFFD.
export function utf8Decode(bytes) {
  if (typeof TextDecoder !== "undefined") return new TextDecoder().decode(bytes);
  let out = "";
  let chunk = [];
  for (let i = 0; i < bytes.length; ) {
    const b = bytes[i];
    let c = 0xfffd;
    let len = 1;
    if (b < 0x80) c = b;
    else if (b >= 0xc2 && b < 0xe0 && (bytes[i + 1] & 0xc0) === 0x80) {
      c = ((b & 31) << 6) | (bytes[i + 1] & 63);
      len = 2;
    } else if (b >= 0xe0 && b < 0xf0 && (bytes[i + 1] & 0xc0) === 0x80 && (bytes[i + 2] & 0xc0) === 0x80) {
      c = ((b & 15) << 12) | ((bytes[i + 1] & 63) << 6) | (bytes[i + 2] & 63);
      len = 3;
      if (c < 0x800 || (c >= 0xd800 && c < 0xe000)) c = 0xfffd;
    } else if (
      b >= 0xf0 && b < 0xf5 && (bytes[i + 1] & 0xc0) === 0x80 && (bytes[i + 2] & 0xc0) === 0x80 && (bytes[i + 3] & 0xc0) === 0x80
    ) {
      c = ((b & 7) << 18) | ((bytes[i + 1] & 63) << 12) | ((bytes[i + 2] & 63) << 6) | (bytes[i + 3] & 63);
      len = 4;
      if (c < 0x10000 || c > 0x10ffff) c = 0xfffd;
    }
    i += len;
    if (c >= 0x10000) {
      c -= 0x10000;
      chunk.push(0xd800 + (c >> 10), 0xdc00 + (c & 1023));
    } else chunk.push(c);
    if (chunk.length > 8192) {
      out += String.fromCharCode.apply(null, chunk);
      chunk = [];
    }
  }
  return out + String.fromCharCode.apply(null, chunk);
}

function toBytes(value, what) {
  if (typeof value === "string") return utf8Encode(value);
  if (value instanceof Uint8Array) return value;
  if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  throw new TypeError(what + " is a Uint8Array or a string, not " + (value === null ? "null" : typeof value));
}

function concat(chunks, total) {
  if (chunks.length === 1) return chunks[0];
  const out = new Uint8Array(total);
  let at = 0;
  for (const chunk of chunks) {
    out.set(chunk, at);
    at += chunk.length;
  }
  return out;
}

// --- SHA-256 (no `crypto` in either engine's synchronous API) ----------------------------------

const K = new Int32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01,
  0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc,
  0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147,
  0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08,
  0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
  0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);

class Sha256 {
  constructor() {
    this.h = new Int32Array([0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]);
    this.block = new Uint8Array(64);
    this.filled = 0;
    this.length = 0; // bytes hashed so far
    this.w = new Int32Array(64);
  }

  update(bytes) {
    this.length += bytes.length;
    let i = 0;
    const n = bytes.length;
    if (this.filled > 0) {
      const take = Math.min(64 - this.filled, n);
      this.block.set(bytes.subarray(0, take), this.filled);
      this.filled += take;
      i = take;
      if (this.filled < 64) return this;
      this.compress(this.block, 0);
      this.filled = 0;
    }
    for (; i + 64 <= n; i += 64) this.compress(bytes, i);
    if (i < n) {
      this.block.set(bytes.subarray(i), 0);
      this.filled = n - i;
    }
    return this;
  }

  // One 64-byte block of `b` at `at`.
  compress(b, at) {
    const w = this.w;
    for (let t = 0; t < 16; t++, at += 4) w[t] = (b[at] << 24) | (b[at + 1] << 16) | (b[at + 2] << 8) | b[at + 3];
    for (let t = 16; t < 64; t++) {
      const x = w[t - 15];
      const y = w[t - 2];
      w[t] =
        ((((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3)) +
          (((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10)) +
          w[t - 16] +
          w[t - 7]) |
        0;
    }
    const h = this.h;
    let a = h[0], bb = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (let t = 0; t < 64; t++) {
      const t1 =
        (hh +
          (((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7))) +
          ((e & f) ^ (~e & g)) +
          K[t] +
          w[t]) |
        0;
      const t2 = ((((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10))) + ((a & bb) ^ (a & c) ^ (bb & c))) | 0;
      hh = g;
      g = f;
      f = e;
      e = (d + t1) | 0;
      d = c;
      c = bb;
      bb = a;
      a = (t1 + t2) | 0;
    }
    h[0] += a;
    h[1] += bb;
    h[2] += c;
    h[3] += d;
    h[4] += e;
    h[5] += f;
    h[6] += g;
    h[7] += hh;
  }

  digest() {
    const bits = this.length * 8;
    const pad = new Uint8Array((this.filled < 56 ? 56 : 120) - this.filled + 8);
    pad[0] = 0x80;
    for (let i = 0; i < 8; i++) pad[pad.length - 1 - i] = Math.floor(bits / 2 ** (8 * i)) & 0xff;
    this.update(pad);
    const out = new Uint8Array(32);
    for (let i = 0; i < 8; i++) {
      out[4 * i] = this.h[i] >>> 24;
      out[4 * i + 1] = (this.h[i] >>> 16) & 0xff;
      out[4 * i + 2] = (this.h[i] >>> 8) & 0xff;
      out[4 * i + 3] = this.h[i] & 0xff;
    }
    return out;
  }
}

// --- keys --------------------------------------------------------------------------------------

// A cache key: exactly 32 bytes (`key.bytes`), a SHA-256 digest. `String(key)` is 64 hex digits.
export class Key {
  constructor(bytes) {
    bytes = toBytes(bytes, "a key");
    if (bytes.length !== Key.LEN) throw new InvalidKey();
    this.bytes = Uint8Array.from(bytes);
  }

  // SHA-256 over each part's length (little-endian u64) followed by its bytes, in order. A part is
  // a Uint8Array or a string (its UTF-8 bytes). The lengths keep part boundaries apart:
  // ["ab", "c"] and ["a", "bc"] give different keys. The Rust and Python kits derive the same keys.
  static fromParts(...parts) {
    const sha = new Sha256();
    for (const part of parts) {
      const bytes = toBytes(part, "a key part");
      const len = new Uint8Array(8);
      for (let i = 0, n = bytes.length; i < 8; i++, n = Math.floor(n / 256)) len[i] = n & 0xff;
      sha.update(len).update(bytes);
    }
    return new Key(sha.digest());
  }

  // Parses 64 hex digits (either case), as `String(key)` prints them.
  static fromHex(text) {
    if (!/^[0-9a-fA-F]{64}$/.test(text)) throw new SyntaxError("a cache key is written as exactly 64 hex digits");
    const bytes = new Uint8Array(32);
    for (let i = 0; i < 32; i++) bytes[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
    return new Key(bytes);
  }

  equals(other) {
    return other instanceof Key && this.bytes.every((b, i) => b === other.bytes[i]);
  }

  toString() {
    let hex = "";
    for (const b of this.bytes) hex += (b < 16 ? "0" : "") + b.toString(16);
    return hex;
  }
}
Key.LEN = 32;

// Calls `fn(int)` where `int` makes the bindings' u64: componentize-js takes a BigInt, jco's
// QuickJS backend a number.
let u64Type = null;
function u64(fn) {
  if (u64Type === null) {
    try {
      const result = fn(Number);
      u64Type = Number;
      return result;
    } catch (e) {
      if (!(e instanceof TypeError)) throw e;
      u64Type = BigInt;
    }
  }
  return fn(u64Type);
}

// Any length goes to the host as it is: the contract answers `invalid-key` for it.
function keyBytes(key) {
  return key instanceof Key ? key.bytes : toBytes(key, "a key");
}

// --- whole entries -----------------------------------------------------------------------------

// Normalises the `option` of each engine (undefined or null) to null.
const orNull = (value) => (value === undefined ? null : value);

// The content stored under `key` (a Uint8Array), or null on a miss (a damaged entry is a miss).
export function get(key) {
  return call("get", () => orNull(raw.get(keyBytes(key))));
}

// Stores `content` (a Uint8Array, or a string as UTF-8) under `key`, atomically.
export function add(key, content) {
  call("add", () => raw.add(keyBytes(key), toBytes(content, "the content")));
}

// Whether an entry is stored under `key` (without reading it).
export function contains(key) {
  return call("contains", () => raw.contains(keyBytes(key)));
}

// Removes the entry under `key`; removing a missing key succeeds.
function remove(key) {
  call("delete", () => raw.delete(keyBytes(key)));
}
export { remove as delete };

// --- streams -----------------------------------------------------------------------------------

// Gives a host handle back: the bindings' resources have `Symbol.dispose` where the engine knows
// the symbol, and a `[Symbol.for("dispose")]` otherwise.
function release(handle) {
  const dispose = (typeof Symbol.dispose === "symbol" && handle[Symbol.dispose]) || handle[Symbol.for("dispose")];
  if (typeof dispose !== "function") throw new Error("filecache: the bindings give no way to drop a " + handle.constructor.name);
  dispose.call(handle);
}

const DISPOSE = typeof Symbol.dispose === "symbol" ? Symbol.dispose : Symbol.for("dispose");

// A stream over one entry's content, from `open`. Release it: `withReader(key, fn)` does, or
// `reader.close()` in a `finally` (or `using`, where the engine has it).
//
// The host checks each block of the content (64 KiB) before it returns any byte of it: the first
// read that touches a damaged block throws `Corrupt`, so every byte returned is a byte that was
// written, and only content read to the end is known to be whole.
export class Reader {
  constructor(handle) {
    this._handle = handle;
    this._size = null;
    this._eof = false;
  }

  _checked() {
    if (this._handle === null) throw new Error("filecache: this reader is closed");
    return this._handle;
  }

  // The entry's content length in bytes (a number; asked of the host once).
  size() {
    if (this._size === null) {
      const handle = this._checked();
      this._size = Number(call("reader.size", () => handle.size()));
    }
    return this._size;
  }

  // At most `len` bytes (at most 1 MiB per call); an empty array at the end.
  read(len = MAX_CHUNK) {
    const handle = this._checked();
    if (this._eof || len <= 0) return new Uint8Array(0);
    const n = Math.min(len, MAX_CHUNK);
    const chunk = call("reader.read", () => u64((int) => handle.read(int(n))));
    if (chunk.length === 0) this._eof = true;
    return chunk;
  }

  // The rest of the entry, read in 1 MiB calls.
  readAll() {
    const chunks = [];
    let total = 0;
    for (;;) {
      const chunk = this.read(MAX_CHUNK);
      if (chunk.length === 0) return concat(chunks.length ? chunks : [chunk], total);
      chunks.push(chunk);
      total += chunk.length;
    }
  }

  // The rest of the entry as UTF-8 text.
  readText() {
    return utf8Decode(this.readAll());
  }

  get closed() {
    return this._handle === null;
  }

  // Gives the handle back to the host (closing twice is harmless).
  close() {
    const handle = this._handle;
    this._handle = null;
    if (handle !== null) release(handle);
  }

  [DISPOSE]() {
    this.close();
  }
}

// A new entry being streamed in, from `create`. Nothing is visible before `commit`; a writer
// closed without it (as `withWriter` does when its function throws) leaves nothing behind.
//
// Small writes are gathered into 64 KiB before crossing into the host. Once the entry passes the
// namespace's size limit, writing and committing throw `TooLarge`.
export class Writer {
  constructor(handle) {
    this._handle = handle;
    this._chunks = [];
    this._buffered = 0;
  }

  _checked() {
    if (this._handle === null) throw new Error("filecache: this writer is closed (committed or discarded)");
    return this._handle;
  }

  // Appends `data` (a Uint8Array, or a string as UTF-8).
  write(data) {
    this._checked();
    const bytes = toBytes(data, "written data");
    this._chunks.push(Uint8Array.from(bytes));
    this._buffered += bytes.length;
    if (this._buffered >= WRITE_BUFFER) this.flush();
  }

  // Hands what is buffered to the host (without making anything visible).
  flush() {
    const handle = this._checked();
    const all = concat(this._chunks, this._buffered);
    this._chunks = [];
    this._buffered = 0;
    for (let at = 0; at < all.length; at += MAX_CHUNK) {
      const chunk = all.subarray(at, at + MAX_CHUNK);
      call("writer.write", () => handle.write(chunk));
    }
  }

  // Makes the entry visible under its key, atomically; the writer is closed afterwards, whether
  // or not the commit succeeded.
  commit() {
    try {
      this.flush();
    } catch (e) {
      this.discard();
      throw e;
    }
    const handle = this._handle;
    this._handle = null;
    call("writer.commit", () => raw.Writer.commit(handle));
  }

  // Drops the entry being written; nothing becomes visible.
  discard() {
    const handle = this._handle;
    this._handle = null;
    this._chunks = [];
    this._buffered = 0;
    if (handle !== null) release(handle);
  }

  get closed() {
    return this._handle === null;
  }

  // Closing never publishes: it discards unless `commit` came first.
  close() {
    this.discard();
  }

  [DISPOSE]() {
    this.discard();
  }
}

// A `Reader` over the entry under `key`, or null on a miss. Prefer `withReader`.
export function open(key) {
  const handle = call("open", () => orNull(raw.open(keyBytes(key))));
  return handle === null ? null : new Reader(handle);
}

// A `Writer` for a new entry under `key`. Prefer `withWriter`.
export function create(key) {
  return new Writer(call("create", () => raw.create(keyBytes(key))));
}

// Calls `fn(reader)` with a reader over the entry under `key` and releases it afterwards, however
// `fn` ends; returns what `fn` returns, or null on a miss (without calling `fn`).
export function withReader(key, fn) {
  const reader = open(key);
  if (reader === null) return null;
  try {
    return fn(reader);
  } finally {
    reader.close();
  }
}

// Calls `fn(writer)` with a writer for `key`, then commits it; if `fn` throws, nothing is
// committed and the writer is released. Returns what `fn` returns.
export function withWriter(key, fn) {
  const writer = create(key);
  try {
    const result = fn(writer);
    writer.commit();
    return result;
  } finally {
    writer.discard();
  }
}

// --- memoizing ---------------------------------------------------------------------------------

export const HIT = "hit";
export const MISS = "miss";

// A memoized computation: a key, and how its entry moves to and from the cache.
//
// Best effort: a failed lookup (any `CacheError`, a damaged entry included) is a miss, and a
// failed store is ignored once the value is computed. Exceptions of the computation propagate and
// nothing is cached. Options: `streamed` moves the entry through a reader and a writer in chunks of
// at most 1 MiB (worth it above about 1 MiB); `text` stores a string as UTF-8 and gives a string
// back.
export class Memo {
  constructor(parts, { key = null, streamed = false, text = false } = {}) {
    this.key = key !== null ? key : Key.fromParts(...parts);
    this.streamed = streamed;
    this.text = text;
  }

  // `{ value, outcome }`: the cached value and "hit", or `compute()`'s value, stored, and "miss".
  run(compute) {
    const cached = this.lookup();
    if (cached !== null) return { value: this.text ? utf8Decode(cached) : cached, outcome: HIT };
    const value = compute();
    if (this.text ? typeof value !== "string" : !(value instanceof Uint8Array)) {
      throw new TypeError("a memoized computation returns " + (this.text ? "a string (text: true)" : "a Uint8Array") + ", not " + typeof value);
    }
    try {
      this.store(this.text ? utf8Encode(value) : value);
    } catch (e) {
      if (!(e instanceof CacheError)) throw e; // best effort: the value is still the right answer
    }
    return { value, outcome: MISS };
  }

  // The cached bytes, or null on a miss or any cache error.
  lookup() {
    try {
      return this.streamed ? withReader(this.key, (reader) => reader.readAll()) : get(this.key);
    } catch (e) {
      if (e instanceof CacheError) return null;
      throw e;
    }
  }

  // Stores `bytes` under the key (throwing `CacheError` on failure).
  store(bytes) {
    if (this.streamed) withWriter(this.key, (writer) => writer.write(bytes));
    else add(this.key, bytes);
  }
}

// The value cached under `Key.fromParts(...parts)`, or `compute()`'s, cached (see `Memo`).
export function memoize(parts, compute, options = {}) {
  return new Memo(parts, options).run(compute).value;
}

// Like `memoize`, and also tells whether the value came from the cache: `{ value, outcome }`.
export function memoizeWithOutcome(parts, compute, options = {}) {
  return new Memo(parts, options).run(compute);
}

// --- files -----------------------------------------------------------------------------------

// The content of the file at `path`, in a directory the host preopened (`filecache run --dir`):
// an absolute path under a preopen's guest path, or a path relative to a preopen named ".".
export function readFile(path) {
  if (!running) throw new NotRunningError("readFile");
  const preopens = getDirectories();
  let best = null;
  let rest = null;
  for (const [dir, name] of preopens) {
    const base = name.replace(/\/+$/, "") || "/";
    let relative = null;
    if (base === "." && !path.startsWith("/")) relative = path;
    else if (path === base) relative = ".";
    else if (path.startsWith(base === "/" ? "/" : base + "/")) relative = path.slice(base === "/" ? 1 : base.length + 1);
    if (relative !== null && (best === null || base.length > best[1].length)) {
      best = [dir, base];
      rest = relative;
    }
  }
  try {
    if (best === null) throw new Error("filecache: " + path + " is in no preopened directory (give it with --dir)");
    let file;
    try {
      file = best[0].openAt({ symlinkFollow: true }, rest, {}, { read: true });
    } catch (e) {
      throw new Error("filecache: cannot open " + path + ": " + (e && e.payload !== undefined ? e.payload : e));
    }
    try {
      const chunks = [];
      let total = 0;
      for (;;) {
        const [chunk, end] = u64((int) => file.read(int(MAX_CHUNK), int(total)));
        chunks.push(chunk);
        total += chunk.length;
        if (end || chunk.length === 0) return concat(chunks, total);
      }
    } finally {
      release(file);
    }
  } finally {
    for (const [dir] of preopens) release(dir);
  }
}

// --- the command -------------------------------------------------------------------------------

function writeAll(stream, bytes) {
  // `blocking-write-and-flush` takes at most 4096 bytes per call.
  for (let at = 0; at < bytes.length; at += 4096) stream.blockingWriteAndFlush(bytes.subarray(at, at + 4096));
}

let stdout = null;
let stderr = null;

// Writes `text` (or bytes) to standard output, as it is.
export function write(text) {
  if (!running) throw new NotRunningError("write");
  if (stdout === null) stdout = getStdout();
  writeAll(stdout, toBytes(text, "output"));
}

// Writes `text` and a newline to standard output.
export function print(text) {
  write(String(text) + "\n");
}

// Writes `text` and a newline to standard error.
export function eprint(text) {
  if (!running) throw new NotRunningError("eprint");
  if (stderr === null) stderr = getStderr();
  writeAll(stderr, toBytes(String(text) + "\n", "output"));
}

// For the selftest: runs `fn` as if the plugin were not running.
export function outsideRun(fn) {
  running = false;
  try {
    return fn();
  } finally {
    running = true;
  }
}

// The `wasi:cli/run` export calling `main(args)` (`args` without the program name). `main` returns
// an exit status (undefined is 0); any status but 0, or an exception (printed to standard error),
// ends the plugin with a failure. The cache is usable only while `main` runs:
//
//   export const run = command(main);
export function command(main) {
  return {
    run() {
      running = true;
      let status;
      try {
        status = main(getArguments().slice(1));
      } catch (e) {
        eprint("error: " + (e && e.stack ? e + "\n" + e.stack : e));
        status = 1;
      } finally {
        for (const s of [stdout, stderr]) if (s !== null) release(s);
        stdout = stderr = null;
        running = false;
      }
      // `run` answers `err` (exit code 1) when it throws; the error has no payload, and QuickJS
      // takes nothing but `undefined` for it.
      if (status) throw undefined;
    },
  };
}
