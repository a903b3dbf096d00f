"""``RunStepOperator``: runs one step of ``pipelines`` in the task process, a Docker container or a Kubernetes pod.

``runtime.mode`` in the configuration picks the runtime; the DAG is the same for all three. In the container
runtimes the step runs as ``python -m pipelines <step> ...`` in the step image and its JSON summary (the last
line of its output, or ``/airflow/xcom/return.json`` on Kubernetes) comes back as the task's XCom.

Retries follow the CLI's exit-code contract (:mod:`pipelines.cli`), decided by the error's type in every runtime:
a permanent failure (exit 2: bad config, input or data, a rejected model, a corrupt artifact) fails the task with
``AirflowFailException``, so it is not retried; a transient one (exit 3: MLflow or S3 unreachable) and an
unexpected one (exit 1) raise as they are, and Airflow retries them. In process the exception is classified by
:func:`pipelines.errors.exit_code`; the container operators are built with ``skip_on_exit_code=[2]``, so exit 2
comes back as the providers' skip exception (raised from the container's or pod's exit code), which this operator
turns into a failure, never a skip.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from mlops_airflow.links import MlflowRunLink, ModelVersionLink
from mlops_airflow.params import split_params

if TYPE_CHECKING:
    from airflow.sdk import Context

    from pipelines.config import Settings

#: Where the Kubernetes xcom sidecar reads a pod's result (fixed by the provider).
K8S_XCOM_FILE = "/airflow/xcom/return.json"
#: The CLI's exit code for a failure a retry cannot help (pipelines.errors.EXIT_PERMANENT).
PERMANENT_EXIT_CODES = [2]
#: Set when SIGTERM reached a step running in this process (``on_kill``); ``scripts/dag_runner.run_dag`` delivers the
#: signal again once ``dag.test()`` returns, so the process still stops.
TERMINATED = threading.Event()
#: Set by ``run_dag`` while it runs a DAG in this process: a step stopped then is not retried (the process is going
#: away). Under a worker, a stopped step is retried as configured (a worker's shutdown says nothing about the step).
IN_LINE = threading.Event()


def step_inputs(step: str) -> dict[str, str]:
    """XCom templates for the inputs ``step`` declares with a source in ``pipelines.context.SPECS``.

    A source ``"<task>.<key>"`` pulls that key of the task's summary; ``"<task>"`` pulls its whole return value.
    """
    from pipelines.context import spec

    templates = {}
    for declared in spec(step).inputs:
        if declared.source is None:
            continue
        task, _, key = declared.source.partition(".")
        pull = f"ti.xcom_pull(task_ids='{task}')"
        templates[declared.name] = "{{ " + (f"{pull}['{key}']" if key else pull) + " }}"
    return templates


class RunStepOperator(BaseOperator):
    """Run the product step ``step`` with templated ``inputs``.

    Args:
        step: a name from ``pipelines.runner.STEPS``.
        inputs: upstream URIs by name (templated); by default the XCom pulls the step declares
            (:func:`step_inputs`), so a DAG wires a step without naming its inputs.
        step_params: extra step params (templated); merged over the run's form params.
    """

    template_fields: Sequence[str] = ("inputs", "step_params")
    template_fields_renderers = {"inputs": "json", "step_params": "json"}
    operator_extra_links = (MlflowRunLink(), ModelVersionLink())
    ui_color = "#d6e9ff"

    def __init__(
        self,
        *,
        step: str,
        inputs: dict[str, str] | None = None,
        step_params: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.step = step
        self.inputs = step_inputs(step) if inputs is None else inputs
        self.step_params = step_params or {}
        self._container_op: BaseOperator | None = None

    # --- configuration ------------------------------------------------------------------------------
    @cached_property
    def base_settings(self) -> Settings:
        from pipelines.config import get_settings

        return get_settings()

    def resolve(self, context: Context) -> tuple[Settings, dict[str, Any], dict[str, str]]:
        """The run's settings (form overrides applied), step params, and non-empty inputs.

        Raises:
            ValueError: a form param, the run id or an input is invalid (names it), or the step is unknown.
        """
        from pipelines.cli import check_inputs, check_run_id
        from pipelines.config import check_params
        from pipelines.runner import STEPS

        if self.step not in STEPS:
            raise ValueError(f"task {self.task_id!r}: unknown step {self.step!r}; expected one of {list(STEPS)}")
        check_run_id(context["run_id"])
        params, overrides = split_params(dict(context.get("params") or {}))
        params.update({k: v for k, v in (self.step_params or {}).items() if v not in (None, "", "None")})
        check_params(params)
        settings = self.base_settings.with_overrides(overrides) if overrides else self.base_settings
        inputs = check_inputs({k: str(v) for k, v in (self.inputs or {}).items() if v not in (None, "", "None")})
        return settings, params, inputs

    # --- execution ----------------------------------------------------------------------------------
    def execute(self, context: Context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from pipelines.errors import EXIT_PERMANENT, exit_code, one_line

        _push_links(context)
        try:
            settings, params, inputs = self.resolve(context)
        except Exception as exc:
            if exit_code(exc) == EXIT_PERMANENT:
                raise AirflowFailException(f"task {self.task_id!r}: {one_line(exc)}") from None
            raise
        self.log.info("step %s, runtime %s, inputs %s, params %s", self.step, settings.runtime.mode, inputs, params)
        if settings.runtime.mode == "local":
            try:
                result = self._run_local(context, settings, params, inputs)
            except Exception as exc:
                if exit_code(exc) == EXIT_PERMANENT:  # bad input or data, a rejected model: a retry cannot help
                    raise AirflowFailException(f"step {self.step!r} failed: {one_line(exc)}") from exc
                raise  # transient (a service unreachable) or unexpected: Airflow retries
        else:
            self._container_op = self.container_operator(context, settings, params, inputs)
            try:
                raw = self._container_op.execute(context)
            except AirflowSkipException as exc:  # skip_on_exit_code: the step exited with EXIT_PERMANENT
                raise AirflowFailException(
                    f"step {self.step!r} failed in its {settings.runtime.mode} container with exit code "
                    f"{EXIT_PERMANENT} (permanent: see the task log for its error line); not retried"
                ) from exc
            result = _parse_summary(raw, self.step)
        _push_links(context, settings.mlflow.ui_url, result)
        return result

    def _run_local(
        self, context: Context, settings: Settings, params: dict[str, Any], inputs: dict[str, str]
    ) -> dict[str, Any]:
        from pipelines.context import StepContext
        from pipelines.runner import run_step

        ctx = StepContext(
            step=self.step,
            run_id=context["run_id"],
            settings=settings,
            inputs=inputs,
            params=params,
            partition=_partition(context),
            dag_id=self.dag_id,
        )
        return run_step(ctx)

    def cli_args(self, context: Context, params: dict[str, Any], inputs: dict[str, str]) -> list[str]:
        """Arguments after ``python -m pipelines`` for this step."""
        args = [self.step, "--run-id", context["run_id"], "--dag-id", self.dag_id]
        partition = _partition(context)
        if partition:
            args += ["--partition", partition]
        for key, value in sorted(inputs.items()):
            args += ["--input", f"{key}={value}"]
        for key, value in sorted(params.items()):
            args += ["--param", f"{key}={json.dumps(value)}"]
        return args

    def container_operator(
        self, context: Context, settings: Settings, params: dict[str, Any], inputs: dict[str, str]
    ) -> BaseOperator:
        """The DockerOperator or KubernetesPodOperator that runs this step (not yet executed)."""
        from pipelines.config import settings_env

        env = settings_env(settings)
        args = self.cli_args(context, params, inputs)
        task_id = f"{self.task_id}_{settings.runtime.mode}"
        if settings.runtime.mode == "docker":
            return _docker_operator(task_id, settings, env, args)
        if settings.runtime.mode == "kubernetes":
            return _pod_operator(task_id, self.step, settings, env, [*args, "--result-file", K8S_XCOM_FILE])
        raise ValueError(f"runtime.mode={settings.runtime.mode!r} has no container operator")

    def on_kill(self) -> None:
        """Airflow calls this on SIGTERM (a worker's shutdown, a killed task): stop the step's container, or the step
        running in this process. The latter fails at once, its cleanups running (temporary folders, the MLflow run
        ended as failed), instead of running on unnoticed: Airflow's handler only calls this and returns.

        Raises:
            AirflowFailException: the step was stopped in an in-line run (``IN_LINE``): not retried.
            AirflowException: the step was stopped under a worker: retried as configured.
        """
        if self._container_op is not None:
            self._container_op.on_kill()
            return
        from airflow.sdk.exceptions import AirflowException, AirflowFailException

        TERMINATED.set()
        message = f"task {self.task_id!r}: step {self.step!r} stopped by SIGTERM"
        raise (AirflowFailException if IN_LINE.is_set() else AirflowException)(message)


def _push_links(context: Context, ui_url: str = "", result: dict[str, Any] | None = None) -> None:
    # Both keys are always pushed (empty until known), so the UI's link lookup always finds them.
    result = result or {}
    ui = ui_url.rstrip("/")
    run_url = model_url = ""
    if result.get("mlflow_run_id") and result.get("mlflow_experiment_id"):
        run_url = f"{ui}/#/experiments/{result['mlflow_experiment_id']}/runs/{result['mlflow_run_id']}"
    if result.get("model_name") and result.get("version"):
        model_url = f"{ui}/#/models/{result['model_name']}/versions/{result['version']}"
    context["ti"].xcom_push(key=MlflowRunLink.key, value=run_url)
    context["ti"].xcom_push(key=ModelVersionLink.key, value=model_url)


def _partition(context: Context) -> str | None:
    start = context.get("data_interval_start")
    return start.isoformat() if start is not None else None


def _parse_summary(raw: Any, step: str) -> dict[str, Any]:
    """The step summary from a container operator's return value (a dict, a JSON string or log lines)."""
    if isinstance(raw, dict):
        return raw
    lines = raw if isinstance(raw, list) else [raw] if raw is not None else []
    for line in reversed(lines):
        text = line.decode() if isinstance(line, bytes) else str(line)
        text = text.strip()
        if text.startswith("{"):
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                continue
    raise ValueError(f"step {step!r}: the container printed no JSON summary as its last line")


def _docker_operator(task_id: str, settings: Settings, env: dict[str, str], args: list[str]) -> BaseOperator:
    from airflow.providers.docker.operators.docker import DockerOperator
    from docker.types import Mount

    mounts = []
    for spec in settings.runtime.mounts:
        source, _, target = spec.partition(":")
        if not target:
            raise ValueError(f"runtime.mounts entry {spec!r} must look like 'source:target'")
        mounts.append(Mount(target=target, source=source, type="bind"))
    return DockerOperator(
        task_id=task_id,
        image=settings.runtime.image,
        command=args,
        environment=env,
        private_environment=_aws_credentials(),
        docker_url=settings.runtime.docker_url,
        network_mode=settings.runtime.docker_network,
        mounts=mounts,
        mount_tmp_dir=False,
        auto_remove="success",
        skip_on_exit_code=PERMANENT_EXIT_CODES,  # turned into a failure without retry by RunStepOperator
        xcom_all=True,
        do_xcom_push=True,
        tty=False,
    )


def _aws_credentials() -> dict[str, str]:
    # Forwarded, not read as settings: the step container needs the worker's S3 credentials.
    import os

    keys = (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
    )
    return {k: os.environ[k] for k in keys if os.environ.get(k)}


def _pod_operator(task_id: str, step: str, settings: Settings, env: dict[str, str], args: list[str]) -> BaseOperator:
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    rt = settings.runtime
    gpu = step in rt.gpu_steps and rt.gpu_count > 0
    limits = {"memory": rt.memory_limit}
    if gpu:
        limits["nvidia.com/gpu"] = str(rt.gpu_count)
    template = rt.gpu_pod_template_file if gpu else rt.pod_template_file
    return KubernetesPodOperator(
        task_id=task_id,
        pod_template_file=template,
        name=f"mlops-{step}",
        namespace=rt.namespace,
        image=rt.image,
        cmds=["python", "-m", "pipelines"],
        arguments=args,
        env_vars=env,
        env_from=[k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=rt.s3_secret_name))],
        service_account_name=rt.service_account,
        container_resources=k8s.V1ResourceRequirements(
            requests={"cpu": rt.cpu_request, "memory": rt.memory_request}, limits=limits
        ),
        node_selector=dict(rt.gpu_node_selector) if gpu else None,
        tolerations=[k8s.V1Toleration(key=rt.gpu_toleration_key, operator="Exists", effect="NoSchedule")]
        if gpu
        else None,
        labels={"app.kubernetes.io/part-of": "mlops", "mlops/step": step},
        do_xcom_push=True,
        skip_on_exit_code=PERMANENT_EXIT_CODES,  # turned into a failure without retry by RunStepOperator
        get_logs=True,
        on_finish_action="delete_succeeded_pod",
    )
