"""Reconnect storm: every device live, the server SIGTERMed (a deploy) and started again
on the same data, every device reconnecting at once with the contract's jittered backoff
and resuming with `since`/`epoch`.

The server (`homepocket-relay serve`, the connect limit at its default 5 per 10 minutes)
runs pinned to core 0, the generator (storm.mjs) and redis-server on core 1. Cases:
  relay           embedded default, restarted on the same data dir and port
  relay-pg-redis  PostgreSQL (a fresh database) + a private redis-server, restarted
  rolling         two instances on that Redis and PostgreSQL, devices split across
                  them; one is SIGTERMed and its half moves to the other
  ywss            y-websocket-server 0.1.1 restarted the same way (no auth, no
                  persistence: its "back" is the sync step 2 after reconnecting)

Usage: .venv/bin/python bench/storm.py [--devices 10000] [--cases relay,relay-pg-redis,rolling,ywss]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import (
    GEN_CORE,
    HERE,
    PY,
    RELAY_ENV,
    ROOT,
    SERVER_CORE,
    finish,
    free_port,
    make_devices,
    run_gen,
    start,
    start_redis,
    stop,
    wait_health,
    wait_port,
)
from tests.support.services import postgres_database

CASES = ["relay", "relay-pg-redis", "rolling", "ywss"]
# The connect limit stays at its default: the storm must not exhaust it.
STORM_ENV = {k: v for k, v in RELAY_ENV.items() if k != "RATE_LIMIT_WS_CONNECT"}
TIMEOUT_S = 120
SPY_S = 20
PROFILE_DIR: Path | None = None
REUSE: Path | None = None


def now_ms() -> float:
    return time.time() * 1000


def serve(kind: str, port: int, env: dict[str, str], data_dir: Path, log: Path) -> Any:
    """One server on a given port (a restart takes the port back)."""
    if kind == "ywss":
        cmd = ["node", str(HERE / "node_modules/@y/websocket-server/src/server.js")]
        env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1"}
    else:
        exe = str(Path(PY).parent / "homepocket-relay")
        cmd = [exe, "serve", "--port", str(port), "--data-dir", str(data_dir)]
    proc = subprocess.Popen(
        ["taskset", "-c", SERVER_CORE, *cmd],
        env=env,
        cwd=str(ROOT),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    wait_port(port, proc, timeout=60)
    if kind != "ywss":
        wait_health(port)
    return proc


def relay_env(redis_port: int | None, db_url: str | None, hash_key: str) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("REDIS_URL", "ID_HASH_KEY", "DATABASE_URL", "S3_BUCKET"):
        env.pop(var, None)
    env.update(STORM_ENV)
    if db_url:
        env.update(DATABASE_URL=db_url, ID_HASH_KEY=hash_key)
    if redis_port:
        env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
    return env


def prepare(n: int, tmp: Path, log: Path, env: dict[str, str], data_dir: Path) -> Path:
    """Register n devices over HTTP (books of 4) and make them members, on this store.
    Embedded, with --reuse: from a copy of the store a first run registered."""
    embedded = "DATABASE_URL" not in env
    kept = REUSE / f"relay-{n}" if REUSE is not None and embedded else None
    if kept is not None and (kept / "devices.json").exists():
        shutil.copytree(kept / "data", data_dir)
        return kept / "devices.json"
    devices_file = prepare_new(n, tmp, log, env, data_dir)
    if kept is not None:
        shutil.copytree(data_dir, kept / "data")
        shutil.copy(devices_file, kept / "devices.json")
    return devices_file


def prepare_new(n: int, tmp: Path, log: Path, env: dict[str, str], data_dir: Path) -> Path:
    devices_file = tmp / f"devices-{n}.json"
    if not devices_file.exists():
        devices_file.write_text(json.dumps(make_devices(n)))
    port = free_port()
    setup = {**env, "RATE_LIMIT_REGISTRATION": "off"}
    proc = serve("relay", port, setup, data_dir, log)
    try:
        cfg = {"workload": "register", "kind": "relay", "n": n}
        cfg.update(http=f"http://127.0.0.1:{port}", devices_file=str(devices_file))
        reg = run_gen(cfg, tmp, timeout=600)
    finally:
        stop(proc)
    if reg.get("failures") or "error" in reg:
        raise RuntimeError(f"registration failed: {reg}")
    subprocess.run(
        [PY, str(HERE / "membership.py"), str(data_dir), str(devices_file)],
        env=env,
        cwd=str(ROOT),
        check=True,
        capture_output=True,
    )
    return devices_file


def redis_refunds(port: int) -> int:
    out = subprocess.run(
        ["redis-cli", "-p", str(port), "--scan", "--pattern", "hp:r:refund:*"],
        capture_output=True,
        text=True,
        check=True,
    )
    return len(out.stdout.split())


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used so far (user and system)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def listen_overflows() -> int:
    """The kernel's count of connects dropped for a full accept queue (all sockets)."""
    lines = [line.split() for line in Path("/proc/net/netstat").read_text().splitlines()]
    for names, values in itertools.pairwise(lines):
        if names[0] == "TcpExt:" and values[0] == "TcpExt:" and "ListenOverflows" in names:
            return int(values[names.index("ListenOverflows")])
    return 0


def storm(
    kind: str,
    n: int,
    tmp: Path,
    log: Path,
    env: dict[str, str],
    data_dir: Path,
    devices_file: Path | None,
    rolling: bool,
    redis_port: int | None,
) -> dict[str, Any]:
    ports = [free_port(), free_port()] if rolling else [free_port()]
    procs = [serve(kind, p, env, data_dir, log) for p in ports]
    cfg: dict[str, Any] = {
        "kind": "ywss" if kind == "ywss" else "relay",
        "n": n,
        "book_size": 4,
        "payload_bytes": 256,
        "urls": [f"ws://127.0.0.1:{p}" for p in ports],
        "split": rolling,
        "move": rolling,
        "devices_file": str(devices_file) if devices_file else None,
        "timeout_s": TIMEOUT_S,
    }
    path = tmp / "storm.json"
    path.write_text(json.dumps(cfg))
    gen = subprocess.Popen(
        ["taskset", "-c", GEN_CORE, "node", str(HERE / "storm.mjs"), str(path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=str(HERE),
    )
    assert gen.stdout is not None
    out: dict[str, Any] = {}
    try:
        live = json.loads(gen.stdout.readline() or '{"error": "generator ended"}')
        if "error" in live:
            return live
        overflows = listen_overflows()
        sigterm = now_ms()
        procs[0].send_signal(signal.SIGTERM)
        procs[0].wait(60)
        exited = now_ms()
        out["exit_code"] = procs[0].returncode
        if redis_port is not None:
            out["refunds_written"] = redis_refunds(redis_port)
        if not rolling:  # rolling: its devices go to the other instance
            procs[0] = serve(kind, ports[0], env, data_dir, log)
        ready = now_ms()
        spy = spy_on(procs[-1].pid, kind, rolling, redis_port)
        result = json.loads(gen.stdout.readline() or '{"error": "no result"}')
        out["server_cpu_s"] = cpu_seconds(procs[-1].pid)  # start to all back (and the check)
        gen.wait(30)
        if spy is not None:
            spy.wait(SPY_S + 30)
        out.update(result)
        out["listen_overflows"] = listen_overflows() - overflows
        out.update(connect_s=live.get("connect_s"), shutdown_s=(exited - sigterm) / 1000)
        out["ready_s"] = (ready - sigterm) / 1000
        if result.get("last_back_ms"):
            out["all_back_s"] = (result["last_back_ms"] - sigterm) / 1000
            out["from_ready_s"] = (result["last_back_ms"] - ready) / 1000
            first = result.get("first_welcome_ms") or result["last_back_ms"]
            span = (result["last_back_ms"] - first) / 1000
            out["handshakes_per_s"] = result["welcomes"] / span if span > 0 else None
            out["first_welcome_s"] = (first - sigterm) / 1000
    finally:
        if gen.poll() is None:
            gen.kill()
        for proc in procs:
            stop(proc)
    return out


def spy_on(pid: int, kind: str, rolling: bool, redis_port: int | None) -> Any:
    """py-spy on the server that takes the storm, for its first SPY_S seconds."""
    if PROFILE_DIR is None or kind == "ywss":
        return None
    name = "rolling" if rolling else ("relay-pg-redis" if redis_port else "relay")
    spy = str(Path(PY).parent / "py-spy")
    cmd = [spy, "record", "--nonblocking", "--format", "raw", "--rate", "200"]
    cmd += ["-d", str(SPY_S), "-p", str(pid), "-o", str(PROFILE_DIR / f"{name}.txt")]
    return subprocess.Popen(
        ["taskset", "-c", GEN_CORE, *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def run_case(case: str, n: int, tmp: Path, log: Path) -> dict[str, Any]:
    data_dir = tmp / f"data-{case}"
    if case == "ywss":
        return storm("ywss", n, tmp, log, {}, data_dir, None, False, None)
    if case == "relay":
        env = relay_env(None, None, "")
        return storm(
            "relay", n, tmp, log, env, data_dir, prepare(n, tmp, log, env, data_dir), False, None
        )
    redis, redis_port = start_redis(log)
    try:
        with postgres_database() as db_url:
            env = relay_env(redis_port, db_url, secrets.token_hex(32))
            devices = prepare(n, tmp, log, env, data_dir)
            return storm(
                "relay", n, tmp, log, env, data_dir, devices, case == "rolling", redis_port
            )
    finally:
        stop(redis)


def fmt(res: dict[str, Any]) -> str:
    if "error" in res:
        return "ERROR " + str(res["error"])[:400]
    parts = [
        f"back {res.get('back')}/{res.get('moved')}",
        f"all back {res.get('all_back_s', float('nan')):.2f} s after SIGTERM",
        f"{res.get('from_ready_s', float('nan')):.2f} s after ready",
        f"shutdown {res['shutdown_s']:.2f} s, ready {res['ready_s']:.2f} s; the server"
        f" taking the storm used {res.get('server_cpu_s', float('nan')):.1f} CPU-s",
        f"handshakes/s {res.get('handshakes_per_s') or 0:.0f}"
        f" (peak {res.get('peak_welcomes_per_s')} in one second; first welcome"
        f" {res.get('first_welcome_s', float('nan')):.2f} s after SIGTERM, then by second"
        f" {res.get('welcomes_by_second')})",
        f"attempts mean {res.get('attempts_mean', 0):.2f} max {res.get('attempts_max')}",
        f"refusals {res.get('refusals')}, connects dropped by a full accept queue"
        f" {res.get('listen_overflows')}",
        f"closes {res.get('closes')}",
    ]
    if res.get("kind") == "relay":
        parts.append(
            f"gaps {res.get('gaps')}, epoch changed {res.get('epoch_changed')}, behind "
            f"{res.get('behind')}, given up {res.get('given_up')}, errors {res.get('errors')}, "
            f"ops after the storm: {res.get('post')}"
        )
    if "refunds_written" in res:
        parts.append(f"refund credits in Redis after exit {res['refunds_written']}")
    return "\n    ".join(parts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--py-spy", type=Path, metavar="DIR", help="profile the server (perturbs)")
    ap.add_argument(
        "--reuse",
        type=Path,
        metavar="DIR",
        help="embedded case: keep the registered devices here, start from them next time",
    )
    args = ap.parse_args()
    global PROFILE_DIR, REUSE
    REUSE = args.reuse
    PROFILE_DIR = args.py_spy
    tmp = start(PROFILE_DIR, "hp-storm-")
    if tmp is None:
        return 2
    log = tmp / "servers.log"
    results: dict[str, Any] = {}
    try:
        for case in args.cases.split(","):
            results[case] = run_case(case, args.devices, tmp, log)
            results[case]["loadavg_1m"] = os.getloadavg()[0]
            print(
                f"{case} ({args.devices} devices) [load average "
                f"{results[case]['loadavg_1m']:.2f}]\n    {fmt(results[case])}",
                flush=True,
            )
    finally:
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
        finish(tmp, PROFILE_DIR, 25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
