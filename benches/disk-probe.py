#!/usr/bin/env python3
"""The disk's own latency beside a benchmark: what a small commit costs on it right now.

Appends 400 bytes to a file of its own and calls fdatasync, 200 times a second, and writes
one line per second to OUT: the second (Unix time), the number of commits, and their p99
and max in milliseconds. A benchmark lays these seconds beside its own minutes: a minute in
which the hub's requests were slow but the probe's commits were not was not the disk's.

    python3 benches/disk-probe.py DIR OUT

Runs until killed (or its parent is gone). It adds a small load of its own to the disk
(200 commits a second beside the hub's thousands).
"""
import os
import sys
import time

directory, out_path = sys.argv[1], sys.argv[2]
parent = os.getppid()
size = 16 << 20
path = os.path.join(directory, "disk-probe.bin")
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
# A zero-filled, synced file: commits overwrite allocated blocks, as the hub's writer does
# in its prepared segments, so the probe measures the disk and not block allocation.
for step in range(size >> 20):
    os.pwrite(fd, b"\0" * (1 << 20), step << 20)
os.fsync(fd)
record = b"p" * 400
offset = 0
with open(out_path, "a", buffering=1) as out:
    second, latencies = int(time.time()), []
    while os.getppid() == parent:
        began = time.perf_counter()
        os.pwrite(fd, record, offset)
        os.fdatasync(fd)
        latencies.append((time.perf_counter() - began) * 1000)
        offset = (offset + len(record)) % (size - len(record))
        now = int(time.time())
        if now != second:
            latencies.sort()
            n = len(latencies)
            out.write(f"{second} {n} {latencies[min(n - 1, n * 99 // 100)]:.3f} {latencies[-1]:.3f}\n")
            second, latencies = now, []
        time.sleep(0.005)
