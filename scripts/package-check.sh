#!/usr/bin/env bash
# Checks that every publishable package packages and builds from its packaged files alone:
# `cargo package` with verification (cargo builds each .crate as crates.io would, against the
# others through a temporary local registry). The guest kit for the host target is packaged too.
set -euo pipefail
cd "$(dirname "$0")/.."
# cargo verifies each package against the others through a temporary local registry, whose
# crates it extracts into $CARGO_HOME/registry/src/-<hash>/ (the hash is of the checkout's path)
# and reuses when an extraction of that name and version exists, even if the package has changed
# since: a second run from the same path would verify stale sources. Remove ours first.
rm -rf "${CARGO_HOME:-$HOME/.cargo}"/registry/src/-*/filecache-*
cargo package --locked -p filecache-store -p filecache-kv -p filecache-host -p filecache-cli -p filecache-guest "$@"
