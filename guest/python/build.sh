#!/usr/bin/env bash
# Builds a Python filecache plugin into a component with the pinned componentize-py.
#
#   guest/python/build.sh [--world WORLD] OUT.wasm [APP_DIR [MODULE]]
#
# APP_DIR (default: guest/python/example) holds MODULE.py (default: app). WORLD (wit/world.wit)
# is `plugin` (the default), a `wasi:cli` command for `filecache run`, whose module defines `Run`
# (e.g. `Run = filecache.command(main)`); or `http-handler`, a `wasi:http` handler for
# `filecache serve`, whose module defines `IncomingHandler` (e.g.
# `IncomingHandler = filecache.http_handler(handle)`; example/handler.py). The kit
# (src/filecache.py) is on the module path.
#
# Installs componentize-py from PyPI (requirements.txt, hash-checked) into a virtual environment
# under the target folder ($CARGO_TARGET_DIR, else target/ at the repository root) the first
# time, and again whenever requirements.txt changes. The WIT world is assembled there too, from
# guest/python/wit/world.wit, the contract wit/cache.wit, the wasi:* WIT files of the
# wasmtime-wasi and wasmtime-wasi-http crates the host is built with (from cargo's registry,
# fetched if missing) and the wasi:keyvalue drafts (wit/deps/).
set -euo pipefail

usage() { echo "usage: $0 [--world plugin|http-handler] OUT.wasm [APP_DIR [MODULE]]" >&2; exit 2; }
world=plugin
if [ "${1:-}" = --world ]; then
    [ $# -ge 2 ] || usage
    world=$2
    shift 2
fi
case "$world" in plugin | http-handler) ;; *) echo "error: unknown world '$world'" >&2; usage ;; esac
[ $# -ge 1 ] && [ $# -le 3 ] || usage

kit=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$kit/../.." && pwd)
out=$1
app=${2:-$kit/example}
module=${3:-app}
[ -f "$app/$module.py" ] || { echo "error: no $module.py in $app" >&2; exit 2; }
app=$(cd "$app" && pwd)

target=${CARGO_TARGET_DIR:-$root/target}
work=$target/python-kit
venv=$work/venv
python=${PYTHON:-python3}
mkdir -p "$work"

# --- the pinned toolchain: one virtual environment per requirements.txt -------------------------
want=$(sha256sum "$kit/requirements.txt" | cut -d' ' -f1)
(
    flock 9
    if [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
        command -v "$python" >/dev/null || {
            echo "error: $python not found; the Python kit needs Python 3.9 or later with venv and pip" >&2
            exit 1
        }
        echo "installing componentize-py (requirements.txt) into $venv" >&2
        rm -rf "$venv"
        "$python" -m venv "$venv" || {
            echo "error: '$python -m venv' failed (on Debian: apt-get install python3-venv)" >&2
            exit 1
        }
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-cache-dir \
            --require-hashes --only-binary=:all: -r "$kit/requirements.txt"
        echo "$want" > "$venv/.requirements.sha256"
    fi
) 9>"$work/.lock"

# --- the WIT world: world.wit, the contract, and the WASI packages the host implements --------
. "$root/guest/kit-wit.sh"
wit=$(kit_wit "$root" "$work")
trap 'rm -rf "$wit" "$out.tmp"' EXIT
http_version=$(kit_wit_http "$root" "$wit")
# The worlds name the wasi:cli and wasi:http versions; follow the ones these WIT files declare.
cli_version=$(sed -n 's/^package wasi:cli@\(.*\);$/\1/p' "$wit/deps/cli.wit")
sed -e "s/wasi:cli\/run@[0-9.]*/wasi:cli\/run@$cli_version/" \
    -e "s/wasi:http\/proxy@[0-9.]*/wasi:http\/proxy@$http_version/" "$kit/wit/world.wit" > "$wit/world.wit"

# --- the component ---------------------------------------------------------------------------
mkdir -p "$(dirname "$out")"
"$venv/bin/componentize-py" --quiet -d "$wit" -w "$world" componentize \
    -p "$kit/src" -p "$app" "$module" -o "$out.tmp"
mv "$out.tmp" "$out"
echo "built $out ($(du -h "$out" | cut -f1))" >&2
