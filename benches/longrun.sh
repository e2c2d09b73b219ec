#!/usr/bin/env bash
# Long-run ingest benchmark: does the latency of an acknowledgement depend on how much is
# stored? Grows one store to TARGET events (default 20 million) in steps of STEP, and before
# the first step and after each one measures single-event ingest
#   - in an open loop at half the maximum single-event rate (measured at the start), for
#     SECS seconds, latency from each request's *scheduled* send time (no coordinated
#     omission): p50, p99, p99.9, max;
#   - at full closed-loop load (64 clients) for 15 s.
# Growth uses batches of 1000 (4 clients). Default durability (fsync before 202), the live
# metrics consumer running, the load generator on the same machine.
#
#   bash benches/longrun.sh [target-events] [step-events] [secs-per-measure]
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:-20000000}
step=${2:-2500000}
secs=${3:-60}
if [ -n "${RACCORDO_BIN:-}" ]; then
  bin=$RACCORDO_BIN
else
  cargo build --release -p raccordo >/dev/null
  bin=$PWD/target/release/raccordo
fi
work=$(mktemp -d -p "${TMPDIR:-/tmp}")
port=18767
url=http://127.0.0.1:$port
cd "$work"
RUST_LOG=warn "$bin" serve --listen 127.0.0.1:$port >serve.log 2>serve.err &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do curl -sf $url/readyz >/dev/null && break; sleep 0.1; done
secret=$(grep webhook_secret raccordo-data/credentials.toml | cut -d'"' -f2)
load() { "$bin" loadgen --url $url --webhook-secret "$secret" --json --seed $RANDOM "$@"; }
field() { python3 -c "import json,sys; r=json.load(sys.stdin); print($1)"; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
max=$(load --concurrency 64 --duration 10s | field 'int(r["requests_per_s"])')
half=$(( max / 2 ))
echo "single-event maximum at the start: $max req/s; open loop at $half req/s for ${secs}s per step"
printf '%-10s %-9s | %-52s | %-52s\n' "stored" "db" "open loop ${half}/s: rate p50 p99 p99.9 max (ms)" "closed loop c64: rate p50 p99 p99.9 max (ms)"
row() {
  python3 - "$1" <<'PY'
import json, sys
r = json.loads(sys.argv[1]); l = r["latency_ms"]
rejected = sum(r["rejected"].values())
print(f"{r['requests_per_s']:>7.0f} {l['p50']:>7.2f} {l['p99']:>8.2f} {l['p999']:>8.2f} {l['max']:>8.2f} (err {r['transport_errors']}, rej {rejected})")
PY
}
stored=0  # events stored (accepted answers; duplicates are recorded too but not counted here)
measure() {
  local open closed size
  open=$(load --rate $half --duration ${secs}s)
  closed=$(load --concurrency 64 --duration 15s)
  size=$(du -sh raccordo-data | cut -f1)
  printf '%-10s %-9s | %-52s | %-52s\n' "$(python3 -c "print(f'{$stored/1e6:.1f} M')")" "$size" "$(row "$open")" "$(row "$closed")"
  stored=$(( stored + $(echo "$open" | field 'r["accepted"]') + $(echo "$closed" | field 'r["accepted"]') ))
}
measure
while [ "$stored" -lt "$target" ]; do
  grown=$(load --concurrency 4 --batch-size 1000 --requests $(( step / 1000 )) --duration 1h | field 'r["accepted"]')
  stored=$(( stored + grown ))
  measure
done
