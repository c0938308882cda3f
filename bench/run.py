"""Relay benchmark: our relay against y-websocket-server and bare broadcasts, side by side.

Each server starts fresh, pinned to core 0 (`taskset -c 0`); the Node load generator
(gen.mjs) and, for the Redis runs, a private redis-server share core 1. Servers run
interleaved, round after round, and every ratio compares figures of the same round.
A warm-up round of every server comes first, printed but not counted (bench/README.md,
"Warm-up round").
permessage-deflate is off everywhere (ciphertext does not compress). Loopback only.

Usage: .venv/bin/python bench/run.py [--workloads saturation,latency,idle,catchup]
                                     [--servers wsb,ywss,starlette,relay,relay-redis]
                                     [--rounds 2] [--warmup-rounds 1] [--quick]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
SERVER_CORE, GEN_CORE = "0", "1"
# redis-server shares the generator's core unless told otherwise ("0,1": either core).
REDIS_CORES = os.environ.get("BENCH_REDIS_CORES", GEN_CORE)
BOOK_SIZE = 4
SERVERS = ["wsb", "ywss", "starlette", "relay", "relay-redis"]
# The generator's own full garbage collections (one every ~4 s, each pausing its loop
# for up to ~14 ms at a time) showed up as the server's p999; a larger initial old
# space leaves none in a run. BENCH_GEN_GC=1 runs it with Node's defaults (bench/README.md).
GEN_FLAGS = [] if os.environ.get("BENCH_GEN_GC") == "1" else ["--initial-old-space-size=256"]
LABELS = {
    "wsb": "Node ws broadcast (ceiling)",
    "ywss": "y-websocket-server 0.1.1",
    "starlette": "bare Starlette broadcast",
    "relay": "relay, embedded broker",
    "relay-redis": "relay, Redis",
}
ACK_NOTE = {
    "relay": "server ack",
    "relay-redis": "server ack",
}
RELAY_ENV = {
    "RATE_LIMIT_WS_OPS": "off",
    "RATE_LIMIT_WS_CONNECT": "off",
    "RATE_LIMIT_REGISTRATION": "off",
    "LOG_LEVEL": "WARNING",
}


@dataclass
class Workload:
    name: str
    n: int
    gen: dict[str, Any]
    servers: list[str] = field(default_factory=lambda: list(SERVERS))


def workloads(quick: bool) -> dict[str, Workload]:
    secs = {"warmup_s": 2 if quick else 3, "measure_s": 4 if quick else 10}
    return {
        "saturation": Workload("saturation", 200, {"payload_bytes": 1024, "window": 8, **secs}),
        "latency": Workload("latency", 1000, {"payload_bytes": 512, "rate": 1.0, **secs}),
        "idle": Workload("idle", 2000 if quick else 10_000, {"hold_s": 3}),
        "catchup": Workload(
            "catchup",
            4 * 3,
            {"payload_bytes": 1024, "missed": 1000, "books": 3, "window": 8},
            servers=["ywss", "relay", "relay-redis"],
        ),
    }


# ---------- processes ----------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError("server did not start listening")


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    port: int
    url: str
    redis: subprocess.Popen[bytes] | None = None

    def close(self) -> None:
        stop(self.proc)
        stop(self.redis)


def start_redis(log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [
            "taskset",
            "-c",
            REDIS_CORES,
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxmemory-policy",
            "noeviction",
        ],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    wait_port(port, proc)
    return proc, port


def start_server(kind: str, data_dir: Path | None, log: Path) -> Running:
    port = free_port()
    env = dict(os.environ)
    redis = None
    if kind == "wsb":
        cmd = ["node", str(HERE / "peers" / "ws-broadcast.js")]
        env.update(PORT=str(port), HOST="127.0.0.1")
    elif kind == "ywss":
        cmd = ["node", str(HERE / "node_modules/@y/websocket-server/src/server.js")]
        env.update(PORT=str(port), HOST="127.0.0.1")
    elif kind == "starlette":
        cmd = [PY, str(HERE / "peers" / "starlette_broadcast.py"), str(port)]
    else:
        assert data_dir is not None
        # Each run starts on an empty backlog, as the Redis runs start on a new
        # redis-server: the generator's op ids repeat from run to run, and a durable
        # backlog would ack them as retries of the last run's ops.
        for leftover in data_dir.glob("backlog.sqlite3*"):
            leftover.unlink()
        exe = str(Path(PY).parent / "homepocket-relay")
        cmd = [exe, "serve", "--port", str(port), "--data-dir", str(data_dir)]
        env.update(RELAY_ENV)
        for var in ("REDIS_URL", "ID_HASH_KEY", "DATABASE_URL", "S3_BUCKET"):
            env.pop(var, None)
        if kind == "relay-redis":
            redis, rport = start_redis(log)
            env["REDIS_URL"] = f"redis://127.0.0.1:{rport}/0"
            env["ID_HASH_KEY"] = (data_dir / "id_hash_key").read_text().strip()
    proc = subprocess.Popen(
        ["taskset", "-c", SERVER_CORE, *cmd],
        env=env,
        cwd=str(ROOT),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_port(port, proc)
        if kind.startswith("relay"):
            wait_health(port)
    except Exception:
        stop(proc)
        stop(redis)
        raise
    return Running(proc, port, f"ws://127.0.0.1:{port}", redis)


def wait_health(port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def run_gen(cfg: dict[str, Any], tmp: Path, timeout: float = 300) -> dict[str, Any]:
    path = tmp / "gen.json"
    path.write_text(json.dumps(cfg))
    out = subprocess.run(
        ["taskset", "-c", GEN_CORE, "node", *GEN_FLAGS, str(HERE / "gen.mjs"), str(path)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(HERE),
    )
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"error": (out.stderr or out.stdout)[-800:]}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


# ---------- devices for our relay ----------


def make_devices(n: int) -> list[dict[str, Any]]:
    """n Ed25519 devices in books of 4; the first of each book creates it."""
    devices = []
    book_id = ""
    for i in range(n):
        key = Ed25519PrivateKey.generate()
        raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        seed = key.private_bytes_raw()
        if i % BOOK_SIZE == 0:
            book_id = "bench-" + secrets.token_urlsafe(18)
        devices.append(
            {
                "seed": seed.hex(),
                "public_key": base64.b64encode(raw).decode(),
                "device_id": hashlib.sha256(raw).digest()[:16].hex(),
                "book_id": book_id,
                "first": i % BOOK_SIZE == 0,
            }
        )
    return devices


def prepare_relay(n: int, tmp: Path, log: Path) -> tuple[Path, Path]:
    """A data dir whose devices are registered over HTTP and members of their books."""
    data_dir = tmp / f"relay-data-{n}"
    devices_file = tmp / f"devices-{n}.json"
    devices_file.write_text(json.dumps(make_devices(n)))
    server = start_server("relay", data_dir, log)
    try:
        reg = run_gen(
            {
                "workload": "register",
                "kind": "relay",
                "n": n,
                "http": f"http://127.0.0.1:{server.port}",
                "devices_file": str(devices_file),
            },
            tmp,
        )
    finally:
        server.close()
    if reg.get("failures") or "error" in reg:
        raise RuntimeError(f"registration failed: {reg}")
    joined = subprocess.run(
        [PY, str(HERE / "membership.py"), str(data_dir), str(devices_file)],
        capture_output=True,
        text=True,
        cwd=str(ROOT),
        check=True,
    )
    print(
        f"  registered {n} devices over HTTP in {reg['seconds']:.1f} s; "
        f"{joined.stdout.strip()} joined their books",
        flush=True,
    )
    return data_dir, devices_file


# ---------- one workload ----------


Rows = list[dict[str, dict[str, Any]]]  # per round: server -> its figures


def run_workload(
    wl: Workload, servers: list[str], rounds: int, warmup: int, tmp: Path, log: Path
) -> tuple[Rows, Rows]:
    """The counted rounds and, before them, the warm-up rounds (run alike, not counted)."""
    print(f"\n== {wl.name}: {wl.n} devices in books of {BOOK_SIZE} ==", flush=True)
    chosen = [s for s in wl.servers if s in servers]
    data_dir = devices_file = None
    if any(s.startswith("relay") for s in chosen):
        data_dir, devices_file = prepare_relay(wl.n, tmp, log)
    results: Rows = []
    warmups: Rows = []
    for r in range(-warmup, rounds):
        label = "warm-up round" if r < 0 else f"round {r + 1}"
        row: dict[str, dict[str, Any]] = {}
        for kind in chosen:
            try:
                server = start_server(kind, data_dir, log)
            except Exception as exc:
                row[kind] = {"error": f"start: {exc}"}
                continue
            try:
                cfg = {
                    "workload": wl.name,
                    "kind": kind.split("-")[0],
                    "n": wl.n,
                    "book_size": BOOK_SIZE,
                    "url": server.url,
                    "server_pid": server.proc.pid,
                    "devices_file": str(devices_file) if devices_file else None,
                    **wl.gen,
                }
                spy = profile(kind, wl, r, server) if PROFILE_DIR and r >= 0 else None
                row[kind] = run_gen(cfg, tmp)
                if spy is not None:
                    spy.wait(60)
            finally:
                server.close()
            row[kind]["loadavg_1m"] = os.getloadavg()[0]
            print(
                f"  {label} {kind}: {brief(row[kind])} "
                f"[load average {row[kind]['loadavg_1m']:.2f}]",
                flush=True,
            )
        (warmups if r < 0 else results).append(row)
    return results, warmups


PROFILE_DIR: Path | None = None


def profile(kind: str, wl: Workload, r: int, server: Running) -> subprocess.Popen[bytes] | None:
    """py-spy on our relay while the generator runs (its own figures are then perturbed:
    py-spy shares core 1 with the generator). Collapsed stacks, summarised by spy_top."""
    if not kind.startswith("relay") or "measure_s" not in wl.gen or PROFILE_DIR is None:
        return None
    out = PROFILE_DIR / f"{wl.name}-{kind}-{r + 1}.txt"
    seconds = int(wl.gen["warmup_s"] + wl.gen["measure_s"])
    spy = str(Path(PY).parent / "py-spy")
    return subprocess.Popen(
        [
            "taskset",
            "-c",
            GEN_CORE,
            spy,
            "record",
            "--nonblocking",
            "--format",
            "raw",
            "--rate",
            "200",
            "-d",
            str(seconds),
            "-p",
            str(server.proc.pid),
            "-o",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def spy_top(path: Path, top: int = 20) -> list[str]:
    """Self and inclusive shares of the functions in a collapsed-stack profile."""
    self_n: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [
            f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1] + ")"
            if " (" in f
            else f
            for f in stack.split(";")
        ]
        self_n[frames[-1]] = self_n.get(frames[-1], 0) + n
        for f in set(frames):
            incl[f] = incl.get(f, 0) + n
    out = [f"{path.name}: {total} samples", "self:"]
    for f, n in sorted(self_n.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"  {100 * n / total:5.1f}%  {f}")
    out.append("inclusive:")
    for f, n in sorted(incl.items(), key=lambda kv: -kv[1])[: top * 2]:
        out.append(f"  {100 * n / total:5.1f}%  {f}")
    return out


def brief(res: dict[str, Any]) -> str:
    if "error" in res:
        return "ERROR " + str(res["error"])[:300]
    if res.get("workload") == "idle":
        return (
            f"{res['n']} conns, failures {res['failures']}, open after hold "
            f"{res['open_after_hold']}, {fmt(res['mb_per_1000'], 1)} MB/1000 "
            f"({fmt(res.get('mb_per_1000_marginal'), 1)} past the first 1,000)"
        )
    if res.get("workload") == "catchup":
        return f"{res['missed']} missed ops in {', '.join(fmt(x, 0) for x in res['ms'])} ms"
    return (
        f"{res['rate']:.0f} delivered/s, p50 {fmt(res['p50_ms'], 1)} ms, "
        f"p99 {fmt(res['p99_ms'], 1)} ms, p999 {fmt(res.get('p999_ms'), 1)} ms, "
        f"RSS {fmt(kb_mb(res.get('rss_kb')), 0)} MB"
        + (f", errors {res['errors']}" if res.get("errors") else "")
        + (
            f", closed by the server early {res['closed_early']} (codes {res.get('close_codes')})"
            if res.get("closed_early")
            else ""
        )
    )


def fmt(x: float | None, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def kb_mb(kb: float | None) -> float | None:
    return None if kb is None else kb / 1024


# ---------- tables ----------


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def table(name: str, results: Rows, warmups: Rows) -> list[str]:
    """A workload's figures, round by round; warm-up rounds first, as "w" (not counted)."""
    lines = [f"### {name}", ""]
    numbered = [("w", row) for row in warmups] + [(str(i), row) for i, row in enumerate(results, 1)]
    if name in ("saturation", "latency"):
        lines += [
            "| round | server | delivered msg/s | x y-websocket | x Node ws | p50 ms | "
            "p99 ms | p999 ms | RSS MB | acked by | sockets the server closed |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for i, row in numbered:
            base = row.get("ywss", {}).get("rate")
            ceil = row.get("wsb", {}).get("rate")
            for kind, res in row.items():
                if "error" in res:
                    lines.append(f"| {i} | {LABELS[kind]} | error: {str(res['error'])[:80]} |")
                    continue
                lines.append(
                    f"| {i} | {LABELS[kind]} | {res['rate']:.0f} | "
                    f"{fmt(ratio(res['rate'], base), 2)} | {fmt(ratio(res['rate'], ceil), 2)} | "
                    f"{fmt(res['p50_ms'], 1)} | {fmt(res['p99_ms'], 1)} | "
                    f"{fmt(res.get('p999_ms'), 1)} | "
                    f"{fmt(kb_mb(res.get('rss_kb')), 0)} | "
                    f"{ACK_NOTE.get(kind, 'all 3 other members received it')} | "
                    f"{res.get('closed_early') or 0} {res.get('close_codes') or ''} |"
                )
    elif name == "idle":
        lines += [
            "| round | server | connections | failures | open after hold | RSS idle MB | "
            "RSS at 1,000 MB | RSS at N MB | MB per 1,000 | MB per 1,000 past the first |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for i, row in numbered:
            for kind, res in row.items():
                if "error" in res:
                    lines.append(f"| {i} | {LABELS[kind]} | error: {str(res['error'])[:80]} |")
                    continue
                lines.append(
                    f"| {i} | {LABELS[kind]} | {res['n']} | {res['failures']} | "
                    f"{res['open_after_hold']} | {fmt(kb_mb(res['rss0_kb']), 0)} | "
                    f"{fmt(kb_mb(res['rss1k_kb']), 0)} | {fmt(kb_mb(res['rssN_kb']), 0)} | "
                    f"{fmt(res['mb_per_1000'], 1)} | {fmt(res.get('mb_per_1000_marginal'), 1)} |"
                )
    else:
        lines += [
            "| round | server | missed ops | time to hold them all, ms (per book) | max ms |",
            "|---|---|---|---|---|",
        ]
        for i, row in numbered:
            for kind, res in row.items():
                if "error" in res:
                    lines.append(f"| {i} | {LABELS[kind]} | error: {str(res['error'])[:80]} |")
                    continue
                lines.append(
                    f"| {i} | {LABELS[kind]} | {res['missed']} | "
                    f"{', '.join(fmt(x, 0) for x in res['ms'])} | "
                    f"{fmt(res['max_ms'], 0)} |"
                )
    return [*lines, ""]


def verdicts(all_results: dict[str, Rows]) -> list[str]:
    """The targets of the relay's performance, checked on every counted round."""
    out = ["### Targets", "", "| target | figure (per round) | met |", "|---|---|---|"]

    def per_round(wl: str, fn: Any) -> list[float | None]:
        return [fn(row) for row in all_results.get(wl, [])]

    def rate(row: dict[str, dict[str, Any]], k: str) -> float | None:
        r = row.get(k, {})
        return None if "error" in r else r.get("rate")

    def check(label: str, values: list[float | None], ok: Any, digits: int = 2) -> None:
        if not values:
            return
        shown = ", ".join(fmt(v, digits) for v in values)
        met = all(v is not None and ok(v) for v in values)
        out.append(f"| {label} | {shown} | {'yes' if met else 'NO'} |")

    sat = "saturation"
    check(
        "saturation, embedded >= 2x y-websocket-server",
        per_round(sat, lambda r: ratio(rate(r, "relay"), rate(r, "ywss"))),
        lambda v: v >= 2,
    )
    check(
        "saturation, embedded >= 0.5x Node ws broadcast",
        per_round(sat, lambda r: ratio(rate(r, "relay"), rate(r, "wsb"))),
        lambda v: v >= 0.5,
    )
    check(
        "saturation, Redis >= 1.5x y-websocket-server",
        per_round(sat, lambda r: ratio(rate(r, "relay-redis"), rate(r, "ywss"))),
        lambda v: v >= 1.5,
    )
    lat = "latency"
    for k, p99, p999 in (("relay", 2, 10), ("relay-redis", 4, 15)):
        check(
            f"latency p99, {LABELS[k]} <= {p99} ms",
            per_round(lat, lambda r, k=k: r.get(k, {}).get("p99_ms")),
            lambda v, p99=p99: v <= p99,
            1,
        )
        check(
            f"latency p999, {LABELS[k]} <= {p999} ms",
            per_round(lat, lambda r, k=k: r.get(k, {}).get("p999_ms")),
            lambda v, p999=p999: v <= p999,
            1,
        )
    for k in ("relay", "relay-redis"):
        res = per_round("idle", lambda r, k=k: r.get(k, {}).get("mb_per_1000"))
        check(f"idle, {LABELS[k]}: <= 16 MB per 1,000 connections", res, lambda v: v <= 16, 1)
        held = per_round(
            "idle",
            lambda r, k=k: (
                None if r.get(k, {}).get("failures") else r.get(k, {}).get("open_after_hold")
            ),
        )
        check(f"idle, {LABELS[k]}: 10,000 held without failures", held, lambda v: v >= 10_000, 0)
        cu = per_round("catchup", lambda r, k=k: r.get(k, {}).get("max_ms"))
        check(
            f"catch-up, {LABELS[k]}: 1,000 missed ops within 1 s (ms)", cu, lambda v: v <= 1000, 0
        )
    return [*out, ""]


def raise_nofile() -> str:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError) as exc:
        return f"could not raise the open-file limit ({exc}); it stays {soft}"
    return f"open-file limit {want} (hard limit {hard})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workloads", default="saturation,latency,idle,catchup")
    ap.add_argument("--servers", default=",".join(SERVERS))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument(
        "--warmup-rounds",
        type=int,
        default=1,
        help="rounds run first and not counted (default 1; see bench/README.md)",
    )
    ap.add_argument("--quick", action="store_true", help="shorter runs, 2,000 idle connections")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    ap.add_argument(
        "--py-spy",
        type=Path,
        metavar="DIR",
        help="profile our relay with py-spy during saturation/latency (perturbs figures)",
    )
    args = ap.parse_args()
    if args.warmup_rounds < 0 or args.rounds < 1:
        ap.error("--rounds must be at least 1 and --warmup-rounds at least 0")
    global PROFILE_DIR
    PROFILE_DIR = args.py_spy
    tmp = start(PROFILE_DIR, "hp-bench-")
    if tmp is None:
        return 2
    servers = args.servers.split(",")
    chosen = workloads(args.quick)
    all_results: dict[str, Rows] = {}
    warmups: dict[str, Rows] = {}
    log = tmp / "servers.log"
    try:
        for name in args.workloads.split(","):
            all_results[name], warmups[name] = run_workload(
                chosen[name], servers, args.rounds, args.warmup_rounds, tmp, log
            )
    finally:
        if args.json:
            raw = {"rounds": all_results, "warmup_rounds": warmups}
            args.json.write_text(json.dumps(raw, indent=1))
        report = []
        for name, res in all_results.items():
            report += table(name, res, warmups.get(name, []))
        report += verdicts(all_results)
        print("\n" + "\n".join(report))
        print(
            "For servers without acks, a message counts as acknowledged (for the window of "
            "8) when all 3 other members of its book have received it."
        )
        finish(tmp, PROFILE_DIR)
    return 0


def start(profile_dir: Path | None, prefix: str) -> Path | None:
    """What every bench script does first: check the tools, install the Node packages
    on first use, make the profile folder, print the header; the temporary folder, or
    None when a tool is missing."""
    if shutil.which("taskset") is None or shutil.which("node") is None:
        print("needs taskset and node", file=sys.stderr)
        return None
    if not (HERE / "node_modules" / "ws").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=str(HERE), check=True)
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    print(
        time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "|",
        raise_nofile(),
        "|",
        f"servers on core {SERVER_CORE}, generator on core {GEN_CORE}, "
        f"redis-server on core {REDIS_CORES}",
    )
    return Path(tempfile.mkdtemp(prefix=prefix))


def finish(tmp: Path, profile_dir: Path | None, top: int = 20) -> None:
    """Print the profiles' summaries, then remove the temporary folder (unless kept)."""
    for prof in sorted(profile_dir.glob("*.txt")) if profile_dir else []:
        print("\n".join(spy_top(prof, top)))
    if os.environ.get("BENCH_KEEP_TMP"):
        print("kept", tmp)
    else:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
