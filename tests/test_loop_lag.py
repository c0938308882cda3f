"""The event loop's lag is exported on /metrics of a real `homepocket-relay serve`."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.services import ServerProcess
from tests.test_cli import CLEAN_ENV

LAG = "homepocket_event_loop_lag_seconds"


def lag_samples(client: httpx.Client) -> dict[str, float]:
    """The histogram's samples by name (`_count`, `_sum`, `_bucket` with `le`)."""
    response = client.get("/metrics")
    assert response.status_code == 200
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        if family.name == LAG:
            assert family.type == "histogram"
            for s in family.samples:
                key = s.name + (f"{{le={s.labels['le']}}}" if "le" in s.labels else "")
                samples[key] = s.value
    return samples


def test_the_loop_lag_is_exported_and_its_count_grows(tmp_path: Path) -> None:
    server = ServerProcess(CLEAN_ENV, tmp_path / "data").start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            first = lag_samples(client)
            assert f"{LAG}_count" in first, "the lag histogram is not on /metrics"
            assert f"{LAG}_bucket{{le=+Inf}}" in first
            deadline = time.monotonic() + 10
            while lag_samples(client)[f"{LAG}_count"] <= first[f"{LAG}_count"]:
                assert time.monotonic() < deadline, "the lag was never observed"
                time.sleep(0.1)
            latest = lag_samples(client)
            assert latest[f"{LAG}_sum"] >= 0
            assert latest[f"{LAG}_bucket{{le=+Inf}}"] == latest[f"{LAG}_count"]
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.log()
