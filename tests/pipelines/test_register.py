"""The register step against a real MLflow store (SQLite, and once through ``mlflow server``), fed by a real
evaluate run on served test doubles."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest
from registry_doubles import corrupt, make_registry_settings, registry_state, save_served, table_doubles
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from pipelines.context import StepContext
from pipelines.data.datasets import write_parquet
from pipelines.errors import ModelRejected
from pipelines.io.tracking import configure, experiment_id
from pipelines.registry import read_audit
from pipelines.runner import run_step
from pipelines.steps.register import find_version, run


@pytest.fixture
def eval_set(demo_frames):
    return demo_frames["batch_002_moderate"].reset_index(drop=True)


@pytest.fixture
def text_model(demo_frames):
    """A TF-IDF + logistic regression fitted on the reference batch: the served double's answer for unseen text."""
    train = demo_frames["batch_000_reference"]
    return make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=500)).fit(train["text"], train["label"])


def _settings(tmp_path, demo_frames, eval_set, **overrides):
    settings = make_registry_settings(
        tmp_path,
        gates__bootstrap_samples=200,
        gates__latency_sample_rows=5,
        registry__model_name="sentiment",
        **overrides,
    )
    write_parquet(demo_frames["batch_000_reference"], settings.uri("accepted", "batch_000_reference.parquet"), settings)
    eval_uri = write_parquet(eval_set, str(tmp_path / "eval.parquet"), settings)
    return settings, eval_uri


def _upstream(settings, run_id: str) -> None:
    """Summaries of validate, drift, decide and train for the run, shaped as those steps write them."""
    results = {
        "validate": {
            "passed": True,
            "batch_id": "batch_002_moderate",
            "rows": 400,
            "content_hash": "ab" * 32,
            "accepted_uri": settings.uri("accepted", "batch_002_moderate.parquet"),
            "report_uri": "validate/report.html",
        },
        "drift": {
            "severity": "moderate",
            "has_reference": True,
            "champion_version": None,
            "rule": "mmd drifted",
            "tests": {"mmd": {"statistic": 0.031, "p_value": 0.0, "threshold": 0.01, "drifted": True}},
            "report_uri": "drift/report.md",
        },
        "decide": {"action": "fine_tune", "severity": "moderate", "reasons": ["moderate drift: MMD p < 0.01"]},
        "train": {"action": "fine_tune", "base": "sentiment v1", "model_uri": "train/model"},
    }
    storage = StepContext(step="x", run_id=run_id, settings=settings).storage
    for step, result in results.items():
        ctx = StepContext(step=step, run_id=run_id, settings=settings)
        storage.write_text(ctx.output("result.json"), json.dumps(result))


def _evaluated(settings, eval_uri, served, run_id: str) -> dict:
    """The real evaluate step on a served double (scored from its table: see registry_doubles.table_doubles)."""
    _upstream(settings, run_id)
    ctx = StepContext(
        step="evaluate",
        run_id=run_id,
        settings=settings,
        dag_id="continuous_training",
        inputs={"served_uri": str(served), "eval_uri": eval_uri},
    )
    with table_doubles():
        return run_step(ctx)


def _register(settings, served, run_id: str, **params) -> dict:
    ctx = StepContext(
        step="register",
        run_id=run_id,
        settings=settings,
        dag_id="continuous_training",
        inputs={"served_uri": str(served)},
        params=params,
    )
    return run_step(ctx)


def test_register_bootstrap_auto_promotes_and_champion_predicts_raw_text(tmp_path, demo_frames, eval_set, text_model):
    settings, eval_uri = _settings(tmp_path, demo_frames, eval_set, registry__promotion="auto")
    served = save_served(tmp_path / "served", fallback=text_model)
    assert _evaluated(settings, eval_uri, served, "run-1")["passed"]

    result = _register(settings, served, "run-1", promotion="auto")

    assert result["version"] == "1" and result["alias"] == "champion" and result["promoted"]
    assert result["created"] and result["champion_before"] is None
    state = registry_state(settings)
    assert state["champion"] == "1" and state["challenger"] is None and state["stages"] == {"1": "Production"}
    assert [(e["action"], e["from"], e["to"], e["by"]) for e in read_audit(settings)] == [
        ("promote", None, "1", "policy:auto")
    ]
    tags = configure(settings).get_model_version("sentiment", "1").tags
    assert (tags["review"], tags["review_by"]) == ("auto", "pipeline")  # never "approved" by the pipeline
    assert "eval.passed=true" in tags["review_evidence"] and "eval.gates=" in tags["review_evidence"]
    # the bundle's digest is recorded at registration, and a download of the champion matches it
    from pipelines.champion import find_bundle, get_champion, tree_digest
    from pipelines.registry import TAG_BUNDLE_DIGEST

    assert tags[TAG_BUNDLE_DIGEST] == tree_digest(find_bundle(served))
    assert get_champion(settings, dst=tmp_path / "champion-download").version == "1"

    model = mlflow.pyfunc.load_model("models:/sentiment@champion")
    out = model.predict(pd.DataFrame({"text": ["the battery died after two days, awful", "works great, love it"]}))
    assert list(out["label"]) == ["negative", "positive"]
    assert {"prob_negative", "prob_neutral", "prob_positive"} <= set(out.columns)


def test_register_manual_stages_challenger_with_report_and_lineage(tmp_path, demo_frames, eval_set):
    settings, eval_uri = _settings(tmp_path, demo_frames, eval_set)
    truth = eval_set["label"].to_numpy()
    served = save_served(
        tmp_path / "served", table=dict(zip(eval_set["text"], corrupt(truth, 0.1, seed=1), strict=True))
    )
    evaluation = _evaluated(settings, eval_uri, served, "run-2")

    result = _register(settings, served, "run-2")

    assert result["alias"] == "challenger" and result["policy"] == "manual" and not result["promoted"]
    client = configure(settings)
    mv = client.get_model_version("sentiment", result["version"])
    assert mv.current_stage == "Staging" and "challenger" in mv.aliases
    assert mv.run_id == result["parent_run_id"]
    parent = client.get_run(mv.run_id)
    assert parent.data.tags["mlops.step"] == "pipeline" and parent.data.tags["mlops.pipeline_run_id"] == "run-2"
    # The description is the reviewer's report.
    text = mv.description
    assert len(text) <= 5000
    # A neutral title, the status line at the top, how to decide (pending) above the long report.
    assert text.startswith("# sentiment version 1\n\n**Status: awaiting review**: registered on ")
    assert text.index("## How to decide") < text.index("## Evaluation report") < text.index("## Gates")
    assert "staged as the challenger (policy `manual`)" in text.split("## How to decide")[0]
    for needle in (
        "## How to decide",
        "`review` = `approved` or `rejected` and `review_by` = your name (an approval without it does not count)",
        "| `non_inferiority` | ⏭ skipped",
        "## Decision",
        "moderate drift: MMD p < 0.01",
        "## Size and latency",
        "## Slices",
        "| `kitchen` | 118 |",
        "## Data and drift",
    ):
        assert needle in text, needle
    # The confusion matrix is there as the evaluate run's image, or as a table when there is room for it (the
    # least important section, dropped first to fit MLflow's 5000 characters).
    assert "confusion_matrix.png" in text or "## Confusion matrix" in text
    assert "## Compression" not in text  # no compress result with a level: no section, no tags
    assert "compress.level" not in mv.tags and "compress.agreement" not in mv.tags
    # Lineage and metrics on the version.
    assert mv.tags["batch.content_hash"] == "ab" * 32
    assert mv.tags["decision.action"] == "fine_tune"
    assert json.loads(mv.tags["decision.reasons"]) == ["moderate drift: MMD p < 0.01"]
    assert mv.tags["drift.severity"] == "moderate"
    assert mv.tags["mlops.dag_id"] == "continuous_training" and mv.tags["mlops.pipeline_run_id"] == "run-2"
    assert len(mv.tags["mlops.git_commit"]) in {7, 40} or mv.tags["mlops.git_commit"] == "unknown"
    assert float(mv.tags["eval.macro_f1"]) == pytest.approx(evaluation["metrics"]["macro_f1"], abs=1e-5)
    assert json.loads(mv.tags["data.accepted_batches"]) == ["batch_000_reference.parquet"]
    logged = client.get_logged_model(mv.source.split("/")[-1])
    assert logged.source_run_id == mv.run_id
    assert logged.metrics and any(m.key == "eval.macro_f1" for m in logged.metrics)
    # The evaluation images are attached to the evaluate run under the same parent.
    runs = client.search_runs([experiment_id(settings)], "tags.`mlops.step` = 'evaluate'")
    assert runs[0].data.tags["mlflow.parentRunId"] == mv.run_id
    images = {a.path for a in client.list_artifacts(runs[0].info.run_id, "evaluation")}
    assert "evaluation/confusion_matrix.png" in images and "evaluation/reliability.png" in images


def _compress_result(settings, run_id: str) -> None:
    """A compress result with the chosen level, as the compress step writes it."""
    ctx = StepContext(step="compress", run_id=run_id, settings=settings)
    result = {
        "served_uri": "compress/served",
        "size_mb": 22.4,
        "level": "int8_weight_only",
        "agreement": 0.985,
        "agreement_rows": 200,
        "agreement_ci": [0.967, 0.995],
        "levels_tried": [
            {"level": "int8_dynamic", "agreement": 0.94, "size_mb": 21.9},
            {"level": "int8_weight_only", "agreement": 0.985, "size_mb": 22.4},
        ],
    }
    ctx.storage.write_text(ctx.output("result.json"), json.dumps(result))


def test_register_auto_holds_a_candidate_below_the_baseline_as_challenger(tmp_path, demo_frames, eval_set):
    settings, eval_uri = _settings(tmp_path, demo_frames, eval_set, registry__promotion="auto")
    truth = eval_set["label"].to_numpy()
    weak = save_served(tmp_path / "weak", table=dict(zip(eval_set["text"], corrupt(truth, 0.3, seed=4), strict=True)))
    evaluation = _evaluated(settings, eval_uri, weak, "run-w")
    assert evaluation["passed"] and evaluation["needs_review"]
    assert evaluation["gates"]["baseline"]["outcome"] == "review"
    _compress_result(settings, "run-w")

    result = _register(settings, weak, "run-w")

    assert result["policy"] == "auto" and not result["promoted"] and result["held_for_review"]
    assert result["needs_review"] and result["alias"] == "challenger"
    assert registry_state(settings) == {"stages": {"1": "Staging"}, "champion": None, "challenger": "1"}
    assert read_audit(settings) == []
    mv = configure(settings).get_model_version("sentiment", result["version"])
    assert mv.tags["eval.needs_review"] == "true" and mv.tags["eval.passed"] == "true"
    assert "below the TF-IDF + logistic-regression baseline" in mv.tags["eval.review_reasons"]
    assert json.loads(mv.tags["eval.gates"])["baseline"] == "review"
    assert (mv.tags["compress.level"], mv.tags["compress.agreement"]) == ("int8_weight_only", "0.98500")
    text = mv.description
    for needle in (
        "**no gate failed, NEEDS REVIEW**",
        "⚠️ **Below the TF-IDF baseline**",
        "## Needs a human review",
        "This version needs a review, so it is not promoted automatically.",
        "| `baseline` | ⚠️ REVIEW |",
        "## Compression",
        "level **int8_weight_only**: same label as the fp32 model on 98.5 % of 200 rows (CI 96.7 % to 99.5 %)",
        "| `int8_dynamic` | 94.0 % | 21.90 |",
    ):
        assert needle in text, needle


def test_register_rerun_for_same_run_id_reuses_the_version(tmp_path, demo_frames, eval_set):
    settings, eval_uri = _settings(tmp_path, demo_frames, eval_set)
    served = save_served(tmp_path / "served", table=dict(zip(eval_set["text"], eval_set["label"], strict=True)))
    _evaluated(settings, eval_uri, served, "run-3")

    first = _register(settings, served, "run-3")
    second = _register(settings, served, "run-3")

    assert (first["version"], first["created"]) == ("1", True)
    assert (second["version"], second["created"]) == ("1", False)
    client = configure(settings)
    assert len(client.search_model_versions("name='sentiment'")) == 1
    assert len(client.search_logged_models([experiment_id(settings)])) == 1
    assert find_version(settings, "run-3").version == 1


def test_register_worse_challenger_is_rejected_and_never_promoted(tmp_path, demo_frames, eval_set):
    settings, eval_uri = _settings(tmp_path, demo_frames, eval_set, registry__promotion="auto")
    truth = eval_set["label"].to_numpy()
    good = save_served(tmp_path / "good", table=dict(zip(eval_set["text"], corrupt(truth, 0.05, seed=2), strict=True)))
    _evaluated(settings, eval_uri, good, "run-a")
    assert _register(settings, good, "run-a")["alias"] == "champion"
    worse = save_served(tmp_path / "worse", table=dict(zip(eval_set["text"], corrupt(truth, 0.3, seed=3), strict=True)))
    evaluation = _evaluated(settings, eval_uri, worse, "run-b")
    assert not evaluation["gates"]["non_inferiority"]["passed"]

    with pytest.raises(ModelRejected, match=r"candidate of run 'run-b' failed evaluation(.|\n)*non-inferiority"):
        _register(settings, worse, "run-b")

    assert registry_state(settings) == {"stages": {"1": "Production"}, "champion": "1", "challenger": None}


def test_register_without_evaluate_result_says_run_evaluate(tmp_path, demo_frames, eval_set):
    settings, _ = _settings(tmp_path, demo_frames, eval_set)
    with pytest.raises(ValueError, match="register needs the evaluate result of run 'nope'.*run the evaluate step"):
        run(StepContext(step="register", run_id="nope", settings=settings, inputs={"served_uri": str(tmp_path)}))


def test_register_and_promote_through_mlflow_server(tmp_path, demo_frames, eval_set, text_model, mlflow_server):
    settings, eval_uri = _settings(tmp_path, demo_frames, eval_set, mlflow__tracking_uri=mlflow_server)
    served = save_served(tmp_path / "served", fallback=text_model)
    _evaluated(settings, eval_uri, served, "run-s")

    result = _register(settings, served, "run-s")
    assert result["alias"] == "challenger"
    configure(settings).set_model_version_tag("sentiment", result["version"], "review", "approved")
    configure(settings).set_model_version_tag("sentiment", result["version"], "review_by", "erin")
    promoted = run_step(StepContext(step="promote", run_id="run-s", settings=settings, params={"action": "auto"}))

    assert (promoted["status"], promoted["champion_after"]) == ("promoted", result["version"])
    assert registry_state(settings)["champion"] == result["version"]
    out = mlflow.pyfunc.load_model("models:/sentiment@champion").predict(pd.DataFrame({"text": ["love it"]}))
    assert out["label"].iloc[0] == "positive"


def test_register_stages_the_challenger_under_the_registry_lock(tmp_path, demo_frames, eval_set, monkeypatch):
    """Staging (the challenger alias, superseding older pending versions) holds the model's lock, as promote,
    reject and rollback do, so it never interleaves with a reviewer's promotion."""
    import json

    from pipelines.steps import register

    settings, eval_uri = _settings(tmp_path, demo_frames, eval_set)
    truth = eval_set["label"].to_numpy()
    served = save_served(
        tmp_path / "served", table=dict(zip(eval_set["text"], corrupt(truth, 0.1, seed=1), strict=True))
    )
    _evaluated(settings, eval_uri, served, "run-2")
    lock = tmp_path / "var" / "_locks" / "registry-sentiment.json"
    holders = []
    real = register._stage_challenger

    def staging(*args, **kwargs):
        holders.append(json.loads(lock.read_text())["owner"])
        return real(*args, **kwargs)

    monkeypatch.setattr(register, "_stage_challenger", staging)
    result = _register(settings, served, "run-2")

    assert result["alias"] == "challenger"
    assert len(holders) == 1 and holders[0].startswith("register of 1, run 'run-2'")
    assert not lock.exists()
