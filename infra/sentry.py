"""Sentry, only when SENTRY_DSN is set: no bodies, headers, cookies, locals or raw paths.

`scrub_event` is the `before_send`: it rebuilds each event from an allow-list, so a
field a future SDK version adds is dropped rather than sent. Exception messages are
withheld (they may quote input); the type, the place and the route template remain.
"""

from __future__ import annotations

from typing import Any

from infra.logs import scrub_text, scrub_value

_KEEP = ("event_id", "timestamp", "level", "platform", "logger", "release", "environment")
_KEEP_CONTEXTS = ("runtime", "os", "trace")
_FRAME_KEYS = ("filename", "abs_path", "module", "function", "lineno", "colno", "in_app")


def _frames(stacktrace: Any) -> dict[str, Any]:
    frames = (stacktrace or {}).get("frames") or [] if isinstance(stacktrace, dict) else []
    return {
        "frames": [{k: f[k] for k in _FRAME_KEYS if k in f} for f in frames if isinstance(f, dict)]
    }


def _exceptions(exception: Any) -> dict[str, Any]:
    values = exception.get("values") or [] if isinstance(exception, dict) else []
    out = []
    for exc in values:
        if not isinstance(exc, dict):
            continue
        out.append(
            {
                "type": exc.get("type"),
                "module": exc.get("module"),
                "value": "(details withheld)",
                "mechanism": {"type": (exc.get("mechanism") or {}).get("type", "generic")},
                "stacktrace": _frames(exc.get("stacktrace")),
            }
        )
    return {"values": out}


def scrub_event(event: dict[str, Any], hint: dict[str, Any] | None = None) -> dict[str, Any]:
    """`before_send`: keep the error's type and place, drop anything a client sent."""
    out: dict[str, Any] = {k: event[k] for k in _KEEP if k in event}
    route = scrub_text(str(event.get("transaction") or "unknown"))
    out["transaction"] = route
    request = event.get("request")
    if isinstance(request, dict):
        out["request"] = {"method": request.get("method"), "url": route}
    if "exception" in event:
        out["exception"] = _exceptions(event["exception"])
    entry = event.get("logentry")
    if isinstance(entry, dict):
        out["logentry"] = {"message": scrub_text(str(entry.get("message", "")))}
    if "message" in event:
        out["message"] = scrub_text(str(event["message"]))
    if isinstance(event.get("extra"), dict):
        out["extra"] = {k: scrub_value(str(k), v) for k, v in event["extra"].items()}
    if isinstance(event.get("tags"), dict):
        out["tags"] = {str(k): scrub_text(str(v)) for k, v in event["tags"].items()}
    contexts = event.get("contexts")
    if isinstance(contexts, dict):
        out["contexts"] = {k: v for k, v in contexts.items() if k in _KEEP_CONTEXTS}
    sdk = event.get("sdk")
    if isinstance(sdk, dict):
        out["sdk"] = {"name": sdk.get("name"), "version": sdk.get("version")}
    return out


def _collect_nothing() -> dict[str, Any]:
    """The SDK's own switches, all off. Newer SDKs replace `send_default_pii` (now
    deprecated) with `data_collection`; older ones only know the former."""
    from sentry_sdk.consts import DEFAULT_OPTIONS

    if "data_collection" not in DEFAULT_OPTIONS:
        return {
            "send_default_pii": False,
            "include_local_variables": False,
            "include_source_context": False,
        }
    off = {"mode": "off"}
    return {
        "data_collection": {
            "user_info": False,
            "cookies": off,
            "http_headers": {"request": off},
            "http_bodies": [],
            "url_query_params": off,
            "database_query_data": False,
            "queues": False,
            "stack_frame_variables": False,
            "frame_context_lines": 0,
        }
    }


def setup_sentry(dsn: str, transport: Any = None) -> None:
    import sentry_sdk

    options: dict[str, Any] = {
        "max_request_body_size": "never",
        "max_breadcrumbs": 0,
        "before_send": scrub_event,
        "before_send_transaction": scrub_event,
        "traces_sample_rate": 0.0,
        "transport": transport,
        **_collect_nothing(),
    }
    sentry_sdk.init(dsn, **options)
