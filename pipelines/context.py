"""The step contract: a frozen :class:`StepContext` in, a small JSON-safe dict out; and what every step reads.

:data:`SPECS` declares, once, each step's module, the inputs it takes (a URI handed in: by the DAG from an
earlier task's XCom, by ``--input NAME=URI`` on the CLI, or as a container argument) and the earlier steps whose
summary (``result.json`` of the same run) it reads. The DAG's task inputs, the CLI's ``--help`` and its input
check come from this table, and a step can read nothing else: :meth:`StepContext.require` and
:meth:`StepContext.result_of` refuse an undeclared name, and :func:`pipelines.runner.run_step` refuses an undeclared
input.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from typing import Any

from pipelines import summaries
from pipelines.config import Settings
from pipelines.io.storage import Storage, get_storage, join

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class StepInput:
    """One URI a step takes.

    Attributes:
        name: the key in ``ctx.inputs`` (``--input NAME=URI`` on the CLI).
        source: where a pipeline run takes it from: ``"<task>.<key>"`` (a key of an earlier task's summary) or
            ``"<task>"`` (the task's whole return value); None when only a caller passes it.
        required: False when the step works without it.
        doc: what it is, for ``--help``.
    """

    name: str
    source: str | None
    required: bool = True
    doc: str = ""


@dataclass(frozen=True)
class StepSpec:
    """What a step is and what it may read."""

    module: str
    help: str
    inputs: tuple[StepInput, ...] = ()
    reads: tuple[str, ...] = ()  # earlier steps whose result.json (this run) the step reads
    summary: type | None = None  # the TypedDict its summary satisfies (pipelines.summaries)

    def input(self, name: str) -> StepInput | None:
        return next((i for i in self.inputs if i.name == name), None)


_ACCEPTED = StepInput("accepted_uri", "validate.accepted_uri", doc="the accepted batch (Parquet)")

#: Every step, in the loop's order: its module, its inputs and the earlier results it reads.
SPECS: dict[str, StepSpec] = {
    "validate": StepSpec(
        "pipelines.steps.validate",
        "check a landing batch with Great Expectations; accept or quarantine it",
        inputs=(StepInput("batch_uri", "pick_batch", doc="a CSV or Parquet file in the landing folder"),),
        summary=summaries.ValidateSummary,
    ),
    "drift": StepSpec(
        "pipelines.steps.drift",
        "compare an accepted batch with the champion's reference (alibi-detect)",
        inputs=(
            _ACCEPTED,
            StepInput("reference_uri", None, required=False, doc="a drift reference folder instead of the champion's"),
        ),
        summary=summaries.DriftSummary,
    ),
    "decide": StepSpec(
        "pipelines.steps.decide",
        "map the drift result and params to skip / fine_tune / retrain",
        inputs=(
            StepInput("drift_result_uri", None, required=False, doc="a drift result.json instead of this run's"),
            StepInput("validate_result_uri", None, required=False, doc="a validate result.json instead of this run's"),
            StepInput("accepted_uri", None, required=False, doc="the batch, when no drift result names it"),
        ),
        reads=("drift", "validate"),
        summary=summaries.DecideSummary,
    ),
    "train": StepSpec(
        "pipelines.steps.train",
        "fine-tune or retrain the transformer classifier",
        inputs=(
            _ACCEPTED,
            StepInput("champion_model_uri", None, required=False, doc="an fp32 model folder to fine-tune"),
        ),
        reads=("decide",),
        summary=summaries.TrainSummary,
    ),
    "compress": StepSpec(
        "pipelines.steps.compress",
        "prune, export to ONNX, quantize; build the served pyfunc model",
        inputs=(
            StepInput("model_uri", "train.model_uri", doc="the trained fp32 model folder"),
            StepInput("reference_uri", "train.reference_uri", doc="its drift reference folder"),
            StepInput("eval_uri", "train.eval_uri", required=False, doc="the evaluation set (agreement sample)"),
        ),
        summary=summaries.CompressSummary,
    ),
    "evaluate": StepSpec(
        "pipelines.steps.evaluate",
        "gate the served candidate against floors, the champion and its slices",
        inputs=(
            StepInput("served_uri", "compress.served_uri", doc="the served model folder"),
            StepInput("eval_uri", "train.eval_uri", doc="the evaluation set (Parquet)"),
        ),
        summary=summaries.EvaluateSummary,
    ),
    "register": StepSpec(
        "pipelines.steps.register",
        "register the candidate as a model version and stage it as challenger",
        inputs=(StepInput("served_uri", "compress.served_uri", doc="the served model folder"),),
        reads=("validate", "drift", "decide", "train", "compress", "evaluate"),
        summary=summaries.RegisterSummary,
    ),
    "promote": StepSpec(
        "pipelines.steps.promote",
        "apply a review decision or the auto policy to the challenger",
        summary=summaries.PromoteSummary,
    ),
    "monitor": StepSpec(
        "pipelines.steps.monitor",
        "rate one window of captured predictions (drift, estimated macro-F1, system figures)",
        summary=summaries.MonitorSummary,
    ),
}


def spec(step: str) -> StepSpec:
    """The declaration of ``step``.

    Raises:
        ValueError: the step is unknown.
    """
    if step not in SPECS:
        raise ValueError(f"unknown step {step!r}; expected one of: {', '.join(SPECS)}")
    return SPECS[step]


def safe_run_id(run_id: str) -> str:
    """Make an Airflow run id (``manual__2026-01-01T00:00:00+00:00``) safe as a path segment.

    An id that had to be changed gets a short hash of the original, so two ids that clean to the same text
    (``a:b`` and ``a_b``) never share a run folder.
    """
    cleaned = _SAFE.sub("_", run_id).strip("_.")
    if not cleaned:
        raise ValueError(f"run_id={run_id!r} has no usable characters; expected letters, digits, '.', '_' or '-'")
    if cleaned != run_id:
        cleaned += "-" + hashlib.sha256(run_id.encode()).hexdigest()[:8]
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
        self._declared_input(name)
        value = self.inputs.get(name)
        if not value:
            given = ", ".join(sorted(self.inputs)) or "none"
            raise ValueError(
                f"step {self.step!r} needs input {name!r} (given: {given}); pass it as --input {name}=URI on the CLI"
            )
        return value

    def get(self, name: str) -> str | None:
        """The optional input named ``name``, or None (it must be declared)."""
        self._declared_input(name)
        return self.inputs.get(name) or None

    def result_of(self, step: str) -> dict[str, Any] | None:
        """The ``result.json`` an earlier step wrote for this run, or None.

        Raises:
            ValueError: this step does not declare that it reads ``step``'s result (:data:`SPECS`).
        """
        if self.step in SPECS and step not in SPECS[self.step].reads:
            raise ValueError(
                f"step {self.step!r} reads the result of {step!r} without declaring it in pipelines.context.SPECS"
            )
        uri = join(self.run_uri, step, "result.json")
        if not self.storage.exists(uri):
            return None
        return json.loads(self.storage.read_text(uri))

    def _declared_input(self, name: str) -> None:
        if self.step in SPECS and SPECS[self.step].input(name) is None:
            raise ValueError(f"step {self.step!r} reads input {name!r} without declaring it in pipelines.context.SPECS")

    def with_step(self, step: str) -> StepContext:
        return replace(self, step=step)
