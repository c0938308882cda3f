"""deploy/k8s: valid against the Kubernetes schemas, clean under checkov, and in
agreement with the server: its routes, port, heartbeat, variables and metrics."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from infra.serving import uvicorn_config
from infra.settings import Settings
from tests.deploy.conftest import K8S_DIR, KUBERNETES_VERSION, SDK_VARIABLES, Tools, container

pytestmark = pytest.mark.timeout(1500)  # the first test may install the tools

MANIFEST_FILES = sorted(p for p in K8S_DIR.glob("*.yaml") if p.name != "kustomization.yaml")
PRD_RESOURCES = {
    "requests": {"cpu": "100m", "memory": "128Mi"},
    "limits": {"cpu": "500m", "memory": "512Mi"},
}  # PRD 5.1
SECRET_VARIABLES = {"DATABASE_URL", "REDIS_URL", "ID_HASH_KEY", "SENTRY_DSN"}


def test_manifests_validate_against_the_kubernetes_schemas(tools: Tools) -> None:
    proc = tools.run(
        "kubernetes-validate",
        "--strict",
        "--quiet",
        "-k",
        KUBERNETES_VERSION,
        *map(str, MANIFEST_FILES),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_checkov_passes_with_every_skip_justified(tools: Tools, manifests: dict[str, Any]) -> None:
    proc = tools.checkov("--framework", "kubernetes", "-d", str(K8S_DIR))
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    for obj in manifests.values():
        for key, value in (obj["metadata"].get("annotations") or {}).items():
            if key.startswith("checkov.io/skip"):
                check, _, reason = value.partition("=")
                assert re.fullmatch(r"CKV2?_K8S_\d+", check), value
                assert len(reason.split()) >= 8, f"{check} is skipped without a real reason"


def test_kustomization_applies_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in MANIFEST_FILES)


def test_probes_use_the_servers_routes(
    manifests: dict[str, Any], app_routes: frozenset[str]
) -> None:
    relay = container(manifests["Deployment"])
    assert relay["livenessProbe"]["httpGet"]["path"] == "/health"
    assert relay["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert relay["startupProbe"]["httpGet"]["path"] == "/health"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert relay[probe]["httpGet"]["path"] in app_routes
        assert relay[probe]["httpGet"]["port"] == "http"
    # /ready waits up to 2 s per backend: its probe must wait longer than one check.
    from infra.app import READY_TIMEOUT_S

    assert relay["readinessProbe"]["timeoutSeconds"] > READY_TIMEOUT_S
    alb = manifests["Ingress"]["metadata"]["annotations"]
    assert alb["alb.ingress.kubernetes.io/healthcheck-path"] in app_routes


def test_ports_agree_from_container_to_ingress(manifests: dict[str, Any]) -> None:
    relay = container(manifests["Deployment"])
    (port,) = relay["ports"]
    assert port["containerPort"] == Settings().port and port["name"] == "http"
    assert relay["args"][relay["args"].index("--port") + 1] == str(Settings().port)
    service = manifests["Service"]
    assert service["spec"]["selector"].items() <= (
        manifests["Deployment"]["spec"]["template"]["metadata"]["labels"].items()
    )
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] == "http"
    backends = [
        p["backend"]["service"]
        for rule in manifests["Ingress"]["spec"]["rules"]
        for p in rule["http"]["paths"]
    ]
    assert {"name": "homepocket-relay", "port": {"name": service_port["name"]}} in backends
    allowed = manifests["NetworkPolicy"]["spec"]["ingress"][0]["ports"]
    assert {"port": Settings().port, "protocol": "TCP"} in allowed


def test_metrics_scraped_where_the_server_serves_them(
    manifests: dict[str, Any], app_routes: frozenset[str]
) -> None:
    notes = manifests["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert notes["prometheus.io/path"] in app_routes
    assert notes["prometheus.io/path"] == "/metrics"
    assert int(notes["prometheus.io/port"]) == Settings().port
    # The internet does not get /metrics: the ALB answers it with a fixed 404.
    paths = {
        p["path"]: p["backend"]["service"]
        for rule in manifests["Ingress"]["spec"]["rules"]
        for p in rule["http"]["paths"]
    }
    hidden = paths["/metrics"]
    assert hidden["port"] == {"name": "use-annotation"}
    action = manifests["Ingress"]["metadata"]["annotations"][
        f"alb.ingress.kubernetes.io/actions.{hidden['name']}"
    ]
    assert '"fixed-response"' in action and '"404"' in action


def test_resources_are_the_prds(manifests: dict[str, Any]) -> None:
    assert container(manifests["Deployment"])["resources"] == PRD_RESOURCES


def test_environment_is_what_the_server_reads_and_secrets_come_from_a_secret(
    manifests: dict[str, Any], server_env_vars: frozenset[str]
) -> None:
    relay = container(manifests["Deployment"])
    names = {e["name"] for e in relay["env"]} | set(manifests["ConfigMap"]["data"])
    assert names - SDK_VARIABLES <= server_env_vars
    assert {"DATABASE_URL", "REDIS_URL", "ID_HASH_KEY", "AWS_REGION", "S3_BUCKET"} <= names
    for entry in relay["env"]:
        if entry["name"] in SECRET_VARIABLES:
            ref = entry["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "homepocket-relay" and ref["key"] == entry["name"]
    assert not SECRET_VARIABLES & set(manifests["ConfigMap"]["data"]), "no secret in a ConfigMap"
    assert relay["envFrom"] == [
        {"configMapRef": {"name": manifests["ConfigMap"]["metadata"]["name"]}}
    ]


def test_shutdown_leaves_time_to_close_sockets_with_1012(manifests: dict[str, Any]) -> None:
    spec = manifests["Deployment"]["spec"]["template"]["spec"]
    pre_stop = container(manifests["Deployment"])["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain_s = int(pre_stop[1])
    # uvicorn's graceful-shutdown bound, as `serve` configures it.
    served = uvicorn_config(None, Settings.from_env(environ={}, env_file=None))
    close_s = served.timeout_graceful_shutdown
    assert close_s is not None, "serve no longer bounds the graceful shutdown"
    grace = spec["terminationGracePeriodSeconds"]
    assert grace >= drain_s + close_s + 10, "no room for the 1012 closes"
    alb = manifests["Ingress"]["metadata"]["annotations"]
    deregistration = re.search(
        r"deregistration_delay\.timeout_seconds=(\d+)",
        alb["alb.ingress.kubernetes.io/target-group-attributes"],
    )
    assert deregistration and int(deregistration.group(1)) >= drain_s + close_s, (
        "the ALB would cut sockets before the server closes them"
    )


def test_ingress_idle_timeout_exceeds_the_heartbeat(manifests: dict[str, Any]) -> None:
    alb = manifests["Ingress"]["metadata"]["annotations"]
    idle = re.search(
        r"idle_timeout\.timeout_seconds=(\d+)",
        alb["alb.ingress.kubernetes.io/load-balancer-attributes"],
    )
    assert idle
    settings = Settings()
    assert int(idle.group(1)) > settings.heartbeat_timeout_s > settings.heartbeat_interval_s
    assert alb["alb.ingress.kubernetes.io/listen-ports"] == '[{"HTTPS": 443}]', "TLS only"
    assert manifests["Ingress"]["spec"]["tls"]


def test_runs_locked_down(manifests: dict[str, Any]) -> None:
    spec = manifests["Deployment"]["spec"]["template"]["spec"]
    relay = container(manifests["Deployment"])
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] >= 10000
    assert relay["securityContext"]["readOnlyRootFilesystem"] is True
    assert relay["securityContext"]["allowPrivilegeEscalation"] is False
    assert relay["securityContext"]["capabilities"]["drop"] == ["ALL"]
    mounted = {m["mountPath"] for m in relay["volumeMounts"]}
    data_dir = next(e["value"] for e in relay["env"] if e["name"] == "DATA_DIR")
    assert {"/tmp", data_dir} <= mounted, "writable scratch where the server may write"
    account = manifests["ServiceAccount"]
    assert spec["serviceAccountName"] == account["metadata"]["name"]
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith(
        "arn:aws:iam::"
    )


def test_disruption_budget_and_autoscaler_target_the_relay(manifests: dict[str, Any]) -> None:
    deployment = manifests["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdb = manifests["PodDisruptionBudget"]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["maxUnavailable"] == 1
    hpa = manifests["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert hpa["minReplicas"] >= 3, "one replica per AZ at least"
    assert hpa["minReplicas"] <= deployment["spec"]["replicas"] <= hpa["maxReplicas"]
    # Scale-down is slow: each removed pod sends its clients reconnecting.
    assert hpa["behavior"]["scaleDown"]["policies"][0]["value"] == 1
