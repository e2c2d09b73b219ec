#!/usr/bin/env bash
# AI flows on the embedded default, with the offline provider (no model, no key).
#
# 1. Throughput: RUNS runs of a three-step flow (map → ai with the offline classifier → map)
#    started through the API by 16 clients; runs/s from the first start to the last run
#    finished. Baseline in the same run: the no-op route (`POST /_bench/noop`) at the same
#    concurrency, the HTTP ceiling of this machine.
# 2. Overhead per step: a flow of 5 `http` steps, each a POST to the no-op route, run one at
#    a time (SEQ runs). Each run's recorded duration, over 5, minus the direct call's latency
#    (the same POST from the driver, measured in the same run): what a step adds — its queue
#    item, its run record and the context it renders.
#
#   bash benches/flows.sh [runs] [seq]      # default 2000 200
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-2000}
seq_runs=${2:-200}
cargo build --release -p raccordo >/dev/null
bin=$PWD/target/release/raccordo
work=$(mktemp -d -p "${TMPDIR:-/tmp}")
pids=()
trap 'kill ${pids[*]} 2>/dev/null; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
hub=http://127.0.0.1:$port
admin=ra_bench_admin_token_0123456789abcdef
cat >"$work/raccordo.toml" <<TOML
[server]
data_dir = "data"
bench_routes = true
[[admin.tokens]]
name = "bench"
token = "$admin"
scopes = ["admin"]
[[ai.providers]]
name = "offline"
kind = "offline"

[[flows]]
name = "classify"
trigger = { type = "api" }
[[flows.steps]]
name = "shape"
type = "map"
fields = { text = "{{ trigger.message }}", customer = "{{ trigger.email }}" }
[[flows.steps]]
name = "classify"
type = "ai"
input = "{{ steps.shape.text }}"
prompt = "Classify: {{ input }}"
schema = { type = "object", required = ["sentiment", "intent"] }
[[flows.steps]]
name = "result"
type = "map"
fields = { customer = "{{ steps.shape.customer }}", sentiment = "{{ steps.classify.sentiment }}", intent = "{{ steps.classify.intent }}" }

[[flows]]
name = "hops"
trigger = { type = "api" }
TOML
for i in 1 2 3 4 5; do
  cat >>"$work/raccordo.toml" <<TOML
[[flows.steps]]
name = "hop$i"
type = "http"
method = "POST"
url = "$hub/_bench/noop"
body = { n = $i }
TOML
done
cd "$work"
RUST_LOG=warn "$bin" serve --config raccordo.toml --listen "127.0.0.1:$port" >hub.log 2>&1 &
pids+=($!)
for _ in $(seq 300); do curl -sf "$hub/readyz" >/dev/null && break; sleep 0.1; done
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
python3 - "$hub" "$admin" "$runs" "$seq_runs" <<'PY'
import http.client, json, statistics, sys, threading, time, urllib.parse
hub, token, runs, seq_runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
host = urllib.parse.urlparse(hub)
auth = {"authorization": "Bearer " + token, "content-type": "application/json"}
texts = ["Servizio pessimo: l'app non funziona e voglio un rimborso.", "Thanks, the export works great now!",
         "Vorrei un preventivo per 20 postazioni.", "How do I cancel my subscription?"]

def conn():
    return http.client.HTTPConnection(host.hostname, host.port, timeout=30)

def post(c, path, body):
    c.request("POST", path, json.dumps(body), auth)
    r = c.getresponse(); data = r.read()
    return r.status, data

def get(c, path):
    c.request("GET", path, headers=auth)
    r = c.getresponse(); return json.loads(r.read())

def prometheus_count(flow, status):
    c = conn(); c.request("GET", "/metrics"); text = c.getresponse().read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("raccordo_flow_runs_total") and f'flow="{flow}"' in line and f'status="{status}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)

def hammer(n, clients, send):
    per = [n // clients + (1 if i < n % clients else 0) for i in range(clients)]
    lat = []; lock = threading.Lock()
    def worker(k):
        c = conn(); mine = []
        for i in range(k):
            t = time.perf_counter(); status = send(c, i)
            assert status in (200, 202), status
            mine.append(time.perf_counter() - t)
        with lock: lat.extend(mine)
    threads = [threading.Thread(target=worker, args=(k,)) for k in per]
    t0 = time.perf_counter()
    for t in threads: t.start()
    for t in threads: t.join()
    return t0, time.perf_counter() - t0, lat

# Baseline: the no-op route at the same concurrency.
_, noop_s, _ = hammer(runs, 16, lambda c, i: post(c, "/_bench/noop", {"n": i})[0])
print(f"baseline: no-op route {runs / noop_s:,.0f} req/s (16 clients)")

# 1. Offline-classifier flow throughput.
done_before = prometheus_count("classify", "succeeded")
t0, start_s, _ = hammer(runs, 16, lambda c, i: post(c, "/api/v1/flows/classify/runs",
                                                     {"email": f"c{i}@example.it", "message": texts[i % 4]})[0])
while prometheus_count("classify", "succeeded") - done_before < runs:
    time.sleep(0.05)
elapsed = time.perf_counter() - t0
failed = prometheus_count("classify", "failed")
print(f"flow runs (map → ai offline → map): {runs} runs in {elapsed:.1f} s = {runs / elapsed:,.0f} runs/s "
      f"({runs * 3 / elapsed:,.0f} steps/s); starting them alone took {start_s:.1f} s; failed runs: {failed}")

# 2. Overhead per step against the direct call.
c = conn(); direct = []
for i in range(seq_runs * 5):
    t = time.perf_counter(); post(c, "/_bench/noop", {"n": i}); direct.append((time.perf_counter() - t) * 1000)
durations = []
for i in range(seq_runs):
    status, body = post(c, "/api/v1/flows/hops/runs", {"i": i})
    run_id = json.loads(body)["run_id"]
    while True:
        run = get(c, f"/api/v1/flows/runs/{run_id}")
        if run["status"] != "running": break
        time.sleep(0.002)
    assert run["status"] == "succeeded", run
    durations.append(run["finished_at_ms"] - run["started_at_ms"])
d50 = statistics.median(direct); r50 = statistics.median(durations)
p99 = sorted(durations)[int(len(durations) * 0.99) - 1]
print(f"direct POST to the no-op route: p50 {d50:.2f} ms")
print(f"5-step http flow, one run at a time ({seq_runs} runs): run p50 {r50:.1f} ms, p99 {p99:.1f} ms "
      f"→ {r50 / 5:.2f} ms per step, {r50 / 5 - d50:.2f} ms over the direct call")
PY
