"""The step image in a real container, through the Docker API that the docker runtime speaks.

podman serves the Docker API here (``podman system service``); ``scripts/container_env.sh`` prepares it and builds
the image (from a debootstrapped base and a host wheelhouse; the first build takes minutes, later ones reuse the
cached layers). Marked ``containers``: excluded from ``make test``, run by ``make test-containers``. Skips where
podman is absent, or where the session is not root and no prepared socket is named by ``MLOPS_TEST_DOCKER_URL``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

# The first preparation builds a base image and three images (about 10 minutes on 2 cores); later runs reuse them.
pytestmark = [pytest.mark.containers, pytest.mark.timeout(3600)]

REPO = Path(__file__).resolve().parents[2]
GOOD = "batch_001_in_domain"
BAD = "batch_004_malformed"


def _prepare(what: str = "all") -> dict[str, str]:
    start = time.monotonic()
    proc = subprocess.run(
        [str(REPO / "scripts" / "container_env.sh"), what], capture_output=True, text=True, timeout=3600
    )
    if proc.returncode != 0:
        pytest.fail(f"scripts/container_env.sh {what} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    env = {}
    for line in proc.stdout.splitlines():
        if line.startswith("export "):
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = value
    print(f"container_env.sh {what}: {time.monotonic() - start:.1f}s")
    return env


@pytest.fixture(scope="session")
def docker_setup() -> dict[str, str]:
    if shutil.which("podman") is None and "MLOPS_TEST_DOCKER_URL" not in os.environ:
        pytest.skip("podman is not installed (scripts/install_container_tools.sh installs it)")
    if "MLOPS_TEST_DOCKER_URL" in os.environ:
        env = {
            "MLOPS_TEST_DOCKER_URL": os.environ["MLOPS_TEST_DOCKER_URL"],
            "MLOPS_TEST_STEP_IMAGE": os.environ.get("MLOPS_TEST_STEP_IMAGE", "localhost/mlops-step:test"),
        }
    elif os.geteuid() != 0:
        pytest.skip("rootful podman and debootstrap need root; or set MLOPS_TEST_DOCKER_URL to a prepared socket")
    else:
        env = _prepare()
    return env


@pytest.fixture(scope="session")
def client(docker_setup):
    docker = pytest.importorskip("docker")
    cli = docker.DockerClient(base_url=docker_setup["MLOPS_TEST_DOCKER_URL"], timeout=600)
    cli.ping()
    yield cli
    cli.close()


@pytest.fixture(scope="session")
def image(docker_setup, client) -> str:
    name = docker_setup["MLOPS_TEST_STEP_IMAGE"]
    client.images.get(name)
    return name


@pytest.fixture
def root(tmp_path) -> Path:
    """An artifact root on the host holding the demo batches; bind-mounted at the same path into containers."""
    from pipelines.config import get_settings
    from pipelines.data.demo import write_demo_batches

    art = tmp_path / "art"
    write_demo_batches(get_settings(paths__artifact_root=str(art)), only=[GOOD, BAD])
    # The image runs as uid 10001: let it write under the root and move files out of landing/.
    for path in [art, *art.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)
    return art


def _run(client, image, root: Path, args: list[str], **kwargs):
    return client.containers.run(
        image,
        args,
        environment={
            "MLOPS_PATHS__ARTIFACT_ROOT": str(root),
            "MLOPS_MLFLOW__TRACKING_URI": f"sqlite:///{root}/mlflow.db",
        },
        volumes={str(root): {"bind": str(root), "mode": "rw"}},
        network_mode="none",
        remove=True,
        **kwargs,
    )


def test_step_image_entrypoint_is_the_cli_as_non_root(client, image):
    config = client.images.get(image).attrs["Config"]
    assert config["Entrypoint"] == ["python", "-m", "pipelines"]
    assert config["User"].split(":")[0] not in {"", "0", "root"}
    out = client.containers.run(image, ["--help"], network_mode="none", remove=True).decode()
    assert "validate" in out and "demo-data" in out


def test_validate_in_container_prints_summary_and_writes_result_json(client, image, root):
    run_id = f"ctr-{uuid.uuid4().hex[:8]}"
    start = time.monotonic()
    out = _run(client, image, root, ["validate", "--run-id", run_id, "--input", f"batch_uri={root}/landing/{GOOD}.csv"])
    elapsed = time.monotonic() - start
    summary = json.loads(out.decode().strip().splitlines()[-1])
    result_file = root / "runs" / run_id / "validate" / "result.json"
    assert json.loads(result_file.read_text()) == summary
    assert summary["passed"] is True and summary["rows"] == 400
    assert Path(summary["accepted_uri"]).is_file()
    assert not (root / "landing" / f"{GOOD}.csv").exists(), "the landing file stays after a verified accept"
    print(f"validate in a container: {elapsed:.1f}s")


def test_validate_in_container_fails_with_message_on_malformed_batch(client, image, root):
    import docker

    run_id = f"ctr-{uuid.uuid4().hex[:8]}"
    with pytest.raises(docker.errors.ContainerError) as info:
        _run(
            client,
            image,
            root,
            ["validate", "--run-id", run_id, "--input", f"batch_uri={root}/landing/{BAD}.csv"],
            stderr=True,
        )
    assert info.value.exit_status == 2
    stderr = info.value.stderr.decode() if isinstance(info.value.stderr, bytes) else str(info.value.stderr)
    assert "error:" in stderr and BAD in stderr
    assert any((root / "quarantine").rglob(f"{BAD}*")), "the malformed batch was not quarantined"


class _TaskInstance:
    """Collects the extra XComs (link URLs) the operator pushes; the return value is checked directly."""

    def __init__(self) -> None:
        self.pushed: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.pushed[key] = value


def test_validate_through_run_step_operator_docker_runtime(docker_setup, image, root, monkeypatch):
    operators = pytest.importorskip("mlops_airflow.operators", reason="the step operator (plugins/) is not importable")
    env = {
        "MLOPS_PATHS__ARTIFACT_ROOT": str(root),
        "MLOPS_MLFLOW__TRACKING_URI": f"sqlite:///{root}/mlflow.db",
        "MLOPS_RUNTIME__MODE": "docker",
        "MLOPS_RUNTIME__IMAGE": image,
        "MLOPS_RUNTIME__DOCKER_URL": docker_setup["MLOPS_TEST_DOCKER_URL"],
        "MLOPS_RUNTIME__DOCKER_NETWORK": "none",
        "MLOPS_RUNTIME__MOUNTS": json.dumps([f"{root}:{root}"]),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    run_id = f"ctr-{uuid.uuid4().hex[:8]}"
    op = operators.RunStepOperator(
        task_id="validate", step="validate", inputs={"batch_uri": f"{root}/landing/{GOOD}.csv"}
    )
    start = time.monotonic()
    ti = _TaskInstance()
    xcom = op.execute({"run_id": run_id, "params": {}, "data_interval_start": None, "ti": ti})
    elapsed = time.monotonic() - start
    result = json.loads((root / "runs" / run_id / "validate" / "result.json").read_text())
    assert xcom == result
    assert xcom["passed"] is True and xcom["batch_id"] == GOOD
    print(f"validate through RunStepOperator + DockerOperator: {elapsed:.1f}s")


@pytest.fixture(scope="session")
def other_image(docker_setup, client):
    """Build (or reuse) the airflow or mlflow target; only where this session prepared the environment itself."""

    def _build(target: str) -> str:
        if "MLOPS_TEST_DOCKER_URL" in os.environ:
            name = os.environ.get(f"MLOPS_TEST_{target.upper()}_IMAGE")
            if not name:
                pytest.skip(f"set MLOPS_TEST_{target.upper()}_IMAGE to test the {target} image")
        else:
            _prepare(f"{target}-image")
            name = f"localhost/mlops-{target}:test"
        client.images.get(name)
        return name

    return _build


def test_airflow_image_parses_the_dags(client, other_image):
    image = other_image("airflow")
    script = (
        "set -e; export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=sqlite:////tmp/airflow.db; "
        "airflow db migrate >/dev/null 2>&1; airflow dags reserialize >/dev/null 2>&1; "
        "airflow dags list -o json 2>/dev/null; echo; airflow dags list-import-errors -o json 2>/dev/null"
    )
    out = client.containers.run(image, ["-c", script], entrypoint="/bin/sh", network_mode="none", remove=True)
    lines = [line for line in out.decode().splitlines() if line.startswith("[")]
    dag_ids = {d["dag_id"] for d in json.loads(lines[0])}
    assert {"continuous_training", "promote_or_rollback"} <= dag_ids
    assert len(lines) == 1 or json.loads(lines[1]) == [], lines[1:]


def test_mlflow_image_requires_basic_auth(client, other_image):
    image = other_image("mlflow")
    password = "test-admin-password-0123"
    # The same start script as docker-compose.yaml's mlflow service, on SQLite and a local artifact folder.
    compose = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
    script = compose["services"]["mlflow"]["command"][0].replace("$$", "$")
    env = {
        "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        "MLFLOW_AUTH_CONFIG_PATH": "/data/basic_auth.ini",
        "MLFLOW_AUTH_DATABASE_URI": "sqlite:////data/auth.db",
        "MLFLOW_BACKEND_STORE_URI": "sqlite:////data/mlflow.db",
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret",
        "MLFLOW_ARTIFACT_BUCKET": "unused",
    }
    container = client.containers.run(
        image,
        [script.replace('"s3://$MLFLOW_ARTIFACT_BUCKET"', "/data/mlartifacts")],
        entrypoint=["/bin/sh", "-c"],
        environment=env,
        network_mode="none",
        detach=True,
    )
    probe = (
        "import base64, sys, time, urllib.error, urllib.request\n"
        "def get(path, auth=None):\n"
        "    req = urllib.request.Request('http://localhost:5000' + path)\n"
        "    if auth: req.add_header('Authorization', 'Basic ' + base64.b64encode(auth.encode()).decode())\n"
        "    try: return urllib.request.urlopen(req, timeout=60).status\n"
        "    except urllib.error.HTTPError as e: return e.code\n"
        "for _ in range(120):\n"
        "    try:\n"
        "        if get('/health') == 200: break\n"
        "    except OSError: time.sleep(1)\n"
        "q = '/api/2.0/mlflow/experiments/search?max_results=1'\n"
        "print(get(q), get(q, 'admin:wrong'), get(q, 'admin:' + sys.argv[1]))\n"
    )
    try:
        code, out = container.exec_run(["python", "-c", probe, password])
        assert code == 0, out.decode()
        assert out.decode().split() == ["401", "401", "200"]
    finally:
        container.remove(force=True)
