"""The registry's vocabulary and the operations the steps share, against a real MLflow registry (SQLite under
``tmp_path``): versions and aliases, stage mirroring, the promotion policy, the review record, the registered model's
description, a version's status line, and superseding a stale challenger."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from mlflow import MlflowClient
from registry_doubles import add_version, make_registry_settings, registry_state, save_served

from pipelines.errors import PromotionRefused
from pipelines.io.tracking import TAG_PIPELINE_RUN, configure
from pipelines.registry import (
    AUTO,
    CHALLENGER,
    CHAMPION,
    SUPERSEDED,
    SUPERSEDED_BY_TAG,
    TAG_NEEDS_REVIEW,
    alias_version,
    get_version,
    is_pending,
    mirror_stage,
    parse_version,
    promote,
    read_audit,
    read_review,
    refresh_model_description,
    registry_client,
    resolve_policy,
    set_version_status,
    supersede_older,
    version_by_alias,
)
from pipelines.report import REPORT_HEADING

NAME = "sentiment"


@pytest.fixture
def settings(tmp_path):
    return make_registry_settings(tmp_path, registry__model_name=NAME)


@pytest.fixture
def served(tmp_path):
    return save_served(tmp_path / "served", default="neutral")


def _mv(version="3", stage="Staging", **tags):
    """A model version as a registry listing returns it (only the fields the rules read)."""
    return SimpleNamespace(version=version, current_stage=stage, tags=tags)


class _CountingClient:
    """The real client, counting the calls of one method."""

    def __init__(self, client, method: str):
        self._client, self._method, self.calls = client, method, 0

    def __getattr__(self, name):
        real = getattr(self._client, name)
        if name != self._method:
            return real

        def call(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)

        return call


# --- versions and aliases ----------------------------------------------------------------------------------
def test_registry_client_is_on_the_settings_store_or_the_given_client(settings):
    client = registry_client(settings)
    # Both URIs are the settings' store: an MlflowClient given only a tracking URI takes the process-wide registry
    # URI, which an earlier test may have set.
    assert client._registry_uri == settings.mlflow.tracking_uri
    given = MlflowClient(tracking_uri=settings.mlflow.tracking_uri, registry_uri=settings.mlflow.tracking_uri)
    assert registry_client(settings, given) is given


@pytest.mark.parametrize(
    ("given", "expected"), [(None, None), ("", None), (" None ", None), ("null", None), (3, "3"), (" 07 ", "7")]
)
def test_parse_version_normalises_template_renderings(given, expected):
    assert parse_version(given) == expected


def test_parse_version_refuses_a_non_number():
    with pytest.raises(ValueError, match=r"^model version 'v2' must be a positive integer$"):
        parse_version("v2")


def test_alias_lookups_are_none_without_the_model_or_the_alias(settings, served):
    client = configure(settings)
    assert alias_version(client, NAME, CHAMPION) is None  # no registered model yet
    assert version_by_alias(client, NAME, CHAMPION) is None
    v1 = add_version(settings, served, alias=CHALLENGER)
    assert alias_version(client, NAME, CHALLENGER) == v1
    assert str(version_by_alias(client, NAME, CHALLENGER).version) == v1
    assert alias_version(client, NAME, CHAMPION) is None


def test_get_version_of_a_missing_version_names_the_model_and_the_version(settings, served):
    add_version(settings, served)
    with pytest.raises(ValueError, match=r"^registered model 'sentiment' has no version '9' \(\w+\)$"):
        get_version(configure(settings), NAME, "9")


def test_promote_to_a_missing_version_is_refused_and_moves_nothing(settings, served):
    v1 = add_version(settings, served)
    promote(settings, v1, by="alice", reason="first", request="seed")

    with pytest.raises(ValueError, match=r"^registered model 'sentiment' has no version '7' "):
        promote(settings, 7, by="alice", reason="typo", request="typo-1")

    assert registry_state(settings)["champion"] == v1
    assert [(e["request"], e["state"]) for e in read_audit(settings)] == [("seed", "done")]


def test_mirror_stage_sets_the_legacy_stage_once(settings, served):
    v1 = add_version(settings, served)
    client = _CountingClient(configure(settings), "transition_model_version_stage")

    mirror_stage(client, NAME, v1, "Staging")
    mirror_stage(client, NAME, v1, "Staging")

    assert client.calls == 1
    assert registry_state(settings)["stages"] == {v1: "Staging"}


# --- the policy and the review record -----------------------------------------------------------------------
def test_resolve_policy_lowers_but_never_lifts_the_configured_ceiling(settings):
    auto = settings.with_overrides({"registry.promotion": "auto"})
    assert [resolve_policy(auto, p) for p in (None, "config", "Manual", "auto")] == ["auto", "auto", "manual", "auto"]
    assert resolve_policy(settings, None) == "manual"
    with pytest.raises(PromotionRefused, match=r"^param promotion='auto' is refused: registry.promotion is 'manual'"):
        resolve_policy(settings, "auto")


def test_resolve_policy_refuses_an_unknown_value(settings):
    with pytest.raises(PromotionRefused, match=r"^param promotion='sometimes' must be one of config, manual, auto$"):
        resolve_policy(settings, "sometimes")


def test_read_review_counts_an_approval_only_with_a_reviewer(settings):
    assert read_review(settings, _mv(review="approved", review_by="carol")) == {
        "state": "approved",
        "by": "carol",
        "problem": None,
    }
    assert read_review(settings, _mv(review="yes", review_by="carol"))["state"] == "approved"
    unnamed = read_review(settings, _mv(review="approved"))
    assert unnamed["state"] is None and "names no reviewer: add the tag review_by=<your name>" in unnamed["problem"]
    reserved = read_review(settings, _mv(review="approved", review_by="Pipeline"))
    assert reserved["state"] is None and "reserved for the pipeline's own records" in reserved["problem"]
    assert read_review(settings, _mv(review="rejected"))["by"] == "unknown"  # a rejection counts without a name
    assert read_review(settings, _mv(review=AUTO, review_by="pipeline"))["state"] is None  # the policy's record


def test_is_pending_only_for_an_undecided_pipeline_version_in_review(settings):
    run = {TAG_PIPELINE_RUN: "run-1"}
    assert is_pending(settings, _mv(**run), champion=None)
    assert is_pending(settings, _mv(stage="None", **run), champion="1")
    assert not is_pending(settings, _mv(**run), champion="3")  # the champion
    assert not is_pending(settings, _mv(stage="Archived", **run), champion=None)
    assert not is_pending(settings, _mv(), champion=None)  # not registered by the pipeline
    for decided in (AUTO, SUPERSEDED, "approved", "rejected"):
        assert not is_pending(settings, _mv(review=decided, review_by="carol", **run), champion=None), decided


# --- descriptions ---------------------------------------------------------------------------------------------
def test_refresh_model_description_names_the_champion_and_the_challenger(settings, served):
    v1 = add_version(settings, served, alias=CHAMPION)
    v2 = add_version(settings, served, alias=CHALLENGER)

    refresh_model_description(settings)

    text = configure(settings).get_registered_model(NAME).description
    ui = f"http://127.0.0.1:5000/#/models/{NAME}/versions"
    assert text.startswith(f"# {NAME}\n")
    assert f"**Champion** (alias `champion`, stage Production, served): [version {v1}]({ui}/{v1})." in text
    assert f"**Challenger** (alias `challenger`, stage Staging, awaiting review): [version {v2}]({ui}/{v2})." in text


def test_refresh_model_description_without_a_registered_model_does_nothing(settings):
    refresh_model_description(settings)  # no model yet: nothing to describe, no error


def test_set_version_status_rewrites_the_top_and_keeps_the_report(settings, served):
    v1 = add_version(settings, served)
    client = configure(settings)
    client.set_model_version_tag(NAME, v1, TAG_NEEDS_REVIEW, "true")
    report = f"{REPORT_HEADING}\n\nthe gate table"  # as register writes it, below the title and the status line
    client.update_model_version(NAME, v1, description=f"# {NAME} version {v1}\n\n**Status: old**: before\n\n{report}")

    pending = set_version_status(settings, v1, "**Status: awaiting review**: staged", pending=True, policy="auto")
    assert pending.startswith(f"# {NAME} version {v1}\n\n**Status: awaiting review**: staged\n\n## How to decide")
    assert "This version needs a review, so it is not promoted automatically." in pending
    assert pending.rstrip().endswith(report) and "**Status: old**" not in pending

    closed = set_version_status(settings, v1, "**Status: rejected**: by carol")
    assert closed.rstrip() == f"# {NAME} version {v1}\n\n**Status: rejected**: by carol\n\n{report}"
    assert client.get_model_version(NAME, v1).description == closed
    assert set_version_status(settings, v1, "**Status: rejected**: by carol") == closed  # unchanged: not rewritten


# --- superseding ----------------------------------------------------------------------------------------------
def test_supersede_older_closes_every_older_pending_version_once(settings, served):
    client = configure(settings)
    v1, v2, v3 = (add_version(settings, served) for _ in range(3))
    for v in (v1, v2, v3):
        client.set_model_version_tag(NAME, v, TAG_PIPELINE_RUN, f"run-{v}")
    client.set_registered_model_alias(NAME, CHALLENGER, v2)

    assert supersede_older(settings, v3) == [v1, v2]
    assert supersede_older(settings, v3) == []  # idempotent

    for v in (v1, v2):
        tags = client.get_model_version(NAME, v).tags
        assert (tags["review"], tags["review_by"], tags[SUPERSEDED_BY_TAG]) == (SUPERSEDED, "pipeline", v3)
        assert client.get_model_version(NAME, v).description.startswith(
            f"# {NAME} version {v}\n\n**Status: superseded**"
        )
    state = registry_state(settings)
    assert state["stages"] == {v1: "Archived", v2: "Archived", v3: "None"} and state["challenger"] is None
    assert "review" not in client.get_model_version(NAME, v3).tags


# --- one mover at a time -----------------------------------------------------------------------------------
def test_a_move_waits_for_another_movers_lock_and_gives_up_without_moving(tmp_path, served):
    import json
    import time

    settings = make_registry_settings(tmp_path, registry__model_name=NAME, registry__lock_wait_seconds=0.5)
    v1, v2 = add_version(settings, served), add_version(settings, served)
    promote(settings, v1, by="alice", reason="first", request="seed")
    lock = tmp_path / "var" / "_locks" / f"registry-{NAME}.json"
    lock.write_text(json.dumps({"owner": "rollback by 'bob'", "token": "t", "expires": time.time() + 60}))

    with pytest.raises(TimeoutError, match=r"lock 'registry-sentiment' held by \"rollback by 'bob'\""):
        promote(settings, v2, by="alice", reason="better", request="r2")

    assert registry_state(settings)["champion"] == v1
    assert [e["request"] for e in read_audit(settings)] == ["seed"]  # nothing recorded, nothing half-done
    lock.unlink()
    promote(settings, v2, by="alice", reason="better", request="r2")
    assert registry_state(settings)["champion"] == v2 and not lock.exists()


def test_two_concurrent_promotions_are_applied_one_after_the_other(settings, served):
    """Each move reads the champion it replaces under the lock, so the audit trail chains: the second move's
    ``from`` is the first one's ``to``, and the alias ends where the last entry says."""
    import threading

    v1, v2, v3 = (add_version(settings, served) for _ in range(3))
    promote(settings, v1, by="alice", reason="first", request="seed")
    start, errors = threading.Barrier(2), []

    def move(version, request):
        start.wait()
        try:
            promote(settings, version, by="alice", reason="race", request=request)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=move, args=(v, f"r{v}")) for v in (v2, v3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    moves = [e for e in read_audit(settings) if e["request"] != "seed"]
    assert [e["state"] for e in moves] == ["done", "done"]
    assert moves[0]["from"] == v1 and moves[1]["from"] == moves[0]["to"]
    assert registry_state(settings)["champion"] == moves[1]["to"]
