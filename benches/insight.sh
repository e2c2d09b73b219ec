#!/usr/bin/env bash
# Time-to-insight benchmark for docs/benchmarks.md: under a steady load, how long from an
# event's 202 to the first SSE provisional message that includes it, and how long after a
# window's end its final result arrives. The baseline, measured in the same run, is the same
# measurement at 1% of the load (100 events/s), where the figure is the stream's own cadence.
#
#   bash benches/insight.sh [seconds-per-run]
#   PROVISIONAL_COALESCE=500ms bash benches/insight.sh   # publish about twice a second, as
#       the stream did before it published on commit: the same build's CPU per event without
#       the frequent publishing, for a same-run comparison
#
# One-minute windows (the default is five) so that several windows become final within a
# run; the out-of-orderness is the default 15 s, which is what final results are held to.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-150}

source benches/common.sh
bin=$(raccordo_bin)
work=$(mktemp -d)
port=18766
url=http://127.0.0.1:$port
secret=whsec_aW5zaWdodC1iZW5jaG1hcmstc2VjcmV0LTAxMjM0NQ==
token=ra_insight_benchmark_read_token_0123456789
cat >"$work/raccordo.toml" <<TOML
[server]
data_dir = "data"
[storage]
durability = "fsync"
[metrics]
window = "1m"
out_of_orderness = "15s"
$([ -n "${PROVISIONAL_COALESCE:-}" ] && echo "provisional_coalesce = \"$PROVISIONAL_COALESCE\"")
# The generator pages through the stored events to match them with the stream: far more
# reads from one address than the read API's default limit lets through.
[admin.limits]
per_address_per_second = 100000
[[admin.tokens]]
name = "bench"
token = "$token"
scopes = ["read"]
[sources.web]
auth = [{ type = "standard_webhooks", secrets = ["$secret"] }]
TOML
cd "$work"
RUST_LOG=warn "$bin" serve --config raccordo.toml --listen 127.0.0.1:$port >serve.log 2>serve.err &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do curl -sf $url/readyz >/dev/null && break; sleep 0.1; done

run() {
  local label=$1; shift
  local t0 t1
  t0=$(awk '{print $14+$15}' /proc/$server/stat)
  out=$("$bin" loadgen --url $url --webhook-secret "$secret" --insight-token "$token" --json --seed $RANDOM "$@")
  t1=$(awk '{print $14+$15}' /proc/$server/stat)
  python3 - "$label" "$out" $(( (t1 - t0) * 10000 )) <<'PY'
import json, sys
label, r, cpu_us = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
i = r["insight"]
print(f"{label:<28} {r['events_per_s']:>7.0f} ev/s  ingest p99 {r['latency_ms']['p99']:>6.1f} ms | "
      f"202→provisional p50 {i['to_provisional_ms']['p50']:>5.0f} p99 {i['to_provisional_ms']['p99']:>5.0f} max {i['to_provisional_ms']['max']:>5.0f} ms "
      f"({i['measured_requests']} requests, {i['unmatched_requests']} unmatched) | "
      f"final after window end p50 {i['final_after_window_end_ms']['p50']/1000:>5.2f} max {i['final_after_window_end_ms']['max']/1000:>5.2f} s "
      f"over {i['final_windows']} windows (out-of-orderness {i['out_of_orderness_ms']/1000:.0f} s) | "
      f"server cpu {cpu_us / max(r['events'], 1):.1f} µs/event")
PY
}

machine
echo "durability: fsync, 1-minute windows, provisional results ${PROVISIONAL_COALESCE:-25ms (the default)} after new events, loadgen on the same machine, ${secs}s per run"
run "baseline 100 ev/s (10×10)" --rate 10 --batch-size 10 --duration ${secs}s
run "subject 10000 ev/s (1000×10)" --rate 1000 --batch-size 10 --duration ${secs}s
