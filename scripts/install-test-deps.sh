#!/usr/bin/env bash
# Installs what the tests need when it is missing, so that ./test.sh works on a fresh machine:
# - the wasm32-wasip2 Rust target (the guest components are built for it);
# - redis-server and redis-cli (the remote-tier tests start a real server on loopback);
# - Python 3 with venv and pip, and Node.js with npm (the Python and JavaScript plugin kits;
#   their build scripts install the pinned componentize-py / componentize-js themselves, from
#   PyPI and npm, into target/).
# Uses apt-get (Debian, Ubuntu) for system packages, with sudo when not root.
set -euo pipefail

rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

missing=()
command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 || missing+=(redis-server)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -m venv --help >/dev/null 2>&1 || missing+=(python3-venv)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)

if ((${#missing[@]})); then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "error: the tests need ${missing[*]}; install them (no apt-get here to do it)" >&2
        exit 1
    fi
    sudo=$([ "$(id -u)" = 0 ] || echo sudo)
    echo "installing ${missing[*]} (needed by the tests)" >&2
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
