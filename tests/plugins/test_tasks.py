"""The DAG's small Python tasks: picking the batch, branching, and the failed-gate end."""

import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from mlops_airflow import tasks


@pytest.fixture
def landing(tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_PATHS__ARTIFACT_ROOT", str(tmp_path / "var"))
    folder = tmp_path / "var" / "landing"
    folder.mkdir(parents=True)
    return folder


def test_pick_batch_skips_when_landing_is_empty(landing):
    with pytest.raises(AirflowSkipException, match="no batch waiting"):
        tasks.pick_batch({})


def test_pick_batch_takes_the_oldest_batch(landing):
    for name in ["b_002.csv", "b_001.parquet", "notes.txt"]:
        (landing / name).write_text("x")
    assert tasks.pick_batch({"batch_uri": ""}).endswith("b_001.parquet")


def test_pick_batch_missing_uri_names_it(landing):
    with pytest.raises(AirflowFailException, match=r"batch_uri='.*nope.csv' does not exist"):
        tasks.pick_batch({"batch_uri": str(landing / "nope.csv")})


def test_pick_batch_bad_param_names_it(landing):
    (landing / "b.csv").write_text("x")
    with pytest.raises(AirflowFailException, match="force_action='explode'"):
        tasks.pick_batch({"force_action": "explode"})
    with pytest.raises(AirflowFailException, match="drift.p_threshold"):
        tasks.pick_batch({"drift_p_threshold": 7})


def test_branches_follow_the_summaries():
    assert tasks.choose_after_decide({"action": "skip"}) == "skip"
    assert tasks.choose_after_decide({"action": "fine_tune"}) == "train"
    with pytest.raises(ValueError, match="action='explode'"):
        tasks.choose_after_decide({"action": "explode"})
    assert tasks.choose_after_evaluate({"passed": True}) == "register"
    assert tasks.choose_after_evaluate({"passed": False}) == "gate_failed"


def test_gate_failed_carries_the_reasons():
    with pytest.raises(AirflowFailException, match="macro-F1 0.3 < 0.5.*report.md"):
        tasks.gate_failed({"failures": ["macro-F1 0.3 < 0.5"], "report_uri": "runs/r/evaluate/report.md"})
