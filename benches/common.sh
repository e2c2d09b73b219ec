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

# Time the hypervisor gave this machine's vCPUs to others (steal, in clock ticks, all CPUs):
# sampled before and after a measurement, it says how much of a bad minute was the host's.
steal_ticks() {
  awk '/^cpu /{print $9}' /proc/stat
}
