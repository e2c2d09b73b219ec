#!/usr/bin/env bash
# Startup and recovery time with a large store: fills one store with N events (default
# 20 million, batches of 1000), then measures the time from `raccordo serve` to `/readyz`
# answering 200 after a clean stop (SIGTERM) and after `kill -9` under load, and the latency
# of single events in the first 30 s after each restart (open loop at half the maximum
# single-event rate measured on the empty store, from each request's scheduled send time):
# what a sender sees while the restarted hub still settles (its dedup index just loaded,
# the windows catching up).
#
#   bash benches/startup.sh [events]
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-20000000}
source benches/common.sh
bin=$(raccordo_bin)
work=$(mktemp -d -p "${TMPDIR:-/tmp}")
port=18768
url=http://127.0.0.1:$port
cd "$work"
server=
trap '[ -n "$server" ] && kill -9 $server 2>/dev/null; rm -rf "$work"' EXIT
start() {
  local label=$1 t0 t1
  t0=$(date +%s.%N)
  RUST_LOG=warn "$bin" serve --listen 127.0.0.1:$port >>serve.log 2>>serve.err &
  server=$!
  until curl -sf $url/readyz >/dev/null; do sleep 0.05; done
  t1=$(date +%s.%N)
  python3 -c "print(f'$label: ready after {$t1 - $t0:.2f} s')"
}
machine
start "empty store"
secret=$(grep webhook_secret raccordo-data/credentials.toml | cut -d'"' -f2)
field() { python3 -c "import json,sys; r=json.load(sys.stdin); print($1)"; }
half=$(( $("$bin" loadgen --url $url --webhook-secret "$secret" --concurrency 64 --duration 10s --json | field 'int(r["requests_per_s"])') / 2 ))
settle() {
  "$bin" loadgen --url $url --webhook-secret "$secret" --rate $half --duration 30s --json | python3 -c "
import json, sys
r = json.load(sys.stdin); l = r['latency_ms']
print(f\"  first 30 s after ready, open loop at $half/s: p50 {l['p50']:.2f} ms, p99 {l['p99']:.2f} ms, \"
      f\"p99.9 {l['p999']:.2f} ms, max {l['max']:.2f} ms (transport errors {r['transport_errors']})\")"
}
t0=$(date +%s)
"$bin" loadgen --url $url --webhook-secret "$secret" --concurrency 4 --batch-size 1000 \
  --requests $(( events / 1000 )) --duration 2h --json >/dev/null
echo "filled with $events events in $(( $(date +%s) - t0 )) s; database $(du -sh raccordo-data | cut -f1)"
kill -TERM $server; wait $server 2>/dev/null || true
start "after a clean stop"
settle
# Under load, then kill -9.
"$bin" loadgen --url $url --webhook-secret "$secret" --concurrency 4 --batch-size 1000 --duration 10s --json >/dev/null
kill -9 $server; wait $server 2>/dev/null || true
start "after kill -9 under load"
settle
echo "resident memory after the restart: $(( $(awk '/VmRSS/ {print $2}' /proc/$server/status) / 1024 )) MiB"
