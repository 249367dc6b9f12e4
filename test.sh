#!/usr/bin/env bash
# Runs every test: unit tests, the store's tests on real files, and the end-to-end tests that
# build the guest components for wasm32-wasip2 and run them through the host.
set -euo pipefail
cd "$(dirname "$0")"
rustup target add wasm32-wasip2 >/dev/null 2>&1 || rustup target add wasm32-wasip2
cargo test --workspace "$@"
