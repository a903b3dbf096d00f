"""run_step: runs the named step, writes its JSON summary to result.json in the step folder and returns that summary.

The real ``decide`` step (forced, so it needs no upstream result) and small step modules written into a temporary
folder (added to ``STEPS`` for the test) stand in for the heavy steps.
"""

from __future__ import annotations

import json
import textwrap

import pytest
from registry_doubles import make_registry_settings

from pipelines.context import StepContext, StepInput, StepSpec
from pipelines.io.tracking import TAG_PIPELINE_RUN, TAG_STEP, configure, experiment_id
from pipelines.runner import STEPS, outcome_lines, run_step


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    """One store for the module (creating an MLflow SQLite store costs seconds); each test uses its own run id."""
    return make_registry_settings(tmp_path_factory.mktemp("steps"))


@pytest.fixture
def step_module(tmp_path, monkeypatch):
    """Write ``code`` as an importable module and register it as step ``name``."""
    folder = tmp_path / "steps_src"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))

    def make(name: str, code: str, inputs: tuple[str, ...] = ()) -> None:
        (folder / f"_test_step_{name}.py").write_text(textwrap.dedent(code))
        declared = tuple(StepInput(n, None) for n in inputs)
        monkeypatch.setitem(STEPS, name, StepSpec(f"_test_step_{name}", "a test step", inputs=declared))

    return make


def test_run_step_unknown_step_names_it_and_the_known_steps(settings):
    ctx = StepContext(step="fly", run_id="r-fly", settings=settings)
    with pytest.raises(ValueError, match=r"unknown step 'fly'; expected one of: validate, drift, decide, train"):
        run_step(ctx)
    assert not ctx.storage.exists(ctx.output("result.json"))


def test_run_step_refuses_an_input_the_step_does_not_declare(settings):
    ctx = StepContext(step="decide", run_id="r-undeclared", settings=settings, inputs={"model_uri": "/m"})
    with pytest.raises(ValueError, match=r"step 'decide' takes no input 'model_uri' \(it takes: drift_result_uri"):
        run_step(ctx)
    assert not ctx.storage.exists(ctx.output("result.json"))


def test_run_step_writes_the_summary_it_returns(settings):
    ctx = StepContext(step="decide", run_id="r-decide", settings=settings, params={"force_action": "retrain"})
    out = run_step(ctx)
    assert out["action"] == "retrain" and out["forced"] is True
    assert out["step"] == "decide" and out["compute_s"] >= 0
    assert json.loads(ctx.storage.read_text(ctx.output("result.json"))) == out


def test_run_step_result_is_json_safe_and_keeps_the_steps_own_step_key(settings, step_module):
    step_module(
        "echo",
        """
        from datetime import datetime, timezone
        from pathlib import Path

        def run(ctx):
            return {"uri": Path(ctx.output("x")), "at": datetime(2026, 1, 2, tzinfo=timezone.utc), "step": "echo2"}
        """,
    )
    ctx = StepContext(step="echo", run_id="r-echo", settings=settings)
    out = run_step(ctx)
    assert out["uri"] == ctx.output("x") and ctx.output("x").endswith("/var/runs/r-echo/echo/x")
    assert out["at"] == "2026-01-02 00:00:00+00:00"
    assert out["step"] == "echo2"  # a step's own "step" is kept (setdefault)
    stored = json.loads(ctx.storage.read_text(ctx.output("result.json")))
    assert stored == out


def test_run_step_failing_step_leaves_no_summary(settings, step_module):
    step_module(
        "broken",
        """
        def run(ctx):
            raise FileNotFoundError(f"no batch at {ctx.require('batch_uri')!r}")
        """,
        inputs=("batch_uri",),
    )
    ctx = StepContext(step="broken", run_id="r-broken", settings=settings, inputs={"batch_uri": "/nowhere.csv"})
    with pytest.raises(FileNotFoundError, match="no batch at '/nowhere.csv'"):
        run_step(ctx)
    assert not ctx.storage.exists(ctx.output("result.json"))


def test_run_step_hands_on_the_nested_mlflow_run_of_a_logging_step(settings, step_module):
    step_module(
        "logs",
        """
        import mlflow

        from pipelines.io.tracking import step_run

        def run(ctx):
            with step_run(ctx):
                mlflow.log_metric("rows", 3)
            return {"rows": 3}
        """,
    )
    out = run_step(StepContext(step="logs", run_id="r-logs", settings=settings))
    client = configure(settings)
    exp = experiment_id(settings)
    runs = client.search_runs([exp], f"tags.`{TAG_STEP}` = 'logs' and tags.`{TAG_PIPELINE_RUN}` = 'r-logs'")
    assert len(runs) == 1 and runs[0].data.metrics["rows"] == 3
    assert (out["mlflow_experiment_id"], out["mlflow_run_id"]) == (exp, runs[0].info.run_id)


def test_run_step_keeps_the_run_id_a_step_reported_itself(settings, step_module):
    step_module("own", "def run(ctx):\n    return {'mlflow_run_id': 'abc'}\n")
    out = run_step(StepContext(step="own", run_id="r-own", settings=settings))
    assert out["mlflow_run_id"] == "abc" and "mlflow_experiment_id" not in out


def test_outcome_lines_validate_failure_names_the_batch_and_the_first_failures():
    failures = [f"check {i}" for i in range(7)]
    (line,) = outcome_lines("validate", {"passed": False, "batch_id": "b7", "failures": failures})
    assert (
        line == "validate: batch b7 FAILED validation and was quarantined: check 0; check 1; check 2; check 3; check 4"
    )


def test_outcome_lines_validate_duplicate_and_drift_tests():
    (line,) = outcome_lines(
        "validate", {"passed": True, "batch_id": "b", "rows": 10, "accepted_uri": "u", "duplicate_of": "a"}
    )
    assert line == "validate: batch b passed (10 rows) -> u; identical to a (duplicate: it will be skipped)"
    lines = outcome_lines(
        "drift",
        {"severity": "none", "tests": {"mmd": {"statistic": 0.1, "p_value": 0.5, "threshold": 0.05}}},
    )
    assert lines == [
        "drift: severity none (rule: -)",
        "drift:   mmd: statistic 0.100, p 0.5000 against 0.0500: no drift",
    ]


def test_outcome_lines_missing_or_odd_numbers_print_a_dash():
    (line,) = outcome_lines("compress", {"level": "int8", "agreement": None, "size_mb": True})
    assert line == "compress: level int8, agreement with fp32 -, size - MB"
    assert outcome_lines("nonexistent", {"x": 1}) == []
