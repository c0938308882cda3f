"""terraform/: parses, passes checkov with every skip justified, and declares what
the PRD (section 5) and the contract ask of the AWS side."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.deploy.conftest import TERRAFORM_DIR, Tools

pytestmark = pytest.mark.timeout(1500)  # the first test may install the tools

TF_FILES = sorted(TERRAFORM_DIR.glob("*.tf"))


@pytest.fixture(scope="module")
def tf(tools: Tools) -> dict[str, Any]:
    """All blocks of all files, merged: {"resource": {type: {name: body}}, ...}."""
    parsed = tools.parse_hcl(TF_FILES)
    assert set(parsed) == {p.name for p in TF_FILES}
    merged: dict[str, Any] = {"resource": {}, "data": {}, "variable": {}, "output": {}}
    for tree in parsed.values():
        for kind in ("resource", "data"):
            for block in tree.get(kind, []):
                for rtype, named in block.items():
                    for name, body in named.items():
                        merged[kind].setdefault(rtype, {})[name] = body
        for kind in ("variable", "output"):
            for block in tree.get(kind, []):
                merged[kind].update(block)
    return merged


def one(body: dict[str, Any], key: str) -> dict[str, Any]:
    """A nested block that occurs once."""
    (inner,) = body[key]
    return dict(inner)


def test_checkov_passes_with_every_skip_justified(tools: Tools) -> None:
    proc = tools.checkov("--framework", "terraform", "-d", str(TERRAFORM_DIR))
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    skips = re.findall(
        r"#checkov:skip=([A-Z0-9_]+):?(.*)", "".join(p.read_text() for p in TF_FILES)
    )
    assert skips, "expected the documented skips"
    for check, reason in skips:
        assert len(reason.split()) >= 8, f"{check} is skipped without a real reason"


def test_variables_and_outputs_are_documented(tf: dict[str, Any]) -> None:
    for name, body in tf["variable"].items():
        assert len(body.get("description", "")) > 20, f"variable {name} lacks a description"
        assert "type" in body, f"variable {name} lacks a type"
    for name, body in tf["output"].items():
        assert len(body.get("description", "")) > 20, f"output {name} lacks a description"
    assert tf["variable"]["region"]["default"] == "ap-northeast-1", "Tokyo first (PRD 5)"


def test_no_secret_in_code(tf: dict[str, Any]) -> None:
    text = "".join(p.read_text() for p in TF_FILES)
    for key in ("password", "auth_token", "secret_string", "ID_HASH_KEY"):
        literals = re.findall(rf'\b{key}\s*=\s*"([^"]*)"', text)
        assert not literals, f"{key} is a literal"
    assert "random_password.db.result" in tf["resource"]["aws_db_instance"]["main"]["password"]
    redis = tf["resource"]["aws_elasticache_replication_group"]["main"]
    assert "random_password.redis.result" in redis["auth_token"]
    for name, body in tf["variable"].items():
        assert not re.search(r"password|secret|token|key$", name), f"variable {name} looks secret"
        assert body.get("sensitive") is not True
    assert not (TERRAFORM_DIR / "terraform.tfvars").exists()


def test_vpc_spans_three_availability_zones(tf: dict[str, Any]) -> None:
    azs = tf["variable"]["availability_zones"]["default"]
    assert len(set(azs)) == 3 and all(a.startswith("ap-northeast-1") for a in azs)
    for tier in ("public", "private", "database"):
        assert tf["resource"]["aws_subnet"][tier]["count"] == 3
        assert "local.azs[count.index]" in tf["resource"]["aws_subnet"][tier]["availability_zone"]


def test_postgres_is_15_multi_az_encrypted_and_backed_up(tf: dict[str, Any]) -> None:
    db = tf["resource"]["aws_db_instance"]["main"]
    assert db["engine"] == "postgres" and str(db["engine_version"]).split(".")[0] == "15"
    assert db["multi_az"] is True and db["storage_encrypted"] is True
    assert "var.db_backup_retention_days" in db["backup_retention_period"]
    assert tf["variable"]["db_backup_retention_days"]["default"] >= 7
    assert db["publicly_accessible"] is False and db["deletion_protection"] is True
    assert db["skip_final_snapshot"] is False
    params = {
        p["name"]: p["value"]
        for p in tf["resource"]["aws_db_parameter_group"]["postgres"]["parameter"]
    }
    assert params["rds.force_ssl"] == "1"
    assert params["log_parameter_max_length"] == "0", "no query params in logs (contract §7)"


def test_redis_has_tls_auth_failover_and_noeviction(tf: dict[str, Any]) -> None:
    redis = tf["resource"]["aws_elasticache_replication_group"]["main"]
    assert redis["transit_encryption_enabled"] is True
    assert redis["at_rest_encryption_enabled"] is True
    assert redis["automatic_failover_enabled"] is True and redis["multi_az_enabled"] is True
    assert tf["variable"]["redis_replicas"]["default"] >= 2
    params = tf["resource"]["aws_elasticache_parameter_group"]["redis"]["parameter"]
    assert {"name": "maxmemory-policy", "value": "noeviction"} in params


def test_relay_secret_urls_use_tls(tf: dict[str, Any]) -> None:
    value = tf["resource"]["aws_secretsmanager_secret_version"]["relay"]["secret_string"]
    assert "rediss://" in value, "REDIS_URL must use TLS (rediss://)"
    assert "sslmode=require" in value
    assert "ID_HASH_KEY" in value


def test_photo_bucket_is_private_encrypted_and_tls_only(tf: dict[str, Any]) -> None:
    res = tf["resource"]
    block = res["aws_s3_bucket_public_access_block"]["photos"]
    for flag in (
        "block_public_acls",
        "block_public_policy",
        "ignore_public_acls",
        "restrict_public_buckets",
    ):
        assert block[flag] is True
    sse = one(
        one(res["aws_s3_bucket_server_side_encryption_configuration"]["photos"], "rule"),
        "apply_server_side_encryption_by_default",
    )
    assert sse["sse_algorithm"] in ("aws:kms", "AES256")
    policy = tf["data"]["aws_iam_policy_document"]["photos_bucket"]["statement"]
    deny_plain = [
        s
        for s in policy
        if s.get("effect") == "Deny" and one(s, "condition")["variable"] == "aws:SecureTransport"
    ]
    assert deny_plain and one(deny_plain[0], "condition")["values"] == ["false"]


def test_cors_allows_put_and_get_from_the_allowed_origins(tf: dict[str, Any]) -> None:
    cors = tf["resource"]["aws_s3_bucket_cors_configuration"]["photos"]
    rule = one(cors, "cors_rule")
    assert sorted(rule["allowed_methods"]) == ["GET", "PUT"]
    assert "var.allowed_origins" in rule["allowed_origins"]
    assert "*" not in rule["allowed_origins"]


def test_abandoned_uploads_expire_after_a_day(tf: dict[str, Any]) -> None:
    rules = tf["resource"]["aws_s3_bucket_lifecycle_configuration"]["photos"]["rule"]
    by_id = {r["id"]: r for r in rules}
    pending = by_id["expire-pending-uploads"]
    assert one(pending, "expiration")["days"] == 1
    tag = one(one(pending, "filter"), "tag")
    assert "local.pending_tag" in tag["key"], "only tagged (never-completed) uploads expire"
    multipart = one(by_id["abort-incomplete-multipart"], "abort_incomplete_multipart_upload")
    assert multipart["days_after_initiation"] == 1


def test_relay_role_reaches_only_its_prefixes_through_irsa(tf: dict[str, Any]) -> None:
    docs = tf["data"]["aws_iam_policy_document"]
    statements = {s["sid"]: s for s in docs["relay"]["statement"]}
    objects = statements["ObjectsInRelayPrefixes"]
    assert "local.relay_prefixes" in objects["resources"]
    assert all(a.startswith("s3:") and "*" not in a for a in objects["actions"])
    assert not any(a in objects["actions"] for a in ("s3:PutBucketPolicy", "s3:PutObjectAcl"))
    assert statements["ListRelayPrefixes"]["actions"] == ["s3:ListBucket"]
    assert statements["BucketKeyViaS3"]["condition"][0]["variable"] == "kms:ViaService"
    prefixes = tf_locals_prefixes()
    assert prefixes == ["photos/", "snapshots/"], "the docs/CONTRACT.md §3 key layouts"
    trust = {
        c["variable"].split(":")[-1]: c["values"]
        for c in one(docs["relay_assume"], "statement")["condition"]
    }
    assert trust["sub"] == [
        "system:serviceaccount:${var.relay_namespace}:${var.relay_service_account}"
    ]
    assert trust["aud"] == ["sts.amazonaws.com"]


def tf_locals_prefixes() -> list[str]:
    text = (TERRAFORM_DIR / "storage.tf").read_text()
    match = re.search(r"relay_prefixes\s*=\s*\[([^\]]*)\]", text)
    assert match
    return re.findall(r'"([^"]+)"', match.group(1))


def test_cluster_runs_the_manifests(tf: dict[str, Any], manifests: dict[str, Any]) -> None:
    cluster = tf["resource"]["aws_eks_cluster"]["main"]
    assert "var.kubernetes_version" in cluster["version"]
    from tests.deploy.conftest import KUBERNETES_VERSION

    assert KUBERNETES_VERSION.startswith(tf["variable"]["kubernetes_version"]["default"] + ".")
    assert (
        tf["variable"]["relay_namespace"]["default"] == manifests["Namespace"]["metadata"]["name"]
    )
    account = manifests["ServiceAccount"]["metadata"]["name"]
    assert tf["variable"]["relay_service_account"]["default"] == account
    assert tf["variable"]["node_instance_type"]["default"] == "t3.small"  # PRD 5.4
    assert tf["variable"]["node_count"]["default"]["desired"] == 3
    # The NetworkPolicy and TRUSTED_PROXIES assume the VPC's range.
    cidr = tf["variable"]["vpc_cidr"]["default"]
    assert manifests["ConfigMap"]["data"]["TRUSTED_PROXIES"] == cidr
    blocks = [
        r["from"][0]["ipBlock"]["cidr"] for r in manifests["NetworkPolicy"]["spec"]["ingress"]
    ]
    assert blocks == [cidr]


def test_cost_table_describes_what_terraform_declares(tf: dict[str, Any]) -> None:
    """docs/DEPLOY.md compares the PRD 5.4 table with the terraform defaults: the
    sizes it names must be the ones terraform would create."""
    guide = (TERRAFORM_DIR.parent / "docs" / "DEPLOY.md").read_text()
    table = guide[guide.index("## Cost: PRD 5.4") :]
    rows = {
        cells[0]: cells[2]
        for line in table.splitlines()
        if line.startswith("| ")
        and len(cells := [c.strip() for c in line.strip("|").split("|")]) == 4
    }
    var = {name: body.get("default") for name, body in tf["variable"].items()}
    times = "\N{MULTIPLICATION SIGN}"  # the guide writes "3 <times> t3.small"
    nodes = var["node_count"]["desired"]
    assert f"{nodes} {times} {var['node_instance_type']}" in rows["EKS nodes"]
    assert (
        var["db_instance_class"] in rows["RDS PostgreSQL"] and "Multi-AZ" in rows["RDS PostgreSQL"]
    )
    assert f"{var['redis_replicas']} {times} {var['redis_node_type']}" in rows["ElastiCache Redis"]
    assert "single_nat_gateway = true" in rows["NAT gateway"] and var["single_nat_gateway"] is True
    for prd_item in (
        "EKS control plane",
        "S3 storage",
        "S3 requests",
        "data transfer out",
        "CloudWatch logs",
        "ALB",
    ):
        assert prd_item in rows, f"the PRD's {prd_item} row is missing"
