#!/usr/bin/env bash
# Runs every test: unit tests, the store's tests on real files, the model-based property test,
# and the end-to-end tests that build the guest components for wasm32-wasip2 and run them
# through the host. Ends with one line counting every test of every suite.
set -euo pipefail
cd "$(dirname "$0")"
rustup target add wasm32-wasip2 >/dev/null 2>&1 || rustup target add wasm32-wasip2

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace "$@" 2>&1 | tee "$log" || status=$?
passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | awk '{s += $4} END {print s + 0}')
failed=$(grep -Eo '[0-9]+ failed;' "$log" | awk '{s += $1} END {print s + 0}')
echo
echo "${passed} passed, ${failed} failed"
exit "$status"
