"""How late this machine wakes an idle core: a check of the bench's ground, not of the
relay.

Sleeps 0.2 ms again and again on one core and prints every wake-up that came more than
1.5 ms late, then a summary. A server at the latency workload sleeps between messages
just like this; on a virtual machine whose host is slow to run an idle virtual CPU
again, the messages that arrive meanwhile wait, and then go out as a burst. That shows
in every server's p99 and p999, more in a server that spends more per message.

Usage: python3 bench/wakeups.py [--seconds 10] [--core 0]
"""

from __future__ import annotations

import argparse
import os
import time

NAP_S = 0.0002
LATE_S = 0.0015


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--core", type=int, default=0, help="the core to sleep on (the servers')")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.core})
    late: list[tuple[float, float]] = []
    naps = 0
    start = before = time.monotonic()
    while before - start < args.seconds:
        time.sleep(NAP_S)
        after = time.monotonic()
        naps += 1
        if after - before - NAP_S > LATE_S:
            late.append((before - start, after - before - NAP_S))
        before = after
    for at, by in late:
        print(f"  at {at:6.3f} s: {by * 1000:.2f} ms late")
    worst = max((by for _, by in late), default=0.0)
    print(
        f"{naps} naps of {NAP_S * 1000:.1f} ms on core {args.core} in {args.seconds:.0f} s: "
        f"{len(late)} woke more than {LATE_S * 1000:.1f} ms late, "
        f"the worst by {worst * 1000:.2f} ms"
    )


if __name__ == "__main__":
    main()
