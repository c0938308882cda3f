"""The Dockerfile: hadolint and checkov pass, and it runs the server the way the
server expects (its console script, its port, its health route, non-root)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest

from infra.settings import Settings
from tests.deploy.conftest import ROOT, Tools, dockerfile_stages
from tests.support.services import ID_HASH_KEY, free_port, wait_port

pytestmark = pytest.mark.timeout(1500)  # the first test may install the tools

DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_hadolint_passes(tools: Tools) -> None:
    proc = tools.run("hadolint", "--failure-threshold", "info", str(DOCKERFILE))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_checkov_passes_on_the_dockerfile(tools: Tools) -> None:
    proc = tools.checkov("--framework", "dockerfile", "-f", str(DOCKERFILE))
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "Passed checks" in proc.stdout


def test_multi_stage_and_the_runtime_holds_no_build_tools() -> None:
    stages = dockerfile_stages(DOCKERFILE)
    assert len(stages) >= 2, "a build stage and a runtime stage"
    runtime = stages[-1]
    assert "slim" in runtime[0][1], "the runtime is a slim base"
    runs = " ".join(args for ins, args in runtime if ins == "RUN")
    for forbidden in ("apt-get install", "gcc", "build-essential", "pip install"):
        assert forbidden not in runs, f"the runtime stage runs {forbidden!r}"
    assert "pip uninstall" in runs, "the base image's pip is removed from the runtime"
    copies = [args for ins, args in runtime if ins == "COPY"]
    assert copies and all(c.startswith("--from=") for c in copies), (
        "the runtime takes only what the build stage made"
    )
    build_runs = " ".join(args for s in stages[:-1] for ins, args in s if ins == "RUN")
    assert "--no-cache-dir" in build_runs
    assert "uninstall --yes pip" in build_runs, "no installer left in the copied virtualenv"


def test_runs_as_a_non_root_user() -> None:
    runtime = dockerfile_stages(DOCKERFILE)[-1]
    users = [args for ins, args in runtime if ins == "USER"]
    assert users, "the runtime stage sets USER"
    uid = users[-1].split(":")[0]
    assert uid not in ("root", "0")
    assert uid.isdigit() and int(uid) >= 10000, "a numeric, high uid (Kubernetes can verify it)"


def test_entry_is_the_console_script_serving_on_the_server_port(app_routes: frozenset[str]) -> None:
    runtime = dict(dockerfile_stages(DOCKERFILE)[-1])
    entry = json.loads(runtime["ENTRYPOINT"]) + json.loads(runtime["CMD"])
    assert entry[0] in PYPROJECT["project"]["scripts"], "the pip-installed console script"
    assert entry[1] == "serve"
    port = entry[entry.index("--port") + 1]
    assert entry[entry.index("--host") + 1] == "0.0.0.0"
    assert int(port) == Settings().port == int(runtime["EXPOSE"])


def test_healthcheck_asks_the_health_route(app_routes: frozenset[str]) -> None:
    runtime = dict(dockerfile_stages(DOCKERFILE)[-1])
    check = runtime["HEALTHCHECK"]
    match = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", check)
    assert match, check
    assert int(match.group(1)) == Settings().port
    assert match.group(2) == "/health" and "/health" in app_routes
    assert "curl" not in check and "wget" not in check, "the slim image has neither"


def test_every_server_package_is_copied_and_nothing_else_enters_the_context() -> None:
    """The packages mypy checks are the server; each must be in the image."""
    build = dockerfile_stages(DOCKERFILE)[0]
    copied = {args.split()[0] for ins, args in build if ins == "COPY"}
    for package in PYPROJECT["tool"]["mypy"]["packages"]:
        assert package in copied, f"{package}/ is not copied into the image"
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[next(i for i, line in enumerate(ignore) if not line.startswith("#"))] == "*", (
        ".dockerignore starts by excluding everything (no .env, .venv or data leaks in)"
    )
    allowed = {line.strip("!/") for line in ignore if line.startswith("!")}
    assert allowed == {*PYPROJECT["tool"]["mypy"]["packages"], "pyproject.toml", "README.md"}


def test_dependency_layer_lists_what_pip_would_install(tmp_path: Path) -> None:
    """The build stage installs dependencies from a list it derives from pyproject
    (so that layer survives source edits); run that very command and compare."""
    build = dockerfile_stages(DOCKERFILE)[0]
    run = next(args for ins, args in build if ins == "RUN" and "tomllib" in args)
    command = run.split(" > requirements.txt")[0]
    assert command.startswith("python -c ")
    (tmp_path / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    proc = subprocess.run(
        [sys.executable, "-c", shlex.split(command)[2]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    project = PYPROJECT["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["production"]
    assert proc.stdout.split("\n")[:-1] == wanted


def test_server_starts_without_pip_or_setuptools(tmp_path: Path) -> None:
    """The runtime image has neither: start the real console script with both made
    unimportable and ask /health and /ready."""
    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class _NoBuildTools:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('pip', 'setuptools', 'pkg_resources', 'wheel'):\n"
        "            raise ImportError(name + ' is not in the runtime image')\n"
        "        return None\n"
        "sys.meta_path.insert(0, _NoBuildTools())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(blocker), "ID_HASH_KEY": ID_HASH_KEY}
    port = free_port()
    exe = Path(sys.executable).parent / "homepocket-relay"
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(exe), "serve", "--port", str(port), "--data-dir", str(tmp_path / "data")],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_port(port, 30)
            for route in ("/health", "/ready"):
                answer = httpx.get(f"http://127.0.0.1:{port}{route}", timeout=10)
                assert answer.status_code == 200, answer.text
        finally:
            proc.send_signal(signal.SIGTERM)  # as Kubernetes stops it
            proc.wait(15)
    output = log_path.read_text()
    assert "Application shutdown complete" in output, output[-2000:]
    assert "is not in the runtime image" not in output
