"""The review of a challenger against a real MLflow registry (SQLite): its states, the first decision wins between
Airflow and MLflow, and a newer challenger supersedes a pending one (never two pending)."""

from __future__ import annotations

import pytest
from registry_doubles import add_version, make_registry_settings, registry_state, save_served

from pipelines.io.tracking import TAG_PIPELINE_RUN, configure
from pipelines.registry import SUPERSEDED, supersede, supersede_older
from pipelines.review import PENDING, first_decision, record_response, review_status


@pytest.fixture
def settings(tmp_path):
    return make_registry_settings(tmp_path, registry__model_name="sentiment")


@pytest.fixture
def served(tmp_path):
    return save_served(tmp_path / "served", default="neutral")


def _tags(settings, version) -> dict[str, str]:
    return dict(configure(settings).get_model_version("sentiment", str(version)).tags)


def _tag(settings, version, **tags) -> None:
    for key, value in tags.items():
        configure(settings).set_model_version_tag("sentiment", str(version), key, value)


def _staged(settings, served, run_id: str) -> str:
    """A version registered by pipeline run ``run_id`` and staged as the challenger (as register does)."""
    from pipelines.steps.register import _stage_challenger

    v = add_version(settings, served)
    _tag(settings, v, **{TAG_PIPELINE_RUN: run_id})
    configure(settings).update_model_version("sentiment", v, description="# Challenger\n\nthe report")
    _stage_challenger(configure(settings), settings, v)
    return v


# --- first decision wins (pure) ---------------------------------------------------------------------------
PENDING_STATUS = {"state": PENDING, "by": None, "comment": None, "source": "mlflow", "why": "no decision yet"}


def test_an_airflow_response_on_a_pending_version_is_the_decision_and_is_written():
    got = first_decision(PENDING_STATUS, {"decision": "approved", "by": "carol", "comment": "fine"})
    assert got == {
        "state": "approved",
        "by": "carol",
        "comment": "fine",
        "source": "airflow",
        "write": True,
        "note": None,
    }


def test_a_decision_already_in_mlflow_wins_over_a_later_airflow_response():
    recorded = {"state": "rejected", "by": "dave", "comment": "worse", "source": "mlflow", "why": "rejected by dave"}
    got = first_decision(recorded, {"decision": "approved", "by": "carol"})
    assert (got["state"], got["by"], got["source"], got["write"]) == ("rejected", "dave", "mlflow", False)
    assert "came after the decision recorded in MLflow (rejected by dave); the first decision stands" in got["note"]


@pytest.mark.parametrize("state", ["superseded", "champion", "closed"])
def test_an_airflow_response_on_a_closed_review_changes_nothing(state):
    got = first_decision({"state": state, "by": None, "why": state}, {"decision": "approved", "by": "carol"})
    assert got["state"] == state and not got["write"]


@pytest.mark.parametrize("by", ["", "  ", "pipeline", "policy:auto"])
def test_an_airflow_response_without_a_person_does_not_count(by):
    got = first_decision(PENDING_STATUS, {"decision": "approved", "by": by})
    assert got["state"] == PENDING and not got["write"] and got["note"]


def test_no_response_leaves_the_recorded_state():
    assert first_decision(PENDING_STATUS, None)["state"] == PENDING


# --- states and responses against the registry -----------------------------------------------------------
def test_review_status_follows_the_version_through_its_review(settings, served):
    v = _staged(settings, served, "run-1")
    assert review_status(settings, v)["state"] == PENDING
    _tag(settings, v, review="approved")  # no reviewer named: does not count yet
    status = review_status(settings, v)
    assert status["state"] == PENDING and "names no reviewer" in status["problem"]
    _tag(settings, v, review_by="frank", review_comment="good")
    status = review_status(settings, v)
    assert (status["state"], status["by"], status["comment"], status["source"]) == (
        "approved",
        "frank",
        "good",
        "mlflow",
    )


def test_an_airflow_response_is_written_to_the_tags_with_the_airflow_user(settings, served):
    v = _staged(settings, served, "run-1")
    got = record_response(settings, v, "rejected", "erin", "worse on books")
    assert got["write"] and got["state"] == "rejected"
    tags = _tags(settings, v)
    assert (tags["review"], tags["review_by"], tags["review_comment"], tags["review_source"]) == (
        "rejected",
        "erin",
        "worse on books",
        "airflow",
    )
    assert review_status(settings, v)["source"] == "airflow"


def test_an_airflow_response_after_an_mlflow_decision_leaves_the_tags(settings, served):
    v = _staged(settings, served, "run-1")
    _tag(settings, v, review="approved", review_by="frank")
    got = record_response(settings, v, "rejected", "erin", "too late")
    assert (got["state"], got["by"], got["write"]) == ("approved", "frank", False)
    tags = _tags(settings, v)
    assert (tags["review"], tags["review_by"]) == ("approved", "frank") and "review_source" not in tags


# --- supersede ------------------------------------------------------------------------------------------
def test_a_newer_challenger_supersedes_the_pending_one(settings, served):
    v1 = _staged(settings, served, "run-1")
    v2 = _staged(settings, served, "run-2")

    state = registry_state(settings)
    assert state["challenger"] == v2
    assert state["stages"] == {v1: "Archived", v2: "Staging"}
    tags = _tags(settings, v1)
    assert (tags["review"], tags["review_by"], tags["superseded_by"]) == (SUPERSEDED, "pipeline", v2)
    assert tags["review_at"]
    description = configure(settings).get_model_version("sentiment", v1).description
    assert description.startswith(f"# sentiment version {v1}\n\n**Status: superseded**: by version {v2} on ")
    assert "## How to decide" not in description
    assert "the report" in description  # the evaluation report is kept below the status line
    status = review_status(settings, v1)
    assert status["state"] == SUPERSEDED and status["why"] == f"superseded by version {v2}; nothing to review"
    assert review_status(settings, v2)["state"] == PENDING
    # never two pending challengers
    pending = [v for v in (v1, v2) if review_status(settings, v)["state"] == PENDING]
    assert pending == [v2]


def test_supersede_keeps_decided_versions_and_the_champion(settings, served):
    champion = add_version(settings, served, alias="champion")
    _tag(settings, champion, **{TAG_PIPELINE_RUN: "run-0"})
    rejected = _staged(settings, served, "run-1")
    _tag(settings, rejected, review="rejected", review_by="dave")
    newest = _staged(settings, served, "run-2")

    assert supersede_older(settings, newest) == []
    assert _tags(settings, rejected)["review"] == "rejected"
    assert "review" not in _tags(settings, champion)
    assert registry_state(settings)["champion"] == champion
    assert not supersede(settings, champion, newest)


def test_supersede_is_idempotent(settings, served):
    v1 = _staged(settings, served, "run-1")
    v2 = _staged(settings, served, "run-2")
    description = configure(settings).get_model_version("sentiment", v1).description
    assert not supersede(settings, v1, v2)  # already superseded by the register of v2
    assert supersede_older(settings, v2) == []
    assert configure(settings).get_model_version("sentiment", v1).description == description


def test_a_late_stage_of_a_superseded_version_does_not_bring_it_back(settings, served):
    """Run A's register stages v1 after run B's v2 superseded it: v1 stays superseded and archived."""
    from pipelines.steps.register import _stage_challenger

    v1 = add_version(settings, served)
    _tag(settings, v1, **{TAG_PIPELINE_RUN: "run-a"})
    v2 = _staged(settings, served, "run-b")
    _stage_challenger(configure(settings), settings, v1)  # A's late write
    state = registry_state(settings)
    assert state["challenger"] == v2 and state["stages"] == {v1: "Archived", v2: "Staging"}
    assert _tags(settings, v1)["review"] == SUPERSEDED
