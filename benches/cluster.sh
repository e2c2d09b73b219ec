#!/usr/bin/env bash
# Ingest on one, two and three PostgreSQL nodes against the embedded default, in one run: single
# events, 64 clients in a closed loop, `durability = fsync` (embedded) and PostgreSQL's own
# `synchronous_commit` (on by default), the generator on the same machine. Needs a build
# with `--features postgres` and the PostgreSQL server of this machine.
#
#   bash benches/cluster.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
source benches/common.sh
bin=$(raccordo_bin --features postgres)
url_db=${RACCORDO_BENCH_POSTGRES:-"host=127.0.0.1 port=5432 user=postgres dbname=postgres"}
schema=raccordo_bench_$(date +%s)
work=$(mktemp -d -p "${TMPDIR:-/tmp}")
pids=()
trap 'for p in "${pids[@]}"; do kill -9 $p 2>/dev/null || true; done; psql "$url_db" -qc "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
key=bench-api-key-0123456789
config() { # dir backend
  mkdir -p "$1"
  cat > "$1/raccordo.toml" <<TOML
[server]
data_dir = "data"
[storage]
backend = "$2"
[storage.postgres]
url = "$url_db"
schema = "$schema"
[sources.web]
auth = [{ type = "api_key", keys = ["$key"] }]
TOML
}
start() { # dir port
  (cd "$1" && RUST_LOG=warn exec "$bin" serve --config raccordo.toml --listen 127.0.0.1:$2 >serve.log 2>&1) &
  pids+=($!)
  until curl -sf http://127.0.0.1:$2/readyz >/dev/null; do sleep 0.1; done
}
load() { # port clients -> json
  "$bin" loadgen --url http://127.0.0.1:$1 --route source:web --api-key $key --concurrency $2 \
    --duration ${secs}s --seed $RANDOM --json
}
# CPU seconds (user + system) used so far by the hub nodes and by PostgreSQL's processes.
cpu_of() { ps -o times= -p "$1" 2>/dev/null | awk '{s+=$1} END {print s+0}'; }
pg_cpu() { ps -o times= -C postgres | awk '{s+=$1} END {print s+0}'; }
report() { # label json...
  python3 - "$@" <<'PY'
import json, sys
label, runs = sys.argv[1], [json.loads(a) for a in sys.argv[2:]]
rate = sum(r["requests_per_s"] for r in runs)
p50 = max(r["latency_ms"]["p50"] for r in runs)
p99 = max(r["latency_ms"]["p99"] for r in runs)
errors = sum(r["transport_errors"] for r in runs)
print(f"{label:<38} {rate:>8.0f} req/s   p50 {p50:>6.2f} ms   p99 {p99:>7.2f} ms   errors {errors}")
PY
}
machine "; PostgreSQL $(psql "$url_db" -Atc 'show server_version')"
config "$work/embedded" sqlite
start "$work/embedded" 18771
report "embedded (segment log + SQLite)" "$(load 18771 64)"
kill -TERM "${pids[-1]}" 2>/dev/null || true; wait "${pids[-1]}" 2>/dev/null || true
config "$work/node1" postgres
config "$work/node2" postgres
start "$work/node1" 18772
node1=${pids[-1]}
hub0=$(cpu_of $node1); pg0=$(pg_cpu)
out=$(load 18772 64)
report "PostgreSQL, 1 node" "$out"
python3 - "$out" "$hub0" "$(cpu_of $node1)" "$pg0" "$(pg_cpu)" <<'PY'
import json, sys
n = json.loads(sys.argv[1])["requests"]
hub0, hub1, pg0, pg1 = map(float, sys.argv[2:6])
print(f"  CPU per event: hub {(hub1 - hub0) / n * 1e6:.0f} µs, PostgreSQL {(pg1 - pg0) / n * 1e6:.0f} µs")
PY
start "$work/node2" 18773
load 18772 32 > "$work/a.json" &
a=$!
load 18773 32 > "$work/b.json" &
b=$!
wait $a $b
report "PostgreSQL, 2 nodes (32 clients each)" "$(cat "$work/a.json")" "$(cat "$work/b.json")"
config "$work/node3" postgres
start "$work/node3" 18774
load 18772 22 > "$work/a.json" &
a=$!
load 18773 21 > "$work/b.json" &
b=$!
load 18774 21 > "$work/c.json" &
c=$!
wait $a $b $c
report "PostgreSQL, 3 nodes (64 clients in all)" "$(cat "$work/a.json")" "$(cat "$work/b.json")" "$(cat "$work/c.json")"
echo "events stored on PostgreSQL: $(psql "$url_db" -Atc "select count(*) from $schema.events")"
