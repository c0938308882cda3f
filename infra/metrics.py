"""Prometheus metrics. Labels are route templates, methods, statuses and fixed names:
never a book, a device or an address (docs/CONTRACT.md §7)."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

HTTP_REQUESTS = Counter(
    "homepocket_http_requests_total",
    "HTTP requests by route template and status.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_LATENCY = Histogram(
    "homepocket_http_request_duration_seconds",
    "HTTP request latency by route template.",
    ["method", "route"],
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
RATE_LIMITED = Counter(
    "homepocket_rate_limited_total",
    "Calls refused by a rate limit, by limit name.",
    ["limit"],
    registry=REGISTRY,
)
BACKEND_UP = Gauge(
    "homepocket_backend_up",
    "1 when the backend answered the last readiness check.",
    ["backend"],
    registry=REGISTRY,
)
WS_CONNECTIONS = Gauge(
    "homepocket_ws_connections",
    "Open relay sockets on this instance.",
    registry=REGISTRY,
)
ASYNCIO_TASKS = Gauge(
    "homepocket_asyncio_tasks",
    "asyncio tasks not yet done in the event loop that serves /metrics.",
    registry=REGISTRY,
)


def _tasks() -> float:
    try:
        return float(len(asyncio.all_tasks()))
    except RuntimeError:  # read outside an event loop
        return float("nan")


ASYNCIO_TASKS.set_function(_tasks)
EVENT_LOOP_LAG = Histogram(
    "homepocket_event_loop_lag_seconds",
    "How much later than scheduled the event loop ran a timer (sampled every 0.25 s).",
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
WS_CLOSES = Counter(
    "homepocket_ws_closes_total",
    "Relay sockets closed, by close code.",
    ["code"],
    registry=REGISTRY,
)
RELAY_OPS = Counter(
    "homepocket_relay_ops_total",
    "Ops accepted and sequenced, by transport.",
    ["transport"],
    registry=REGISTRY,
)
RELAY_DELIVERIES = Counter(
    "homepocket_relay_deliveries_total",
    "Ops handed to receiving sockets.",
    registry=REGISTRY,
)
RELAY_SYNC_GAPS = Counter(
    "homepocket_relay_sync_gaps_total",
    "sync_gap answers sent.",
    registry=REGISTRY,
)
AUDIT_EVENTS = Counter(
    "homepocket_audit_events_total",
    "Audit events written, by type and result.",
    ["event_type", "result"],
    registry=REGISTRY,
)
