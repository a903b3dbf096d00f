"""The Airflow side of the review, without a DAG run: which version a review run is about, the request a training
run emits, and how the review task settles a response from Airflow against the MLflow tags (first wins)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pipelines"))  # registry_doubles

from registry_doubles import add_version, make_registry_settings, save_served  # noqa: E402

from mlops_airflow import tasks  # noqa: E402
from mlops_airflow.review import ChallengerReviewOperator, closing_comment, version_to_review  # noqa: E402


def _events(*versions):
    return {"mlops_challenger": [SimpleNamespace(extra={"version": str(v)}) for v in versions]}


def test_version_to_review_prefers_the_param_then_the_newest_event_then_the_challenger():
    assert version_to_review("7", _events(3), "5") == "7"
    assert version_to_review("", _events(3, 9, 4), "5") == "9"
    assert version_to_review("", {}, "5") == "5"
    assert version_to_review(None, None, None) is None
    with pytest.raises(ValueError, match="param version='v2' must be a model version number"):
        version_to_review("v2", None, None)


def test_request_review_fills_the_asset_event_for_a_staged_challenger():
    event = SimpleNamespace(extra={})
    out = tasks.request_review(
        {"model_name": "m", "version": "4", "alias": "challenger", "needs_review": True, "superseded": ["3"]}, event
    )
    assert event.extra == {"model_name": "m", "version": "4", "needs_review": True}
    assert out["superseded"] == ["3"] and out["review_dag"] == "review_challenger"


@pytest.mark.parametrize("alias", ["champion", None])
def test_request_review_is_skipped_when_nothing_waits_for_a_human(alias):
    event = SimpleNamespace(extra={})
    with pytest.raises(AirflowSkipException, match="nothing to review"):
        tasks.request_review({"model_name": "m", "version": "4", "alias": alias, "policy": "auto"}, event)
    assert event.extra == {}


def test_closing_comment_names_the_mlflow_decision():
    assert closing_comment({"state": "approved", "by": "dora", "comment": "ok"}) == "approved in MLflow by dora: ok"
    assert closing_comment({"state": "superseded", "why": "superseded by version 5; nothing to review"}) == (
        "closed without a decision here: superseded by version 5; nothing to review"
    )


# --- execute_complete against a real registry ---------------------------------------------------------------
@pytest.fixture
def staged(tmp_path, monkeypatch):
    from pipelines.config import settings_env
    from pipelines.register import _stage_challenger
    from pipelines.tracking import TAG_PIPELINE_RUN, configure

    settings = make_registry_settings(tmp_path, registry__model_name="sentiment")
    for key, value in settings_env(settings).items():
        monkeypatch.setenv(key, value)
    served = save_served(tmp_path / "served", default="neutral")
    v = add_version(settings, served)
    client = configure(settings)
    client.set_model_version_tag("sentiment", v, TAG_PIPELINE_RUN, "run-1")
    _stage_challenger(client, settings, v)
    return settings, client, v


def _airflow_event(option: str, user: str | None, comment: str = "") -> dict:
    return {
        "chosen_options": [option],
        "params_input": {"comment": comment},
        "responded_at": datetime(2026, 12, 1, tzinfo=UTC),
        "responded_by_user": {"id": "1", "name": user} if user else None,
    }


def _op():
    return ChallengerReviewOperator(task_id="review", version="", poke_interval=1)


def test_an_airflow_approval_is_written_to_mlflow_and_returned_for_promote(staged):
    settings, client, v = staged
    out = _op().execute_complete({}, _airflow_event("Approve", "carol", "ok"), version=v)
    assert out == {"decision": "approve", "version": v, "by": "carol", "source": "airflow"}
    tags = client.get_model_version("sentiment", v).tags
    assert (tags["review"], tags["review_by"], tags["review_comment"]) == ("approved", "carol", "ok")


def test_an_airflow_response_after_a_decision_in_mlflow_returns_the_mlflow_decision(staged):
    settings, client, v = staged
    client.set_model_version_tag("sentiment", v, "review_by", "dora")
    client.set_model_version_tag("sentiment", v, "review", "rejected")
    # the Core API resumes the task with the HITL payload (no "source", the version from the defer kwargs)
    out = _op().execute_complete({}, _airflow_event("Approve", "carol"), version=v)
    assert out == {"decision": "reject", "version": v, "by": "dora", "source": "mlflow"}
    assert client.get_model_version("sentiment", v).tags["review"] == "rejected"


def test_an_mlflow_event_for_a_superseded_version_skips_promote(staged):
    _, _, v = staged
    status = {"state": "superseded", "by": "9", "comment": None, "source": "mlflow", "why": "superseded by version 9"}
    with pytest.raises(AirflowSkipException, match="superseded by version 9; nothing to promote"):
        _op().execute_complete({}, {"source": "mlflow", "version": v, "status": status})


def test_a_timeout_fails_with_review_timed_out(staged):
    _, _, v = staged
    with pytest.raises(AirflowFailException, match=f"review timed out: no reviewer approved or rejected version {v}"):
        _op().execute_complete({}, {"error": "late", "error_type": "timeout", "version": v})
