# Shared by the benchmark scripts (sourced after `cd` to the repository's root).

# The binary to measure: RACCORDO_BIN (another build, e.g. an earlier commit's, for a
# same-run comparison), or this tree's release build with the given cargo arguments.
raccordo_bin() {
  if [ -n "${RACCORDO_BIN:-}" ]; then
    realpath "$RACCORDO_BIN"
  else
    cargo build --release -p raccordo "$@" >/dev/null
    echo "$PWD/target/release/raccordo"
  fi
}

# The line every report starts with: figures mean little without the machine.
machine() {
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)$*"
}

# The CPU time of process PID and of the whole machine, in clock ticks, on one line: the
# process's user+system time, then the machine's busy, idle (with iowait) and steal time.
# Two snapshots around a measurement say who used the two cores (see `cpu_view`).
cpu_snapshot() {
  local pid=$1
  echo "$(awk '{print $14 + $15}' /proc/$pid/stat) $(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8, $5 + $6, $9}' /proc/stat)"
}

# From two `cpu_snapshot` lines and the number of requests answered in between: the
# machine's idle share, the process's CPU per request (µs) and everything else's (the load
# generator, the kernel's network work, other tenants of the machine), and the steal share.
cpu_view() {
  python3 - "$1" "$2" "$3" <<'PY'
import os, sys
before, after = ([int(x) for x in s.split()] for s in sys.argv[1:3])
process, busy, idle, steal = (b - a for a, b in zip(before, after))
requests = max(1, int(sys.argv[3]))
tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
total = max(1, busy + idle + steal)
print(f"{idle / total * 100:.0f}% {process * tick_us / requests:.1f} {(busy - process) * tick_us / requests:.1f} {steal / total * 100:.1f}%")
PY
}

# How far the live windows are: sets `processed` and `committed` from the ingest health of
# the hub on 127.0.0.1:PORT (TOKEN: one with the `read` scope). Polled often while the hub
# is being measured, so it starts no process (bash's own /dev/tcp and regex): a
# `curl | python3` per poll took about half a core from the two the hub shares.
live_progress() {
  local port=$1 token=$2 response=
  exec 3<>/dev/tcp/127.0.0.1/$port || return 1
  printf 'GET /api/v1/ingest/health HTTP/1.0\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n\r\n' "$token" >&3
  IFS= read -r -d '' response <&3 || true
  exec 3<&-
  [[ $response =~ \"processed_seq\":([0-9]+),\"committed_seq\":([0-9]+) ]] || return 1
  processed=${BASH_REMATCH[1]} committed=${BASH_REMATCH[2]}
}
