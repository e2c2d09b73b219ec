#!/usr/bin/env bash
# Ingest on one, two and three cluster nodes against the embedded default, in one run: single
# events, 64 clients in a closed loop, `durability = fsync` (embedded) and PostgreSQL's own
# `synchronous_commit` (on by default), the generator on the same machine. The nodes run
# `backend = "cluster"` (PostgreSQL, Redis in front, the log relayed to NATS JetStream) or,
# with `postgres` as the second argument, PostgreSQL alone. Then a retry storm — half of the
# requests resend an earlier delivery, as senders do after a timeout — on one PostgreSQL-only
# node and one cluster node (Redis answers the retries). Needs a build with `--features
# cluster` and this machine's PostgreSQL, Redis and NATS servers.
#
#   bash benches/cluster.sh [seconds] [cluster|postgres]
#   WINDOWS=false bash benches/cluster.sh ...   # windows per node over the whole log, none per partition
#   NODE_WINDOWS=true bash benches/cluster.sh ...   # both: per partition and per node
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
backend=${2:-cluster}
source benches/common.sh
bin=$(raccordo_bin --features cluster)
url_db=${RACCORDO_BENCH_POSTGRES:-"host=127.0.0.1 port=5432 user=postgres dbname=postgres"}
url_redis=${RACCORDO_BENCH_REDIS:-"redis://127.0.0.1:6379"}
url_nats=${RACCORDO_BENCH_NATS:-"nats://127.0.0.1:4222"}
schema=raccordo_bench_$(date +%s)
work=$(mktemp -d -p "${TMPDIR:-/tmp}")
pids=()
trap 'for p in "${pids[@]}"; do kill -9 $p 2>/dev/null || true; done; for s in $schema ${schema}_retry_pg ${schema}_retry_cluster; do psql "$url_db" -qc "DROP SCHEMA IF EXISTS $s CASCADE" >/dev/null 2>&1 || true; done; rm -rf "$work"' EXIT
key=bench-api-key-0123456789
whsec=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwMfKQ9r8GKYqr
config() { # dir backend [schema]
  mkdir -p "$1"
  local db=${3:-$schema}
  cat > "$1/raccordo.toml" <<TOML
[server]
data_dir = "data"
[storage]
backend = "$2"
[storage.postgres]
url = "$url_db"
schema = "$db"
[storage.redis]
url = "$url_redis"
key_prefix = "$db:"
[storage.stream]
url = "$url_nats"
name = "${db^^}"
subject_prefix = "$db"
max_age = "1h"
windows = ${WINDOWS:-true}
node_windows = ${NODE_WINDOWS:-false}
[sources.web]
auth = [{ type = "api_key", keys = ["$key"] }, { type = "standard_webhooks", secrets = ["$whsec"] }]
TOML
}
start() { # dir port
  (cd "$1" && RUST_LOG=warn exec "$bin" serve --config raccordo.toml --listen 127.0.0.1:$2 >serve.log 2>&1) &
  pids+=($!)
  disown $!
  until curl -sf http://127.0.0.1:$2/readyz >/dev/null; do sleep 0.1; done
}
load() { # port clients -> json
  "$bin" loadgen --url http://127.0.0.1:$1 --route source:web --api-key $key --concurrency $2 \
    --duration ${secs}s --seed $RANDOM --json
}
# CPU seconds (user + system, in clock ticks from /proc: `ps` rounds to whole seconds) used
# so far by processes: one pid, or every process of a name. For a name, the oldest process
# (PostgreSQL's postmaster) also brings the CPU of its children that exited: a backend whose
# connection closed mid-run must not take its CPU away from the sum.
proc_cpu() { # pid | -C name
  python3 - "$@" <<'PY'
import os, sys
hz = os.sysconf("SC_CLK_TCK")
def stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12]), int(fields[13]), int(fields[14]), int(fields[19])
total, oldest = 0, None
if sys.argv[1] == "-C":
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if open(f"/proc/{pid}/comm").read().strip() != sys.argv[2]:
                continue
            ut, st, cut, cst, start = stat(pid)
        except OSError:
            continue
        total += ut + st
        if oldest is None or start < oldest[0]:
            oldest = (start, cut + cst)
    total += oldest[1] if oldest else 0
else:
    try:
        ut, st, *_ = stat(sys.argv[1])
        total = ut + st
    except OSError:
        pass
print(total / hz)
PY
}
cpu_of() { proc_cpu "$1"; }
pg_cpu() { proc_cpu -C postgres; }
# The same for Redis and NATS (0 when they do not run here).
svc_cpu() { proc_cpu -C "$1"; }
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
# Without partitions, each node keeps windows over the whole log.
per_node=$([ "${WINDOWS:-true}" = false ] && echo true || echo "${NODE_WINDOWS:-false}")
machine "; PostgreSQL $(psql "$url_db" -Atc 'show server_version'); $(redis-cli -u "$url_redis" info server | grep -m1 redis_version | tr -d '\r'); nodes: $backend, windows per partition: ${WINDOWS:-true}, per node: $per_node"
config "$work/embedded" sqlite
start "$work/embedded" 18771
report "embedded (segment log + SQLite)" "$(load 18771 64)"
kill -TERM "${pids[-1]}" 2>/dev/null || true; wait "${pids[-1]}" 2>/dev/null || true
config "$work/node1" $backend
config "$work/node2" $backend
start "$work/node1" 18772
node1=${pids[-1]}
hub0=$(cpu_of $node1); pg0=$(pg_cpu); redis0=$(svc_cpu redis-server); nats0=$(svc_cpu nats-server)
out=$(load 18772 64)
report "$backend, 1 node" "$out"
python3 - "$out" "$hub0" "$(cpu_of $node1)" "$pg0" "$(pg_cpu)" "$redis0" "$(svc_cpu redis-server)" "$nats0" "$(svc_cpu nats-server)" <<'PY'
import json, sys
n = json.loads(sys.argv[1])["requests"]
hub0, hub1, pg0, pg1, r0, r1, n0, n1 = map(float, sys.argv[2:10])
per = lambda a, b: (b - a) / n * 1e6
print(f"  CPU per event: hub {per(hub0, hub1):.0f} µs, PostgreSQL {per(pg0, pg1):.0f} µs, "
      f"Redis {per(r0, r1):.0f} µs, NATS {per(n0, n1):.0f} µs")
PY
start "$work/node2" 18773
load 18772 32 > "$work/a.json" &
a=$!
load 18773 32 > "$work/b.json" &
b=$!
wait $a $b
report "$backend, 2 nodes (32 clients each)" "$(cat "$work/a.json")" "$(cat "$work/b.json")"
config "$work/node3" $backend
start "$work/node3" 18774
load 18772 22 > "$work/a.json" &
a=$!
load 18773 21 > "$work/b.json" &
b=$!
load 18774 21 > "$work/c.json" &
c=$!
wait $a $b $c
report "$backend, 3 nodes (64 clients in all)" "$(cat "$work/a.json")" "$(cat "$work/b.json")" "$(cat "$work/c.json")"
echo "events stored on PostgreSQL: $(psql "$url_db" -Atc "select count(*) from $schema.events")"
if [ "$backend" = cluster ]; then
  # The leader relays to the stream as events commit; how far behind it was at the end.
  sleep 2
  echo "messages in the NATS stream 2 s later (every event once, and ticks to idle partitions): $("$bin" check --config "$work/node1/raccordo.toml" | grep -o 'holds [0-9]* message' | grep -o '[0-9]*')"
fi
for p in "${pids[@]}"; do kill -TERM $p 2>/dev/null || true; done
for p in "${pids[@]}"; do wait $p 2>/dev/null || true; done
pids=()

retries() { # port -> json
  "$bin" loadgen --url http://127.0.0.1:$1 --route source:web --webhook-secret $whsec \
    --concurrency 64 --retries 0.5 --duration ${secs}s --seed 11 --json
}
config "$work/retry_pg" postgres ${schema}_retry_pg
start "$work/retry_pg" 18775
report "retry storm (50 %), postgres, 1 node" "$(retries 18775)"
kill -TERM "${pids[-1]}" 2>/dev/null || true; wait "${pids[-1]}" 2>/dev/null || true
config "$work/retry_cluster" cluster ${schema}_retry_cluster
start "$work/retry_cluster" 18776
report "retry storm (50 %), cluster, 1 node" "$(retries 18776)"
echo "  retries answered from Redis: $(curl -s http://127.0.0.1:18776/metrics | awk '/^raccordo_delivery_cache_hits_total/ {print $2}')"
