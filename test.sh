#!/usr/bin/env bash
# Runs every test: unit tests, the store's tests on real files, the model-based property test,
# and the end-to-end tests that build the guest components (Rust, Python, JavaScript) and run them
# through the host. Installs what the tests need when it is missing (scripts/install-test-deps.sh:
# the wasm32-wasip2 target; redis-server and redis-cli, which the Redis tests start on loopback;
# Python 3 with venv and pip; Node.js with npm).
# Runs every suite even after a failure, and ends with one line counting every test.
set -euo pipefail
cd "$(dirname "$0")"
scripts/install-test-deps.sh

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | awk '{s += $4} END {print s + 0}')
failed=$(grep -Eo '[0-9]+ failed;' "$log" | awk '{s += $1} END {print s + 0}')
echo
echo "${passed} passed, ${failed} failed"
exit "$status"
