"""terraform/: parses (python-hcl2), holds what the deployment needs, no account ids or secrets, checkov passes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

hcl2 = pytest.importorskip("hcl2", reason="python-hcl2 is in requirements-dev.txt")

TF = Path(__file__).resolve().parents[2] / "terraform"


def _clean(node):
    # python-hcl2 8 keeps the quotes of string keys and literals and marks blocks; drop both for plain lookups.
    if isinstance(node, dict):
        return {_unquote(k): _clean(v) for k, v in node.items() if k != "__is_block__"}
    if isinstance(node, list):
        return [_clean(v) for v in node]
    return _unquote(node)


@pytest.fixture(scope="module")
def tf() -> dict[str, list]:
    merged: dict[str, list] = {}
    for path in sorted(TF.glob("*.tf")):
        with path.open() as fh:
            parsed = _clean(hcl2.load(fh))
        for block, items in parsed.items():
            merged.setdefault(block, []).extend(items)
    return merged


def _resources(tf: dict, kind: str) -> dict[str, dict]:
    out = {}
    for item in tf.get("resource", []):
        for name, body in item.get(kind, {}).items():
            out[name] = body
    return out


def _unquote(value):
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def test_terraform_files_parse(tf):
    assert {"resource", "variable", "output", "terraform"} <= set(tf)


def test_terraform_buckets_versioned_encrypted_private(tf):
    buckets = _resources(tf, "aws_s3_bucket")
    assert {"main", "logs"} <= set(buckets)
    for kind in (
        "aws_s3_bucket_versioning",
        "aws_s3_bucket_server_side_encryption_configuration",
        "aws_s3_bucket_public_access_block",
    ):
        assert set(_resources(tf, kind)) == {"main", "logs"}, kind
    block = _resources(tf, "aws_s3_bucket_public_access_block")["main"]
    for flag in ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets"):
        assert block[flag] is True
    sse = _resources(tf, "aws_s3_bucket_server_side_encryption_configuration")["main"]
    assert sse["rule"][0]["apply_server_side_encryption_by_default"][0]["sse_algorithm"] == "aws:kms"


def test_terraform_gpu_node_group_scales_from_zero(tf):
    groups = _resources(tf, "aws_eks_node_group")
    gpu = groups["gpu"]
    scaling = gpu["scaling_config"][0]
    assert scaling["min_size"] == 0 and scaling["desired_size"] == 0
    assert gpu["taint"][0]["key"] == "nvidia.com/gpu"
    assert gpu["labels"] == {"mlops/pool": "gpu"}


def test_terraform_has_database_registry_cluster_and_irsa(tf):
    db = _resources(tf, "aws_db_instance")["main"]
    assert db["engine"] == "postgres" and db["storage_encrypted"] is True
    assert db["manage_master_user_password"] is True and "password" not in db
    assert db["publicly_accessible"] is False
    assert set(_resources(tf, "aws_ecr_repository")) == {"main"}
    assert "main" in _resources(tf, "aws_eks_cluster")
    assert "irsa" in _resources(tf, "aws_iam_role")
    assert "eks" in _resources(tf, "aws_iam_openid_connect_provider")


def test_terraform_matches_runtime_defaults(tf):
    from pipelines.config import RuntimeSettings

    rt = RuntimeSettings()
    variables = {name: body for item in tf["variable"] for name, body in item.items()}
    assert variables["k8s_namespace"]["default"] == rt.namespace
    assert variables["step_service_account"]["default"] == rt.service_account
    gpu = _resources(tf, "aws_eks_node_group")["gpu"]
    assert gpu["labels"] == rt.gpu_node_selector
    assert gpu["taint"][0]["key"] == rt.gpu_toleration_key


def test_terraform_variables_and_outputs_documented(tf):
    for item in tf["variable"]:
        for name, body in item.items():
            assert body.get("description"), f"variable {name}: no description"
            assert body.get("type"), f"variable {name}: no type"
    for item in tf["output"]:
        for name, body in item.items():
            assert body.get("description"), f"output {name}: no description"


def test_terraform_has_no_account_ids_or_secrets():
    for path in TF.glob("*.tf"):
        text = path.read_text()
        assert not re.search(r"(?<![\w-])\d{12}(?![\w-])", text), f"{path.name}: a 12-digit account id"
        assert not re.search(r"(?i)(password|secret_key|access_key)\s*=\s*\"", text), f"{path.name}: a literal secret"


def test_terraform_checkov_skips_are_justified():
    skips = []
    for path in TF.glob("*.tf"):
        for line in path.read_text().splitlines():
            if "checkov:skip=" in line:
                check, _, reason = line.split("checkov:skip=", 1)[1].partition(":")
                skips.append((path.name, check.strip(), reason.strip()))
    assert skips
    for name, check, reason in skips:
        assert len(reason) > 20, f"{name}: checkov skip {check} needs a reason"


def _checkov() -> str | None:
    return os.environ.get("CHECKOV") or shutil.which("checkov")


def test_terraform_checkov_passes():
    checkov = _checkov()
    if checkov is None:
        pytest.skip("checkov is not installed (pip install checkov in its own venv; set CHECKOV=/path/to/checkov)")
    proc = subprocess.run(
        [checkov, "-d", str(TF), "--framework", "terraform", "--quiet", "--compact", "--skip-download"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    summary = [line for line in proc.stdout.splitlines() if "checks" in line or line.startswith("Check:")]
    assert proc.returncode == 0, "\n".join(summary) or proc.stderr[-2000:]
    assert "Failed checks: 0" in proc.stdout
