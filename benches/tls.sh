#!/usr/bin/env bash
# Ingest with TLS on and off, in the same run: two hubs from the same binary, one plain and
# one with [server.tls] (a P-256 certificate made here with openssl), loaded in turns so
# that drift on a shared machine hits both. Connections are kept alive (as senders do), so
# the figure is the cost of encrypting requests, not of handshakes; the last line measures
# handshakes alone (a new connection per request).
#
#   bash benches/tls.sh [seconds-per-run]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
source benches/common.sh
bin=$(raccordo_bin)
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT

# A CA and a server certificate it issues (a self-signed CA certificate cannot serve as
# the server's own: webpki refuses a CA certificate as an end entity).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=bench CA" -keyout "$work/ca.key" -out "$work/cert.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
  -keyout "$work/server.key" -out "$work/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' >"$work/ext"
openssl x509 -req -in "$work/server.csr" -CA "$work/cert.pem" -CAkey "$work/ca.key" \
  -CAcreateserial -days 2 -extfile "$work/ext" -out "$work/server.crt" 2>/dev/null
cat "$work/server.crt" "$work/server.key" >"$work/tls.pem"

start() { # dir port [tls]
  mkdir -p "$work/$1"
  {
    echo '[server]'
    echo 'bench_routes = true'
    echo '[sources.web]'
    echo "auth = [{ type = \"standard_webhooks\", secrets = [\"$secret\"] }]"
    if [ "${3:-}" = tls ]; then
      printf '[server.tls]\ncert_file = "%s"\nkey_file = "%s"\n' "$work/tls.pem" "$work/tls.pem"
    fi
  } >"$work/$1/raccordo.toml"
  (cd "$work/$1" && RUST_LOG=warn exec "$bin" serve --config raccordo.toml --listen 127.0.0.1:$2 >serve.log 2>serve.err) &
}
# A fixed test secret: both hubs take the same signed traffic.
secret=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwMfKQ9r8GKYqr
start plain 18775
start tls 18776 tls
for _ in $(seq 100); do
  curl -sf http://127.0.0.1:18775/readyz >/dev/null &&
    curl -sf --cacert "$work/cert.pem" https://localhost:18776/readyz >/dev/null && break
  sleep 0.1
done
pid_of() { pgrep -f -- "--listen 127.0.0.1:$1" | head -1; }

run() { # label dir url port [loadgen args]
  local label=$1 dir=$2 url=$3 port=$4; shift 4
  local server t0 t1 out
  server=$(pid_of "$port")
  t0=$(awk '{print $14+$15}' /proc/$server/stat)
  out=$("$bin" loadgen --url "$url" --ca-file "$work/cert.pem" --webhook-secret "$secret" --json --seed $RANDOM "$@")
  t1=$(awk '{print $14+$15}' /proc/$server/stat)
  python3 - "$label" "$out" $(( (t1 - t0) * 10000 )) <<'PY'
import json, sys
label, r, cpu_us = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
rej = sum(r["rejected"].values())
print(f"{label:<34} {r['requests_per_s']:>9.0f} req/s {r['events_per_s']:>9.0f} ev/s  "
      f"p50 {r['latency_ms']['p50']:>7.2f}  p99 {r['latency_ms']['p99']:>7.2f} ms  "
      f"server cpu {cpu_us / max(r['events'], 1):>5.1f} µs/event  acc {r['accepted']} rej {rej} err {r['transport_errors']}")
PY
}

machine
echo "durability: fsync; loadgen on the same machine, HTTP/1.1 keep-alive"
for round in 1 2; do
  run "plain noop   single c64 (round $round)" plain http://127.0.0.1:18775 18775 --route noop --concurrency 64 --duration ${secs}s
  run "tls   noop   single c64 (round $round)" tls https://localhost:18776 18776 --route noop --concurrency 64 --duration ${secs}s
  run "plain ingest single c64 (round $round)" plain http://127.0.0.1:18775 18775 --concurrency 64 --duration ${secs}s
  run "tls   ingest single c64 (round $round)" tls https://localhost:18776 18776 --concurrency 64 --duration ${secs}s
  run "plain ingest batch1000 c4 (round $round)" plain http://127.0.0.1:18775 18775 --concurrency 4 --batch-size 1000 --duration ${secs}s
  run "tls   ingest batch1000 c4 (round $round)" tls https://localhost:18776 18776 --concurrency 4 --batch-size 1000 --duration ${secs}s
done
# Handshakes: curl opens one connection per request.
for scheme in plain tls; do
  if [ $scheme = plain ]; then u=http://127.0.0.1:18775/healthz; else u=https://localhost:18776/healthz; fi
  t0=$(date +%s.%N)
  for _ in $(seq 300); do curl -sf --cacert "$work/cert.pem" "$u" >/dev/null; done
  t1=$(date +%s.%N)
  python3 -c "print(f'{\"$scheme\":<5} new connection per request (curl, 300): {($t1-$t0)/300*1000:.2f} ms each')"
done
