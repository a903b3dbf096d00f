"""The step contract: a frozen :class:`StepContext` in, a small JSON-safe dict out."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from pipelines.config import Settings
from pipelines.storage import Storage, get_storage, join

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_run_id(run_id: str) -> str:
    """Make an Airflow run id (``manual__2026-01-01T00:00:00+00:00``) safe as a path segment."""
    cleaned = _SAFE.sub("_", run_id).strip("_.")
    if not cleaned:
        raise ValueError(f"run_id={run_id!r} has no usable characters; expected letters, digits, '.', '_' or '-'")
    return cleaned


@dataclass(frozen=True)
class StepContext:
    """Everything a step may use. Steps never read the clock or the environment.

    Attributes:
        step: the step's name.
        run_id: the pipeline run id (the Airflow run id, or any id on the CLI).
        settings: the validated settings (run-level overrides already applied).
        inputs: named upstream URIs (``batch_uri``, ``accepted_uri``, ``model_uri`` ...).
        params: run-level parameters (``force_action``, ``promotion`` ...).
        partition: the data interval start, as an ISO string, when there is one.
        mlflow_parent_run_id: the MLflow parent run of this pipeline run, when known.
        dag_id: the orchestrating DAG's id, for lineage tags.
    """

    step: str
    run_id: str
    settings: Settings
    inputs: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    partition: str | None = None
    mlflow_parent_run_id: str | None = None
    dag_id: str | None = None

    @property
    def storage(self) -> Storage:
        return get_storage(self.settings)

    @property
    def run_uri(self) -> str:
        """The run's artifact folder: ``<artifact_root>/runs/<run_id>``."""
        return self.settings.uri(self.settings.paths.runs, safe_run_id(self.run_id))

    @property
    def step_uri(self) -> str:
        """This step's output folder: ``<artifact_root>/runs/<run_id>/<step>``."""
        return join(self.run_uri, self.step)

    def output(self, name: str) -> str:
        """URI of an output file of this step."""
        return join(self.step_uri, name)

    def require(self, name: str) -> str:
        """The input named ``name``.

        Raises:
            ValueError: the input is missing; the message names it and the step.
        """
        value = self.inputs.get(name)
        if not value:
            given = ", ".join(sorted(self.inputs)) or "none"
            raise ValueError(
                f"step {self.step!r} needs input {name!r} (given: {given}); pass it as --input {name}=URI on the CLI"
            )
        return value

    def result_of(self, step: str) -> dict[str, Any] | None:
        """The ``result.json`` an earlier step wrote for this run, or None."""
        uri = join(self.run_uri, step, "result.json")
        if not self.storage.exists(uri):
            return None
        return json.loads(self.storage.read_text(uri))

    def with_step(self, step: str) -> StepContext:
        from dataclasses import replace

        return replace(self, step=step)
