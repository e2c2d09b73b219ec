#!/usr/bin/env bash
# A three-node cluster on this machine, behind HAProxy, on the local PostgreSQL, Redis and
# NATS: load through the balancer, one node killed with `kill -9` halfway, then every
# conversion counted once. Needs haproxy and a build with `--features cluster`.
#
#   bash examples/cluster/try-locally.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-10}
source benches/common.sh
bin=$(raccordo_bin --features cluster)
here=examples/cluster
work=$(mktemp -d -p "${TMPDIR:-/tmp}")
schema=raccordo_try_$(date +%s)
export RACCORDO_DATABASE_URL=${RACCORDO_DATABASE_URL:-"postgres://postgres@127.0.0.1:5432/postgres"}
export RACCORDO_REDIS_URL=${RACCORDO_REDIS_URL:-"redis://127.0.0.1:6379"}
export RACCORDO_NATS_URL=${RACCORDO_NATS_URL:-"nats://127.0.0.1:4222"}
export RACCORDO_SECRET_KEY=$(head -c 32 /dev/urandom | base64)
export RACCORDO_WEB_KEY=try-locally-key-0123456789
pids=()
trap 'for p in "${pids[@]}"; do kill -9 $p 2>/dev/null || true; done; psql "$RACCORDO_DATABASE_URL" -qc "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

# The example's files, moved onto loopback ports and a schema of this run's own.
for n in 1 2 3; do
  mkdir -p "$work/node$n"
  sed -e "s|0.0.0.0:8080|127.0.0.1:1878$n|" -e "s|/var/lib/raccordo|data|" \
      -e "s|10.0.0.10/32|127.0.0.1/32|" -e "s|schema = \"raccordo\"|schema = \"$schema\"|" \
      -e "s|key_prefix = \"raccordo:\"|key_prefix = \"$schema:\"|" \
      -e "s|^partitions = 8|partitions = 8\nname = \"${schema^^}\"\nsubject_prefix = \"$schema\"|" \
      "$here/raccordo.toml" > "$work/node$n/raccordo.toml"
done
sed -e "s|bind :80|bind 127.0.0.1:18780|" -e "s|10.0.0.1\([123]\):8080|127.0.0.1:1878\1|" \
    -e "s|log stdout format raw local0||" "$here/haproxy.cfg" > "$work/haproxy.cfg"

"$bin" check --config "$work/node1/raccordo.toml"
for n in 1 2 3; do
  (cd "$work/node$n" && RUST_LOG=warn exec "$bin" serve --config raccordo.toml >serve.log 2>&1) &
  pids+=($!)
  disown $!
  until curl -sf http://127.0.0.1:1878$n/readyz >/dev/null; do sleep 0.2; done
done
haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 &
pids+=($!)
disown $!
until curl -sf http://127.0.0.1:18780/readyz >/dev/null; do sleep 0.2; done
echo "three nodes behind HAProxy at http://127.0.0.1:18780"

"$bin" loadgen --url http://127.0.0.1:18780 --route source:web --api-key "$RACCORDO_WEB_KEY" \
  --concurrency 16 --duration ${secs}s --json > "$work/load.json" &
load=$!
sleep $((secs / 2))
kill -9 "${pids[1]}"
echo "node 2 killed with kill -9 halfway through the load"
wait $load
python3 - "$work/load.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
rejected = r["rejected"] if isinstance(r["rejected"], int) else sum(r["rejected"].values())
print(f"sent {r['requests']} conversions: accepted {r['accepted']}, duplicate {r['duplicate']}, "
      f"rejected {rejected}, transport errors {r['transport_errors']}; p99 {r['latency_ms']['p99']:.1f} ms")
PY
stored=$(psql "$RACCORDO_DATABASE_URL" -Atc "select count(*) from $schema.events where duplicate_of is null")
python3 - "$work/load.json" "$stored" <<'PY'
import json, sys
r, stored = json.load(open(sys.argv[1])), int(sys.argv[2])
# Every acknowledged conversion is stored; an answered duplicate is a resend (by HAProxy) of
# one the dead node stored but never answered; what got no answer at all may or may not be.
low = r["accepted"] + r["duplicate"]
high = low + r["transport_errors"]
print(f"stored once each: {stored} (acknowledged {low}, unanswered {r['transport_errors']})")
assert low <= stored <= high, "an acknowledged conversion is missing, or one is stored twice"
PY
