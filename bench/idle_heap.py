"""What an idle relay socket holds: the server runs in this process, N devices connect
from the Node generator and stay idle, and the heap is read while they are held.

Reports, per socket: RSS grown, Python objects new since the baseline by type (count,
`sys.getsizeof`), and with `--frames N` tracemalloc's allocations grouped by file and
by traceback. tracemalloc's own bookkeeping inflates RSS, so read RSS from a run
without it (the default). What neither sees: malloc's free lists and fragmentation,
uvloop's and the kernel's socket buffers (the kernel's are not in RSS at all).

Usage: .venv/bin/python bench/idle_heap.py [--n 2000] [--redis] [--frames 25] [--top 20]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import run  # noqa: E402  (bench/run.py: devices, data dirs, redis-server)


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def objects_by_type() -> tuple[Counter[str], Counter[str]]:
    """GC-tracked objects (containers; not str, bytes or int) by type: count and bytes."""
    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for obj in gc.get_objects():
        kind = type(obj)
        name = f"{kind.__module__}.{kind.__qualname__}"
        counts[name] += 1
        sizes[name] += sys.getsizeof(obj)
    return counts, sizes


async def measure(args: argparse.Namespace, data_dir: Path, devices: Path, tmp: Path) -> None:
    import uvicorn

    from infra.app import create_app
    from infra.serving import uvicorn_config
    from infra.settings import Settings

    port = run.free_port()
    settings = Settings.from_env(None, None, data_dir=data_dir, port=port, host="127.0.0.1")
    server = uvicorn.Server(uvicorn_config(create_app(settings), settings))
    serving = asyncio.ensure_future(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    gc.collect()
    gc.freeze()  # as `serve` does: what exists now lives as long as the process
    await asyncio.sleep(0.5)
    gc.collect()
    rss0 = rss_kb()
    counts0, sizes0 = objects_by_type()
    snap0 = tracemalloc.take_snapshot() if tracemalloc.is_tracing() else None

    cfg = {
        "workload": "hold",
        "kind": "relay",
        "n": args.n,
        "book_size": run.BOOK_SIZE,
        "url": f"ws://127.0.0.1:{port}",
        "devices_file": str(devices),
    }
    cfg_path = tmp / "hold.json"
    cfg_path.write_text(json.dumps(cfg))
    gen = await asyncio.create_subprocess_exec(
        "taskset", "-c", run.GEN_CORE, "node", str(HERE / "gen.mjs"), str(cfg_path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=str(HERE),
    )  # fmt: skip
    assert gen.stdout is not None and gen.stdin is not None
    held = json.loads(await gen.stdout.readline())
    await asyncio.sleep(args.hold_s)
    gc.collect()
    n = held["held"] or 1
    rss1 = rss_kb()
    counts1, sizes1 = objects_by_type()
    snap1 = tracemalloc.take_snapshot() if snap0 is not None else None
    gen.stdin.close()
    await gen.wait()

    print(f"sockets held: {held['held']} (failures {held['failures']})")
    print(f"RSS: {rss0 / 1024:.1f} MB before, {rss1 / 1024:.1f} MB held, ", end="")
    print(f"{(rss1 - rss0) / n * 1024:.0f} bytes per socket")
    print("\nPython objects new per socket (GC-tracked; count, bytes by getsizeof):")
    rows = [(k, counts1[k] - counts0[k], sizes1[k] - sizes0[k]) for k in counts1]
    rows.sort(key=lambda r: -r[2])
    total = 0
    for name, count, size in rows[: args.top]:
        if count > 0:
            print(f"  {count / n:6.2f}  {size / n:7.0f} B  {name}")
    total = sum(r[2] for r in rows if r[2] > 0)
    print(f"  total {total / n:.0f} B per socket (shallow sizes of tracked objects)")
    if snap0 is not None and snap1 is not None:
        for group in ("filename", "traceback"):
            stats = snap1.compare_to(snap0, group)
            traced = sum(s.size_diff for s in stats)
            print(f"\ntracemalloc by {group}: {traced / n:.0f} B per socket in all")
            for stat in stats[: args.top if group == "filename" else args.top // 2]:
                if stat.size_diff <= 0:
                    continue
                if group == "filename":
                    where = str(stat.traceback[0].filename).split("site-packages/")[-1]
                    print(f"  {stat.size_diff / n:7.0f} B  {stat.count_diff / n:5.2f}  {where}")
                else:
                    print(f"  {stat.size_diff / n:7.0f} B  {stat.count_diff / n:5.2f} blocks")
                    for frame in stat.traceback.format(limit=args.depth, most_recent_first=True):
                        print("      " + frame.strip().split("site-packages/")[-1])
    server.should_exit = True
    await serving


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--redis", action="store_true", help="Redis broker (private redis-server)")
    ap.add_argument("--frames", type=int, default=0, help="trace allocations, this many frames")
    ap.add_argument("--depth", type=int, default=6, help="frames shown per traceback")
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--hold-s", type=float, default=3.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="hp-idle-heap-") as name:
        tmp = Path(name)
        log = tmp / "servers.log"
        data_dir, devices = run.prepare_relay(args.n, tmp, log)
        for leftover in data_dir.glob("backlog.sqlite3*"):
            leftover.unlink()
        for var in ("REDIS_URL", "ID_HASH_KEY", "DATABASE_URL", "S3_BUCKET"):
            os.environ.pop(var, None)
        os.environ.update(run.RELAY_ENV)
        redis = None
        if args.redis:
            redis, rport = run.start_redis(log)
            os.environ["REDIS_URL"] = f"redis://127.0.0.1:{rport}/0"
            os.environ["ID_HASH_KEY"] = (data_dir / "id_hash_key").read_text().strip()
        os.sched_setaffinity(0, {int(run.SERVER_CORE)})
        if args.frames:
            tracemalloc.start(args.frames)
        try:
            import uvloop

            started = time.monotonic()
            uvloop.run(measure(args, data_dir, devices, tmp))
            print(f"\n({time.monotonic() - started:.0f} s; load average {os.getloadavg()[0]:.2f})")
        finally:
            run.stop(redis)


if __name__ == "__main__":
    main()
