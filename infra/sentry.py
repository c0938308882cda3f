"""Sentry, only when SENTRY_DSN is set: no bodies, headers, cookies, locals or raw paths."""

from __future__ import annotations

from typing import Any

from infra.logs import scrub_text, scrub_value


def scrub_event(event: dict[str, Any], hint: dict[str, Any] | None = None) -> dict[str, Any]:
    """`before_send`: keep the error's type and place, drop anything a client sent."""
    request = event.get("request")
    if isinstance(request, dict):
        route = event.get("transaction") or "unknown"
        event["request"] = {"method": request.get("method"), "url": str(route)}
    event.pop("user", None)
    event.pop("server_name", None)
    event.pop("breadcrumbs", None)
    for exc in (event.get("exception") or {}).get("values", []) or []:
        if isinstance(exc, dict):
            exc["value"] = scrub_text(str(exc.get("value", "")))
            for frame in (exc.get("stacktrace") or {}).get("frames", []) or []:
                frame.pop("vars", None)
    if "logentry" in event and isinstance(event["logentry"], dict):
        entry = event["logentry"]
        entry["message"] = scrub_text(str(entry.get("message", "")))
        entry.pop("params", None)
        entry["formatted"] = scrub_text(str(entry.get("formatted", "")))
    if "message" in event:
        event["message"] = scrub_text(str(event["message"]))
    if "extra" in event:
        event["extra"] = {k: scrub_value(k, v) for k, v in dict(event["extra"]).items()}
    return event


def setup_sentry(dsn: str, transport: Any = None) -> None:
    import sentry_sdk

    sentry_sdk.init(
        dsn=dsn,
        send_default_pii=False,
        include_local_variables=False,
        max_request_body_size="never",
        before_send=scrub_event,  # type: ignore[arg-type]
        before_send_transaction=scrub_event,  # type: ignore[arg-type]
        traces_sample_rate=0.0,
        transport=transport,
    )
