#!/usr/bin/env bash
# Long-run ingest benchmark: does the latency of an acknowledgement depend on how much is
# stored? Grows one store to TARGET events (default 20 million) in steps of STEP, and before
# the first step and after each one measures single-event ingest
#   - in an open loop at half the maximum single-event rate (measured at the start), for
#     SECS seconds, latency from each request's *scheduled* send time (no coordinated
#     omission): p50, p99, p99.9, max;
#   - at full closed-loop load (64 clients) for 15 s.
# Beside the open loop, the hub's own view of it (p99 bucket and requests over 50 ms from
# its request-duration histogram), the generator's own lateness against its schedule, who
# used the two cores (idle share; the hub's CPU per request and everything else's) and the
# disk's own latency that minute (benches/disk-probe.py commits beside the hub all run) and
# the machine's own pauses (benches/hiccup.py: how late a real-time thread on each core woke).
# Growth uses batches of 1000 (4 clients); before measuring, the live windows are let catch
# up with what the step wrote (the wait is printed): a real hub is never handed 2.5 M events
# in seconds and then asked for steady single events, and the catch-up is benchmarked on
# its own (benches/rebuild.sh). The open loop sends over at most 128 connections, twice the
# 64 of the closed loop that set the maximum: a sender's connection pool, not a new
# connection for every outstanding request (latency still counts from the schedule, so a
# wait for a free connection is the hub's; docs/benchmarks.md shows 64 to 512). Default
# durability (fsync before 202), the live metrics consumer running, the load generator on
# the same machine.
#
# Then retention: the hub is stopped and restarted (time to ready reported) with
# [storage.retention] max_bytes at three quarters of the log, so that retention removes a
# quarter of it in the background while the same two measurements run; then one more step
# is written with retention removing segments as new ones fill, and measured again.
#
#   bash benches/longrun.sh [target-events] [step-events] [secs-per-measure]
#
# KEEP_LOGS=<dir> copies the hub's logs there at the end (its slow commits, each with where
# its time went, are logged at warn level), with each row as JSON (the generator's worst
# latency of every second included), the disk probe's seconds and the hiccup meter's.
# OPEN_RATE=<req/s> runs the open loop at that rate instead of half the measured maximum:
# two builds compared at one load (a faster build otherwise gets a higher rate).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:-20000000}
step=${2:-2500000}
secs=${3:-60}
source benches/common.sh
repo=$PWD
bin=$(raccordo_bin)
work=$(mktemp -d -p "${TMPDIR:-/tmp}")
port=18767
url=http://127.0.0.1:$port
secret=whsec_bG9uZ3J1bi1iZW5jaG1hcmstc2VjcmV0LTAxMjM0NTY3OA==
token=ra_longrun_benchmark_read_token_0123456789
cat >"$work/raccordo.toml" <<TOML
[server]
data_dir = "raccordo-data"
[storage]
durability = "fsync"
[[admin.tokens]]
name = "bench"
token = "$token"
scopes = ["read"]
[sources.web]
auth = [{ type = "standard_webhooks", secrets = ["$secret"] }]
TOML
cd "$work"
server=
start() {
  RUST_LOG=warn "$bin" serve --config raccordo.toml --listen 127.0.0.1:$port >>serve.log 2>>serve.err &
  server=$!
  for _ in $(seq 1200); do curl -sf $url/readyz >/dev/null && return; sleep 0.05; done
  echo "the hub did not become ready" >&2; exit 1
}
keep_logs() { [ -z "${KEEP_LOGS:-}" ] || cp serve.log serve.err rows.jsonl disk-probe.log hiccup.log "$KEEP_LOGS"/ 2>/dev/null || true; }
probe= hiccup=
trap 'kill $server $probe $hiccup 2>/dev/null; wait $server 2>/dev/null; keep_logs; rm -rf "$work"' EXIT
start
# The disk's own latency beside the hub, for the whole run (DISK_PROBE=0 leaves it out).
if [ "${DISK_PROBE:-1}" != 0 ]; then
  python3 "$repo/benches/disk-probe.py" . disk-probe.log &
  probe=$!
fi
# The machine's own pauses beside the hub, for the whole run (HICCUP=0 leaves it out).
if [ "${HICCUP:-1}" != 0 ]; then
  python3 "$repo/benches/hiccup.py" hiccup.log &
  hiccup=$!
fi
load() { "$bin" loadgen --url $url --webhook-secret "$secret" --json --seed $RANDOM "$@"; }
field() { python3 -c "import json,sys; r=json.load(sys.stdin); print($1)"; }

machine
max=$(load --concurrency 64 --duration 10s | field 'int(r["requests_per_s"])')
half=${OPEN_RATE:-$(( max / 2 ))}
echo "single-event maximum at the start: $max req/s; open loop at $half req/s${OPEN_RATE:+ (set by OPEN_RATE; half the maximum is $(( max / 2 )))} over at most 128 connections for ${secs}s per step"
printf '%-10s %-9s %-8s | %-52s | %-29s | %-26s | %-15s | %-16s | %-52s\n' "stored" "db" "catch-up" "open loop ${half}/s: rate p50 p99 p99.9 max (ms)" "hub p99, >50ms; late; rt" "idle; µs/req hub, rest; steal" "disk p99, max" "pause, ≥10, lost" "closed loop c64: rate p50 p99 p99.9 max (ms)"
row() {
  python3 - "$1" <<'PY'
import json, sys
r = json.loads(sys.argv[1]); l = r["latency_ms"]
rejected = sum(r["rejected"].values())
print(f"{r['requests_per_s']:>7.0f} {l['p50']:>7.2f} {l['p99']:>8.2f} {l['p999']:>8.2f} {l['max']:>8.2f} (err {r['transport_errors']}, rej {rejected})")
PY
}
# The hub's own view of the same requests: its request-duration histogram for the ingest
# route, as it grew during the open loop (before and after snapshots of /metrics): the
# bucket that holds the 99th percentile, and how many took over 50 ms inside the hub; and
# the async runtime's worst lateness that minute (the bucket of its largest, from
# raccordo_runtime_lag_seconds): a request waiting for a held worker waits before its
# handler, where the request histogram does not see it.
# With the generator's own lateness (how late it got to its schedule, worst second), who
# used the cores during the minute (`cpu_view`: idle share, the hub's CPU per request and
# everything else's, steal) and the disk's own latency (`disk_view`), this tells a stall of
# the hub from one of the machine both share.
hub_view() {
  python3 - "$1" "$2" "$3" <<'PY'
import json, os, re, sys
def buckets(path, pattern):
    out = {}
    for line in open(path):
        m = re.match(pattern, line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out
def delta(pattern):
    before, after = buckets(sys.argv[1], pattern), buckets(sys.argv[2], pattern)
    return sorted(((float(le), after[le] - before.get(le, 0)) for le in after), key=lambda b: b[0])
requests = delta(r'raccordo_http_request_duration_seconds_bucket\{route="/api/v1/eventi/conversione",status="202",le="([^"]+)"\} (\d+)')
total = requests[-1][1] if requests else 0
p99 = next((le for le, n in requests if total and n >= 0.99 * total), float("nan"))
over50 = total - next((n for le, n in requests if le == 0.05), total)
lags = delta(r'raccordo_runtime_lag_seconds_bucket\{le="([^"]+)"\} (\d+)')
ticks = lags[-1][1] if lags else 0
worst = next((le for le, n in lags if ticks and n >= ticks), float("nan"))
r = json.loads(sys.argv[3])
lag = r.get("max_send_lag_ms_per_second") or [0]
print(f"{'≤' + format(p99 * 1000, 'g'):>6} {over50:>6} {max(lag):>8.1f} {'≤' + format(worst * 1000, 'g'):>6}")
PY
}
# The disk's own view of the minute (benches/disk-probe.py, a small commit of its own every
# 5 ms beside the hub): the p99 and max of its worst second between T0 and T1, in ms. A
# minute whose requests were slow while the probe's commits were not was not the disk's.
disk_view() {
  python3 - "$1" "$2" disk-probe.log <<'PY'
import sys
t0, t1 = int(sys.argv[1]), int(sys.argv[2])
try:
    seconds = [line.split() for line in open(sys.argv[3])]
except OSError:
    seconds = []
seconds = [(float(p99), float(top)) for t, n, p99, top in seconds if t0 <= int(t) < t1]
if seconds:
    print(f"{max(p for p, _ in seconds):.2f} {max(m for _, m in seconds):.1f}")
else:
    print("- -")
PY
}
# The machine's own view of the minute (benches/hiccup.py): the latest a real-time thread woke
# up on any core between T0 and T1, in how many seconds one was 10 ms late or more, and how
# long the more blocked core was not to be had in all (ms). Such a pause stops the generator
# and the hub alike; the guest may not report it as steal.
hiccup_view() {
  python3 - "$1" "$2" hiccup.log <<'PY'
import sys
t0, t1 = int(sys.argv[1]), int(sys.argv[2])
try:
    lines = [line.split() for line in open(sys.argv[3])]
except OSError:
    lines = []
lines = [fields for fields in lines if len(fields) == 6]  # a line cut short by a kill is left out
late, blocked = {}, {}
for t, cpu, n, p99, top, lost in lines:
    if t0 <= int(t) < t1:
        late[t] = max(late.get(t, 0.0), float(top))
        blocked[cpu] = blocked.get(cpu, 0.0) + float(lost)
if late:
    print(f"{max(late.values()):.1f} {sum(v >= 10 for v in late.values())} {max(blocked.values()):.0f}")
else:
    print("- - -")
PY
}
stored=0  # events stored (accepted answers; duplicates are recorded too but not counted here)
measure() {
  local open closed size
  curl -sf $url/metrics >metrics.before
  local cpu0=$(cpu_snapshot $server) t0=$(date +%s)
  open=$(load --rate $half --max-in-flight 128 --duration ${secs}s)
  local cpu1=$(cpu_snapshot $server) t1=$(date +%s)
  curl -sf $url/metrics >metrics.after
  closed=$(load --concurrency 64 --duration 15s)
  size=$(du -sh raccordo-data | cut -f1)
  local name=${label:-$(python3 -c "print(f'{$stored/1e6:.1f} M')")}
  local hub=$(hub_view metrics.before metrics.after "$open")
  local cpu=$(cpu_view "$cpu0" "$cpu1" "$(echo "$open" | field 'r["requests"]')")
  local disk=$(disk_view $t0 $t1) pauses=$(hiccup_view $t0 $t1)
  printf '%-10s %-9s %-8s | %-52s | %-29s | %-26s | %-15s | %-16s | %-52s\n' "$name" "$size" "${caught_up:--}${caught_up:+ s}" "$(row "$open")" "$hub" "$cpu" "$disk" "$pauses" "$(row "$closed")"
  python3 -c 'import json,sys; print(json.dumps({"name": sys.argv[1], "open": json.loads(sys.argv[2]), "hub": sys.argv[3].split(), "cpu": sys.argv[4].split(), "disk": sys.argv[5].split(), "pauses": sys.argv[6].split(), "closed": json.loads(sys.argv[7])}))' "$name" "$open" "$hub" "$cpu" "$disk" "$pauses" "$closed" >>rows.jsonl
  stored=$(( stored + $(echo "$open" | field 'r["accepted"]') + $(echo "$closed" | field 'r["accepted"]') ))
}
# One growth step, then the wait for the live windows to count it.
caught_up=
grow() {
  local grown
  grown=$(load --concurrency 4 --batch-size 1000 --requests $(( step / 1000 )) --duration 1h | field 'r["accepted"]')
  stored=$(( stored + grown ))
  catch_up
}
catch_up() {
  local t0=$(date +%s.%N)
  until live_progress $port $token && [ "$processed" -ge "$committed" ]; do sleep 0.1; done
  caught_up=$(python3 -c "print(f'{$(date +%s.%N) - $t0:.1f}')")
}
measure
while [ "$stored" -lt "$target" ]; do
  grow
  measure
done

# Retention: restart with a size limit at three quarters of the log.
log_bytes=$(du -sb raccordo-data/raccordo.segments | cut -f1)
limit=$(( log_bytes * 3 / 4 ))
kill -TERM $server; wait $server 2>/dev/null || true
printf '[storage.retention]\nmax_bytes = %d\n' $limit >>raccordo.toml
t0=$(date +%s.%N); start; t1=$(date +%s.%N)
echo "restarted after a clean stop with retention max_bytes = $limit (3/4 of $log_bytes): ready after $(python3 -c "print(f'{$t1 - $t0:.2f}')") s"
catch_up
label="retention" measure
grow
label="+step, ret." measure
removed=$(curl -sf $url/metrics | awk '/^raccordo_storage_retention_removed_events_total/ {print $2}')
echo "retention removed ${removed:-0} events in the background; log now $(du -sh raccordo-data/raccordo.segments | cut -f1)"

# Issue 10's targets, judged on every row above: how many minutes met each, and for a miss,
# by how much and what the hub's own histogram and the machine said of that minute.
OPEN_LOOP="${OPEN_RATE:+at $OPEN_RATE req/s, set by OPEN_RATE}" python3 - <<'PY'
import json, os
rows = [json.loads(line) for line in open("rows.jsonl")]
print(f"against issue 10's targets (open loop {os.environ['OPEN_LOOP'] or 'at half the maximum'}; closed loop of 64):")
def judge(what, target, value_of):
    missed = [(r, value_of(r)) for r in rows if value_of(r) >= target]
    print(f"  {what} < {target} ms: met in {len(rows) - len(missed)} of {len(rows)} rows")
    for r, value in missed:
        p99_bucket, over_50, late, runtime_lag = (r["hub"] + ["?"])[:4]
        idle, hub_us, rest_us, steal = r["cpu"]
        disk_p99, disk_max = r["disk"]
        pause, paused_seconds, lost = r.get("pauses", ["-", "-", "-"])
        print(f"    MISSED at {r['name']}: {value:.2f} ms, by {value - target:.2f} ms; inside the hub "
              f"p99 {p99_bucket} ms and {over_50} requests over 50 ms, generator up to {late} ms "
              f"behind its schedule; the hub's async runtime late by {runtime_lag} ms at worst; cores {idle} idle, the hub {hub_us} µs of CPU per request "
              f"and everything else {rest_us}, steal {steal}; the disk's own commits: worst "
              f"second's p99 {disk_p99} ms, max {disk_max} ms; a real-time thread on the cores woke up to "
              f"{pause} ms late ({paused_seconds} seconds with a pause of 10 ms or more; a core not to be "
              f"had for {lost} ms of the minute in all)")
judge("open-loop p99", 10, lambda r: r["open"]["latency_ms"]["p99"])
judge("open-loop max of the minute", 100, lambda r: r["open"]["latency_ms"]["max"])
judge("closed-loop p99", 50, lambda r: r["closed"]["latency_ms"]["p99"])
PY

# What the hub logged of itself (JSON lines on stdout): the writer logs each commit group
# slower than 50 ms with where its time went — the first thing to read for a bad minute.
python3 - <<'PY'
import collections, json
lines = []
for line in open("serve.log", errors="replace"):
    try:
        lines.append(json.loads(line))
    except ValueError:
        pass
warnings = [l for l in lines if l.get("level") in ("WARN", "ERROR")]
slow = [l for l in warnings if l.get("message") == "slow commit"]
print(f"the hub logged {len(slow)} slow commits (over 50 ms) and {len(warnings) - len(slow)} other warnings or errors")
for l in sorted(slow, key=lambda l: l.get("total_ms", 0), reverse=True)[:3]:
    parts = ", ".join(f"{name} {l.get(key, '?')}" for name, key in
                      (("dedup", "dedup_ms"), ("roll-over", "roll_over_ms"), ("write", "write_ms"), ("sync", "sync_ms")))
    print(f"  {l.get('timestamp', '?')}: {l.get('total_ms')} ms ({parts} ms) for {l.get('requests')} requests, {l.get('bytes')} bytes")
others = collections.Counter(l.get("message") for l in warnings if l.get("message") != "slow commit")
for message, count in others.most_common(5):
    print(f"  {count} × {message}")
PY
