"""Dockerfile, .dockerignore and k8s/: the targets, their order of layers, and agreement with the runtime settings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pipelines.config import RuntimeSettings

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"


def _stages() -> dict[str, list[str]]:
    stages: dict[str, list[str]] = {}
    current = None
    for line in (REPO / "Dockerfile").read_text().splitlines():
        m = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE)
        if m:
            current = m.group(1)
            stages[current] = [line]
        elif current and line and not line.startswith("#"):
            stages[current].append(line)
    return stages


def test_dockerfile_has_step_airflow_mlflow_targets_step_last():
    stages = _stages()
    assert {"step", "airflow", "mlflow"} <= set(stages)
    assert list(stages)[-1] == "step", "a plain `docker build` must give the step image"
    step = "\n".join(stages["step"])
    assert 'ENTRYPOINT ["python", "-m", "pipelines"]' in step


def test_dockerfile_runs_as_non_root():
    for target in ("step", "airflow", "mlflow"):
        users = [line for line in _stages()[target] if line.startswith("USER")]
        assert users and users[-1].split()[1].split(":")[0] not in {"0", "root"}, target


def test_dockerfile_installs_dependencies_before_code():
    text = (REPO / "Dockerfile").read_text()
    assert text.index("COPY requirements.txt") < text.index("pip install -r /tmp/step-requirements.txt")
    assert text.index("pip install -r /tmp/step-requirements.txt") < text.index("COPY pipelines/")
    assert "ARG VARIANT=cpu" in text and "cuda)" in text


def test_dockerignore_keeps_state_and_secrets_out():
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert {".venv", "var", ".env", ".git", "tests"} <= ignored


@pytest.fixture(scope="module")
def manifests() -> dict[str, list[dict]]:
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in sorted(K8S.glob("*.yaml"))}


def test_k8s_manifests_parse(manifests):
    kinds = {doc["kind"] for docs in manifests.values() for doc in docs}
    assert {"Namespace", "ServiceAccount", "Role", "RoleBinding", "Pod", "Secret", "Kustomization"} <= kinds


def test_k8s_pod_templates_match_runtime_settings(manifests):
    rt = RuntimeSettings()
    for name in ("pod-template.yaml", "pod-template-train.yaml"):
        pod = manifests[name][0]
        spec = pod["spec"]
        assert pod["metadata"]["namespace"] == rt.namespace, name
        assert spec["serviceAccountName"] == rt.service_account, name
        container = spec["containers"][0]
        assert container["name"] == "base", f"{name}: the KubernetesPodOperator needs the container named base"
        assert container["command"] == ["python", "-m", "pipelines"]
        assert {"secretRef": {"name": rt.s3_secret_name}} in container["envFrom"], name
        assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
        assert spec["securityContext"]["runAsNonRoot"] is True
    cpu = manifests["pod-template.yaml"][0]["spec"]
    assert "nvidia.com/gpu" not in cpu["containers"][0]["resources"]["limits"]
    assert "tolerations" not in cpu


def test_k8s_train_template_requests_gpu_and_tolerates_taint(manifests):
    rt = RuntimeSettings()
    spec = manifests["pod-template-train.yaml"][0]["spec"]
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == str(rt.gpu_count)
    assert spec["nodeSelector"] == rt.gpu_node_selector
    assert {"key": rt.gpu_toleration_key, "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]


def test_k8s_rbac_lets_airflow_launch_and_read_step_pods(manifests):
    rt = RuntimeSettings()
    docs = manifests["rbac.yaml"]
    accounts = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceAccount"}
    assert rt.service_account in accounts
    assert "eks.amazonaws.com/role-arn" in accounts[rt.service_account]["metadata"]["annotations"]
    role = next(d for d in docs if d["kind"] == "Role")
    grants = {(res, verb) for rule in role["rules"] for res in rule["resources"] for verb in rule["verbs"]}
    assert {("pods", "create"), ("pods", "delete"), ("pods/log", "get"), ("pods/exec", "create")} <= grants
    assert ("secrets", "get") not in grants
    secret = manifests["s3-secret.example.yaml"][0]
    assert secret["metadata"]["name"] == rt.s3_secret_name
    assert all(v == "" for v in secret["stringData"].values()), "the example Secret must hold no value"
