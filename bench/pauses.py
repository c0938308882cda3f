"""How often, and for how long, this machine holds up a core: a check of the bench's
ground, not of the relay.

Two loops on the servers' core, each run with the other core idle and then busy (a
child spinning on it, as the load generator keeps it at saturation):

- naps: sleeps 0.2 ms again and again and counts the wake-ups that came late, as a
  server that sleeps between messages would see them;
- spin: reads the clock in a busy loop and counts the gaps in it, the time the core
  was taken away while it ran.

Beside each, the time this process waited in the guest's own run queue meanwhile
(`/proc/thread-self/schedstat`): gaps beyond it were the host's, not another process
of the guest's.

On a virtual machine the host may also run a virtual CPU late, or pause it while the
guest's clock runs on. Either way a server loses the core for some ms, and every
message that arrives meanwhile waits: at the latency workload that would show in every
server's p99 and p999, more in a server that spends more per message.

Usage: python3 bench/pauses.py [--seconds 10] [--core 0] [--other 1]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

NAP_S = 0.0002
LATE_S = 0.0015  # a nap this much longer than asked is counted
GAP_S = 0.0005  # a gap in the busy loop's clock this long is counted


def gaps(seconds: float, nap_s: float, over_s: float) -> list[float]:
    """Each stretch between two reads of the clock that was longer than asked by more
    than `over_s`, by how much, in seconds: with `nap_s`, how late each nap woke up;
    without, how long the busy loop lost the core."""
    found = []
    before = start = time.monotonic()
    while before - start < seconds:
        if nap_s:
            time.sleep(nap_s)
        after = time.monotonic()
        if after - before - nap_s > over_s:
            found.append(after - before - nap_s)
        before = after
    return found


def queued_s() -> float:
    """The time this thread has waited runnable in the guest's run queue, in seconds."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except OSError:
        return float("nan")


def spinner(core: int) -> subprocess.Popen[bytes]:
    """A child keeping `core` busy until killed."""
    code = f"import os\nos.sched_setaffinity(0, {{{core}}})\nwhile True: pass\n"
    return subprocess.Popen([sys.executable, "-c", code])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    ap.add_argument("--core", type=int, default=0, help="the servers' core")
    ap.add_argument("--other", type=int, default=1, help="the load generator's core")
    args = ap.parse_args()
    os.sched_setaffinity(0, {args.core})
    print(f"core {args.core}, {args.seconds:.0f} s each")
    for other_busy in (False, True):
        child = spinner(args.other) if other_busy else None
        try:
            for name, nap_s, limit in (("naps", NAP_S, LATE_S), ("spin", 0.0, GAP_S)):
                queued = queued_s()
                found = gaps(args.seconds, nap_s, limit)
                queued = queued_s() - queued
                worst = max(found, default=0.0)
                print(
                    f"  {name}, core {args.other} {'busy' if other_busy else 'idle'}: "
                    f"{len(found)} over {limit * 1000:.1f} ms, "
                    f"{sum(found) * 1000:.1f} ms in all, the worst {worst * 1000:.2f} ms; "
                    f"queued in the guest {queued * 1000:.1f} ms"
                )
        finally:
            if child is not None:
                child.kill()
                child.wait()


if __name__ == "__main__":
    main()
