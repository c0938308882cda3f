"""What this machine charges for memory it has not touched lately: a check of the bench's
ground, not of the relay.

Writes a file 4 KiB at a time, the way SQLite writes the embedded backlog, and prints
the CPU time per MB of each stretch: first while the file grows (every page of the
OS's page cache is newly taken), then rewriting the same stretch in place (the pages
are already there). On bare metal the two differ a little. On a virtual machine whose
host takes back the memory the guest frees (a balloon with free-page reporting), a
page taken again faults in the host too, and growing costs several times more; at
saturation the embedded relay grows its backlog file by tens of MB a second, so there
its figures swing with how much of its memory is new.

Usage: python3 bench/fresh_memory.py [--mb 1024] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

PAGE = 4096
STRETCH_MB = 256


def stretch(fd: int, first_page: int, block: bytes) -> float:
    """CPU milliseconds per MB to write one stretch of pages from `first_page` on."""
    pages = STRETCH_MB * 1024 * 1024 // PAGE
    start = time.process_time()
    for n in range(first_page, first_page + pages):
        os.pwrite(fd, block, n * PAGE)
    return (time.process_time() - start) * 1000 / STRETCH_MB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=1024, help="how much to write (default 1024)")
    ap.add_argument("--dir", default=None, help="where (default: the system's temp folder)")
    args = ap.parse_args()
    block = os.urandom(PAGE)
    stretches = max(1, args.mb // STRETCH_MB)
    pages = STRETCH_MB * 1024 * 1024 // PAGE
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        fd = os.open(os.path.join(folder, "grow.bin"), os.O_RDWR | os.O_CREAT)
        try:
            grow = [stretch(fd, i * pages, block) for i in range(stretches)]
            again = [stretch(fd, i * pages, block) for i in range(stretches)]
        finally:
            os.close(fd)
    print(f"CPU ms per MB written in 4 KiB pages, {STRETCH_MB} MB a figure")
    print("  growing the file:       " + "  ".join(f"{x:.2f}" for x in grow))
    print("  rewriting it in place:  " + "  ".join(f"{x:.2f}" for x in again))
    ratio = (sum(grow) / len(grow)) / (sum(again) / len(again))
    print(f"  growing costs {ratio:.1f}x rewriting")


if __name__ == "__main__":
    main()
