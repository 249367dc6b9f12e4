"""The example plugin: renders Markdown files to HTML, memoized through the cache.

    filecache run --dir docs plugin.wasm render docs/README.md > README.html
    filecache run --max-entry-size 1KiB plugin.wasm selftest too-large

`render FILE...` prints each file's HTML on standard output and one line per file on standard
error: `miss` (rendered and stored) or `hit` (read from the cache), sizes and the time taken.
`selftest MODE` exercises the contract as Python sees it (see `selftest` below); the end-to-end
tests in `host/cli/tests/python.rs` run every mode.
"""

import sys
import time

import filecache
import markdown

# Everything the HTML depends on goes into the key: the renderer and its version, then the source.
RENDERER = "filecache-python-example markdown 1"


@filecache.memoize(RENDERER, encode=str.encode, decode=bytes.decode)
def render(source: bytes) -> str:
    return markdown.render(source.decode("utf-8"))


def render_files(paths):
    for path in paths:
        with open(path, "rb") as file:
            source = file.read()
        start = time.perf_counter()
        html, outcome = render.with_outcome(source)
        took = (time.perf_counter() - start) * 1000
        sys.stdout.write(html)
        print(f"{outcome} {path}: {len(source)} bytes of Markdown -> {len(html.encode())} bytes of HTML in {took:.1f} ms", file=sys.stderr)
    return 0


# --- selftest: the contract as a Python plugin sees it ------------------------------------------


def ok(what):
    print("ok " + what)


def expect(error, what, call, *args):
    """Requires `call(*args)` to raise `error`; returns the exception."""
    try:
        call(*args)
    except error as e:
        ok(f"{what} raises {type(e).__name__}: {e}")
        return e
    raise AssertionError(f"{what} did not raise {error.__name__}")


def check(condition, what):
    if not condition:
        raise AssertionError(what)
    ok(what)


def selftest_contract():
    # Keys agree with the Rust kit's (guest/src/key.rs known vectors).
    check(str(filecache.Key.from_parts()) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "key of no parts")
    check(str(filecache.Key.from_parts(b"")) == "af5570f5a1810b7af78caf4bc70a660f0df51e42baf91d4de5b2328de0e83dfc", "key of one empty part")
    check(filecache.Key.from_parts("ab", "c") != filecache.Key.from_parts("a", "bc"), "part boundaries matter")
    expect(filecache.InvalidKey, "Key(31 bytes)", filecache.Key, bytes(31))

    for length in (0, 31, 33):
        bad = bytes(length)
        expect(filecache.InvalidKey, f"get({length} bytes)", filecache.get, bad)
        expect(filecache.InvalidKey, f"open({length} bytes)", filecache.open, bad)
        expect(filecache.InvalidKey, f"add({length} bytes)", filecache.add, bad, b"x")
        expect(filecache.InvalidKey, f"create({length} bytes)", filecache.create, bad)
        expect(filecache.InvalidKey, f"delete({length} bytes)", filecache.delete, bad)
        expect(filecache.InvalidKey, f"contains({length} bytes)", filecache.contains, bad)

    key = filecache.Key.from_parts("selftest", "whole")
    filecache.delete(key)
    check(filecache.get(key) is None and not filecache.contains(key), "miss is None")
    filecache.add(key, b"hello")
    check(filecache.get(key) == b"hello" and filecache.contains(key), "add then get")
    filecache.add(key, b"replaced")
    check(filecache.get(key) == b"replaced", "add replaces")
    filecache.delete(key)
    filecache.delete(key)
    check(filecache.get(key) is None, "delete (twice)")

    big = bytes(i * 7 % 251 for i in range(3 << 20 | 12345))
    key = filecache.Key.from_parts("selftest", "streamed")
    with filecache.create(key) as writer:
        for start in range(0, len(big), 100_000):
            writer.write(big[start : start + 100_000])
        check(not filecache.contains(key), "nothing visible before commit")
        writer.commit()
    check(writer.closed, "commit closes the writer")
    with filecache.open(key) as reader:
        check(reader.size() == len(big), f"reader.size() == {len(big)}")
        head = reader.read(10)
        buffer = bytearray(5)
        check(reader.readinto(buffer) == 5 and head + buffer == big[:15], "read and readinto")
        check(reader.read(3 << 20).__len__() == 1 << 20, "one read returns at most 1 MiB")
        rest = reader.read()
        check(head + buffer + big[15 : 15 + (1 << 20)] + rest == big, "read() to the end gives the exact content")
        check(reader.read() == b"", "read at the end is empty")
    check(reader.closed, "with releases the reader")

    key = filecache.Key.from_parts("selftest", "abandoned")
    filecache.delete(key)
    with filecache.create(key) as writer:
        writer.write(b"never committed")
    check(not filecache.contains(key), "a writer closed without commit leaves nothing")
    try:
        with filecache.create(key) as writer:
            writer.write(b"x" * 100_000)
            raise KeyboardInterrupt("simulated failure")
    except KeyboardInterrupt:
        pass
    check(not filecache.contains(key), "a writer left by an exception leaves nothing")

    calls = []

    @filecache.memoize("selftest memo", streamed=True)
    def double(data: bytes) -> bytes:
        calls.append(data)
        return data + data

    filecache.delete(double.key(b"ab"))
    first = double.with_outcome(b"ab")
    second = double.with_outcome(b"ab")
    check(first == (b"abab", filecache.Outcome.MISS) and second == (b"abab", filecache.Outcome.HIT) and len(calls) == 1, "memoize: miss, then hit")

    filecache._running = False
    try:
        expect(filecache.NotRunningError, "get outside the run", filecache.get, key)
    finally:
        filecache._running = True


def selftest_too_large():
    """Run with --max-entry-size 1KiB."""
    key = filecache.Key.from_parts("selftest", "too large")
    e = expect(filecache.TooLarge, "add(2 KiB)", filecache.add, key, bytes(2048))
    check(e.limit == 1024, "too-large carries the limit, 1024")
    filecache.add(key, bytes(1024))
    check(filecache.get(key) == bytes(1024), "an entry of exactly the limit fits")
    with filecache.create(key) as writer:
        writer.write(bytes(1000))
        writer.write(bytes(1000))
        e = expect(filecache.TooLarge, "writer: commit past the limit", writer.commit)
    check(e.limit == 1024 and writer.closed, "the writer is closed after a failed commit")
    writer = filecache.create(key)
    e = expect(filecache.TooLarge, "writer: 1 MiB write", writer.write, bytes(1 << 20))
    expect(filecache.TooLarge, "writer: commit after too-large", writer.commit)
    check(filecache.get(key) == bytes(1024), "a failed writer leaves the earlier entry")

    calls = []

    @filecache.memoize("selftest too large")
    def big(n: str) -> bytes:
        calls.append(n)
        return bytes(int(n))

    check(big("4096") == bytes(4096) and big("4096") == bytes(4096) and len(calls) == 2, "memoize: a value too large to store is computed each time")


def selftest_read_only():
    """Run with --read-only."""
    key = filecache.Key.from_parts("selftest", "read only")
    expect(filecache.ReadOnly, "add", filecache.add, key, b"x")
    expect(filecache.ReadOnly, "create", filecache.create, key)
    expect(filecache.ReadOnly, "delete", filecache.delete, key)
    check(filecache.get(key) is None and filecache.open(key) is None and not filecache.contains(key), "reads still work (miss)")
    value, outcome = filecache.Memo("selftest read only").run(lambda: b"computed")
    check((value, outcome) == (b"computed", filecache.Outcome.MISS), "memoize computes when the cache refuses to store")


def selftest_too_many_handles(limit):
    """Run with --max-handles LIMIT."""
    keys = [filecache.Key.from_parts("selftest", "handle", str(i)) for i in range(limit + 1)]
    writers = [filecache.create(k) for k in keys[:limit]]
    ok(f"{limit} writers open")
    expect(filecache.TooManyHandles, f"writer {limit + 1}", filecache.create, keys[limit])
    writers.pop().close()
    writers.append(filecache.create(keys[limit]))
    ok("closing a writer gives its slot back")
    for writer in writers:
        writer.write(b"v")
        writer.commit()
    ok("committing gives the slots back")
    committed = keys[: limit - 1] + keys[limit:]
    readers = [filecache.open(k) for k in committed]
    check(all(r is not None for r in readers), f"{limit} readers open")
    expect(filecache.TooManyHandles, f"reader {limit + 1}", filecache.open, committed[0])
    for reader in readers:
        reader.close()
    for _ in range(3 * limit):
        with filecache.open(keys[0]) as reader:
            reader.read()
        with filecache.create(keys[0]) as writer:
            writer.write(b"w")
    ok(f"{3 * limit} with-blocks of readers and writers, each released")


def main(args):
    if not args:
        print("usage: render FILE... | selftest contract|too-large|read-only|too-many-handles N", file=sys.stderr)
        return 2
    if args[0] == "render":
        return render_files(args[1:])
    if args[0] == "selftest":
        mode = args[1] if len(args) > 1 else "contract"
        if mode == "contract":
            selftest_contract()
        elif mode == "too-large":
            selftest_too_large()
        elif mode == "read-only":
            selftest_read_only()
        elif mode == "too-many-handles":
            selftest_too_many_handles(int(args[2]))
        else:
            print(f"unknown selftest mode {mode!r}", file=sys.stderr)
            return 2
        print(f"selftest {mode}: passed")
        return 0
    print(f"unknown command {args[0]!r}", file=sys.stderr)
    return 2


Run = filecache.command(main)
