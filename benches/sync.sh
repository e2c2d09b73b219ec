#!/usr/bin/env bash
# HubSpot -> Zoho sync against the two sandboxes at their default rate limits.
#
# 1. Throughput: the HubSpot sandbox is seeded with RECORDS contacts; `raccordo sync backfill`
#    copies them to Zoho. Reports records/s, the calls each CRM received, the 429s, and the
#    share of the ceiling: the time HubSpot's limit (190 calls per rolling 10 s) needs for the
#    HubSpot calls made, over the time taken. A share near 95 % means the limit, not raccordo,
#    set the pace (the client keeps 5 % of the limit as headroom).
# 2. Change-to-sync delay: RATE property changes per second on synced contacts for SECONDS
#    seconds; each arrives as a signed webhook and is written to Zoho. Reports p50/p99/max
#    from the webhook's arrival to the write acknowledged by Zoho (the hub's own histogram,
#    `GET /api/v1/sync/health`), after a restart so only this phase counts.
#
#   bash benches/sync.sh [records] [rate] [seconds]     # default 2000 5 60
set -euo pipefail
cd "$(dirname "$0")/.."
records=${1:-2000}
rate=${2:-5}
seconds=${3:-60}
cargo build --release -p raccordo >/dev/null
bin=$PWD/target/release/raccordo
work=$(mktemp -d -p "${TMPDIR:-/tmp}")
pids=()
trap 'kill ${pids[*]} 2>/dev/null; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
hub_port=$(free_port); hs_port=$(free_port); z_port=$(free_port)
hub=http://127.0.0.1:$hub_port
token=pat-bench-0123456789; secret=bench-client-secret-0123456789
admin=ra_bench_admin_token_0123456789abcdef

"$bin" sandbox hubspot --port "$hs_port" --token $token --client-secret $secret \
  --seed-size "0,$records" --webhook-url "$hub/webhooks/hubspot" >"$work/hs.log" 2>&1 &
pids+=($!)
"$bin" sandbox zoho --port "$z_port" --client-id 1000.BENCH --client-secret zsecret \
  --refresh-token 1000.bench-refresh --seed-size 0,0 >"$work/z.log" 2>&1 &
pids+=($!)
cat >"$work/raccordo.toml" <<TOML
[server]
data_dir = "data"
[[admin.tokens]]
name = "bench"
token = "$admin"
scopes = ["admin"]
[crm]
public_url = "$hub"
[crm.hubspot]
base_url = "http://127.0.0.1:$hs_port"
access_token = "$token"
client_secret = "$secret"
burst_per_10s = 190
search_per_s = 5
[crm.zoho]
base_url = "http://127.0.0.1:$z_port"
token_url = "http://127.0.0.1:$z_port/oauth/v2/token"
client_id = "1000.BENCH"
client_secret = "zsecret"
refresh_token = "1000.bench-refresh"
channel_token = "bench-channel-token-0123456789"
concurrency = 20
[sync]
poll_every = "1h"
TOML
cd "$work"
start_hub() {
  RUST_LOG=warn "$bin" serve --config raccordo.toml --listen "127.0.0.1:$hub_port" >>hub.log 2>&1 &
  hub_pid=$!; pids+=($hub_pid)
  for _ in $(seq 300); do curl -sf "$hub/readyz" >/dev/null && return; sleep 0.1; done
  echo "the hub did not start" >&2; cat hub.log >&2; exit 1
}
calls() { curl -s "http://127.0.0.1:$1/_sandbox/calls"; }
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
start_hub
curl -s -X DELETE "http://127.0.0.1:$hs_port/_sandbox/calls" >/dev/null
curl -s -X DELETE "http://127.0.0.1:$z_port/_sandbox/calls" >/dev/null

# Started as `raccordo sync backfill` starts it; done when every list is read and the sync
# queue is empty, polled every 20 ms (the command's own progress line refreshes slower).
t0=$(date +%s.%N)
curl -sf -X POST "$hub/api/v1/sync/backfill" -H "authorization: Bearer $admin" >/dev/null
python3 - "$hub" "$admin" <<'PY'
import json, sys, time, urllib.request
hub, token = sys.argv[1], sys.argv[2]
while True:
    req = urllib.request.Request(hub + "/api/v1/sync/backfill", headers={"authorization": "Bearer " + token})
    p = json.load(urllib.request.urlopen(req))
    q = p["queue"]
    if p["backfill"]["finished_at_ms"] and q["waiting"] + q["in_flight"] == 0:
        break
    time.sleep(0.02)
PY
t1=$(date +%s.%N)
calls "$hs_port" >hs-calls.json; calls "$z_port" >z-calls.json
python3 - "$t0" "$t1" "$records" <<'PY'
import json, sys
t0, t1, n = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
hs = json.load(open("hs-calls.json"))["calls"]; z = json.load(open("z-calls.json"))["calls"]
api = lambda calls: [c for c in calls if not c["path"].startswith("/_sandbox") and not c["path"].startswith("/oauth")]
hs_api, z_api = api(hs), api(z)
throttled = sum(1 for c in hs_api + z_api if c["status"] == 429)
elapsed = t1 - t0
floor = len(hs_api) / 19.0  # HubSpot: 190 calls per rolling 10 s
print(f"throughput: {n} contacts HubSpot -> Zoho in {elapsed:.1f} s = {n/elapsed:.0f} records/s")
print(f"  calls: HubSpot {len(hs_api)} ({len(hs_api)/n*100:.1f} per 100 records), Zoho {len(z_api)} ({len(z_api)/n*100:.1f} per 100 records); 429 answers: {throttled}")
print(f"  HubSpot's limit alone needs {floor:.1f} s for those calls: {floor/elapsed*100:.0f} % of the ceiling")
PY

# Phase 2: steady changes, measured by the hub's own histogram after a restart. The changes
# are made with an OAuth token of their own (as people editing in HubSpot do not use the
# hub's app): HubSpot counts limits per app, and the hub's calls keep theirs.
kill "$hub_pid"; wait "$hub_pid" 2>/dev/null || true
start_hub
code=$(curl -s -o /dev/null -w '%{redirect_url}' "http://127.0.0.1:$hs_port/oauth/authorize?client_id=raccordo-sandbox-app&redirect_uri=http://localhost/cb&state=bench" | sed 's/.*code=\([^&]*\).*/\1/')
editor=$(curl -s -X POST "http://127.0.0.1:$hs_port/oauth/v1/token" -H 'content-type: application/x-www-form-urlencoded' \
  --data "grant_type=authorization_code&code=$code&redirect_uri=http://localhost/cb&client_id=raccordo-sandbox-app&client_secret=$secret" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
ids=$(curl -s "http://127.0.0.1:$hs_port/crm/v3/objects/contacts?limit=100" -H "authorization: Bearer $token" | python3 -c 'import json,sys; print(" ".join(r["id"] for r in json.load(sys.stdin)["results"]))')
ids=($ids)
total=$(python3 -c "print(int($rate*$seconds))")
interval=$(python3 -c "print(1/$rate)")
for i in $(seq "$total"); do
  id=${ids[$(( i % ${#ids[@]} ))]}
  curl -s -o /dev/null -X PATCH "http://127.0.0.1:$hs_port/crm/v3/objects/contacts/$id" \
    -H "authorization: Bearer $editor" -H 'content-type: application/json' \
    -d "{\"properties\":{\"city\":\"Citta $i\"}}" &
  sleep "$interval"
done
wait_for=$(( $(date +%s) + 60 ))
while true; do
  health=$(curl -s "$hub/api/v1/sync/health" -H "authorization: Bearer $admin")
  pending=$(echo "$health" | python3 -c 'import json,sys; q=json.load(sys.stdin)["queue"]; print(q["waiting"]+q["in_flight"])')
  [ "$pending" = 0 ] && break
  [ "$(date +%s)" -gt "$wait_for" ] && break
  sleep 0.5
done
echo "$health" | python3 -c "
import json, sys
h = json.load(sys.stdin); d = h['activity']['delay_ms']
print(f'change-to-sync delay at $rate changes/s for ${seconds} s ($total changes): {d[\"count\"]} writes, p50 {d[\"p50\"]} ms, p99 {d[\"p99\"]} ms, max {d[\"max\"]} ms')
print(f'  dead letters: {h[\"queue\"][\"dead_letters\"]}; HubSpot 429s seen by the hub: {h[\"activity\"][\"hubspot_calls\"][\"throttled\"]}')
"
