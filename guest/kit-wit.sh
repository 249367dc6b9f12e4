# Sourced by the plugin kits' build scripts (guest/python/build.sh, guest/js/build.sh).
#
# kit_wit ROOT WORK: makes a fresh directory under WORK whose deps/ holds the contract
# (ROOT/wit/cache.wit) and the wasi:* WIT files of the wasmtime-wasi crate the host is built with
# (its version from ROOT/Cargo.lock, its files from cargo's registry, fetched if missing), and
# prints its path. The caller adds its world.wit and removes the directory when done.
kit_wit() {
    local root=$1 work=$2 deps wit
    deps=$(_kit_crate_dir "$root" wasmtime-wasi src/p2/wit/deps) || return 1
    wit=$(mktemp -d "$work/wit.XXXXXX")
    mkdir "$wit/deps"
    cp "$deps"/*.wit "$wit/deps/"
    cp "$root/wit/cache.wit" "$wit/deps/cache.wit"
    echo "$wit"
}

# kit_wit_http ROOT WIT: adds to WIT/deps what an HTTP handler's world needs besides: wasi:http,
# from the wasmtime-wasi-http crate the host is built with (its version from ROOT/Cargo.lock), and
# the wasi:keyvalue drafts the host serves (ROOT/wit/deps/keyvalue-*). Prints wasi:http's version.
kit_wit_http() {
    local root=$1 wit=$2 deps
    deps=$(_kit_crate_dir "$root" wasmtime-wasi-http wit/deps) || return 1
    cp "$deps/http.wit" "$wit/deps/http.wit"
    cp -r "$root"/wit/deps/keyvalue-* "$wit/deps/"
    sed -n 's/^package wasi:http@\(.*\);$/\1/p' "$wit/deps/http.wit"
}

# _kit_crate_dir ROOT CRATE DIR: prints the path of DIR inside the crate CRATE, at the version
# ROOT/Cargo.lock pins, in cargo's registry (running cargo fetch first if it is not there yet).
_kit_crate_dir() {
    local root=$1 crate=$2 sub=$3 version dir
    version=$(awk -v name="name = \"$crate\"" '$0 == name { getline; gsub(/[^0-9.]/, ""); print; exit }' "$root/Cargo.lock")
    [ -n "$version" ] || { echo "error: no $crate in $root/Cargo.lock" >&2; return 1; }
    dir=$(_kit_registry_dir "$crate-$version" "$sub")
    if [ -z "$dir" ]; then
        echo "fetching the $crate $version crate for its WIT files (cargo fetch)" >&2
        cargo fetch --quiet --manifest-path "$root/Cargo.toml"
        dir=$(_kit_registry_dir "$crate-$version" "$sub")
        [ -n "$dir" ] || {
            echo "error: $crate-$version not found in cargo's registry after cargo fetch" >&2
            return 1
        }
    fi
    echo "$dir"
}

# _kit_registry_dir CRATE-VERSION DIR: DIR of that crate in cargo's registry, if it is there.
_kit_registry_dir() {
    ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"$1"/"$2" 2>/dev/null | head -n1
}
