"""The step contract's context: run-keyed output paths, named inputs, and the results of earlier steps."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from registry_doubles import make_registry_settings

from pipelines.context import SPECS, StepContext, safe_run_id


@pytest.fixture
def settings(tmp_path):
    return make_registry_settings(tmp_path)


def test_safe_run_id_airflow_run_id_becomes_one_path_segment():
    cleaned = safe_run_id("manual__2026-01-01T00:00:00+00:00")
    assert re.fullmatch(r"manual__2026-01-01T00_00_00_00_00-[0-9a-f]{8}", cleaned)
    assert safe_run_id("cli-run.1") == "cli-run.1"


def test_safe_run_id_traversal_stays_inside_the_runs_folder():
    for run_id, prefix in (("../../etc/passwd", "etc_passwd-"), ("a/../b", "a_.._b-")):
        cleaned = safe_run_id(run_id)
        assert cleaned.startswith(prefix) and "/" not in cleaned


def test_safe_run_id_ids_that_clean_alike_get_distinct_folders():
    ids = ["a:b", "a_b", "a+b", "a/b", "a__b"]
    assert len({safe_run_id(i) for i in ids}) == len(ids)
    assert safe_run_id("a_b") == "a_b"  # an id that is already safe is kept as it is


@pytest.mark.parametrize("run_id", ["", "///", "..", " :+ "])
def test_safe_run_id_without_usable_characters_is_refused(run_id):
    with pytest.raises(ValueError, match=r"has no usable characters; expected letters, digits, '\.', '_' or '-'"):
        safe_run_id(run_id)


def test_context_paths_are_keyed_by_run_and_step(settings, tmp_path):
    ctx = StepContext(step="drift", run_id="scheduled__2026-02-01T00:00:00+00:00", settings=settings)
    runs = f"{tmp_path}/var/runs"
    assert ctx.run_uri == f"{runs}/{safe_run_id(ctx.run_id)}"
    assert ctx.run_uri.startswith(f"{runs}/scheduled__2026-02-01T00_00_00_00_00-")
    assert ctx.step_uri == f"{ctx.run_uri}/drift"
    assert ctx.output("report.html") == f"{ctx.run_uri}/drift/report.html"


def test_context_on_an_s3_root_builds_s3_uris(tmp_path):
    settings = make_registry_settings(tmp_path, paths__artifact_root="s3://bucket/prefix/")
    ctx = StepContext(step="train", run_id="r1", settings=settings)
    assert ctx.output("model") == "s3://bucket/prefix/runs/r1/train/model"


def test_require_returns_the_named_input(settings):
    ctx = StepContext(step="drift", run_id="r", settings=settings, inputs={"accepted_uri": "/data/a.parquet"})
    assert ctx.require("accepted_uri") == "/data/a.parquet"


def test_require_missing_input_names_the_step_the_input_and_what_was_given(settings):
    ctx = StepContext(step="drift", run_id="r", settings=settings, inputs={"batch_uri": "x.csv"})
    with pytest.raises(ValueError) as err:
        ctx.require("accepted_uri")
    message = str(err.value)
    assert "step 'drift' needs input 'accepted_uri' (given: batch_uri)" in message
    assert "--input accepted_uri=URI" in message


def test_require_empty_input_counts_as_missing(settings):
    ctx = StepContext(step="train", run_id="r", settings=settings, inputs={"accepted_uri": ""})
    with pytest.raises(ValueError, match=r"needs input 'accepted_uri' \(given: accepted_uri\)"):
        ctx.require("accepted_uri")
    with pytest.raises(ValueError, match=r"\(given: none\)"):
        StepContext(step="compress", run_id="r", settings=settings).require("model_uri")


def test_result_of_reads_an_earlier_steps_summary_of_the_same_run_only(settings):
    drift = StepContext(step="drift", run_id="run-a", settings=settings)
    drift.storage.write_text(drift.output("result.json"), json.dumps({"severity": "moderate"}))
    decide = drift.with_step("decide")
    assert decide.result_of("drift") == {"severity": "moderate"}
    assert decide.result_of("validate") is None
    other_run = StepContext(step="decide", run_id="run-b", settings=settings)
    assert other_run.result_of("drift") is None


def test_a_step_reads_only_what_it_declares(settings):
    from pipelines.context import SPECS

    train = StepContext(step="train", run_id="r", settings=settings, inputs={"accepted_uri": "a.parquet"})
    with pytest.raises(ValueError, match="step 'train' reads input 'served_uri' without declaring it"):
        train.require("served_uri")
    with pytest.raises(ValueError, match="step 'train' reads the result of 'evaluate' without declaring it"):
        train.result_of("evaluate")
    assert train.get("champion_model_uri") is None  # declared, optional, not given
    assert "decide" in SPECS["train"].reads and train.result_of("decide") is None


def test_every_declared_source_is_an_earlier_task_of_the_loop():
    from pipelines.context import SPECS

    order = ["pick_batch", *SPECS]
    for step, spec in SPECS.items():
        for declared in spec.inputs:
            if declared.source:
                task = declared.source.split(".")[0]
                assert order.index(task) < order.index(step), (step, declared)
        assert all(order.index(r) < order.index(step) for r in spec.reads), step


def test_with_step_changes_only_the_step_and_the_context_is_frozen(settings):
    ctx = StepContext(step="drift", run_id="r", settings=settings, inputs={"a": "b"}, params={"p": 1}, dag_id="d")
    moved = ctx.with_step("decide")
    assert (moved.step, ctx.step) == ("decide", "drift")
    assert dataclasses.replace(moved, step="drift") == ctx
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.run_id = "other"  # type: ignore[misc]


@pytest.mark.parametrize("step", sorted(SPECS))
def test_each_step_module_documents_what_it_declares(step):
    """A newcomer reads a step's inputs and the results it reads in ``pipelines/steps/<step>.py`` itself: the
    docstring of its ``run`` names every input and every earlier result that SPECS declares for it."""
    import ast
    import importlib

    spec = SPECS[step]
    source = importlib.util.find_spec(spec.module).origin
    tree = ast.parse(open(source, encoding="utf-8").read())
    run = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "run")
    doc = (ast.get_docstring(tree) or "") + "\n" + (ast.get_docstring(run) or "")
    missing = [i.name for i in spec.inputs if f"``{i.name}``" not in doc]
    missing += [r for r in spec.reads if f"``{r}``" not in doc]
    assert not missing, f"{source}: run() docstring does not name {missing} (declared in SPECS[{step!r}])"
