"""Idiomatic Python for writing filecache plugins with componentize-py.

A plugin is a `wasi:cli` command component that imports `filecache:cache/cache@0.1.0` (see
`wit/cache.wit`). This module wraps the bindings componentize-py generates for it:

- `Key.from_parts` derives a key from everything a result depends on (SHA-256 over
  length-prefixed parts, the same keys the Rust kit derives);
- `get`, `add`, `contains` and `delete` move whole entries; `open` and `create` stream them
  through a `Reader` and a `Writer`, file-like objects (`io.RawIOBase`) whose `with` block
  gives the handle back to the host;
- `memoize` (a decorator) and `Memo` cache a computation's result, treating the cache as best
  effort: a cache failure costs a recomputation, never an exception;
- `command(main)` makes the `Run` class componentize-py wants from a `main(args) -> int`;
  `http_handler(handle)` makes the `IncomingHandler` class of a `wasi:http` handler (built with
  `build.sh --world http-handler`, served by `filecache serve`) from a
  `handle(Request) -> Response`.

Every cache failure raises a subclass of `CacheError`, one per case of the contract's `error`
variant: `InvalidKey`, `TooLarge` (with `.limit`), `QuotaExceeded`, `ReadOnly`,
`TooManyHandles`, `Corrupt` and `StorageError` (with `.message`).

componentize-py runs the app's top-level code when it *builds* the component and snapshots the
result. A handle taken then would be dead when the plugin runs, so every function here that
reaches the host raises `NotRunningError` unless it is called while `main` runs:

    import filecache

    @filecache.memoize("shout 1.0")
    def shout(text: str) -> bytes:
        return text.upper().encode()

    def main(args: list[str]) -> int:
        value, outcome = shout.with_outcome(args[0])
        print(outcome, value.decode())
        return 0

    Run = filecache.command(main)
"""

from __future__ import annotations

import enum
import functools
import hashlib
import io
import struct
import sys
import traceback
from typing import Callable, Optional, Union

__all__ = [
    "CacheError",
    "MAX_REQUEST_BODY",
    "Corrupt",
    "InvalidKey",
    "Key",
    "MAX_CHUNK",
    "Memo",
    "NotRunningError",
    "Outcome",
    "QuotaExceeded",
    "ReadOnly",
    "Reader",
    "Request",
    "Response",
    "StorageError",
    "TooLarge",
    "TooManyHandles",
    "Writer",
    "add",
    "command",
    "contains",
    "create",
    "delete",
    "get",
    "http_handler",
    "memoize",
    "open",
]

#: The most bytes moved across the host boundary in one `read` or `write` call (1 MiB, the most
#: the host's `reader.read` ever returns).
MAX_CHUNK = 1 << 20

#: How many bytes a `Writer` gathers before it hands them to the host.
_WRITE_BUFFER = 64 << 10

Part = Union[bytes, bytearray, memoryview, str]


# --- errors -----------------------------------------------------------------------------------


class CacheError(Exception):
    """A cache operation failed: one case of the contract's `error` variant."""


class InvalidKey(CacheError):
    """The key is not exactly 32 bytes."""

    def __init__(self) -> None:
        super().__init__("the cache key is not exactly 32 bytes")


class TooLarge(CacheError):
    """The entry exceeds the namespace's maximum entry size, `limit` bytes."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the cache entry exceeds the maximum entry size of {limit} bytes")
        self.limit = limit


class QuotaExceeded(CacheError):
    """The entry cannot fit in the namespace's quota even after evicting every other entry."""

    def __init__(self) -> None:
        super().__init__("the cache entry does not fit in the cache quota")


class ReadOnly(CacheError):
    """The namespace is read-only: `add`, `create` and `delete` are refused."""

    def __init__(self) -> None:
        super().__init__("the cache is read-only")


class TooManyHandles(CacheError):
    """This instance holds as many readers and writers as it may; closing one frees a slot."""

    def __init__(self) -> None:
        super().__init__("too many cache readers and writers are open")


class Corrupt(CacheError):
    """The entry failed its integrity check; the host has removed it from the cache."""

    def __init__(self) -> None:
        super().__init__("the cache entry failed its integrity check and has been removed from the cache")


class StorageError(CacheError):
    """The host's storage failed; `message` is meant for humans."""

    def __init__(self, message: str) -> None:
        super().__init__(f"the cache storage failed: {message}")
        self.message = message


class NotRunningError(RuntimeError):
    """The cache was used outside the plugin's run, e.g. in top-level code.

    componentize-py runs top-level code at build time; a cache handle taken then would be dead
    when the plugin runs. Call the cache from `main` (see `command`).
    """


def _raw():
    """The generated bindings of `filecache:cache/cache`, only while the plugin runs."""
    if not _running:
        raise NotRunningError(
            "filecache: the cache can only be used while the plugin runs (from the `main` given to "
            "filecache.command), not in top-level code: componentize-py runs top-level code when it "
            "builds the component, and cache handles taken then are dead when the plugin runs"
        )
    from wit_world.imports import cache

    return cache


def _error(err: BaseException) -> BaseException:
    """Turns the generated `Err(Error_...)` into the matching `CacheError` (anything else as is)."""
    from componentize_py_types import Err

    if not isinstance(err, Err):
        return err
    value = err.value
    name = type(value).__name__
    if name == "Error_InvalidKey":
        return InvalidKey()
    if name == "Error_TooLarge":
        return TooLarge(value.value)
    if name == "Error_QuotaExceeded":
        return QuotaExceeded()
    if name == "Error_ReadOnly":
        return ReadOnly()
    if name == "Error_TooManyHandles":
        return TooManyHandles()
    if name == "Error_Corrupt":
        return Corrupt()
    if name == "Error_Io":
        return StorageError(value.value)
    return StorageError(f"unknown error from the host: {value!r}")


def _call(fn, *args):
    from componentize_py_types import Err

    try:
        return fn(*args)
    except Err as err:
        raise _error(err) from None


# --- keys -------------------------------------------------------------------------------------


def _part_bytes(part: Part) -> bytes:
    if isinstance(part, str):
        return part.encode("utf-8")
    if isinstance(part, (bytes, bytearray, memoryview)):
        return bytes(part)
    raise TypeError(
        f"a key part is bytes or str, not {type(part).__name__}: convert it "
        "(e.g. str(n) or n.to_bytes(8, 'little')) so that its bytes are what the key depends on"
    )


class Key(bytes):
    """A cache key: exactly 32 bytes, a SHA-256 digest.

    `str(key)` is 64 lowercase hex digits, which `Key.from_hex` reads back.

    >>> key = Key.from_parts("my-plugin 1.0", b"input bytes")
    >>> len(key), Key.from_hex(str(key)) == key
    (32, True)
    """

    LEN = 32

    def __new__(cls, digest: Union[bytes, bytearray, memoryview]) -> "Key":
        digest = bytes(digest)
        if len(digest) != cls.LEN:
            raise InvalidKey()
        return super().__new__(cls, digest)

    @classmethod
    def from_parts(cls, *parts: Part) -> "Key":
        """SHA-256 over each part's length (little-endian u64) followed by its bytes, in order.

        The lengths keep part boundaries apart: ("ab", "c") and ("a", "bc") give different keys.
        A str part counts as its UTF-8 bytes. Nothing else is hashed, so the Rust kit's
        `Key::from_parts` (and any other tool) derives the same keys.
        """
        digest = hashlib.sha256()
        for part in parts:
            data = _part_bytes(part)
            digest.update(struct.pack("<Q", len(data)))
            digest.update(data)
        return cls(digest.digest())

    @classmethod
    def from_hex(cls, text: str) -> "Key":
        """Parses 64 hex digits (either case), as `str(key)` prints them."""
        if len(text) != 2 * cls.LEN:
            raise ValueError("a cache key is written as exactly 64 hex digits")
        return cls(bytes.fromhex(text))

    def __str__(self) -> str:
        return self.hex()

    def __repr__(self) -> str:
        return f"Key({self.hex()})"


KeyLike = Union[Key, bytes, bytearray, memoryview]


def _key_bytes(key: KeyLike) -> bytes:
    # Any length goes to the host as it is: the contract answers `invalid-key` for it.
    return bytes(key)


# --- whole entries ----------------------------------------------------------------------------


def get(key: KeyLike) -> Optional[bytes]:
    """The content stored under `key`, or None on a miss (a damaged entry is removed: a miss)."""
    return _call(_raw().get, _key_bytes(key))


def add(key: KeyLike, content: Union[bytes, bytearray, memoryview]) -> None:
    """Stores `content` under `key`, atomically, replacing any earlier entry."""
    _call(_raw().add, _key_bytes(key), bytes(content))


def contains(key: KeyLike) -> bool:
    """Whether an entry is stored under `key` (without reading it)."""
    return _call(_raw().contains, _key_bytes(key))


def delete(key: KeyLike) -> None:
    """Removes the entry under `key`; removing a missing key succeeds."""
    _call(_raw().delete, _key_bytes(key))


# --- streams ----------------------------------------------------------------------------------


def open(key: KeyLike) -> Optional["Reader"]:  # noqa: A001 - mirrors the contract's `open`
    """A `Reader` over the entry stored under `key`, or None on a miss.

    Use it in a `with` block (or call `close`) so that its handle goes back to the host:

        with filecache.open(key) as reader:
            content = reader.read()
    """
    raw = _call(_raw().open, _key_bytes(key))
    return None if raw is None else Reader(raw)


def create(key: KeyLike) -> "Writer":
    """A `Writer` for a new entry under `key`; nothing is visible until `Writer.commit`.

        with filecache.create(key) as writer:
            writer.write(b"...")
            writer.commit()   # leaving the block without commit discards the entry
    """
    return Writer(_call(_raw().create, _key_bytes(key)))


def _release(handle) -> None:
    # componentize-py's resources drop their host handle in `__exit__`.
    handle.__exit__(None, None, None)


class Reader(io.RawIOBase):
    """A stream over one entry's content (`io.RawIOBase`: `read`, `readinto`, `readall`...).

    The host checks each block of the content (64 KiB) before it returns any byte of it: the
    first read that touches a damaged block raises `Corrupt`, so every byte returned is a byte
    that was written, and only content read to the end is known to be whole. `read()` with no argument reads to the end in 1 MiB calls. Closing the
    reader (leaving its `with` block) gives its handle back.
    """

    def __init__(self, raw) -> None:
        super().__init__()
        self._raw = raw
        self._size: Optional[int] = None
        self._eof = False

    def readable(self) -> bool:
        return True

    def size(self) -> int:
        """The entry's content length in bytes (asked of the host once)."""
        if self._size is None:
            self._checked()
            self._size = self._raw.size()
        return self._size

    def _checked(self):
        if self._raw is None:
            raise ValueError("I/O operation on a closed cache reader")
        return self._raw

    def _fetch(self, n: int) -> bytes:
        raw = self._checked()
        if self._eof:
            return b""
        chunk = _call(raw.read, min(n, MAX_CHUNK))
        if not chunk:
            self._eof = True
        return chunk

    def read(self, size: int = -1) -> bytes:
        """At most `size` bytes (at most 1 MiB per call; b"" at the end), or the rest if `size` < 0."""
        if size is None or size < 0:
            return self.readall()
        return self._fetch(size) if size else b""

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        if len(view) == 0:
            return 0
        chunk = self._fetch(len(view))
        # The host never returns more than asked for.
        view[: len(chunk)] = chunk
        return len(chunk)

    def readall(self) -> bytes:
        parts = []
        while True:
            chunk = self._fetch(MAX_CHUNK)
            if not chunk:
                return b"".join(parts)
            parts.append(chunk)

    def close(self) -> None:
        raw, self._raw = self._raw, None
        if raw is not None:
            _release(raw)
        super().close()


class Writer(io.RawIOBase):
    """A new entry being streamed in (`io.RawIOBase`: `write`, `writelines`, `flush`).

    Small writes are gathered into 64 KiB before crossing into the host. `flush` hands them over
    but makes nothing visible; only `commit` does. A writer closed without `commit` (leaving its
    `with` block, or garbage collected) leaves nothing behind. Once the entry passes the
    namespace's size limit, writing, flushing and committing raise `TooLarge`.
    """

    def __init__(self, raw) -> None:
        super().__init__()
        self._raw = raw
        self._buffer = bytearray()

    def writable(self) -> bool:
        return True

    def _checked(self):
        if self._raw is None:
            raise ValueError("I/O operation on a closed (committed or discarded) cache writer")
        return self._raw

    def write(self, data) -> int:
        self._checked()
        data = memoryview(data).cast("B")
        self._buffer += data
        if len(self._buffer) >= _WRITE_BUFFER:
            self._hand_over()
        return len(data)

    def _hand_over(self) -> None:
        raw = self._checked()
        buffer, self._buffer = self._buffer, bytearray()
        for start in range(0, len(buffer), MAX_CHUNK):
            _call(raw.write, bytes(buffer[start : start + MAX_CHUNK]))

    def flush(self) -> None:
        if self._raw is not None and self._buffer:
            self._hand_over()

    def commit(self) -> None:
        """Hands over what is buffered, then makes the entry visible under its key, atomically.

        The writer is closed afterwards, whether or not the commit succeeded.
        """
        try:
            self._hand_over()
        except BaseException:
            self.discard()
            raise
        raw, self._raw = self._raw, None
        try:
            _call(type(raw).commit, raw)
        finally:
            super().close()

    def discard(self) -> None:
        """Drops the entry being written; nothing becomes visible."""
        raw, self._raw = self._raw, None
        self._buffer = bytearray()
        if raw is not None:
            _release(raw)

    def close(self) -> None:
        """Discards the entry unless it was committed (closing never publishes)."""
        self.discard()
        super().close()


# --- memoizing --------------------------------------------------------------------------------


class Outcome(str, enum.Enum):
    """Whether a memoized value came from the cache."""

    HIT = "hit"
    MISS = "miss"

    def __str__(self) -> str:
        return self.value


class Memo:
    """A memoized computation: a key, and how its entry moves to and from the cache.

    Best effort: a failed lookup (any `CacheError`, a damaged entry included) is a miss, and a
    failed store is ignored once the value is computed. Exceptions of the computation itself
    propagate and nothing is cached. `streamed=True` moves the entry through a `Reader` and a
    `Writer` in chunks of at most 1 MiB instead of one call each way: worth it above about 1 MiB.

        value, outcome = Memo("checksum-tool 2", data).run(lambda: checksum(data))
    """

    def __init__(self, *parts: Part, key: Optional[Key] = None, streamed: bool = False) -> None:
        self.key = key if key is not None else Key.from_parts(*parts)
        self.streamed = streamed

    def run(self, compute: Callable[[], bytes]) -> "tuple[bytes, Outcome]":
        """The cached value and `Outcome.HIT`, or `compute()`'s value, stored, and `Outcome.MISS`."""
        value = self.lookup()
        if value is not None:
            return value, Outcome.HIT
        value = compute()
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"a memoized computation returns bytes, not {type(value).__name__} "
                "(encode it, or give memoize an encode= and decode=)"
            )
        value = bytes(value)
        try:
            self.store(value)
        except CacheError:
            pass  # Best effort: a value that cannot be stored is still the right answer.
        return value, Outcome.MISS

    def lookup(self) -> Optional[bytes]:
        """The cached value, or None on a miss or any cache error."""
        try:
            if self.streamed:
                reader = open(self.key)
                if reader is None:
                    return None
                with reader:
                    return reader.read()
            return get(self.key)
        except CacheError:
            return None

    def store(self, value: bytes) -> None:
        """Stores `value` under the key (raising `CacheError` on failure)."""
        if self.streamed:
            with create(self.key) as writer:
                writer.write(value)
                writer.commit()
        else:
            add(self.key, value)


def memoize(
    *parts: Part,
    streamed: bool = False,
    encode: Optional[Callable] = None,
    decode: Optional[Callable[[bytes], object]] = None,
):
    """Caches a function's results under `Key.from_parts(*parts, *args)`.

    `parts` name the computation and everything else its result depends on (a tool name and
    version, settings); the call's positional arguments (bytes or str) are appended. The
    function returns bytes, or anything `encode` turns into bytes (`decode` turns them back on
    a hit). The cache is best effort (see `Memo`). `f.with_outcome(*args)` also tells whether
    the value came from the cache; `f.key(*args)` is the key it uses.

        @filecache.memoize("markdown 1.0", encode=str.encode, decode=bytes.decode)
        def render(source: str) -> str: ...
    """

    def decorate(function):
        def key(*args: Part) -> Key:
            return Key.from_parts(*parts, *args)

        def with_outcome(*args: Part):
            def compute() -> bytes:
                value = function(*args)
                return encode(value) if encode is not None else value

            value, outcome = Memo(key=key(*args), streamed=streamed).run(compute)
            return (decode(value) if decode is not None else value), outcome

        @functools.wraps(function)
        def wrapper(*args: Part):
            return with_outcome(*args)[0]

        wrapper.with_outcome = with_outcome
        wrapper.key = key
        return wrapper

    return decorate


# --- the command ------------------------------------------------------------------------------

_running = False


def command(main: Callable[[list], Optional[int]]):
    """The `Run` class componentize-py exports as `wasi:cli/run`, calling `main(args)`.

    `args` are the plugin's arguments (without the program name). `main` returns an exit status
    (None is 0); any status but 0, `sys.exit` with one, or an exception (its traceback printed to
    standard error) ends the plugin with a failure: exit code 1 from the host. The cache can be
    used only while `main` runs. Use it as `Run = filecache.command(main)` in the app module.
    """

    class Run:
        def run(self) -> None:
            global _running
            _running = True
            try:
                status = main(list(sys.argv[1:]))
            except SystemExit as exit:
                status = exit.code
                if status is not None and not isinstance(status, int):
                    print(status, file=sys.stderr)  # sys.exit("message"), as CPython does
                    status = 1
            except BaseException:
                # Printed here: an exception escaping `run` would abort the component with a trap.
                traceback.print_exc()
                status = 1
            finally:
                _running = False
                sys.stdout.flush()
                sys.stderr.flush()
            if status:
                from componentize_py_types import Err

                raise Err(None)

    Run.__doc__ = f"wasi:cli/run for {getattr(main, '__qualname__', 'main')}"
    return Run


# --- the HTTP handler -------------------------------------------------------------------------

#: The largest request body `http_handler` reads (16 MiB); a larger one is answered 413.
MAX_REQUEST_BODY = 16 << 20

#: The most bytes a `wasi:io` output stream takes in one blocking write.
_WRITE_CHUNK = 4096


class Request:
    """An HTTP request as `http_handler` hands it over, its body read whole.

    `method` is upper case (`"GET"`), `path` the path without the query, `query` what follows
    `?` (or `""`), `headers` a list of `(name, value)` pairs (values as bytes).
    """

    def __init__(self, method: str, path: str, query: str, headers: list, body: bytes) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body

    def header(self, name: str) -> Optional[bytes]:
        """The first value of header `name` (any case), or None."""
        name = name.lower()
        return next((v for n, v in self.headers if n.lower() == name), None)


class Response:
    """What a handler answers: a status, headers (a dict or `(name, value)` pairs; str or bytes
    values) and a body (bytes, or str sent as UTF-8)."""

    def __init__(self, status: int = 200, body: Union[bytes, str] = b"", headers=None) -> None:
        self.status = status
        self.body = body.encode() if isinstance(body, str) else bytes(body)
        items = headers.items() if isinstance(headers, dict) else (headers or [])
        self.headers = [(n, v.encode() if isinstance(v, str) else bytes(v)) for n, v in items]


def _method_name(method) -> str:
    name = type(method).__name__
    if name == "Method_Other":
        return method.value.upper()
    return name.removeprefix("Method_").upper()


def _read_all(request, limit: int) -> Optional[bytes]:
    """The request's body, or None when it is larger than `limit` bytes."""
    from componentize_py_types import Err
    from wit_world.imports import streams

    chunks, size = [], 0
    with request.consume() as body:
        with body.stream() as stream:
            while True:
                try:
                    chunk = stream.blocking_read(64 << 10)
                except Err as err:
                    if isinstance(err.value, streams.StreamError_Closed):
                        break
                    raise
                size += len(chunk)
                if size > limit:
                    return None
                chunks.append(chunk)
    return b"".join(chunks)


def _send(response_out, response: Response) -> None:
    from componentize_py_types import Ok
    from wit_world.imports.types import Fields, OutgoingBody, OutgoingResponse, ResponseOutparam

    outgoing = OutgoingResponse(Fields.from_list(response.headers))
    outgoing.set_status_code(response.status)
    body = outgoing.body()
    ResponseOutparam.set(response_out, Ok(outgoing))
    with body.write() as stream:
        data = response.body
        for start in range(0, len(data), _WRITE_CHUNK):
            stream.blocking_write_and_flush(data[start : start + _WRITE_CHUNK])
    OutgoingBody.finish(body, None)


def http_handler(handle: Callable[[Request], Response], max_body: int = MAX_REQUEST_BODY):
    """The `IncomingHandler` class componentize-py exports as `wasi:http/incoming-handler`,
    calling `handle(request)` for each request.

    The request's body is read whole first (more than `max_body` bytes: answered 413 without
    calling `handle`). `handle` returns a `Response`; an exception escaping it is printed to
    standard error and answered 500. The cache can be used only while `handle` runs (each request
    is a fresh instance under `filecache serve`: what outlives the request is in the cache and
    the key-value buckets). Use it as `IncomingHandler = filecache.http_handler(handle)`.
    """

    class IncomingHandler:
        def handle(self, request, response_out) -> None:
            global _running
            _running = True
            try:
                target = request.path_with_query() or "/"
                path, _, query = target.partition("?")
                method = _method_name(request.method())
                with request.headers() as fields:
                    headers = [(n, bytes(v)) for n, v in fields.entries()]
                body = _read_all(request, max_body)
                if body is None:
                    response = Response(413, f"the request body is larger than {max_body} bytes\n")
                else:
                    response = handle(Request(method, path, query, headers, body))
            except BaseException:
                # Printed here: an exception escaping `handle` would trap without an answer.
                traceback.print_exc()
                response = Response(500, "the handler failed (its traceback is on the server's standard error)\n")
            finally:
                _running = False
            try:
                _send(response_out, response)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()

    IncomingHandler.__doc__ = f"wasi:http/incoming-handler for {getattr(handle, '__qualname__', 'handle')}"
    return IncomingHandler
