#!/usr/bin/env bash
# The demo: a plugin pre-compresses a folder of web assets with Brotli (quality 11), memoizing each
# file's result in the cache. The first run computes everything, the second is served from the cache.
set -euo pipefail
cd "$(dirname "$0")"

rustup target add wasm32-wasip2 >/dev/null 2>&1 || rustup target add wasm32-wasip2
echo "building the filecache CLI and the demo plugin (release)..."
cargo build --release --quiet --bin filecache
cargo build --release --quiet --target wasm32-wasip2 -p filecache-guest --features demo --bin brotli-assets

work=target/demo
rm -rf "$work"
mkdir -p "$work/out"
export FILECACHE_DIR="$PWD/$work/cache"
plugin=target/wasm32-wasip2/release/brotli-assets.wasm

for run in first second; do
    echo
    echo "== $run run (cache: $FILECACHE_DIR)"
    start=$(date +%s%N)
    ./target/release/filecache run --dir guest/demo/assets::/assets --dir "$work/out::/out" "$plugin" /assets /out
    end=$(date +%s%N)
    echo "$run run: $(( (end - start) / 1000000 )) ms end to end"
done
echo
./target/release/filecache stats
