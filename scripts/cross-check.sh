#!/usr/bin/env bash
# Every platform the libraries promise, from this x86-64 Linux machine:
#   1. `cargo check` of the libraries (filecache-store, filecache-kv, filecache-host; every feature) for Windows
#      (x86_64-pc-windows-gnu) and aarch64 Linux, and of the store, which needs no C, for macOS
#      (aarch64-apple-darwin);
#   2. the store's own test suite run on Windows, under Wine.
# Installs what it needs when it is missing (Debian's mingw-w64, aarch64 gcc and wine64; the Rust
# targets). Cross targets build in their own folders of the shared target/ directory.
#
#   scripts/cross-check.sh            everything
#   scripts/cross-check.sh check      only the cross `cargo check`s
#   scripts/cross-check.sh wine       only the store's tests under Wine
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}

sudo=$([ "$(id -u)" = 0 ] || echo sudo)
apt_updated=
need() { # need <command or file> <debian package>
    if ! command -v "$1" >/dev/null 2>&1 && [ ! -e "$1" ]; then
        if [ -z "$apt_updated" ]; then $sudo apt-get update -qq; apt_updated=1; fi
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >/dev/null
    fi
}
need x86_64-w64-mingw32-gcc gcc-mingw-w64-x86-64
need aarch64-linux-gnu-gcc gcc-aarch64-linux-gnu
need /usr/aarch64-linux-gnu/include/stdio.h libc6-dev-arm64-cross
rustup target add x86_64-pc-windows-gnu aarch64-unknown-linux-gnu aarch64-apple-darwin >/dev/null 2>&1

# C build scripts (zstd-sys, wasmtime's fiber and trap helpers) and the linker of each target.
export CC_x86_64_pc_windows_gnu=x86_64-w64-mingw32-gcc
export AR_x86_64_pc_windows_gnu=x86_64-w64-mingw32-ar
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc

step() { printf '\n== %s\n' "$*"; }
timed() { local t0=$SECONDS; "$@"; echo "   ($((SECONDS - t0)) s)"; }
quietly() { "$@" >/dev/null 2>&1; }

if [ "$what" = all ] || [ "$what" = check ]; then
    # One check per target, with every feature of the libraries on (features only add code, and
    # a second feature set would check wasmtime a second time: a quarter of an hour on Windows).
    # x86-64 Linux is the workspace's own build, checked by clippy and the tests.
    for target in x86_64-pc-windows-gnu aarch64-unknown-linux-gnu; do
        step "cargo check of the libraries for $target"
        timed cargo check --quiet --lib -p filecache-store -p filecache-kv -p filecache-host --target "$target" \
            --features filecache-store/remote,filecache-host/remote,filecache-host/incremental
    done
    # No C compiler or SDK for macOS here: the store must need none (wasmtime's `cache` feature,
    # which would bring zstd-sys, is not a dependency of the libraries).
    step "cargo check of the store for aarch64-apple-darwin"
    timed cargo check --quiet --lib -p filecache-store --target aarch64-apple-darwin --features remote
fi

if [ "$what" = all ] || [ "$what" = wine ]; then
    need /usr/lib/wine/wine64 wine64
    export WINEPREFIX="${CARGO_TARGET_DIR:-$PWD/target}/x86_64-pc-windows-gnu/wine"
    export WINEDEBUG=-all
    # Rust's std imports ProcessPrng from bcryptprimitives.dll, which Wine 8 lacks: ours, native.
    export WINEDLLOVERRIDES="bcryptprimitives=n;mscoree,mshtml="
    export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=/usr/lib/wine/wine64
    dll="$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll"
    if [ ! -f "$dll" ] || [ scripts/process-prng.c -nt "$dll" ]; then
        step "a Wine prefix in $WINEPREFIX"
        mkdir -p "$WINEPREFIX"
        timed quietly /usr/lib/wine/wine64 wineboot --init
        /usr/lib/wine/wineserver -w 2>/dev/null || true
        x86_64-w64-mingw32-gcc -O2 -shared -o "$dll" scripts/process-prng.c -ladvapi32
    fi
    step "the store's tests on Windows, under Wine"
    # One test at a time: Wine serialises file operations through its server, and tests that
    # race threads for the namespace lock (bounded to 3 s in test builds) starve when other tests
    # load it too.
    timed cargo test --quiet -p filecache-store --lib --target x86_64-pc-windows-gnu -- --test-threads 1
    /usr/lib/wine/wineserver -k 2>/dev/null || true
fi
