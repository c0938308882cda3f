"""Settings: read once from the environment (and `.env`), typed, units in the names.

A misconfiguration raises `ConfigError` naming the variable; the CLI prints that one
line and exits. Secrets are wrapped in `Secret` so they never print.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dotenv import dotenv_values
from limits import RateLimitItem, parse
from starlette.datastructures import Secret

ID_HASH_KEY_FILE = "id_hash_key"
_PLACEHOLDERS = {"changeme", "change-me", "secret", "placeholder", "xxx", "example"}


class ConfigError(Exception):
    """One misconfiguration: `variable` is the environment variable to fix."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


# Rate limits of docs/CONTRACT.md §6, by variable name. `off` disables one.
RATE_LIMIT_DEFAULTS: dict[str, str] = {
    "RATE_LIMIT_PAIRING_GENERATE": "10/hour",
    "RATE_LIMIT_PAIRING_VERIFY_FAILURES": "5 per 10 minutes",
    "RATE_LIMIT_REGISTRATION": "10/hour",
    "RATE_LIMIT_WS_CONNECT": "5 per 10 minutes",
    "RATE_LIMIT_WS_OPS": "1000/minute",
    "RATE_LIMIT_RELAY_SEND": "1000/day",
    "RATE_LIMIT_PHOTO_UPLOAD": "100/day",
    "RATE_LIMIT_PHOTO_GET": "500/day",
}

MIB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("./data")
    database_url: str | None = None
    redis_url: str | None = None
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None
    aws_region: str | None = None
    public_url: str | None = None
    id_hash_key: Secret | None = None
    allowed_origins: tuple[str, ...] = ()
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    sentry_dsn: Secret | None = None
    log_level: str = "INFO"
    migrate_on_start: bool = True
    # Sizes and times (docs/CONTRACT.md §8).
    max_op_bytes: int = MIB
    backlog_max_ops: int = 10_000
    backlog_max_bytes: int = 64 * MIB
    backlog_max_age_s: int = 7 * 24 * 3600
    backlog_max_total_bytes: int = 1024 * MIB  # every book's backlog together
    snapshot_max_bytes: int = 64 * MIB
    photo_max_bytes: int = 10 * MIB
    book_quota_bytes: int = 1024 * MIB
    max_devices_per_book: int = 20
    pairing_code_ttl_s: int = 300
    pairing_session_ttl_s: int = 600
    token_max_lifetime_s: int = 24 * 3600
    heartbeat_interval_s: float = 30.0
    heartbeat_timeout_s: float = 60.0
    # How long any one call to a backend (connecting, taking a pooled connection, each
    # command, S3 retries included) may take before the request fails with a 503.
    backend_timeout_s: float = 5.0
    max_body_bytes: int = 128 * 1024
    max_relay_send_bytes: int = 3 * MIB // 2
    audit_retention_s: int = 90 * 24 * 3600
    rate_limits: Mapping[str, RateLimitItem | None] = field(default_factory=dict)

    @property
    def production_backends(self) -> list[str]:
        """The variables that selected a production backend."""
        chosen = []
        if self.database_url:
            chosen.append("DATABASE_URL")
        if self.redis_url:
            chosen.append("REDIS_URL")
        if self.s3_bucket:
            chosen.append("S3_BUCKET")
        return chosen

    @property
    def effective_public_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"

    def rate_limit(self, name: str) -> RateLimitItem | None:
        return self.rate_limits.get(name)

    def __repr__(self) -> str:  # never print URLs that may hold passwords
        shown = ", ".join(
            f"{f.name}=<set>"
            if f.name.endswith("_url") and getattr(self, f.name)
            else f"{f.name}={getattr(self, f.name)!r}"
            for f in fields(self)
        )
        return f"Settings({shown})"

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        env_file: str | Path | None = ".env",
        **overrides: Any,
    ) -> Settings:
        """Read the environment; `.env` fills what the environment leaves unset."""
        values: dict[str, str] = {}
        if env_file and Path(env_file).is_file():
            values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
        values.update(os.environ if environ is None else environ)
        return cls(**{**_parse(values), **overrides})


def _parse(env: Mapping[str, str]) -> dict[str, Any]:
    def text(name: str) -> str | None:
        value = env.get(name, "").strip()
        return value or None

    def integer(name: str, attr: str, minimum: int = 0) -> None:
        raw = text(name)
        if raw is None:
            return
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(name, f"must be a whole number, got {raw!r}") from None
        if value < minimum:
            raise ConfigError(name, f"must be at least {minimum}")
        out[attr] = value

    def number(name: str, attr: str) -> None:
        raw = text(name)
        if raw is None:
            return
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(name, f"must be a number, got {raw!r}") from None
        if value <= 0:
            raise ConfigError(name, "must be greater than 0")
        out[attr] = value

    out: dict[str, Any] = {}
    database_url = text("DATABASE_URL")
    if database_url:
        scheme = urlsplit(database_url).scheme
        if scheme not in ("postgresql", "postgres", "sqlite"):
            raise ConfigError("DATABASE_URL", "must start with postgresql:// or sqlite://")
        out["database_url"] = database_url
    redis_url = text("REDIS_URL")
    if redis_url:
        if urlsplit(redis_url).scheme not in ("redis", "rediss", "unix"):
            raise ConfigError("REDIS_URL", "must start with redis://, rediss:// or unix://")
        out["redis_url"] = redis_url
    for name in ("S3_BUCKET", "AWS_REGION"):
        if text(name):
            out[name.lower()] = text(name)
    for name in ("S3_ENDPOINT_URL", "PUBLIC_URL"):
        value = text(name)
        if value:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigError(name, "must be an http:// or https:// URL")
            out[name.lower()] = value.rstrip("/")
    if text("S3_ENDPOINT_URL") and not text("S3_BUCKET"):
        raise ConfigError("S3_BUCKET", "must be set when S3_ENDPOINT_URL is set")
    key = text("ID_HASH_KEY")
    if key:
        out["id_hash_key"] = Secret(_check_hash_key("ID_HASH_KEY", key))
    if text("SENTRY_DSN"):
        out["sentry_dsn"] = Secret(str(text("SENTRY_DSN")))
    origins = text("ALLOWED_ORIGINS")
    if origins:
        parsed = tuple(o.strip().rstrip("/") for o in origins.split(",") if o.strip())
        for origin in parsed:
            parts = urlsplit(origin)
            if origin == "*" or parts.scheme not in ("http", "https") or parts.path:
                raise ConfigError("ALLOWED_ORIGINS", f"{origin!r} is not an exact origin")
        out["allowed_origins"] = parsed
    proxies = text("TRUSTED_PROXIES")
    if proxies:
        try:
            out["trusted_proxies"] = tuple(
                ipaddress.ip_network(p.strip(), strict=False)
                for p in proxies.split(",")
                if p.strip()
            )
        except ValueError as exc:
            raise ConfigError("TRUSTED_PROXIES", str(exc)) from None
    level = (text("LOG_LEVEL") or "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError("LOG_LEVEL", "must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
    out["log_level"] = level
    if text("DATA_DIR"):
        out["data_dir"] = Path(str(text("DATA_DIR")))
    integer("MAX_OP_BYTES", "max_op_bytes", 1)
    integer("BACKLOG_MAX_OPS", "backlog_max_ops")
    integer("BACKLOG_MAX_BYTES", "backlog_max_bytes")
    integer("BACKLOG_MAX_AGE_S", "backlog_max_age_s")
    integer("BACKLOG_MAX_TOTAL_BYTES", "backlog_max_total_bytes")
    integer("SNAPSHOT_MAX_BYTES", "snapshot_max_bytes", 1)
    integer("PHOTO_MAX_BYTES", "photo_max_bytes", 1)
    integer("BOOK_QUOTA_BYTES", "book_quota_bytes", 1)
    integer("MAX_DEVICES_PER_BOOK", "max_devices_per_book", 1)
    integer("PAIRING_CODE_TTL_S", "pairing_code_ttl_s", 1)
    integer("PAIRING_SESSION_TTL_S", "pairing_session_ttl_s", 1)
    integer("TOKEN_MAX_LIFETIME_S", "token_max_lifetime_s", 1)
    integer("AUDIT_RETENTION_S", "audit_retention_s", 1)
    number("HEARTBEAT_INTERVAL_S", "heartbeat_interval_s")
    number("HEARTBEAT_TIMEOUT_S", "heartbeat_timeout_s")
    number("BACKEND_TIMEOUT_S", "backend_timeout_s")
    limits: dict[str, RateLimitItem | None] = {}
    for name, default in RATE_LIMIT_DEFAULTS.items():
        raw = text(name) or default
        if raw.lower() == "off":
            limits[name] = None
            continue
        try:
            limits[name] = parse(raw)
        except ValueError:
            raise ConfigError(name, f"{raw!r} is not a rate like '10/hour' or 'off'") from None
    out["rate_limits"] = limits
    return out


def _check_hash_key(variable: str, key: str) -> str:
    if key.lower() in _PLACEHOLDERS or len(key) < 32:
        raise ConfigError(variable, "must be a random secret of at least 32 characters")
    return key


def resolve_id_hash_key(settings: Settings) -> Secret:
    """The identifier-hashing key: configured, or generated into the data dir when embedded.

    Production backends require it to be configured: a key kept on one instance's disk
    would make every book unreachable from the others.
    """
    if settings.id_hash_key is not None:
        return settings.id_hash_key
    if settings.production_backends:
        raise ConfigError(
            "ID_HASH_KEY",
            "is required when " + ", ".join(settings.production_backends) + " is set",
        )
    path = settings.data_dir / ID_HASH_KEY_FILE
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
        return Secret(_check_hash_key("ID_HASH_KEY", path.read_text().strip()))
    except FileExistsError:  # another process made it a moment ago
        return Secret(_check_hash_key("ID_HASH_KEY", path.read_text().strip()))
    except OSError as exc:
        raise ConfigError("DATA_DIR", f"cannot keep the hash key there: {exc.strerror}") from None
