"""Bad configuration and bad CLI input: each one line on stderr, the exact exit code, nothing written.

The exit-code contract (pipelines.cli): 2 = permanent (no retry), 3 = transient (retry), 1 = a bug (traceback).
The last tests check that the step operator keeps that contract in each runtime: exit 2 (or a permanent error in
process) fails the task with AirflowFailException, so Airflow does not retry it; a transient one is retried.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_")}
    env.update({"PYTHONPATH": str(REPO), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"})
    env.update(extra)
    return env


def _cli(*args: str, root: Path, **env: str) -> subprocess.CompletedProcess:
    env.setdefault("MLOPS_PATHS__ARTIFACT_ROOT", str(root / "var"))
    env.setdefault("MLOPS_MLFLOW__TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    return subprocess.run(
        [sys.executable, "-m", "pipelines", *args],
        capture_output=True,
        text=True,
        cwd=root,
        env=_clean_env(**env),
        timeout=120,
    )


def _error_line(out: subprocess.CompletedProcess) -> str:
    """The one error line; logging lines may precede it, a traceback may not appear."""
    assert "Traceback" not in out.stderr, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1, out.stderr
    assert out.stderr.rstrip().splitlines()[-1] == errors[0], "the error line must be the last line"
    return errors[0]


def _nothing_written(root: Path) -> None:
    assert not (root / "var").exists(), sorted(str(p) for p in (root / "var").rglob("*"))


# --- configuration -----------------------------------------------------------------------------------------
def test_empty_artifact_root_is_refused(tmp_path):
    out = _cli("decide", "--run-id", "r1", root=tmp_path, MLOPS_PATHS__ARTIFACT_ROOT="")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: invalid configuration: paths.artifact_root='': must name a folder or an s3://bucket[/prefix], not an "
        "empty path or '/' (set it in config/default.yaml or MLOPS_PATHS__ARTIFACT_ROOT)"
    ]
    assert not (tmp_path / "runs").exists()


def test_slash_artifact_root_is_refused(tmp_path):
    out = _cli("decide", "--run-id", "r1", root=tmp_path, MLOPS_PATHS__ARTIFACT_ROOT="/")
    assert out.returncode == 2
    assert _error_line(out).startswith("error: invalid configuration: paths.artifact_root='/': must name a folder")
    assert not Path("/runs").exists()


def test_s3_root_without_bucket_is_refused(tmp_path):
    out = _cli("decide", "--run-id", "r1", root=tmp_path, MLOPS_PATHS__ARTIFACT_ROOT="s3:///prefix")
    assert out.returncode == 2
    assert "paths.artifact_root='s3:///prefix': 's3:///prefix' names no valid bucket" in _error_line(out)


def test_folder_escaping_the_root_is_refused(tmp_path):
    out = _cli("decide", "--run-id", "r1", root=tmp_path, MLOPS_PATHS__QUARANTINE="../../etc")
    assert out.returncode == 2
    assert "paths.quarantine='../../etc': must stay inside paths.artifact_root (no '..')" in _error_line(out)
    _nothing_written(tmp_path)


def test_unknown_mlops_variable_names_the_closest_setting(tmp_path):
    out = _cli("decide", "--run-id", "r1", root=tmp_path, MLOPS_GATES_MIN_MACRO_F1="0.9")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: unknown environment variable MLOPS_GATES_MIN_MACRO_F1: no such setting; did you mean "
        "'MLOPS_GATES__MIN_MACRO_F1'? (settings are MLOPS_<SECTION>__<KEY>)"
    ]
    _nothing_written(tmp_path)


def test_unknown_nested_mlops_variable_names_the_closest_setting(tmp_path):
    out = _cli("decide", "--run-id", "r1", root=tmp_path, MLOPS_DRIFT__P_TRESHOLD="0.05")
    assert out.returncode == 2
    assert "MLOPS_DRIFT__P_TRESHOLD: no such setting; did you mean 'MLOPS_DRIFT__P_THRESHOLD'?" in _error_line(out)


def test_documented_non_setting_variables_are_accepted(tmp_path):
    from pipelines.config import NOT_SETTINGS

    extra = {name: "x" for name in NOT_SETTINGS if name not in {"MLOPS_CONFIG_FILE", "MLOPS_DEBUG"}}
    out = _cli("decide", "--run-id", "r1", "--param", 'force_action="retrain"', root=tmp_path, **extra)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["action"] == "retrain"


def test_unknown_yaml_key_names_line_and_closest_setting(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("registry:\n  model_name: m\ngates:\n  min_macro_f: 0.5\n")
    out = _cli("decide", "--run-id", "r1", root=tmp_path, MLOPS_CONFIG_FILE=str(config))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"error: config file {str(config)!r}, line 4: unknown setting 'gates.min_macro_f'; did you mean "
        "'gates.min_macro_f1'?"
    ]


def test_unknown_yaml_section_names_the_closest_section(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("gate:\n  min_macro_f1: 0.5\n")
    out = _cli("decide", "--run-id", "r1", root=tmp_path, MLOPS_CONFIG_FILE=str(config))
    assert out.returncode == 2
    assert (
        _error_line(out) == f"error: config file {str(config)!r}, line 1: unknown setting 'gate'; did you mean 'gates'?"
    )


def test_bad_yaml_is_one_line_with_file_and_line(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("registry:\n  model_name: m\n  promotion: [manual\ndrift:\n")
    out = _cli("decide", "--run-id", "r1", root=tmp_path, MLOPS_CONFIG_FILE=str(config))
    assert out.returncode == 2
    line = _error_line(out)
    assert line == (
        f"error: config file {str(config)!r}, line 4, column 6: not valid YAML: expected ',' or ']', but got ':'"
    )
    assert out.stderr.strip().splitlines() == [line]


def test_missing_config_file_is_one_line(tmp_path):
    out = _cli("decide", "--run-id", "r1", root=tmp_path, MLOPS_CONFIG_FILE=str(tmp_path / "nope.yaml"))
    assert out.returncode == 2
    assert _error_line(out) == f"error: MLOPS_CONFIG_FILE={str(tmp_path / 'nope.yaml')!r} does not exist"


def test_bogus_tracking_uri_is_refused(tmp_path):
    out = _cli("promote", "--run-id", "r1", root=tmp_path, MLOPS_MLFLOW__TRACKING_URI="bogus://nowhere")
    assert out.returncode == 2
    assert _error_line(out).startswith(
        "error: invalid configuration: mlflow.tracking_uri='bogus://nowhere': unsupported scheme 'bogus'; expected "
        "one of sqlite, postgresql"
    )


def test_tracking_uri_without_host_is_refused(tmp_path):
    out = _cli("promote", "--run-id", "r1", root=tmp_path, MLOPS_MLFLOW__TRACKING_URI="http://")
    assert out.returncode == 2
    assert "mlflow.tracking_uri='http://': 'http://' names no host" in _error_line(out)


def test_unknown_set_override_names_the_closest_setting(tmp_path):
    out = _cli("decide", "--run-id", "r1", "--set", "drift.p_treshold=0.1", root=tmp_path)
    assert out.returncode == 2
    assert _error_line(out) == "error: unknown setting 'drift.p_treshold'; did you mean 'drift.p_threshold'?"
    _nothing_written(tmp_path)


# --- arguments ---------------------------------------------------------------------------------------------
def test_s3_input_without_key_is_refused(tmp_path):
    out = _cli("drift", "--run-id", "r1", "--input", "accepted_uri=s3://bucket", root=tmp_path)
    assert out.returncode == 2
    assert _error_line(out) == ("error: input accepted_uri='s3://bucket' names no object: expected s3://bucket/key")
    _nothing_written(tmp_path)


def test_run_id_with_a_quote_is_refused(tmp_path):
    out = _cli("decide", "--run-id", "r1' or '1'='1", root=tmp_path)
    assert out.returncode == 2
    assert _error_line(out) == (
        "error: run id \"r1' or '1'='1\" is not allowed: use 1-250 of the characters A-Z a-z 0-9 _ . ~ : + -"
    )
    _nothing_written(tmp_path)


def test_run_id_with_a_slash_is_refused(tmp_path):
    out = _cli("decide", "--run-id", "../../x", root=tmp_path)
    assert out.returncode == 2
    assert "run id '../../x' is not allowed" in _error_line(out)
    _nothing_written(tmp_path)


def test_promote_with_promotion_bogus_is_refused(tmp_path):
    out = _cli("promote", "--run-id", "r1", "--param", "promotion=bogus", root=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: param promotion='bogus': Input should be 'config', 'manual' or 'auto'"
    ]
    assert not (tmp_path / "mlflow.db").exists(), "the registry was touched"


def test_unknown_param_names_the_closest_param(tmp_path):
    out = _cli("promote", "--run-id", "r1", "--param", "promtion=auto", root=tmp_path)
    assert out.returncode == 2
    assert _error_line(out).startswith("error: unknown param 'promtion'; did you mean 'promotion'?")


def test_param_without_equals_sign_is_refused(tmp_path):
    out = _cli("decide", "--run-id", "r1", "--param", "force_action", root=tmp_path)
    assert out.returncode == 2
    assert _error_line(out) == "error: --param 'force_action' must look like key=value"


def test_usage_error_is_one_line(tmp_path):
    out = _cli("decide", root=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: the following arguments are required: --run-id (see python -m pipelines decide --help)"
    ]


def test_debug_flag_adds_the_traceback(tmp_path):
    out = _cli("--debug", "decide", "--run-id", "r'1", root=tmp_path)
    assert out.returncode == 2
    assert "Traceback" in out.stderr
    assert out.stderr.rstrip().splitlines()[-1].startswith('error: run id "r\'1" is not allowed')


# --- injected faults ---------------------------------------------------------------------------------------
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_mlflow_server_is_transient_exit_3(tmp_path):
    uri = f"http://127.0.0.1:{_closed_port()}"
    out = _cli("promote", "--run-id", "r1", root=tmp_path, MLOPS_MLFLOW__TRACKING_URI=uri)
    assert out.returncode == 3
    line = _error_line(out)
    assert line.startswith(f"error (transient): API request to {uri}/api/2.0/mlflow/")
    assert "Connection refused" in line


def test_unexpected_error_keeps_its_traceback_and_exit_1(tmp_path, monkeypatch):
    from pipelines import cli

    monkeypatch.setenv("MLOPS_PATHS__ARTIFACT_ROOT", str(tmp_path / "var"))
    monkeypatch.setattr("pipelines.runner.run_step", lambda ctx: (_ for _ in ()).throw(KeyError("bug")))
    with pytest.raises(KeyError, match="bug"):
        cli.main(["decide", "--run-id", "r1"])


# --- the operator keeps the contract in each runtime -------------------------------------------------------
class _TI:
    def __init__(self) -> None:
        self.xcom: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.xcom[key] = value


def _context(params: dict | None = None) -> dict:
    return {"run_id": "manual__2026-11-23T00:00:00+00:00", "params": params or {}, "ti": _TI()}


def _operator(settings, step: str = "decide", **kwargs):
    from mlops_airflow.operators import RunStepOperator

    op = RunStepOperator(task_id=step, step=step, **kwargs)
    op.__dict__["base_settings"] = settings  # the cached_property, as get_settings() would give it
    return op


@pytest.fixture
def local_settings(tmp_path):
    from pipelines.config import get_settings

    return get_settings(paths__artifact_root=str(tmp_path / "var"))


def test_local_runtime_permanent_failure_is_not_retried(local_settings, tmp_path):
    from airflow.sdk.exceptions import AirflowFailException

    op = _operator(local_settings)  # decide without a drift result: a missing input, exit code 2
    with pytest.raises(AirflowFailException, match=r"^step 'decide' failed: .*drift"):
        op.execute(_context())
    assert not (tmp_path / "var" / "runs").exists() or not list((tmp_path / "var" / "runs").rglob("result.json"))


def test_local_runtime_bad_param_is_not_retried(local_settings):
    from airflow.sdk.exceptions import AirflowFailException

    op = _operator(local_settings, step="promote", step_params={"promotion": "bogus"})
    with pytest.raises(
        AirflowFailException, match=r"param promotion='bogus': Input should be 'config', 'manual' or 'auto'"
    ):
        op.execute(_context())


def test_local_runtime_transient_failure_is_retried(local_settings, monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    from pipelines.errors import ServiceUnavailable

    def unreachable(ctx):
        raise ServiceUnavailable("MLflow at http://mlflow:5000 did not answer")

    monkeypatch.setattr("pipelines.runner.run_step", unreachable)
    with pytest.raises(ServiceUnavailable) as exc:
        _operator(local_settings).execute(_context())
    assert not isinstance(exc.value, AirflowFailException)


class _DockerAPI:
    """The Docker Engine API as DockerOperator uses it; the container 'exits' with ``code``."""

    def __init__(self, code: int, lines: list[str]) -> None:
        self.code, self.lines, self.removed = code, lines, []

    def images(self, name=None):
        return [{"Id": "sha256:x"}]

    def create_host_config(self, **kwargs):
        return kwargs

    def create_container(self, **kwargs):
        self.created = kwargs
        return {"Id": "c1"}

    def attach(self, **kwargs):
        return iter([(line + "\n").encode() for line in self.lines])

    def start(self, container_id):
        pass

    def wait(self, container_id):
        return {"StatusCode": self.code, "Error": None}

    def remove_container(self, container_id, **kwargs):
        self.removed.append(container_id)


def _docker_run(monkeypatch, code: int, lines: list[str]):
    from airflow.providers.docker.operators.docker import DockerOperator

    from pipelines.config import get_settings

    api = _DockerAPI(code, lines)
    hook = type("Hook", (), {"api_client": api})()
    monkeypatch.setattr(DockerOperator, "hook", property(lambda self: hook))
    op = _operator(get_settings(runtime__mode="docker", paths__artifact_root="s3://b/p"))
    return op, api


def test_docker_runtime_exit_2_is_not_retried(monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    op, api = _docker_run(monkeypatch, 2, ["error: param force_action='x' is not allowed"])
    with pytest.raises(AirflowFailException, match=r"failed in its docker container with exit code 2 .*not retried"):
        op.execute(_context())
    assert api.created["command"][:3] == ["decide", "--run-id", "manual__2026-11-23T00:00:00+00:00"]


def test_docker_runtime_exit_3_is_retried(monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    op, _ = _docker_run(monkeypatch, 3, ["error (transient): MLflow unreachable"])
    with pytest.raises(Exception, match=r"'StatusCode': 3") as exc:
        op.execute(_context())
    assert not isinstance(exc.value, AirflowFailException)


def test_docker_runtime_success_returns_the_summary(monkeypatch):
    op, _ = _docker_run(monkeypatch, 0, ["INFO step decide", '{"action": "retrain", "step": "decide"}'])
    assert op.execute(_context())["action"] == "retrain"


def _k8s_run(monkeypatch, code: int):
    """Run the real KubernetesPodOperator's cleanup (where it reads the exit code) on a pod whose base container
    terminated with ``code``; only its calls to the cluster are stubbed."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    from pipelines.config import get_settings

    def execute(self, context):
        status = k8s.V1ContainerStatus(
            name="base",
            image="mlops-step",
            image_id="x",
            ready=False,
            restart_count=0,
            state=k8s.V1ContainerState(terminated=k8s.V1ContainerStateTerminated(exit_code=code, reason="Error")),
        )
        remote = k8s.V1Pod(
            metadata=k8s.V1ObjectMeta(name="mlops-decide", namespace="mlops"),
            status=k8s.V1PodStatus(phase="Failed", container_statuses=[status]),
        )
        self.cleanup(pod=remote, remote_pod=remote, context=None)

    for name in ("patch_already_checked", "process_pod_deletion", "_read_pod_container_states", "_read_pod_events"):
        monkeypatch.setattr(KubernetesPodOperator, name, lambda self, *a, **k: None)
    monkeypatch.setattr(KubernetesPodOperator, "is_istio_enabled", lambda self, pod: False)  # no cluster to ask
    monkeypatch.setattr(KubernetesPodOperator, "execute", execute)
    return _operator(get_settings(runtime__mode="kubernetes"))


def test_kubernetes_runtime_exit_2_is_not_retried(monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    op = _k8s_run(monkeypatch, 2)
    with pytest.raises(AirflowFailException, match=r"failed in its kubernetes container with exit code 2"):
        op.execute(_context())


def test_kubernetes_runtime_exit_3_is_retried(monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    op = _k8s_run(monkeypatch, 3)
    with pytest.raises(Exception, match=r"returned a failure") as exc:
        op.execute(_context())
    assert not isinstance(exc.value, AirflowFailException | AirflowSkipException)
