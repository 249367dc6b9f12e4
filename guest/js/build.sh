#!/usr/bin/env bash
# Builds a JavaScript filecache plugin into a component with the pinned tools.
#
#   guest/js/build.sh [--quickjs | --quickjs-sync] OUT.wasm [APP.js]
#
# APP.js (default: guest/js/example/app.js) is an ES module exporting `run` (e.g.
# `export const run = command(main)` with the kit, guest/js/src/filecache.js); relative imports
# are followed.
#
# By default it builds with componentize-js (the SpiderMonkey engine, ~12 MB), with the
# `http` and `fetch-event` features disabled so that the component imports no wasi:http.
# `--quickjs` builds with jco's QuickJS backend instead (~1.9 MB); its components use the
# component model's async built-ins (`task.cancel`), which `filecache run` accepts by default, as
# `wasmtime run` does (`-W component-model-async=n` refuses them). `--quickjs-sync` embeds
# QuickJS's non-async runtime instead, for hosts without component-model async.
#
# Installs the tools from npm (package.json and package-lock.json, with `npm ci`) under the
# target folder ($CARGO_TARGET_DIR, else target/ at the repository root) the first time, and
# again whenever either file changes. The WIT world is assembled there too, from
# guest/js/wit/world.wit, the contract wit/cache.wit and the wasi:* WIT files of the
# wasmtime-wasi crate the host is built with (from cargo's registry, fetched if missing).
set -euo pipefail

usage() { echo "usage: $0 [--quickjs | --quickjs-sync] OUT.wasm [APP.js]" >&2; exit 2; }
backend=starlingmonkey
qjs_flags=()
case ${1:-} in
--quickjs) backend=quickjs; shift ;;
--quickjs-sync) backend=quickjs; qjs_flags=(--backend-qjs-disable-async); shift ;;
esac
[ $# -ge 1 ] && [ $# -le 2 ] || usage

kit=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$kit/../.." && pwd)
out=$1
app=${2:-$kit/example/app.js}
[ -f "$app" ] || { echo "error: no $app" >&2; exit 2; }

target=${CARGO_TARGET_DIR:-$root/target}
work=$target/js-kit
tools=$work/tools
mkdir -p "$work"

# --- the pinned tools: one `npm ci` per package.json + package-lock.json -----------------------
want=$(cat "$kit/package.json" "$kit/package-lock.json" | sha256sum | cut -d' ' -f1)
(
    flock 9
    if [ "$(cat "$tools/.lock.sha256" 2>/dev/null)" != "$want" ]; then
        command -v npm >/dev/null || {
            echo "error: npm not found; the JavaScript kit needs Node.js 18 or later with npm" >&2
            exit 1
        }
        echo "installing componentize-js and jco (package-lock.json) into $tools" >&2
        rm -rf "$tools"
        mkdir -p "$tools"
        cp "$kit/package.json" "$kit/package-lock.json" "$tools/"
        (cd "$tools" && npm ci --no-audit --no-fund --loglevel=error)
        echo "$want" > "$tools/.lock.sha256"
    fi
) 9>"$work/.lock"

# --- the WIT world: world.wit, the contract, and the WASI packages the host implements --------
. "$root/guest/kit-wit.sh"
wit=$(kit_wit "$root" "$work")
trap 'rm -rf "$wit" "$out.tmp"' EXIT
# The world names the WASI version; follow the one these WIT files declare.
wasi=$(sed -n 's/^package wasi:cli@\(.*\);$/\1/p' "$wit/deps/cli.wit")
sed -E "s/(wasi:[a-z-]+\/[a-z-]+)@[0-9.]+/\1@$wasi/g" "$kit/wit/world.wit" > "$wit/world.wit"
# The kit imports the same versions.
if ! grep -q "@$wasi\"" "$kit/src/filecache.js"; then
    echo "error: guest/js/src/filecache.js imports WASI interfaces of another version than $wasi" >&2
    exit 1
fi

# --- the component ---------------------------------------------------------------------------
mkdir -p "$(dirname "$out")"
# Both engines load modules only from below the folder they run in (SpiderMonkey sees it as `/`):
# the app's folder, where a plugin keeps its copy of src/filecache.js, or the kit's for an app
# inside it (the example imports ../src/filecache.js).
out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
app=$(cd "$(dirname "$app")" && pwd)/$(basename "$app")
case $app in
"$kit"/*) cwd=$kit ;;
*) cwd=$(dirname "$app") ;;
esac
cd "$cwd"
entry=${app#"${cwd%/}/"}
case $backend in
starlingmonkey)
    "$tools/node_modules/.bin/componentize-js" --wit "$wit" --world-name plugin \
        -d http fetch-event -o "$out.tmp" "$entry" >&2
    ;;
quickjs)
    "$tools/node_modules/.bin/jco" componentize --backend quickjs "${qjs_flags[@]}" --wit "$wit" \
        --world-name plugin --cwd "$cwd" -o "$out.tmp" "$entry" >&2
    ;;
esac
mv "$out.tmp" "$out"
echo "built $out with $backend${qjs_flags:+ (non-async runtime)} ($(du -h "$out" | cut -f1))" >&2
