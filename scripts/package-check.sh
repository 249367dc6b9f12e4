#!/usr/bin/env bash
# Checks that every publishable package packages and builds from its packaged files alone:
# `cargo package` with verification (cargo builds each .crate as crates.io would, against the
# others through a temporary local registry). The guest kit for the host target is packaged too.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo package --locked -p filecache-store -p filecache-host -p filecache-cli -p filecache-guest "$@"
