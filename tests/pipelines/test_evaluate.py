"""The evaluate step on served test doubles whose predictions are constructed, so every gate's answer is known, and
on real ONNX bundles whose planted pickles it must never load.

The doubles' bundles hold a lookup table, not an ONNX graph: the tests on them score them through
:func:`registry_doubles.table_doubles` (the ``env`` fixture). The ``real_env`` tests go through the product's own
loader, :func:`pipelines.champion.load_predictor`, untouched.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from registry_doubles import (
    LABELS,
    corrupt,
    make_registry_settings,
    register_champion,
    save_onnx_served,
    save_served,
    table_doubles,
)

from pipelines.context import StepContext
from pipelines.data.datasets import write_parquet
from pipelines.errors import EXIT_PERMANENT, CorruptArtifact, exit_code
from pipelines.runner import run_step
from pipelines.steps.evaluate import run


@pytest.fixture
def eval_set(demo_frames):
    """The moderate demo batch (electronics 157, books 125, kitchen 118 rows) as the evaluation set."""
    return demo_frames["batch_002_moderate"].reset_index(drop=True)


def _write_env(demo_frames, eval_set, tmp_path):
    settings = make_registry_settings(tmp_path, gates__bootstrap_samples=300, gates__latency_sample_rows=10)
    for name in ("batch_000_reference", "batch_001_in_domain"):
        write_parquet(demo_frames[name], settings.uri("accepted", f"{name}.parquet"), settings)
    eval_uri = write_parquet(eval_set, str(tmp_path / "eval.parquet"), settings)
    return settings, eval_uri


@pytest.fixture
def env(demo_frames, eval_set, tmp_path):
    """Settings with two accepted batches (for the TF-IDF baseline) and the eval set written as Parquet; served
    doubles are scored from their table (:func:`registry_doubles.table_doubles`)."""
    with table_doubles():
        yield _write_env(demo_frames, eval_set, tmp_path)


@pytest.fixture
def real_env(demo_frames, eval_set, tmp_path):
    """As ``env``, with the product's loader untouched: every served model is loaded from its ONNX bundle."""
    return _write_env(demo_frames, eval_set, tmp_path)


def _served(tmp_path: Path, name: str, eval_set, predicted, **kwargs) -> Path:
    table = dict(zip(eval_set["text"], predicted, strict=True))
    return save_served(tmp_path / name, table=table, **kwargs)


def _ctx(settings, served: Path, eval_uri: str, run_id: str = "r1") -> StepContext:
    return StepContext(
        step="evaluate", run_id=run_id, settings=settings, inputs={"served_uri": str(served), "eval_uri": eval_uri}
    )


def test_evaluate_bootstrap_passes_and_logs_report(env, eval_set, tmp_path):
    settings, eval_uri = env
    # 5 % errors: above the TF-IDF baseline (about 0.92 macro-F1 on this set), so no gate asks for a review.
    served = _served(tmp_path, "cand", eval_set, corrupt(eval_set["label"].to_numpy(), 0.05, seed=1))

    result = run_step(_ctx(settings, served, eval_uri))

    assert result["passed"], result["failures"]
    assert not result["needs_review"] and result["review_reasons"] == []
    assert result["champion_version"] is None
    assert result["gates"]["non_inferiority"]["skipped"]
    assert 0.85 < result["metrics"]["macro_f1"] < 0.95
    assert result["metrics"]["baseline_macro_f1"] > result["metrics"]["majority_macro_f1"]
    assert result["metrics"]["majority_macro_f1"] < 0.3
    assert set(result["gates"]) == {
        "majority",
        "baseline",
        "non_inferiority",
        "slices",
        "macro_f1_floor",
        "class_recall_floor",
        "latency_p95_ms",
        "size_mb",
    }
    for gate in result["gates"].values():
        assert {"passed", "outcome", "value", "threshold", "comparator", "note", "skipped"} <= set(gate)
        assert gate["outcome"] == "pass"
    # The absolute floors are off by default; the relative gates decide, with the evaluation set size.
    assert result["gates"]["macro_f1_floor"]["skipped"] and result["gates"]["class_recall_floor"]["skipped"]
    majority = result["gates"]["majority"]
    assert majority["ci_low"] > 0.05 and majority["n"] == 400 and "400 rows" in majority["note"]
    assert result["gates"]["baseline"]["n"] == 400 and result["gates"]["baseline"]["diff"] >= 0
    report = Path(result["report_uri"]).read_text()
    assert "# Evaluation: PASSED" in report and "bootstrap" in report and "TF-IDF" in report
    assert Path(result["figures"]["reliability"]).is_file()
    assert json.loads(Path(result["report_uri"]).with_name("result.json").read_text())["passed"] is True

    from pipelines.io.tracking import configure, experiment_id

    client = configure(settings)
    runs = client.search_runs([experiment_id(settings)], "tags.`mlops.step` = 'evaluate'")
    assert len(runs) == 1
    assert runs[0].data.metrics["eval.macro_f1"] == pytest.approx(result["metrics"]["macro_f1"], abs=1e-6)
    logged = {a.path for a in client.list_artifacts(runs[0].info.run_id, "evaluation")}
    assert {
        "evaluation/confusion_matrix.png",
        "evaluation/per_class.png",
        "evaluation/reliability.png",
        "evaluation/champion_vs_challenger.png",
        "evaluation/report.md",
    } <= logged


def test_evaluate_worse_challenger_fails_non_inferiority(env, eval_set, tmp_path):
    settings, eval_uri = env
    truth = eval_set["label"].to_numpy()
    version = register_champion(settings, _served(tmp_path, "champ", eval_set, corrupt(truth, 0.05, seed=2)))
    served = _served(tmp_path, "cand", eval_set, corrupt(truth, 0.30, seed=3))

    result = run(_ctx(settings, served, eval_uri))

    gate = result["gates"]["non_inferiority"]
    assert not result["passed"]
    assert not gate["passed"] and gate["outcome"] == "fail" and gate["verdict"] == "worse"
    assert gate["ci_high"] < 0 and gate["n"] == 400
    assert result["gates"]["majority"]["outcome"] == "pass"  # only the comparison with the champion fails
    assert any(f.startswith(f"non-inferiority against champion v{version}") for f in result["failures"])
    assert "## Why it failed" in Path(result["report_uri"]).read_text()


def test_evaluate_better_overall_but_worse_on_one_slice_fails(env, eval_set, tmp_path):
    settings, eval_uri = env
    truth = eval_set["label"].to_numpy()
    kitchen = (eval_set["domain"] == "kitchen").to_numpy()
    champion = corrupt(truth, 0.02, seed=4, mask=kitchen)
    champion = corrupt(champion, 0.25, seed=5, mask=~kitchen)
    candidate = corrupt(truth, 0.25, seed=6, mask=kitchen)
    candidate = corrupt(candidate, 0.02, seed=7, mask=~kitchen)
    register_champion(settings, _served(tmp_path, "champ", eval_set, champion))

    result = run(_ctx(settings, _served(tmp_path, "cand", eval_set, candidate), eval_uri))

    assert result["metrics"]["macro_f1"] > result["metrics"]["champion_macro_f1"]
    assert result["gates"]["non_inferiority"]["passed"]
    slices = result["gates"]["slices"]
    assert not slices["passed"] and not result["passed"]
    by_name = {s["slice"]: s for s in slices["slices"]}
    assert not by_name["kitchen"]["passed"] and by_name["kitchen"]["delta"] < -0.05
    assert by_name["books"]["passed"] and by_name["electronics"]["passed"]
    assert any("slice domain='kitchen'" in f for f in result["failures"])
    assert "| `kitchen` | 118 |" in Path(result["report_uri"]).read_text()


def test_evaluate_majority_class_model_fails_the_majority_gate(env, eval_set, tmp_path):
    settings, eval_uri = env
    served = save_served(tmp_path / "majority", default="positive")  # the majority class of the accepted rows

    result = run(_ctx(settings, served, eval_uri))

    assert not result["passed"]
    gate = result["gates"]["majority"]
    assert gate["majority_label"] == "positive"
    assert gate["outcome"] == "fail" and not gate["passed"]
    assert gate["diff"] == 0 and gate["ci_low"] == 0  # it is the majority-class predictor
    assert gate["threshold"] == 0.05 and gate["comparator"] == "gain >= (CI low > 0)"
    assert any(
        f.startswith("no significant gain over the majority class") and "400 rows" in f for f in result["failures"]
    )
    assert result["gates"]["macro_f1_floor"]["skipped"]  # floors off: the majority gate alone rejects it
    assert "| `majority` | ❌ FAIL |" in Path(result["report_uri"]).read_text()


def test_evaluate_absolute_floors_when_set(env, eval_set, tmp_path):
    settings, eval_uri = env
    settings = settings.with_overrides({"gates.min_macro_f1": 0.5, "gates.min_class_recall": 0.2})
    served = save_served(tmp_path / "majority", default="negative")

    result = run(_ctx(settings, served, eval_uri))

    assert not result["gates"]["macro_f1_floor"]["passed"] and not result["gates"]["macro_f1_floor"]["skipped"]
    assert result["gates"]["class_recall_floor"]["below"] == ["neutral", "positive"]
    assert any("< floor gates.min_macro_f1=0.5" in f for f in result["failures"])


def test_evaluate_candidate_below_tfidf_baseline_needs_review(env, eval_set, tmp_path):
    settings, eval_uri = env
    truth = eval_set["label"].to_numpy()
    served = _served(tmp_path, "weak", eval_set, corrupt(truth, 0.45, seed=11))

    result = run(_ctx(settings, served, eval_uri))

    gate = result["gates"]["baseline"]
    assert result["metrics"]["macro_f1"] < result["metrics"]["baseline_macro_f1"]
    assert gate["outcome"] == "review" and gate["passed"] and gate["below_baseline"]
    assert gate["diff"] < 0 and gate["ci_low"] < gate["diff"] < gate["ci_high"] and gate["n"] == 400
    assert result["gates"]["majority"]["outcome"] == "pass"  # well above the majority class
    assert result["passed"] and result["needs_review"]  # a review does not fail the run
    assert len(result["review_reasons"]) == 1
    assert "below the TF-IDF + logistic-regression baseline" in result["review_reasons"][0]
    report = Path(result["report_uri"]).read_text()
    assert report.startswith("# Evaluation: PASSED, NEEDS REVIEW\n\n⚠️ **Below the TF-IDF baseline**")
    assert "## Needs a human review" in report and "| `baseline` | ⚠️ REVIEW |" in report


def test_evaluate_inconclusive_non_inferiority_needs_review(env, eval_set, tmp_path):
    settings, eval_uri = env
    truth = eval_set["label"].to_numpy()
    version = register_champion(settings, _served(tmp_path, "champ", eval_set, corrupt(truth, 0.1, seed=12)))
    served = _served(tmp_path, "cand", eval_set, corrupt(truth, 0.1, seed=13))

    result = run(_ctx(settings, served, eval_uri))

    gate = result["gates"]["non_inferiority"]
    assert gate["ci_low"] < -0.02 < gate["ci_high"] and gate["diff"] >= -0.02
    assert gate["outcome"] == "review" and gate["ni_outcome"] == "inconclusive"
    assert "evaluation set (400 rows) is too small" in gate["note"]
    assert result["passed"] and result["needs_review"]
    assert any(r.startswith(f"non-inferiority against champion v{version}") for r in result["review_reasons"])
    assert "| `non_inferiority` | ⚠️ REVIEW |" in Path(result["report_uri"]).read_text()


def test_evaluate_budgets_fail_with_numbers(env, eval_set, tmp_path):
    settings, eval_uri = env
    settings = settings.with_overrides({"gates.max_size_mb": 1.0, "gates.max_latency_p95_ms": 1e-6})
    served = _served(tmp_path, "big", eval_set, eval_set["label"].to_numpy(), onnx_bytes=2 * 1024 * 1024)

    result = run(_ctx(settings, served, eval_uri))

    assert not result["passed"]
    assert result["gates"]["size_mb"]["value"] == pytest.approx(2.0)
    assert not result["gates"]["latency_p95_ms"]["passed"]
    assert "served model 2.00 MB > gates.max_size_mb=1.0" in result["failures"]
    assert any(f.startswith("latency p95") for f in result["failures"])


def test_evaluate_eval_set_without_label_names_column(env, eval_set, tmp_path):
    settings, _ = env
    uri = write_parquet(eval_set.drop(columns=["label"]), str(tmp_path / "nolabel.parquet"), settings)
    served = save_served(tmp_path / "any")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['label'\]"):
        run(_ctx(settings, served, uri))


def test_evaluate_scores_both_real_bundles_and_never_unpickles_them(real_env, eval_set, tmp_path):
    settings, eval_uri = real_env
    champion_marker, candidate_marker = tmp_path / "champion-unpickled", tmp_path / "candidate-unpickled"
    # Each served folder's python_model.pkl runs code when unpickled; its bundle is a real ONNX graph.
    version = register_champion(settings, save_onnx_served(tmp_path / "champ", [1.0, 0.0, -1.0], champion_marker))
    served = save_onnx_served(tmp_path / "cand", [-1.0, 0.0, 1.0], candidate_marker)

    result = run(_ctx(settings, served, eval_uri))

    # Each model's own graph scored every row: the candidate's says positive, the champion's negative.
    counts = [int((eval_set["label"] == lab).sum()) for lab in LABELS]
    assert result["confusion"]["candidate"] == [[0, 0, n] for n in counts]
    assert result["confusion"]["champion"] == [[n, 0, 0] for n in counts]
    assert result["champion_version"] == version
    assert result["metrics"]["accuracy"] == pytest.approx(counts[2] / 400)
    assert result["metrics"]["champion_accuracy"] == pytest.approx(counts[0] / 400)
    assert result["metrics"]["ece"] is not None  # the graph's probabilities came through
    onnx_mb = (served / "artifacts" / "bundle" / "model.onnx").stat().st_size / 1024 / 1024
    assert result["gates"]["size_mb"]["value"] == pytest.approx(onnx_mb, abs=1e-5)
    latency = result["gates"]["latency_p95_ms"]
    assert latency["samples"] == 10 and latency["p95_ms"] > 0
    assert not candidate_marker.exists() and not champion_marker.exists()
    # The planted pickle is live: unpickling it (as loading the pyfunc would) runs `touch <marker>`.
    assert pickle.loads((served / "python_model.pkl").read_bytes()) == 0
    assert candidate_marker.exists()


def test_evaluate_candidate_whose_bundle_does_not_load_is_a_corrupt_artifact(real_env, tmp_path):
    settings, eval_uri = real_env
    # A double: its pyfunc unpickles and predicts fine, but its model.onnx is 1024 zero bytes, not a graph.
    served = save_served(tmp_path / "double")

    with pytest.raises(CorruptArtifact, match=r"^the candidate at '.*double' does not load: ") as err:
        run(_ctx(settings, served, eval_uri))
    assert exit_code(err.value) == EXIT_PERMANENT  # not retried: a rerun loads the same bytes


def test_evaluate_champion_whose_bundle_does_not_load_is_a_corrupt_artifact(real_env, tmp_path):
    settings, eval_uri = real_env
    version = register_champion(settings, save_served(tmp_path / "double"))
    served = save_onnx_served(tmp_path / "cand", [-1.0, 0.0, 1.0], tmp_path / "unpickled")

    name = settings.registry.model_name
    with pytest.raises(CorruptArtifact, match=rf"^{name} version {version} at '.*' does not load: "):
        run(_ctx(settings, served, eval_uri))
    assert not (tmp_path / "unpickled").exists()


def test_evaluate_missing_served_folder_says_run_compress(env, tmp_path):
    settings, eval_uri = env
    with pytest.raises(FileNotFoundError, match="run the compress step first"):
        run(_ctx(settings, tmp_path / "nowhere", eval_uri))


@pytest.mark.parametrize(("wrong", "outcome"), [(0, "pass"), (8, "review"), (45, "fail")])
def test_slice_gate_fails_a_sure_regression_and_asks_a_human_about_a_doubtful_one(wrong, outcome):
    import numpy as np
    import pandas as pd

    from pipelines.config import get_settings
    from pipelines.steps.evaluate import Predictions, gate_slices

    labels = ["negative", "neutral", "positive"]
    y = np.array([labels[i % 3] for i in range(240)])
    champion = y.copy()
    candidate = y.copy()
    in_a = np.arange(240) < 120
    flip = np.flatnonzero(in_a)[:wrong]
    candidate[flip] = np.array([labels[(labels.index(v) + 1) % 3] for v in y[flip]])
    frame = pd.DataFrame({"domain": np.where(in_a, "a", "b")})
    p = Predictions(y, candidate, None, champion, "1", None, 0, np.full(240, "positive"), "positive")

    gate = gate_slices(frame, p, get_settings(gates__bootstrap_samples=500)).as_dict()

    assert gate["outcome"] == outcome, gate
    row = {r["slice"]: r for r in gate["slices"]}["a"]
    assert row["n"] == 120 and row["checked"] and ("ci_high" in row)
    if outcome == "fail":
        assert row["ci_high"] < -0.05 and not row["passed"]
    if outcome == "review":
        assert row["delta"] < -0.05 <= row["ci_high"] and gate["doubtful"]


@pytest.mark.parametrize(
    ("n", "found", "outcome", "missing"),
    [
        (600, 60, "pass", None),  # a clear gain on many rows
        (30, 2, "fail", "lower end must be above 0"),  # a large gain on few rows: not significant
        (3000, 15, "fail", "gates.min_gain_over_majority=0.05"),  # significant but too small to be worth it
    ],
    ids=["worth-and-significant", "too-few-rows", "too-small-a-gain"],
)
def test_majority_gate_needs_a_gain_worth_having_and_significant(n, found, outcome, missing):
    import numpy as np

    from pipelines.config import get_settings
    from pipelines.steps.evaluate import Predictions, gate_majority

    labels = ["negative", "neutral", "positive"]
    y = np.array(["positive"] * (n - n // 5) + ["negative"] * (n // 5))  # 80 % positive
    candidate = np.full(n, "positive")
    candidate[n - n // 5 : n - n // 5 + found] = "negative"  # finds `found` of the negatives, never wrong otherwise
    p = Predictions(y, candidate, None, None, None, None, 0, np.full(n, "positive"), "positive")

    result = gate_majority(p, labels, get_settings(gates__bootstrap_samples=500).gates)
    gate = result.as_dict()

    assert gate["outcome"] == outcome, gate
    assert gate["value"] == pytest.approx(gate["diff"]) and f"on {n} rows" in gate["note"]
    assert bool(result.reasons) == bool(missing)
    if missing:
        assert result.reasons[0].startswith("no significant gain over the majority class")
        assert missing in result.reasons[0]
