"""DAG integrity: imports, parse time, heavy imports, edges, params, and the operator per runtime."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAG_FILES = sorted((REPO / "dags").glob("*.py"))
HEAVY = (
    "torch",
    "transformers",
    "great_expectations",
    "alibi_detect",
    "mlflow",
    "onnx",
    "onnxruntime",
    "pandas",
    "sklearn",
    "numpy",
)


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_dags_import_without_errors(dagbag):
    assert dagbag.import_errors == {}, f"import errors: {dagbag.import_errors}"
    assert set(dagbag.dag_ids) == {
        "continuous_training",
        "promote_or_rollback",
        "review_challenger",
        "monitor_predictions",
    }


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_parses_fast_without_heavy_imports(path):
    code = (
        "import sys, time, importlib.util, json\n"
        "import airflow.sdk\n"
        "t = time.process_time()\n"
        f"spec = importlib.util.spec_from_file_location('dagfile', {str(path)!r})\n"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        "took = time.process_time() - t\n"
        f"print(json.dumps({{'s': took, 'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))\n"
    )
    env = {**__import__("os").environ, "PYTHONPATH": f"{REPO}:{REPO / 'plugins'}"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["heavy"] == [], f"{path.name} imports heavy libraries at parse time: {got['heavy']}"
    assert got["s"] < 0.5, f"{path.name} took {got['s']:.3f}s of CPU to parse"


def _edges(dag):
    return {(t.task_id, d) for t in dag.tasks for d in t.downstream_task_ids}


def test_continuous_training_edges(dagbag):
    dag = dagbag.dags["continuous_training"]
    assert _edges(dag) == {
        ("pick_batch", "validate"),
        ("validate", "drift"),
        ("drift", "decide"),
        ("decide", "route"),
        ("route", "skip"),
        ("route", "train"),
        ("train", "compress"),
        ("compress", "evaluate"),
        ("evaluate", "gate"),
        ("gate", "gate_failed"),
        ("gate", "register"),
        ("register", "request_review"),
    }
    # One run at a time: two runs never pick the same landing batch, and since no task waits for a human, a run
    # holds the slot only while it works.
    assert dag.max_active_runs == 1
    assert "mlops" in dag.tags
    for task in dag.tasks:
        if task.task_type == "RunStepOperator":
            assert task.retries >= 1, f"continuous_training.{task.task_id} has no retries"
        assert not task.task_type.endswith(("Sensor", "HITLOperator", "ReviewOperator")), task.task_id
    assert [a.name for a in dag.get_task("request_review").outlets] == ["mlops_challenger"]


def test_review_challenger_is_started_by_the_challenger_asset(dagbag):
    from airflow.providers.standard.operators.hitl import HITLOperator

    dag = dagbag.dags["review_challenger"]
    assert _edges(dag) == {("review", "promote")}
    assert [a.name for a in dag.timetable.asset_condition.objects] == ["mlops_challenger"]
    review = dag.get_task("review")
    assert isinstance(review, HITLOperator) and review.options == ["Approve", "Reject"]
    assert "comment" in review.params
    assert review.response_timeout is not None


def test_monitor_predictions_edges_schedule_and_trigger(dagbag):
    dag = dagbag.dags["monitor_predictions"]
    assert _edges(dag) == {
        ("monitor", "route"),
        ("route", "done"),
        ("route", "ask_for_labels"),
        ("route", "trigger_training"),
    }
    assert dag.max_active_runs == 1 and "monitoring" in dag.tags
    assert type(dag.timetable).__name__ == "CronTriggerTimetable"  # monitoring.schedule, hourly by default
    assert "window_end" in dag.get_task("monitor").step_params


def test_monitor_route_and_ask_for_labels():
    from airflow.sdk.exceptions import AirflowFailException

    from mlops_airflow import tasks

    assert tasks.choose_after_monitor({"status": "ok"}) == "done"
    assert tasks.choose_after_monitor({"status": "warn", "reasons": ["x"]}) == "done"
    assert tasks.choose_after_monitor({"status": "act", "labels_waiting": 2}) == "trigger_training"
    assert tasks.choose_after_monitor({"status": "act", "labels_waiting": 0}) == "ask_for_labels"
    with pytest.raises(AirflowFailException, match="no labelled batch waits in landing"):
        tasks.ask_for_labels({"status": "act", "window_id": "w", "reasons": ["estimated macro-F1 drop 0.2"]})
    from airflow.sdk.exceptions import DagRunTriggerException

    summary = {"window_id": "w1", "status": "act", "reasons": ["drop"], "estimate": {"macro_f1": 0.4}}
    with pytest.raises(DagRunTriggerException) as raised:
        tasks.trigger_training(summary)
    request = raised.value
    assert request.trigger_dag_id == "continuous_training" and request.dag_run_id == "monitor__w1"
    assert request.skip_when_already_exists is True  # a rerun of the window starts nothing
    assert request.conf["monitor_evidence"]["estimated_macro_f1"] == 0.4


def test_continuous_training_params_validate(dagbag):
    from airflow.sdk.definitions.param import ParamsDict

    dag = dagbag.dags["continuous_training"]
    params = ParamsDict(dag.params)
    params.validate()
    bad = ParamsDict(dag.params)
    with pytest.raises(Exception, match="force_action|'explode'"):
        bad["force_action"] = "explode"
        bad.validate()
    bad = ParamsDict(dag.params)
    with pytest.raises(Exception, match="drift_p_threshold|1.5"):
        bad["drift_p_threshold"] = 1.5
        bad.validate()


def test_trigger_forms_leave_optional_fields_unrequired_and_bound_numbers(dagbag):
    """Airflow 3's form marks a field required unless its type includes null, and sends null for a cleared field."""
    from airflow.sdk.definitions.param import ParamsDict

    from pipelines.config import get_settings

    s = get_settings()
    form = dagbag.dags["continuous_training"].params
    schema = {k: form.get_param(k).schema for k in form}
    described = {k: form.get_param(k).description or "" for k in form}
    optional = {k for k, sch in schema.items() if isinstance(sch.get("type"), list) and "null" in sch["type"]}
    assert optional == {"batch_uri", "drift_p_threshold", "min_macro_f1", "noninferiority_margin"}
    assert "Empty: the oldest batch waiting in landing" in described["batch_uri"]
    for name in ("drift_p_threshold", "min_macro_f1", "noninferiority_margin"):
        assert "minimum" in schema[name] and "maximum" in schema[name], name
    assert f"configured {s.drift.p_threshold:g}" in described["drift_p_threshold"]
    assert f"configured {s.registry.promotion}" in described["promotion"]
    cleared = ParamsDict(form)
    for name in optional:
        cleared[name] = None  # what the form sends for an emptied field
    cleared.validate()
    with pytest.raises(Exception, match="min_macro_f1|maximum"):
        too_high = ParamsDict(form)
        too_high["min_macro_f1"] = 5
        too_high.validate()
    for dag_id in ("promote_or_rollback", "review_challenger"):
        params = dagbag.dags[dag_id].params
        left = ParamsDict(params)
        for name in params:
            sch = params.get_param(name).schema
            if name != "action":
                assert "null" in sch["type"], f"{dag_id}.{name} would be marked required"
                left[name] = None
        left.validate()


def test_split_params_names_the_bad_param():
    from mlops_airflow.params import split_params

    step, overrides = split_params({"force_action": "retrain", "promotion": "manual", "min_macro_f1": 0.6})
    assert step == {"force_action": "retrain", "promotion": "manual"}
    assert overrides == {"gates.min_macro_f1": 0.6}
    with pytest.raises(ValueError, match="param promotion='auto' is refused: registry.promotion is 'manual'"):
        split_params({"promotion": "auto"})  # the form may lower the configured policy, never lift it
    with pytest.raises(ValueError, match="force_action='explode'"):
        split_params({"force_action": "explode"})
    with pytest.raises(ValueError, match="min_macro_f1='high'"):
        split_params({"min_macro_f1": "high"})


def _context(run_id="manual__2026-11-23T00:00:00+00:00"):
    return {"run_id": run_id, "params": {"force_action": "auto"}, "data_interval_start": None}


STEP_INPUTS = {
    "validate": {"batch_uri": "s3://b/landing/x.csv"},
    "drift": {"accepted_uri": "s3://b/accepted/x.parquet"},
    "decide": {},
    "train": {"accepted_uri": "s3://b/accepted/x.parquet"},
    "compress": {"model_uri": "s3://b/runs/r/train/model", "reference_uri": "s3://b/runs/r/train/reference"},
    "evaluate": {"served_uri": "s3://b/runs/r/compress/served", "eval_uri": "s3://b/runs/r/train/eval.parquet"},
    "register": {"served_uri": "s3://b/runs/r/compress/served"},
    "promote": {},
}


@pytest.mark.parametrize("step", list(STEP_INPUTS))
def test_docker_runtime_container_spec(step):
    from mlops_airflow.operators import RunStepOperator
    from pipelines.config import get_settings

    settings = get_settings(
        runtime__mode="docker",
        runtime__image="reg/mlops-step:1.2",
        runtime__mounts=["/data:/data"],
        paths__artifact_root="s3://b",
    )
    op = RunStepOperator(task_id=step, step=step)
    docker_op = op.container_operator(_context(), settings, {"force_action": "auto"}, STEP_INPUTS[step])
    assert type(docker_op).__name__ == "DockerOperator"
    assert docker_op.image == "reg/mlops-step:1.2"
    assert docker_op.command[:3] == [step, "--run-id", "manual__2026-11-23T00:00:00+00:00"]
    for key, value in STEP_INPUTS[step].items():
        assert f"{key}={value}" in docker_op.command
    assert docker_op.environment["MLOPS_PATHS__ARTIFACT_ROOT"] == "s3://b"
    assert [(m["Source"], m["Target"]) for m in docker_op.mounts] == [("/data", "/data")]


@pytest.mark.parametrize("step", list(STEP_INPUTS))
def test_kubernetes_runtime_pod_spec(step):
    from mlops_airflow.operators import K8S_XCOM_FILE, RunStepOperator
    from pipelines.config import get_settings

    settings = get_settings(runtime__mode="kubernetes", runtime__image="reg/mlops-step:1.2", runtime__namespace="ml")
    op = RunStepOperator(task_id=step, step=step)
    pod_op = op.container_operator(_context(), settings, {}, STEP_INPUTS[step])
    assert type(pod_op).__name__ == "KubernetesPodOperator"
    pod = pod_op.build_pod_request_obj(dry_run=True)
    container = pod.spec.containers[0]
    assert container.image == "reg/mlops-step:1.2"
    assert pod.metadata.namespace == "ml"
    assert container.command == ["python", "-m", "pipelines"]
    assert container.args[0] == step and container.args[-2:] == ["--result-file", K8S_XCOM_FILE]
    env = {e.name: e.value for e in container.env}
    assert env["MLOPS_RUNTIME__MODE"] == "kubernetes"
    assert container.env_from[0].secret_ref.name == settings.runtime.s3_secret_name
    assert pod.spec.service_account_name == settings.runtime.service_account
    limits = container.resources.limits
    if step == "train":
        assert limits["nvidia.com/gpu"] == "1"
        assert pod.spec.node_selector == settings.runtime.gpu_node_selector
        assert pod.spec.tolerations[0].key == "nvidia.com/gpu"
    else:
        assert "nvidia.com/gpu" not in limits
        assert not pod.spec.tolerations


def test_parse_summary_reads_last_json_line():
    from mlops_airflow.operators import _parse_summary

    assert _parse_summary(["log line", '{"passed": true}', "INFO trailing"], "validate") == {"passed": True}
    with pytest.raises(ValueError, match="no JSON summary"):
        _parse_summary(["nothing here"], "validate")


def test_kubernetes_runtime_uses_pod_templates():
    from mlops_airflow.operators import RunStepOperator
    from pipelines.config import get_settings

    settings = get_settings(
        runtime__mode="kubernetes",
        runtime__pod_template_file=str(REPO / "k8s" / "pod-template.yaml"),
        runtime__gpu_pod_template_file=str(REPO / "k8s" / "pod-template-train.yaml"),
    )
    for step in ("train", "validate"):
        op = RunStepOperator(task_id=step, step=step).container_operator(_context(), settings, {}, STEP_INPUTS[step])
        pod = op.build_pod_request_obj(dry_run=True)
        container = pod.spec.containers[0]
        assert container.args[0] == step, "the operator's command wins over the template's"
        assert pod.spec.security_context.run_as_non_root is True, "the template's security context is kept"
        volumes = {v.name for v in pod.spec.volumes}
        if step == "train":
            assert "dshm" in volumes and container.resources.limits["nvidia.com/gpu"] == "1"
        else:
            assert "nvidia.com/gpu" not in (container.resources.limits or {})
