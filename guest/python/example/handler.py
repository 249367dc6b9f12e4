"""The Python kit's HTTP handler example, for `filecache serve`.

    guest/python/build.sh --world http-handler handler.wasm guest/python/example handler
    filecache serve --bucket visits handler.wasm

A `wasi:http` handler (the `wasi:http/proxy` world). Every request is a fresh instance, so what
it remembers lives in the cache and the key-value buckets:

- `POST /render` renders the Markdown body to HTML (the same renderer as the command example,
  `markdown.py`), memoized in the cache: the `x-cache` header says `miss` (rendered and
  stored) or `hit` (read back);
- `GET /hello/NAME` does the same for a small page per name;
- `POST /visit` counts visitors in the `wasi:keyvalue` bucket the host grants as `visits`
  (`--bucket visits`), with an atomic increment, and answers the count;
- `PUT /notes/KEY` stores the body in the handler's own bucket (`open("")`: its namespace),
  `GET /notes/KEY` reads it back (404 when there is none).
"""

import filecache
import markdown
from componentize_py_types import Err
from wit_world.imports import atomics, store

# Everything the HTML depends on goes into the key: the renderer and its version, then the source.
RENDERER = "filecache-python-example markdown 1"


@filecache.memoize(RENDERER, encode=str.encode, decode=bytes.decode)
def render(source: bytes) -> str:
    return markdown.render(source.decode("utf-8"))


@filecache.memoize("hello-page 1", encode=str.encode, decode=bytes.decode)
def hello_page(name: str) -> str:
    return f"<h1>Hello, {name}!</h1>\n"


def html(page: str, outcome) -> filecache.Response:
    return filecache.Response(200, page, {"content-type": "text/html; charset=utf-8", "x-cache": str(outcome)})


def text(status: int, body: str) -> filecache.Response:
    return filecache.Response(status, body, {"content-type": "text/plain; charset=utf-8"})


def keyvalue_error(err: Err) -> filecache.Response:
    # store.Error_NoSuchStore, Error_AccessDenied (a bucket not granted), Error_Other(message)
    return text(500, f"key-value error: {type(err.value).__name__} {getattr(err.value, 'value', '')}\n")


def handle(request: filecache.Request) -> filecache.Response:
    if request.method == "POST" and request.path == "/render":
        page, outcome = render.with_outcome(request.body)
        return html(page, outcome)
    if request.method == "GET" and request.path.startswith("/hello/"):
        page, outcome = hello_page.with_outcome(request.path.removeprefix("/hello/"))
        return html(page, outcome)
    if request.method == "POST" and request.path == "/visit":
        try:
            with store.open("visits") as bucket:
                count = atomics.increment(bucket, "count", 1)
        except Err as err:
            return keyvalue_error(err)
        return text(200, f"{count}\n")
    if request.path.startswith("/notes/"):
        key = request.path.removeprefix("/notes/")
        try:
            with store.open("") as bucket:
                if request.method == "PUT":
                    bucket.set(key, request.body)
                    return text(200, f"stored {len(request.body)} bytes\n")
                if request.method == "GET":
                    value = bucket.get(key)
                    if value is None:
                        return text(404, f"no note {key!r}\n")
                    return filecache.Response(200, value, {"content-type": "application/octet-stream"})
        except Err as err:
            return keyvalue_error(err)
        return text(405, "use GET or PUT\n")
    return text(404, "no such page\n")


IncomingHandler = filecache.http_handler(handle)
