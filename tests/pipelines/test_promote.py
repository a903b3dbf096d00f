"""Champion moves against a real MLflow registry (SQLite): promote, reject, rollback, the audit trail, the step."""

from __future__ import annotations

import pytest
from registry_doubles import add_version, make_registry_settings, registry_state, save_served

from pipelines.context import StepContext
from pipelines.io.tracking import configure
from pipelines.registry import AUDIT_TAG, promote, read_audit, reject, review_state, rollback
from pipelines.steps.promote import run


@pytest.fixture
def settings(tmp_path):
    return make_registry_settings(tmp_path, registry__model_name="sentiment")


@pytest.fixture
def served(tmp_path):
    return save_served(tmp_path / "served", default="neutral")


def _ctx(settings, run_id="p1", **params):
    return StepContext(step="promote", run_id=run_id, settings=settings, params=params, dag_id="promote_or_rollback")


def test_promote_moves_champion_archives_previous_and_records_audit(settings, served):
    v1, v2 = add_version(settings, served), add_version(settings, served, alias="challenger")

    first = promote(settings, v1, by="alice", reason="first model", when="2026-01-01T00:00:00+00:00")
    second = promote(settings, v2, by="bob", reason="better on kitchen", when="2026-01-02T00:00:00+00:00")

    assert first == {"champion_before": None, "champion_after": "1", "changed": True}
    assert second == {"champion_before": "1", "champion_after": "2", "changed": True}
    state = registry_state(settings)  # asserts one champion alias and one Production version
    assert state["champion"] == v2 and state["challenger"] is None
    assert state["stages"] == {v1: "Archived", v2: "Production"}
    trail = read_audit(settings)
    assert [(e["action"], e["from"], e["to"], e["by"], e["why"]) for e in trail] == [
        ("promote", None, "1", "alice", "first model"),
        ("promote", "1", "2", "bob", "better on kitchen"),
    ]
    model = configure(settings).get_registered_model("sentiment")
    assert AUDIT_TAG in model.tags
    assert "| 2026-01-02T00:00:00+00:00 | promote | v2 | v1 | v2 | bob | better on kitchen |" in model.description
    tags = configure(settings).get_model_version("sentiment", v2).tags
    assert (tags["review"], tags["review_by"], tags["review_at"]) == ("approved", "bob", "2026-01-02T00:00:00+00:00")
    assert all(e["state"] == "done" for e in trail)
    # The audit entry links to the evidence; the registered model names champion and challenger.
    assert trail[-1]["evidence"] == f"http://127.0.0.1:5000/#/models/sentiment/versions/{v2}"
    assert f"**Champion** (alias `champion`, stage Production, served): [version {v2}](" in model.description
    assert "**Challenger** (alias `challenger`, stage Staging, awaiting review): none." in model.description
    # Each version's description says where it stands now.
    client = configure(settings)
    text = client.get_model_version("sentiment", v2).description
    assert text.startswith(f"# sentiment version {v2}\n\n**Status: champion**: approved by bob and promoted on ")
    old = client.get_model_version("sentiment", v1).description
    assert "**Status: archived**: champion until 2026-01-02T00:00:00+00:00 (UTC); replaced by version 2" in old


def test_promote_repeated_changes_nothing(settings, served):
    v1 = add_version(settings, served)
    promote(settings, v1, by="alice", reason="first")
    again = promote(settings, v1, by="alice", reason="first")
    assert again == {"champion_before": "1", "champion_after": "1", "changed": False}
    assert len(read_audit(settings)) == 1
    assert registry_state(settings)["champion"] == v1


def test_promote_unknown_version_names_it(settings, served):
    add_version(settings, served)
    with pytest.raises(ValueError, match="registered model 'sentiment' has no version '7'"):
        promote(settings, 7, by="alice", reason="typo")


def test_reject_archives_challenger_and_keeps_champion(settings, served):
    v1 = add_version(settings, served)
    promote(settings, v1, by="alice", reason="first")
    v2 = add_version(settings, served, alias="challenger")

    out = reject(settings, v2, by="carol", reason="worse on neutral")
    reject(settings, v2, by="carol", reason="worse on neutral")  # repeated: no second entry

    assert out == {"champion_before": v1, "champion_after": v1, "changed": False}
    state = registry_state(settings)
    assert state["champion"] == v1 and state["challenger"] is None
    assert state["stages"][v2] == "Archived"
    assert review_state(settings, v2) == "rejected"
    tags = configure(settings).get_model_version("sentiment", v2).tags
    assert tags["review_comment"] == "worse on neutral"
    assert [e["action"] for e in read_audit(settings)] == ["promote", "reject"]
    text = configure(settings).get_model_version("sentiment", v2).description
    assert "**Status: rejected**: by carol on " in text and "the champion stays version 1" in text
    with pytest.raises(ValueError, match="version 2 was rejected"):
        promote(settings, v2, by="dave", reason="oops")


def test_reject_champion_is_refused(settings, served):
    v1 = add_version(settings, served)
    promote(settings, v1, by="alice", reason="first")
    with pytest.raises(ValueError, match="version 1 is the champion and cannot be rejected"):
        reject(settings, v1, by="carol", reason="no")
    assert registry_state(settings)["champion"] == v1


def test_rollback_without_version_restores_previous_champion(settings, served):
    v1, v2 = add_version(settings, served), add_version(settings, served)
    promote(settings, v1, by="alice", reason="first")
    promote(settings, v2, by="bob", reason="second")

    out = rollback(settings, by="ops", reason="v2 misbehaves in production", request="run-7")
    retried = rollback(settings, by="ops", reason="v2 misbehaves in production", request="run-7")

    assert out == {"champion_before": "2", "champion_after": "1", "changed": True}
    assert retried["champion_after"] == "1" and not retried["changed"]
    state = registry_state(settings)
    assert state["champion"] == v1 and state["stages"] == {v1: "Production", v2: "Archived"}
    last = read_audit(settings)[-1]
    assert (last["action"], last["from"], last["to"], last["request"]) == ("rollback", "2", "1", "run-7")
    assert len(read_audit(settings)) == 3
    text = configure(settings).get_model_version("sentiment", v1).description
    assert "**Status: champion (restored)**: rolled back to this version by ops on " in text
    assert "**Status: archived**:" in configure(settings).get_model_version("sentiment", v2).description


def test_rollback_explicit_version_and_refusals(settings, served):
    v1, v2, v3 = (add_version(settings, served) for _ in range(3))
    with pytest.raises(ValueError, match="no earlier champion of 'sentiment' in the audit trail"):
        rollback(settings, by="ops", reason="nothing yet")
    for v in (v1, v2, v3):
        promote(settings, v, by="alice", reason=f"v{v}")
    assert rollback(settings, v1, by="ops", reason="back to the first")["champion_after"] == v1
    assert registry_state(settings)["stages"] == {v1: "Production", v2: "Archived", v3: "Archived"}
    v4 = add_version(settings, served)
    with pytest.raises(ValueError, match="version 4 was never champion"):
        rollback(settings, v4, by="ops", reason="not a champion")


def test_review_state_reads_the_review_tag(settings, served):
    v = add_version(settings, served, alias="challenger")
    client = configure(settings)
    assert review_state(settings, v) is None
    client.set_model_version_tag("sentiment", v, "review", "Approved ")
    assert review_state(settings, v) is None  # no reviewer named: registry.require_reviewer
    client.set_model_version_tag("sentiment", v, "review_by", "dana")
    assert review_state(settings, v) == "approved"
    client.set_model_version_tag("sentiment", v, "review", "rejected")
    assert review_state(settings, v) == "rejected"
    client.set_model_version_tag("sentiment", v, "review", "maybe later")
    assert review_state(settings, v) is None


def test_promote_step_auto_waits_then_follows_the_reviewer(settings, served):
    v1 = add_version(settings, served)
    promote(settings, v1, by="alice", reason="first")
    v2 = add_version(settings, served, alias="challenger")

    pending = run(_ctx(settings, action="auto"))
    assert pending["status"] == "pending" and pending["champion_after"] == v1

    client = configure(settings)
    client.set_model_version_tag("sentiment", v2, "review", "approved")
    client.set_model_version_tag("sentiment", v2, "review_by", "dana")
    client.set_model_version_tag("sentiment", v2, "review_comment", "looks good on the slices")
    done = run(_ctx(settings, action="auto", version=v2))

    assert {k: done[k] for k in ("action", "version", "status", "champion_before", "champion_after")} == {
        "action": "approve",
        "version": v2,
        "status": "promoted",
        "champion_before": v1,
        "champion_after": v2,
    }
    # The task's extra links: the version's model and its MLflow run.
    mv = configure(settings).get_model_version("sentiment", v2)
    assert (done["request_id"], done["model_name"], done["mlflow_run_id"]) == ("p1", "sentiment", mv.run_id)
    assert done["mlflow_experiment_id"] == configure(settings).get_run(mv.run_id).info.experiment_id
    assert read_audit(settings)[-1]["why"] == "looks good on the slices"
    assert read_audit(settings)[-1]["by"] == "dana"
    assert registry_state(settings)["champion"] == v2


def test_promote_step_reject_and_rollback_actions(settings, served):
    v1 = add_version(settings, served)
    promote(settings, v1, by="alice", reason="first")
    v2 = add_version(settings, served, alias="challenger")

    rejected = run(_ctx(settings, action="reject", version="None", reason="too slow", by="carol"))
    assert (rejected["status"], rejected["version"], rejected["champion_after"]) == ("rejected", v2, v1)

    v3 = add_version(settings, served, alias="challenger")
    run(_ctx(settings, run_id="p2", action="approve", by="carol"))
    rolled = run(_ctx(settings, run_id="p3", action="rollback", version=""))
    assert {k: v for k, v in rolled.items() if not k.startswith(("mlflow_", "model_name"))} == {
        "action": "rollback",
        "version": v1,
        "status": "rolled_back",
        "champion_before": v3,
        "champion_after": v1,
        "request_id": "p3",
    }
    assert registry_state(settings)["champion"] == v1


def test_promote_step_unknown_action_names_choices(settings):
    with pytest.raises(ValueError, match="param action='deploy' must be one of auto, approve, reject, rollback"):
        run(_ctx(settings, action="deploy"))


def test_promote_step_auto_after_auto_registration_is_a_no_op(settings, served):
    v1 = add_version(settings, served)
    promote(settings, v1, by="policy:auto", reason="every gate passed", request="r1", review="auto")
    out = run(_ctx(settings, run_id="r1", action="auto", version=v1))
    assert (out["status"], out["champion_before"], out["champion_after"]) == ("already_champion", v1, v1)
    assert len(read_audit(settings)) == 1


def test_promote_step_auto_policy_never_approves_a_version_held_for_review(settings, served):
    v1 = add_version(settings, served)
    promote(settings, v1, by="alice", reason="first")
    v2 = add_version(settings, served, alias="challenger")
    client = configure(settings)
    client.set_model_version_tag("sentiment", v2, "eval.passed", "true")
    client.set_model_version_tag("sentiment", v2, "eval.needs_review", "true")

    settings = settings.with_overrides({"registry.promotion": "auto"})
    held = run(_ctx(settings, action="auto", version=v2, promotion="auto"))

    assert held["status"] == "pending" and held["champion_after"] == v1
    assert registry_state(settings)["champion"] == v1
    client.set_model_version_tag("sentiment", v2, "eval.needs_review", "false")
    assert run(_ctx(settings, run_id="p2", action="auto", version=v2, promotion="auto"))["champion_after"] == v2
    tags = configure(settings).get_model_version("sentiment", v2).tags
    assert (tags["review"], tags["review_by"]) == ("auto", "pipeline")  # the policy, never "approved"
    assert "eval.passed=true" in tags["review_evidence"]


def test_champion_cache_is_private_and_outside_the_shared_temp_folder(settings, served, tmp_path, monkeypatch):
    import stat

    from pipelines.champion import get_champion

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    v1 = add_version(settings, served)
    promote(settings, v1, by="alice", reason="first")

    champion = get_champion(settings)

    assert champion.model_dir.is_relative_to(tmp_path / "cache" / "mlops-models")
    assert stat.S_IMODE((tmp_path / "cache" / "mlops-models").stat().st_mode) == 0o700
    assert (champion.model_dir / "MLmodel").is_file()
    assert not [p for p in champion.model_dir.parent.iterdir() if p.name.startswith(".")]  # no partial download left
    assert get_champion(settings).model_dir == champion.model_dir  # cached: the same folder, not downloaded again


def test_a_mover_with_a_stale_trail_keeps_the_entries_written_since_it_read(settings, served, monkeypatch):
    # MLflow has no compare-and-set on tags: a mover that read the trail before another mover wrote used to write its
    # stale copy back whole, dropping the other's entry (last writer wins). Here a rejection reads the trail as it
    # was before v2's promotion was recorded.
    import pipelines.registry as registry

    v1, v2, v3 = (add_version(settings, served) for _ in range(3))
    promote(settings, v1, by="alice", reason="first", request="a")
    stale = read_audit(settings)
    promote(settings, v2, by="dag", reason="gates passed", request="b")
    monkeypatch.setattr(registry, "read_audit", lambda s: [dict(e) for e in stale])

    reject(settings, v3, by="bob", reason="worse on slices", request="c")

    monkeypatch.undo()
    trail = read_audit(settings)
    assert [(e["request"], e["action"], e["version"], e["state"]) for e in trail] == [
        ("a", "promote", v1, "done"),
        ("b", "promote", v2, "done"),
        ("c", "reject", v3, "done"),
    ]
    assert registry_state(settings)["champion"] == v2


def test_an_entry_overwritten_right_after_its_write_is_merged_again(settings, served):
    # Another mover's write lands between this write and its read-back: the entry is missing, so it is merged in
    # again on top of the other's trail; three losses in a row raise instead of reporting a move as recorded.
    import json

    import pipelines.registry as registry

    v1 = add_version(settings, served)
    promote(settings, v1, by="alice", reason="first", request="a")
    real = configure(settings)
    theirs = {"action": "refuse", "version": v1, "when": "2026-01-01T00:00:00+00:00", "request": "x", "state": "done"}

    class Racing:
        def __init__(self, losses, drop):
            self.losses, self.drop = losses, drop

        def __getattr__(self, attr):
            return getattr(real, attr)

        def set_registered_model_tag(self, name, key, value):
            real.set_registered_model_tag(name, key, value)
            if key == AUDIT_TAG and self.losses:
                self.losses -= 1
                other = [e for e in json.loads(value) if e.get("request") != self.drop] + [theirs]
                real.set_registered_model_tag(name, key, json.dumps(other))

    entries = read_audit(settings)
    mine = {"action": "reject", "version": v1, "when": "2026-01-02T00:00:00+00:00", "request": "c", "state": "done"}
    registry._store_entry(Racing(losses=1, drop="c"), settings, entries, mine)
    assert [e["request"] for e in read_audit(settings)] == ["a", "x", "c"]
    assert [e["request"] for e in entries] == ["a", "x", "c"]

    late = {**mine, "request": "d"}
    with pytest.raises(RuntimeError, match=r"rewritten by other writers three times while recording reject"):
        registry._store_entry(Racing(losses=3, drop="d"), settings, entries, late)
