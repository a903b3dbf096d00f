"""Step summaries are checked against their TypedDict before they are written."""

from __future__ import annotations

import pytest

from pipelines import summaries
from pipelines.context import SPECS


def _train(**over):
    base = {"action": "retrain", "model_uri": "m", "reference_uri": "r", "eval_uri": "e", "sample_passes": 10}
    return {**base, **over}


def test_a_complete_summary_passes():
    summaries.check("train", _train(), summaries.TrainSummary)
    summaries.check("decide", {"action": "skip", "reasons": [], "severity": None}, summaries.DecideSummary)


def test_a_missing_required_key_names_the_step_the_key_and_the_schema():
    summary = _train()
    del summary["eval_uri"]
    with pytest.raises(TypeError, match=r"step 'train' returned a summary without 'eval_uri' \(.*TrainSummary\)"):
        summaries.check("train", summary, summaries.TrainSummary)


def test_a_wrong_type_fails_also_for_an_optional_key():
    with pytest.raises(TypeError, match=r"returned sample_passes=str where .*TrainSummary declares"):
        summaries.check("train", _train(sample_passes="10"), summaries.TrainSummary)
    with pytest.raises(TypeError, match="returned passed=str"):
        summaries.check(
            "evaluate",
            {"passed": "yes", "needs_review": False, "gates": {}, "metrics": {}, "failures": []},
            summaries.EvaluateSummary,
        )
    with pytest.raises(TypeError):  # a bool is not a count
        summaries.check("train", _train(sample_passes=True), summaries.TrainSummary)


def test_every_step_of_the_loop_declares_its_summary():
    assert all(spec.summary is not None for spec in SPECS.values())


def test_the_real_decide_step_writes_a_checked_summary(settings):
    from pipelines.context import StepContext
    from pipelines.runner import run_step

    out = run_step(StepContext(step="decide", run_id="r-sum", settings=settings, params={"force_action": "retrain"}))
    assert out["action"] == "retrain" and isinstance(out["reasons"], list)
