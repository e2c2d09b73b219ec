#!/usr/bin/env python3
"""Pauses of the machine itself beside a benchmark: how late a real-time thread wakes up.

One process per CPU, pinned to it and scheduled SCHED_FIFO, sleeps 2 ms at a time and notes
how much later than asked it woke up (a pause of P ms shows as a wake-up at least P - 2 ms
late; a shorter period disturbs the benchmark more, with a preemption per wake-up). A SCHED_FIFO thread takes its CPU from any ordinary
thread the moment its timer fires and the CPU is in user space, so on a healthy machine it
is late by tens of microseconds whatever the benchmark is doing. When it is late by
milliseconds, nothing in user space could run on that CPU either: the hypervisor gave the
virtual CPU to someone else (steal time that a guest does not always report), or the kernel
ran that long without a point where it lets another thread in (softirq work such as
loopback networking, or any system call on a kernel built without preemption,
`CONFIG_PREEMPT_NONE`). A request that was slow in that second waited for the machine.

Writes one line per second and CPU to OUT: the second (Unix time), the CPU, the number of
wake-ups, the p99 and max of their lateness, and their summed lateness beyond 0.1 ms (how
long that second the CPU was not to be had), all in milliseconds.

    python3 benches/hiccup.py OUT

Runs until killed (or its parent is gone). Without the right to use SCHED_FIFO (not root,
no CAP_SYS_NICE) it says so on stderr and measures at normal priority, which then also
counts waits for a CPU that the benchmark's own threads hold.
"""
import os
import sys
import time

out_path = sys.argv[1]
parent = os.getppid()
PERIOD = 0.002


def measure(cpu):
    os.sched_setaffinity(0, {cpu})
    try:
        # The lowest real-time priority is enough: it runs before every SCHED_OTHER thread.
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except PermissionError:
        print(f"hiccup: no SCHED_FIFO on CPU {cpu}; measuring at normal priority", file=sys.stderr)
    with open(out_path, "a", buffering=1) as out:
        second, late = int(time.time()), []
        due = time.monotonic() + PERIOD
        while os.getppid() == me:
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            woke = time.monotonic()
            late.append((woke - due) * 1000)
            due = max(due + PERIOD, woke)  # after a pause, no burst of catch-up wake-ups
            now = int(time.time())
            if now != second:
                late.sort()
                n = len(late)
                blocked = sum(v - 0.1 for v in late if v > 0.1)
                out.write(f"{second} {cpu} {n} {late[min(n - 1, n * 99 // 100)]:.3f} {late[-1]:.3f} {blocked:.1f}\n")
                second, late = now, []


me = os.getpid()
for cpu in sorted(os.sched_getaffinity(0)):
    if os.fork() == 0:
        try:
            measure(cpu)
        finally:
            os._exit(0)
# The children stop when this process is gone (killed, or its own parent gone).
while os.getppid() == parent:
    time.sleep(0.2)
