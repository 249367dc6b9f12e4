# Sourced by the plugin kits' build scripts (guest/python/build.sh, guest/js/build.sh).
#
# kit_wit ROOT WORK: makes a fresh directory under WORK whose deps/ holds the contract
# (ROOT/wit/cache.wit) and the wasi:* WIT files of the wasmtime-wasi crate the host is built with
# (its version from ROOT/Cargo.lock, its files from cargo's registry, fetched if missing), and
# prints its path. The caller adds its world.wit and removes the directory when done.
kit_wit() {
    local root=$1 work=$2 version deps wit
    version=$(awk '/^name = "wasmtime-wasi"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' "$root/Cargo.lock")
    [ -n "$version" ] || { echo "error: no wasmtime-wasi in $root/Cargo.lock" >&2; return 1; }
    deps=$(_kit_wasi_deps "$version")
    if [ -z "$deps" ]; then
        echo "fetching the wasmtime-wasi $version crate for its WIT files (cargo fetch)" >&2
        cargo fetch --quiet --manifest-path "$root/Cargo.toml"
        deps=$(_kit_wasi_deps "$version")
        [ -n "$deps" ] || {
            echo "error: wasmtime-wasi-$version not found in cargo's registry after cargo fetch" >&2
            return 1
        }
    fi
    wit=$(mktemp -d "$work/wit.XXXXXX")
    mkdir "$wit/deps"
    cp "$deps"/*.wit "$wit/deps/"
    cp "$root/wit/cache.wit" "$wit/deps/cache.wit"
    echo "$wit"
}

_kit_wasi_deps() {
    ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"wasmtime-wasi-$1"/src/p2/wit/deps 2>/dev/null | head -n1
}

# kit_wit_http ROOT WIT: adds to WIT/deps what an HTTP handler's world needs besides: wasi:http,
# from the wasmtime-wasi-http crate the host is built with (its version from ROOT/Cargo.lock), and
# the wasi:keyvalue drafts the host serves (ROOT/wit/deps/keyvalue-*). Prints wasi:http's version.
kit_wit_http() {
    local root=$1 wit=$2 version deps
    version=$(awk '/^name = "wasmtime-wasi-http"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' "$root/Cargo.lock")
    [ -n "$version" ] || { echo "error: no wasmtime-wasi-http in $root/Cargo.lock" >&2; return 1; }
    deps=$(_kit_wasi_http_deps "$version")
    if [ -z "$deps" ]; then
        echo "fetching the wasmtime-wasi-http $version crate for its WIT files (cargo fetch)" >&2
        cargo fetch --quiet --manifest-path "$root/Cargo.toml"
        deps=$(_kit_wasi_http_deps "$version")
        [ -n "$deps" ] || {
            echo "error: wasmtime-wasi-http-$version not found in cargo's registry after cargo fetch" >&2
            return 1
        }
    fi
    cp "$deps/http.wit" "$wit/deps/http.wit"
    cp -r "$root"/wit/deps/keyvalue-* "$wit/deps/"
    sed -n 's/^package wasi:http@\(.*\);$/\1/p' "$wit/deps/http.wit"
}

_kit_wasi_http_deps() {
    ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"wasmtime-wasi-http-$1"/wit/deps 2>/dev/null | head -n1
}
