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
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One registry for the module (creating an MLflow SQLite store costs seconds) and a served stand-in."""
    root = tmp_path_factory.mktemp("review-operator")
    settings = make_registry_settings(root, registry__model_name="sentiment")
    return settings, save_served(root / "served", default="neutral")


@pytest.fixture
def staged(store, monkeypatch):
    """A new version of the module's model, staged as the challenger (each test decides on its own version)."""
    from pipelines.config import settings_env
    from pipelines.io.tracking import TAG_PIPELINE_RUN, configure
    from pipelines.steps.register import _stage_challenger

    settings, served = store
    for key, value in settings_env(settings).items():
        monkeypatch.setenv(key, value)
    v = add_version(settings, served)
    client = configure(settings)
    client.set_model_version_tag("sentiment", v, TAG_PIPELINE_RUN, f"run-{v}")
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


def test_an_airflow_rejection_is_written_to_mlflow_and_returned(staged):
    settings, client, v = staged
    out = _op().execute_complete({}, _airflow_event("Reject", "carol", "worse on neutral"), version=v)
    assert out == {"decision": "reject", "version": v, "by": "carol", "source": "airflow"}
    tags = client.get_model_version("sentiment", v).tags
    assert (tags["review"], tags["review_by"], tags["review_comment"]) == ("rejected", "carol", "worse on neutral")


def test_an_error_event_other_than_a_timeout_fails_naming_it():
    with pytest.raises(AirflowFailException, match="review of version 3 failed: MLflow answered 500"):
        _op().execute_complete({}, {"error": "MLflow answered 500", "version": "3"})


class _TaskInstance:
    """Stands in for Airflow's task instance where execute only pushes the version link."""

    def __init__(self) -> None:
        self.pushed: dict[str, str] = {}

    def xcom_push(self, key: str, value: str) -> None:
        self.pushed[key] = value


def test_execute_without_a_challenger_skips_without_asking_anyone(store, monkeypatch):
    from pipelines.config import settings_env

    settings = store[0].with_overrides({"registry.model_name": "never-staged"})
    for key, value in settings_env(settings).items():
        monkeypatch.setenv(key, value)
    ti = _TaskInstance()
    with pytest.raises(AirflowSkipException, match="model 'never-staged' has no challenger; nothing to review"):
        _op().execute({"ti": ti, "triggering_asset_events": {}})
    assert ti.pushed == {}


def test_execute_on_a_version_decided_in_mlflow_returns_the_decision_at_once(staged):
    from mlops_airflow.links import ModelVersionLink

    settings, client, v = staged
    client.set_model_version_tag("sentiment", v, "review_by", "dora")
    client.set_model_version_tag("sentiment", v, "review", "approved")
    ti = _TaskInstance()
    out = _op().execute({"ti": ti, "triggering_asset_events": _events(v)})
    assert out == {"decision": "approve", "version": v, "by": "dora", "source": "mlflow"}
    assert ti.pushed[ModelVersionLink.key].endswith(f"/#/models/sentiment/versions/{v}")


def test_review_body_shows_the_numbers_the_link_and_both_ways_to_decide(staged):
    from mlops_airflow.review import review_body

    settings, client, v = staged
    url = f"http://ui/#/models/sentiment/versions/{v}"
    bare = review_body(settings, v, url)  # no evaluation tags yet: dashes, no hold
    assert "- macro-F1 – (champion –, TF-IDF baseline –) on – evaluation rows" in bare
    assert "held for a human" not in bare
    for key, value in {
        "eval.macro_f1": "0.52",
        "eval.champion_macro_f1": "0.49",
        "eval.baseline_macro_f1": "0.50",
        "eval.rows": "379",
        "decision.action": "fine_tune",
        "batch.id": "drugs_2",
        "eval.needs_review": "true",
        "eval.review_reasons": "non-inferiority inconclusive",
    }.items():
        client.set_model_version_tag("sentiment", v, key, value)
    body = review_body(settings, v, url)
    assert f"**sentiment version {v}** is staged as the challenger ([MLflow version page]({url}): the full" in body
    assert "- macro-F1 0.52 (champion 0.49, TF-IDF baseline 0.50) on 379 evaluation rows" in body
    assert "- decision: fine_tune; batch drugs_2" in body
    assert "- held for a human: non-inferiority inconclusive" in body
    assert "`review` = `approved` | `rejected` and `review_by` = your name" in body


def test_from_settings_takes_the_poll_interval_and_timeout_from_the_registry_settings(monkeypatch):
    from datetime import timedelta

    monkeypatch.setenv("MLOPS_REGISTRY__REVIEW_POKE_SECONDS", "7")
    monkeypatch.setenv("MLOPS_REGISTRY__REVIEW_TIMEOUT_MINUTES", "90")
    op = ChallengerReviewOperator.from_settings(task_id="review")
    assert op.poke_interval == 7 and op.response_timeout == timedelta(minutes=90)
    assert op.options == ["Approve", "Reject"] and "comment" in op.params
    assert ChallengerReviewOperator.from_settings(task_id="r2", poke_interval=1).poke_interval == 1


def test_review_trigger_serializes_to_what_rebuilds_it():
    import importlib

    from mlops_airflow.review import ReviewTrigger

    deadline = datetime(2026, 12, 1, 12, tzinfo=UTC)
    trigger = ReviewTrigger(ti_id="ti-1", version=3, poke_interval=5, timeout_datetime=deadline)
    path, kwargs = trigger.serialize()
    assert path == "mlops_airflow.review.ReviewTrigger"
    assert kwargs == {"ti_id": "ti-1", "version": "3", "poke_interval": 5.0, "timeout_datetime": deadline}
    module, _, name = path.rpartition(".")
    rebuilt = getattr(importlib.import_module(module), name)(**kwargs)
    assert rebuilt.serialize() == (path, kwargs)


def test_closing_comment_of_a_rejection_without_comment_and_of_a_promoted_version():
    assert closing_comment({"state": "rejected", "by": "dora"}) == "rejected in MLflow by dora"
    assert closing_comment({"state": "champion", "why": "version 4 is already the champion"}) == (
        "closed without a decision here: version 4 is already the champion"
    )
