"""No credential is written into any deployment file: checkov's secret scanner
(keys, tokens, high-entropy strings) finds nothing."""

from __future__ import annotations

import pytest

from tests.deploy.conftest import ROOT, Tools

pytestmark = pytest.mark.timeout(1500)  # the first test may install the tools


def test_no_secret_in_deployment_files(tools: Tools) -> None:
    proc = tools.checkov(
        "--framework", "secrets",
        "-d", str(ROOT / "terraform"),
        "-d", str(ROOT / "deploy"),
        "-f", str(ROOT / "docker-compose.yml"),
        "-f", str(ROOT / "Dockerfile"),
        "-f", str(ROOT / "docs" / "DEPLOY.md"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "Failed checks" not in proc.stdout
