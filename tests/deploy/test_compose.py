"""docker-compose.yaml and .env.example: valid for docker-compose, complete, and configured only by real settings."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pipelines.config import Settings, get_settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"
_VAR = re.compile(r"\$\{([A-Z0-9_]+)(?:(:?[-?])([^}]*))?\}")
AIRFLOW_SERVICES = ("airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")
ONE_SHOT = ("postgres-init", "minio-init", "mlflow-users-init", "airflow-init", "step-image")


def _env_example() -> dict[str, str]:
    env = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    return env


def _interpolate(text: str, env: dict[str, str]) -> str:
    def repl(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if op and op.endswith("-"):
            return arg
        if op and op.endswith("?"):
            raise KeyError(f"{name}: {arg}")
        return ""

    return _VAR.sub(repl, text.replace("$$", "\0")).replace("\0", "$")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(_interpolate(COMPOSE.read_text(), _env_example()))


def _compose_cmd() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


def test_compose_config_accepted_by_docker_compose():
    cmd = _compose_cmd()
    if cmd is None:
        pytest.skip("docker-compose is not installed (scripts/install_container_tools.sh installs it)")
    proc = subprocess.run(
        [*cmd, "-f", str(COMPOSE), "--env-file", str(ENV_EXAMPLE), "config", "-q"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


def test_compose_config_missing_secret_names_the_variable(tmp_path):
    cmd = _compose_cmd()
    if cmd is None:
        pytest.skip("docker-compose is not installed")
    env = {k: v for k, v in _env_example().items() if k != "POSTGRES_PASSWORD"}
    env_file = tmp_path / "env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    proc = subprocess.run(
        [*cmd, "-f", str(COMPOSE), "--env-file", str(env_file), "config", "-q"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "set POSTGRES_PASSWORD in .env" in proc.stderr


def test_compose_interpolation_requires_every_secret():
    with pytest.raises(KeyError, match="MLFLOW_ADMIN_PASSWORD"):
        _interpolate(COMPOSE.read_text(), {k: v for k, v in _env_example().items() if k != "MLFLOW_ADMIN_PASSWORD"})


def test_compose_mlops_variables_are_settings_keys(compose, monkeypatch):
    found: dict[str, str] = {}
    for name, service in compose["services"].items():
        env = service.get("environment") or {}
        assert isinstance(env, dict), f"service {name}: write environment as a mapping"
        found.update({k: str(v) for k, v in env.items() if k.startswith("MLOPS_")})
    assert found, "no MLOPS_ variable in docker-compose.yaml"
    for key in found:
        section, _, field = key.removeprefix("MLOPS_").lower().partition("__")
        assert section in Settings.model_fields, f"{key}: no settings section {section!r}"
        model = Settings.model_fields[section].annotation
        assert field in model.model_fields, f"{key}: no field {field!r} in section {section!r}"
    for key in [k for k in os.environ if k.startswith("MLOPS_")]:
        monkeypatch.delenv(key)
    for key, value in found.items():
        monkeypatch.setenv(key, value)
    settings = get_settings()
    assert settings.runtime.mode == "docker"
    assert settings.paths.artifact_root == "s3://mlops-data"
    assert settings.storage.s3_endpoint_url == "http://minio:9000"
    assert settings.runtime.docker_network == compose["networks"]["mlops"]["name"]


def test_compose_services_are_checked_and_ordered(compose):
    services = compose["services"]
    for name in ("postgres", "minio", "mlflow", *AIRFLOW_SERVICES):
        assert "healthcheck" in services[name], f"service {name}: no healthcheck"
    for name, service in services.items():
        deps = service.get("depends_on") or {}
        assert isinstance(deps, dict), f"service {name}: depends_on needs conditions"
        for dep, spec in deps.items():
            assert spec.get("condition") in {"service_healthy", "service_completed_successfully", "service_started"}
            if dep in ONE_SHOT:
                assert spec["condition"] == "service_completed_successfully", f"{name} -> {dep}"
            elif "healthcheck" in services[dep]:
                assert spec["condition"] == "service_healthy", f"{name} -> {dep}"
    scheduler = services["airflow-scheduler"]["depends_on"]
    assert {"mlflow", "step-image", "airflow-init"} <= set(scheduler)


def test_compose_airflow_runs_local_executor_with_docker_runtime(compose):
    services = compose["services"]
    commands = {services[s]["command"][0] for s in AIRFLOW_SERVICES}
    assert commands == {"api-server", "scheduler", "dag-processor", "triggerer"}
    for name in AIRFLOW_SERVICES:
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
        assert env["MLOPS_RUNTIME__MODE"] == "docker"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")


def test_compose_mlflow_has_basic_auth_and_s3_artifacts(compose):
    mlflow = compose["services"]["mlflow"]
    script = mlflow["command"][0]
    assert "--app-name basic-auth" in script
    assert '--artifacts-destination "s3://' in script
    assert mlflow["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")


def test_compose_volumes_are_named_and_ports_local(compose):
    declared = set(compose["volumes"])
    for name, service in compose["services"].items():
        for volume in service.get("volumes") or []:
            source = volume.split(":")[0]
            if not source.startswith("/"):
                assert source in declared, f"service {name}: volume {source!r} is not a named volume"
        for port in service.get("ports") or []:
            assert str(port).startswith("127.0.0.1:"), f"service {name}: port {port} is published beyond localhost"


def test_env_example_covers_required_variables_without_secrets():
    env = _env_example()
    required = {m.group(1) for m in _VAR.finditer(COMPOSE.read_text()) if m.group(2) == ":?"}
    assert required <= set(env), f"missing in .env.example: {sorted(required - set(env))}"
    for key, value in env.items():
        if re.search(r"PASSWORD|SECRET|FERNET", key):
            assert value.startswith("change-me"), f".env.example {key} must be a change-me placeholder"
    assert ".env" in (REPO / ".gitignore").read_text().splitlines()
