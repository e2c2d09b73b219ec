#!/usr/bin/env bash
# A customer's erasure on a large store: fills one store with N events (default 5 million,
# batches of 1000), then times, for one customer taken from the store:
#   - the export (GET /api/v1/customers/{id}/export: a read-only scan of the whole log),
#   - the erasure (DELETE /api/v1/customers/{id}: the same scan, then the in-place patch),
# and measures ingest latency (open loop, single events) for 20 s without an erasure and for
# 20 s while erasures of other customers run back to back, in the same run.
#
#   bash benches/erase.sh [events] [rate]
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-5000000}
rate=${2:-2000}
source benches/common.sh
bin=$(raccordo_bin)
work=$(mktemp -d -p "${TMPDIR:-/tmp}")
port=18769
url=http://127.0.0.1:$port
cd "$work"
server=
trap '[ -n "$server" ] && kill -9 $server 2>/dev/null; rm -rf "$work"' EXIT
machine
RUST_LOG=warn "$bin" serve --listen 127.0.0.1:$port >>serve.log 2>>serve.err &
server=$!
until curl -sf $url/readyz >/dev/null; do sleep 0.05; done
secret=$(grep webhook_secret raccordo-data/credentials.toml | cut -d'"' -f2)
token=$(grep admin_token raccordo-data/credentials.toml | cut -d'"' -f2)
t0=$(date +%s)
"$bin" loadgen --url $url --webhook-secret "$secret" --concurrency 4 --batch-size 1000 \
  --requests $(( events / 1000 )) --duration 2h --json >/dev/null
echo "filled with $events events in $(( $(date +%s) - t0 )) s; event log $(du -sh raccordo-data/raccordo.segments | cut -f1)"

# Customers to erase: the first few stored events' customers.
customers=$(curl -sf -H "authorization: Bearer $token" "$url/api/v1/events?limit=50" \
  | python3 -c 'import json,sys; ids=[]; [ids.append(e["payload"]["id_cliente"]) for e in json.load(sys.stdin)["events"] if e["payload"]["id_cliente"] not in ids]; print(" ".join(ids))')
first=${customers%% *}
timed() { # label, method, path
  local t0 t1 out
  t0=$(date +%s.%N)
  out=$(curl -sf -X "$2" -H "authorization: Bearer $token" "$url$3")
  t1=$(date +%s.%N)
  python3 -c "import json,sys; a=json.loads(sys.argv[1]); n=len(a.get('data',{}).get('events',[])) if 'data' in a else a['erased']['events']; print(f'$1: {$t1 - $t0:.2f} s ({n} events of the customer)')" "$out"
}
timed "export (read-only scan)" GET "/api/v1/customers/$first/export"
timed "erasure (scan + patch)" DELETE "/api/v1/customers/$first"
timed "erasure again (nothing left)" DELETE "/api/v1/customers/$first"

load() { # label
  "$bin" loadgen --url $url --webhook-secret "$secret" --rate "$rate" --duration 20s --json \
    | python3 -c "import json,sys; r=json.load(sys.stdin); l=r['latency_ms']; print(f\"$1: {r['requests_per_s']:.0f} req/s, p50 {l['p50']:.1f} ms, p99 {l['p99']:.1f} ms, max {l['max']:.1f} ms\")"
}
load "ingest at $rate req/s, no erasure"
(
  for c in ${customers#* }; do
    curl -sf -X DELETE -H "authorization: Bearer $token" "$url/api/v1/customers/$c" >/dev/null || true
  done
) &
erasing=$!
load "ingest at $rate req/s, erasures running"
kill $erasing 2>/dev/null || true
wait $erasing 2>/dev/null || true
