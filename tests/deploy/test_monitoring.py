"""deploy/monitoring: every series the alert rules and the dashboard query is one a
running server exports, with labels it really has."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase
from starlette.datastructures import Secret

from infra import metrics
from infra.settings import RATE_LIMIT_DEFAULTS
from tests.conftest import make_settings
from tests.deploy.conftest import MONITORING_DIR
from tests.support.services import ID_HASH_KEY, InProcessServer

# Series Prometheus makes itself for every target; no server exports them.
SCRAPE_SERIES = {"up"}
PROMQL_WORDS = set(
    "sum min max avg count rate irate increase histogram_quantile by without on ignoring"
    " and or unless bool absent topk group_left group_right offset clamp_min clamp_max"
    " vector".split()
)
# docs/CONTRACT.md §4 close codes.
CLOSE_CODES = set("1008 1009 1012 1013 4401 4403 4409 4410 4429".split())
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((MONITORING_DIR / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    return dict(json.loads((MONITORING_DIR / "grafana-dashboard.json").read_text()))


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p["targets"]]


def all_exprs() -> list[str]:
    return [r["expr"] for r in alert_rules()] + dashboard_exprs()


def parse(expr: str) -> tuple[set[str], list[tuple[str, str, str]], set[str]]:
    """(metric names, (metric, label, value) matchers, grouping labels) of a PromQL
    expression: enough PromQL for the rules written here."""
    matchers = []
    for name, body in re.findall(r"([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}", expr):
        for label, _op, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', body):
            matchers.append((name, label, value))
    grouping = set()
    for labels in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        grouping |= {x.strip() for x in labels.split(",") if x.strip()}
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", bare)
    bare = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", bare)
    names = {t for t in re.findall(r"[a-zA-Z_:][\w:]*", bare) if t not in PROMQL_WORDS}
    return names, matchers, grouping


def family(name: str, exported: set[str]) -> str:
    if name in exported:
        return name
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in exported:
            return name[: -len(suffix)]
    raise AssertionError(f"{name} is not exported by the server")


def declared_labels() -> dict[str, set[str]]:
    """Label names by exposed family name, from the metric objects in infra.metrics."""
    out = {}
    for obj in vars(metrics).values():
        if isinstance(obj, MetricWrapperBase):
            name = obj._name + ("_total" if obj._type == "counter" else "")
            out[name] = set(obj._labelnames)
    return out


@pytest.fixture
async def live_metrics(tmp_path: Path, request: pytest.FixtureRequest, redis_url: str) -> str:
    """/metrics of a real server (embedded database, real Redis) after some traffic:
    labelled series appear only once something used them."""
    settings = make_settings(
        "embedded", tmp_path, request, redis_url=redis_url, id_hash_key=Secret(ID_HASH_KEY)
    )
    async with (
        InProcessServer(settings) as server,
        httpx.AsyncClient(base_url=server.url, timeout=10) as client,
    ):
        assert (await client.get("/health")).status_code == 200
        ready = await client.get("/ready")
        assert ready.status_code == 200, ready.text
        assert (await client.get("/no-such-route")).status_code == 404
        assert (await client.post("/api/v1/devices", content=b"{}")).status_code == 401
        answer = await client.get("/metrics")
        assert answer.status_code == 200
        return answer.text


def test_alert_rules_and_dashboard_use_exported_series(live_metrics: str) -> None:
    exported = set(re.findall(r"^# TYPE (\S+) ", live_metrics, re.MULTILINE))
    exported |= {
        n + "_total" for n in re.findall(r"^# TYPE (\S+) counter", live_metrics, re.MULTILINE)
    }
    labels = declared_labels()
    seen = set()
    for expr in all_exprs():
        names, matchers, grouping = parse(expr)
        assert names, expr
        for name in names - SCRAPE_SERIES:
            fam = family(name, exported)
            seen.add(fam)
            allowed = labels[fam] | ({"le"} if name.endswith("_bucket") else set())
            assert grouping <= allowed | {"pod", "instance"}, (expr, grouping - allowed)
        for name, label, _value in matchers:
            if name in SCRAPE_SERIES:
                continue
            fam = family(name, exported)
            assert label in labels[fam], f"{name} has no label {label!r}"
    # The live response carries the label values the rules filter on.
    assert 'homepocket_backend_up{backend="database"} 1.0' in live_metrics
    assert 'homepocket_backend_up{backend="redis"} 1.0' in live_metrics
    assert 'route="/health"' in live_metrics and 'status="200"' in live_metrics
    for required in (
        "homepocket_http_requests_total",
        "homepocket_http_request_duration_seconds",
        "homepocket_backend_up",
        "homepocket_ws_connections",
        "homepocket_rate_limited_total",
        "homepocket_relay_ops_total",
        "homepocket_event_loop_lag_seconds",
    ):
        assert required in seen, f"nothing watches {required}"


def test_label_values_are_the_servers() -> None:
    for expr in all_exprs():
        for name, label, value in parse(expr)[1]:
            if name == "homepocket_rate_limited_total" and label == "limit":
                assert value in RATE_LIMIT_DEFAULTS, value
            if name == "homepocket_ws_closes_total" and label == "code":
                assert value in CLOSE_CODES, value
            if label == "route":
                for route in value.split("|"):
                    assert route.startswith("/"), value


def test_the_prds_alerts_exist() -> None:
    by_name = {r["alert"]: r for r in alert_rules()}
    for name in (
        "HomePocketHighErrorRate",
        "HomePocketHighLatency",
        "HomePocketDatabaseDown",
        "HomePocketRedisDown",
    ):
        rule = by_name[name]
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert rule["annotations"]["summary"]
    assert "0.05" in by_name["HomePocketHighErrorRate"]["expr"]  # PRD 5.3: 5% 5xx
    assert "histogram_quantile(0.95" in by_name["HomePocketHighLatency"]["expr"]


def test_dashboard_shows_connections_messages_latency_errors_and_limits() -> None:
    board = dashboard()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    assert board["uid"] and board["title"]
    text = "\n".join(dashboard_exprs())
    for needed in (
        "homepocket_ws_connections",
        "homepocket_relay_ops_total",
        "homepocket_http_request_duration_seconds_bucket",
        'status=~"5.."',
        "homepocket_rate_limited_total",
    ):
        assert needed in text, needed
