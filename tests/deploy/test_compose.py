"""docker-compose.yml: the server on PostgreSQL, Redis and MinIO, started in order,
with exactly the environment variables the server reads."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from infra.settings import Settings
from tests.deploy.conftest import ROOT, SDK_VARIABLES

COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


def test_backends_are_postgres_redis_and_minio(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["postgres"]["image"].startswith("postgres:15")
    assert services["redis"]["image"].startswith("redis:")
    assert services["minio"]["image"].startswith("minio/minio")
    assert services["relay"]["build"] == "."


def test_redis_runs_with_noeviction(compose: dict[str, Any]) -> None:
    command = compose["services"]["redis"]["command"]
    i = command.index("--maxmemory-policy")
    assert command[i + 1] == "noeviction"


def test_start_order_is_gated_on_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    depends = services["relay"]["depends_on"]
    for backend in ("postgres", "redis"):
        assert depends[backend]["condition"] == "service_healthy"
        assert services[backend]["healthcheck"]["test"]
    # MinIO's bucket is made by a one-shot job that itself waits for MinIO's health.
    assert depends["minio-setup"]["condition"] == "service_completed_successfully"
    assert services["minio-setup"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert services["minio"]["healthcheck"]["test"]
    assert "homepocket-photos" in " ".join(services["minio-setup"]["command"])


def test_names_exactly_the_variables_the_server_reads(
    compose: dict[str, Any], server_env_vars: frozenset[str]
) -> None:
    env = compose["services"]["relay"]["environment"]
    assert isinstance(env, dict)
    named = set(env) - SDK_VARIABLES
    assert named - server_env_vars == set(), "compose sets variables the server ignores"
    assert server_env_vars - named == set(), "compose leaves out variables the server reads"


def test_backend_urls_point_at_the_compose_services(compose: dict[str, Any]) -> None:
    env = compose["services"]["relay"]["environment"]
    assert re.fullmatch(
        r"postgresql://homepocket:\$\{POSTGRES_PASSWORD\}@postgres:5432/homepocket",
        env["DATABASE_URL"],
    )
    assert env["REDIS_URL"] == "redis://redis:6379/0"
    assert env["S3_BUCKET"] == "homepocket-photos"
    assert "minio" in env["S3_ENDPOINT_URL"]
    # No secret has a default: each must come from the caller's environment.
    for secret in ("ID_HASH_KEY", "AWS_SECRET_ACCESS_KEY"):
        assert "${" in env[secret] and ":-" not in env[secret]


def test_the_port_is_the_servers(compose: dict[str, Any]) -> None:
    ports = compose["services"]["relay"]["ports"]
    assert ports == [f"127.0.0.1:{Settings().port}:{Settings().port}"]
