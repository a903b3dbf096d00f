"""Review cannot be bypassed, and every champion move is safe to retry: bad inputs and injected faults against a
real MLflow registry (SQLite under ``tmp_path``), each with its exact outcome.

Bad inputs: the form's ``promotion`` above the configured ceiling, bogus policies, approvals that name no reviewer
or name the pipeline, decisions without a decider, conflicting request ids. Faults: a crash between the audit write
and the alias move (or just after it) during promote, reject and rollback, then a retry; two registers of the same
run at once; two runs staging challengers at once.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pipelines"))  # registry_doubles, test_register

from registry_doubles import add_version, make_registry_settings, registry_state, save_served  # noqa: E402

import pipelines.registry as registry_mod  # noqa: E402
from pipelines.context import StepContext  # noqa: E402
from pipelines.errors import PromotionRefused  # noqa: E402
from pipelines.io.tracking import configure  # noqa: E402
from pipelines.registry import (  # noqa: E402
    promote,
    read_audit,
    reject,
    resolve_policy,
    review_state,
    rollback,
)
from pipelines.steps.promote import run  # noqa: E402

CEILING = (
    "param promotion='auto' is refused: registry.promotion is 'manual' and registry.allow_form_auto is false; "
    "a run may ask for a review, never skip it"
)
NO_REVIEWER = (
    "tag review=approved on sentiment version {v} names no reviewer: add the tag review_by=<your name> "
    "(registry.require_reviewer is true)"
)


# --- fixtures and helpers -----------------------------------------------------------------------------
@pytest.fixture
def settings(tmp_path):
    return make_registry_settings(tmp_path, registry__model_name="sentiment")


@pytest.fixture
def served(tmp_path):
    return save_served(tmp_path / "served", default="neutral")


def _ctx(settings, run_id="req-1", **params):
    return StepContext(step="promote", run_id=run_id, settings=settings, params=params, dag_id="promote_or_rollback")


def _tags(settings, version) -> dict[str, str]:
    return dict(configure(settings).get_model_version("sentiment", str(version)).tags)


def _tag(settings, version, **tags) -> None:
    client = configure(settings)
    for key, value in tags.items():
        client.set_model_version_tag("sentiment", str(version), key, value)


def _two_champions(settings, served) -> tuple[str, str]:
    """v1 then v2 promoted by a person: champion v2, v1 the previous one in the trail."""
    v1, v2 = add_version(settings, served), add_version(settings, served)
    promote(settings, v1, by="alice", reason="first", request="seed-1")
    promote(settings, v2, by="bob", reason="second", request="seed-2")
    return v1, v2


class _CrashOnce:
    """A proxy of the MLflow client whose ``method`` raises once (when ``when(*args)`` holds), like a worker that
    dies at that call; every other call goes to the real client."""

    def __init__(self, client, method: str, when=lambda *a: True):
        self._client, self._method, self._when, self.crashed = client, method, when, False

    def __getattr__(self, name):
        real = getattr(self._client, name)
        if name != self._method:
            return real

        def call(*args, **kwargs):
            if not self.crashed and self._when(*args):
                self.crashed = True
                raise ConnectionError(f"injected crash in {name}")
            return real(*args, **kwargs)

        return call


def _crash_once(monkeypatch, method: str, when=lambda *a: True) -> _CrashOnce:
    real_client = configure  # the registry's own client factory, wrapped
    holder: dict[str, _CrashOnce] = {}

    def fake(settings, client=None):
        if client is not None:  # a caller that already holds the proxy passes it on
            return client
        if "proxy" not in holder:
            holder["proxy"] = _CrashOnce(real_client(settings), method, when)
        holder["proxy"]._client = real_client(settings)
        return holder["proxy"]

    monkeypatch.setattr(registry_mod, "registry_client", fake)
    return holder


# --- bad inputs: the promotion ceiling ----------------------------------------------------------------
def test_form_auto_under_manual_config_is_refused_by_split_params():
    from mlops_airflow.params import split_params

    with pytest.raises(ValueError) as err:
        split_params({"promotion": "auto"}, make_registry_settings(Path("/tmp/unused")))
    assert str(err.value) == CEILING


def test_form_auto_is_not_offered_by_the_trigger_form_under_manual_config(monkeypatch):
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    from mlops_airflow.params import continuous_training_params

    monkeypatch.delenv("MLOPS_REGISTRY__PROMOTION", raising=False)
    params = ParamsDict(continuous_training_params())
    with pytest.raises(ParamValidationError, match="param promotion: 'auto' is not one of \\['config', 'manual'\\]"):
        params["promotion"] = "auto"
    monkeypatch.setenv("MLOPS_REGISTRY__ALLOW_FORM_AUTO", "true")
    allowed = ParamsDict(continuous_training_params())
    allowed["promotion"] = "auto"
    allowed.validate()  # the explicit config key lifts the ceiling


def test_form_manual_under_auto_config_lowers_the_policy(settings):
    auto = settings.with_overrides({"registry.promotion": "auto"})
    assert resolve_policy(auto, "manual") == "manual"
    assert resolve_policy(auto, "config") == "auto"
    assert resolve_policy(auto, None) == "auto"


def test_allow_form_auto_lets_the_form_lift_manual(settings):
    allowed = settings.with_overrides({"registry.allow_form_auto": True})
    assert resolve_policy(allowed, "auto") == "auto"


def test_register_with_form_auto_under_manual_config_registers_nothing(settings, served):
    import json

    ctx = StepContext(step="evaluate", run_id="run-x", settings=settings)
    ctx.storage.write_text(ctx.output("result.json"), json.dumps({"passed": True, "metrics": {}}))
    from pipelines.steps.register import run as register

    reg = StepContext(
        step="register",
        run_id="run-x",
        settings=settings,
        inputs={"served_uri": str(served)},
        params={"promotion": "auto"},
    )
    with pytest.raises(PromotionRefused) as err:
        register(reg)
    assert str(err.value) == CEILING
    assert configure(settings).search_model_versions("name='sentiment'") == []
    assert read_audit(settings) == []


def test_promote_step_with_form_auto_under_manual_config_moves_nothing(settings, served):
    v1 = add_version(settings, served)
    promote(settings, v1, by="alice", reason="first", request="seed")
    v2 = add_version(settings, served, alias="challenger")
    _tag(settings, v2, **{"eval.passed": "true", "eval.needs_review": "false"})

    with pytest.raises(PromotionRefused) as err:
        run(_ctx(settings, action="auto", promotion="auto"))

    assert str(err.value) == CEILING
    assert registry_state(settings)["champion"] == v1 and registry_state(settings)["challenger"] == v2
    assert len(read_audit(settings)) == 1


def test_promote_cli_with_promotion_bogus_exits_2_with_one_line(settings, capsys, monkeypatch):
    from pipelines.cli import main
    from pipelines.config import settings_env

    for key, value in settings_env(settings).items():
        monkeypatch.setenv(key, value)
    code = main(["promote", "--run-id", "cli-1", "--param", "action=auto", "--param", "promotion=bogus"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: param promotion='bogus'") and "'auto'" in err[-1]  # the CLI's typed params
    with pytest.raises(PromotionRefused) as refused:  # the step itself, as the local runtime calls it
        run(_ctx(settings, action="auto", promotion="bogus"))
    assert str(refused.value) == "param promotion='bogus' must be one of config, manual, auto"


# --- bad inputs: the pipeline never approves, reviewers are named ----------------------------------------
def test_auto_policy_records_review_auto_with_evidence_never_approved(settings, served):
    auto = settings.with_overrides({"registry.promotion": "auto"})
    v1 = add_version(auto, served, alias="challenger")
    _tag(auto, v1, **{"eval.passed": "true", "eval.needs_review": "false", "eval.gates": '{"floor":"pass"}'})

    out = run(_ctx(auto, run_id="run-auto", action="auto"))

    assert (out["status"], out["champion_after"]) == ("promoted", v1)
    tags = _tags(auto, v1)
    assert tags["review"] == "auto" and tags["review_by"] == "pipeline"
    assert tags["review_evidence"].startswith('eval.passed=true; eval.needs_review=false; eval.gates={"floor":"pass"}')
    assert review_state(auto, v1) is None  # review=auto is the policy's record, not an approval
    assert [(e["action"], e["by"], e["state"]) for e in read_audit(auto)] == [("promote", "policy:auto", "done")]


def test_auto_policy_refuses_a_version_held_for_review(settings, served):
    v1 = add_version(settings, served)
    _tag(settings, v1, **{"eval.passed": "true", "eval.needs_review": "true"})
    with pytest.raises(PromotionRefused, match="its gates asked for a human review"):
        promote(settings, v1, by="policy:auto", reason="x", request="r", review="auto")
    assert registry_state(settings)["champion"] is None and read_audit(settings) == []


def test_approval_without_reviewer_is_refused_and_audited_once(settings, served):
    v1 = add_version(settings, served)
    promote(settings, v1, by="alice", reason="first", request="seed")
    v2 = add_version(settings, served, alias="challenger")
    _tag(settings, v2, review="approved")

    for _ in range(2):  # a retry of the same request adds no second entry
        with pytest.raises(PromotionRefused) as err:
            run(_ctx(settings, run_id="run-7", action="auto"))
        assert str(err.value) == NO_REVIEWER.format(v=v2)

    assert registry_state(settings)["champion"] == v1
    trail = read_audit(settings)
    assert [(e["action"], e["version"], e["from"], e["to"], e["request"]) for e in trail[1:]] == [
        ("refuse", v2, v1, v1, "run-7")
    ]
    assert trail[-1]["why"] == NO_REVIEWER.format(v=v2)


def test_approve_from_the_review_wait_without_reviewer_is_refused(settings, served):
    v1 = add_version(settings, served, alias="challenger")
    _tag(settings, v1, review="approved")
    with pytest.raises(PromotionRefused) as err:
        run(_ctx(settings, action="approve", version=v1))  # the DAG's promote task passes no `by`
    assert str(err.value) == NO_REVIEWER.format(v=v1)
    assert registry_state(settings)["champion"] is None


def test_approve_without_decider_or_review_is_refused(settings, served):
    v1 = add_version(settings, served, alias="challenger")
    with pytest.raises(PromotionRefused) as err:
        run(_ctx(settings, action="approve", version=v1))
    assert str(err.value) == (
        "param by is required to approve sentiment version 1 without a reviewer's approval "
        "(tags review=approved and review_by=<name>)"
    )
    assert registry_state(settings)["champion"] is None


def test_approval_naming_the_pipeline_as_reviewer_does_not_count(settings, served):
    v1 = add_version(settings, served, alias="challenger")
    _tag(settings, v1, review="approved", review_by="Pipeline")
    assert review_state(settings, v1) is None
    with pytest.raises(PromotionRefused, match="names review_by='Pipeline', which is reserved for the pipeline's"):
        run(_ctx(settings, action="auto"))
    assert registry_state(settings)["champion"] is None


@pytest.mark.parametrize("by", ["pipeline", "policy:auto", "  "])
def test_promote_by_the_pipeline_identity_is_refused(settings, served, by):
    v1 = add_version(settings, served)
    with pytest.raises(PromotionRefused, match=f"param by={by!r} cannot approve sentiment version 1"):
        promote(settings, v1, by=by, reason="self-approval")
    assert registry_state(settings)["champion"] is None and read_audit(settings) == []


def test_review_auto_set_by_hand_is_no_approval_under_manual(settings, served):
    v1 = add_version(settings, served, alias="challenger")
    _tag(settings, v1, review="auto", review_by="mallory", **{"eval.passed": "true"})
    out = run(_ctx(settings, action="auto"))
    assert (out["status"], out["champion_after"]) == ("pending", None)
    assert registry_state(settings)["champion"] is None


def test_approval_counts_as_unknown_reviewer_when_not_required(settings, served):
    lax = settings.with_overrides({"registry.require_reviewer": False})
    v1 = add_version(lax, served, alias="challenger")
    _tag(lax, v1, review="approved")
    out = run(_ctx(lax, action="auto"))
    assert (out["status"], out["champion_after"]) == ("promoted", v1)
    assert read_audit(lax)[-1]["by"] == "unknown"


def test_reviewer_and_time_are_recorded_for_an_approval(settings, served):
    v1 = add_version(settings, served, alias="challenger")
    _tag(settings, v1, review="approved", review_by="dana", review_comment="slices fine")
    out = run(_ctx(settings, run_id="run-9", action="approve", version=v1))
    assert out["status"] == "promoted"
    entry = read_audit(settings)[-1]
    assert (entry["by"], entry["why"], entry["request"], entry["state"]) == ("dana", "slices fine", "run-9", "done")
    assert _tags(settings, v1)["review_at"] == entry["when"]


def test_same_request_id_for_another_version_is_refused(settings, served):
    v1, v2 = add_version(settings, served), add_version(settings, served)
    promote(settings, v1, by="alice", reason="first", request="req-A")
    with pytest.raises(PromotionRefused) as err:
        promote(settings, v2, by="alice", reason="other", request="req-A")
    assert str(err.value) == (
        "request 'req-A' already asked to promote sentiment version 1, not 2; a different decision needs a new "
        "request id (param request_id)"
    )
    assert registry_state(settings)["champion"] == v1 and len(read_audit(settings)) == 1


def test_version_param_that_is_not_a_number_is_refused(settings):
    with pytest.raises(ValueError, match="model version '3; drop' must be a positive integer"):
        run(_ctx(settings, action="approve", version="3; drop", by="alice"))


# --- retries without a fault ----------------------------------------------------------------------------
def test_promote_retried_with_the_same_request_does_nothing_twice(settings, served):
    v1 = add_version(settings, served, alias="challenger")
    first = run(_ctx(settings, run_id="run-p", action="approve", by="carol"))
    v2 = add_version(settings, served)
    promote(settings, v2, by="dave", reason="newer", request="run-q")
    again = run(_ctx(settings, run_id="run-p", action="approve", version=v1, by="carol"))

    assert first["status"] == "promoted" and again["status"] == "already_champion"
    assert registry_state(settings)["champion"] == v2  # the replay did not move the champion back
    assert [e["request"] for e in read_audit(settings)] == ["run-p", "run-q"]


def test_reject_retried_with_the_same_request_does_nothing_twice(settings, served):
    v1 = add_version(settings, served)
    promote(settings, v1, by="alice", reason="first", request="seed")
    v2 = add_version(settings, served, alias="challenger")
    for _ in range(2):
        out = run(_ctx(settings, run_id="run-r", action="reject", version=v2, by="erin", reason="slow"))
        assert (out["status"], out["champion_after"]) == ("rejected", v1)
    assert [(e["action"], e["request"]) for e in read_audit(settings)] == [("promote", "seed"), ("reject", "run-r")]
    assert (_tags(settings, v2)["review"], _tags(settings, v2)["review_by"]) == ("rejected", "erin")
    assert registry_state(settings)["stages"][v2] == "Archived"


def test_rollback_retried_with_the_same_request_rolls_back_once(settings, served):
    v1, _ = _two_champions(settings, served)
    for _ in range(3):
        out = run(_ctx(settings, run_id="run-rb", action="rollback"))
        assert out["champion_after"] == v1
    assert registry_state(settings)["champion"] == v1
    assert [e["action"] for e in read_audit(settings)] == ["promote", "promote", "rollback"]


def test_request_id_param_overrides_the_run_id(settings, served):
    v1, _ = _two_champions(settings, served)
    run(_ctx(settings, run_id="airflow-run-1", action="rollback", request_id="ticket-42"))
    out = run(_ctx(settings, run_id="airflow-run-2", action="rollback", request_id="ticket-42"))
    assert out["request_id"] == "ticket-42" and out["champion_after"] == v1
    assert registry_state(settings)["champion"] == v1
    assert [e["request"] for e in read_audit(settings)][-1] == "ticket-42" and len(read_audit(settings)) == 3


# --- injected faults -------------------------------------------------------------------------------------
def test_rollback_retried_after_crash_between_audit_write_and_alias_move(settings, served, monkeypatch):
    v1, v2 = _two_champions(settings, served)
    proxy = _crash_once(monkeypatch, "set_registered_model_alias")

    with pytest.raises(ConnectionError, match="injected crash in set_registered_model_alias"):
        rollback(settings, by="ops", reason="v2 misbehaves", request="rb-1")
    assert proxy["proxy"].crashed
    assert registry_state(settings)["champion"] == v2  # the alias did not move
    assert read_audit(settings)[-1]["state"] == "requested"  # but the request is on record

    out = rollback(settings, by="ops", reason="v2 misbehaves", request="rb-1")
    again = rollback(settings, by="ops", reason="v2 misbehaves", request="rb-1")

    assert out == {"champion_before": v2, "champion_after": v1, "changed": True}
    assert again == {"champion_before": v2, "champion_after": v1, "changed": False}
    assert registry_state(settings)["champion"] == v1
    trail = read_audit(settings)
    assert [(e["action"], e["from"], e["to"], e["state"]) for e in trail] == [
        ("promote", None, v1, "done"),
        ("promote", v1, v2, "done"),
        ("rollback", v2, v1, "done"),
    ]


def test_rollback_retried_after_crash_after_alias_move_does_not_roll_back_twice(settings, served, monkeypatch):
    v1, v2 = _two_champions(settings, served)
    _crash_once(monkeypatch, "set_model_version_tag", when=lambda name, v, key, value: key == "mlops.champion_since")

    with pytest.raises(ConnectionError):
        rollback(settings, by="ops", reason="bad", request="rb-2")
    assert registry_state(settings)["champion"] == v1  # the alias moved, the entry is not marked done yet

    out = rollback(settings, by="ops", reason="bad", request="rb-2")

    assert out["champion_after"] == v1 and out["changed"]
    assert registry_state(settings)["champion"] == v1  # not rolled back again to v2
    assert [(e["action"], e["to"], e["state"]) for e in read_audit(settings)][-1] == ("rollback", v1, "done")
    assert len(read_audit(settings)) == 3


def test_promote_retried_after_crash_between_audit_write_and_alias_move(settings, served, monkeypatch):
    v1 = add_version(settings, served)
    promote(settings, v1, by="alice", reason="first", request="seed")
    v2 = add_version(settings, served, alias="challenger")
    _crash_once(monkeypatch, "set_registered_model_alias", when=lambda name, alias, v: alias == "champion")

    with pytest.raises(ConnectionError):
        run(_ctx(settings, run_id="run-pp", action="approve", by="carol"))
    assert registry_state(settings)["champion"] == v1 and read_audit(settings)[-1]["state"] == "requested"

    out = run(_ctx(settings, run_id="run-pp", action="approve", version=v2, by="carol"))

    assert (out["status"], out["champion_after"]) == ("promoted", v2)
    state = registry_state(settings)
    assert state["champion"] == v2 and state["challenger"] is None
    assert [(e["action"], e["to"], e["state"]) for e in read_audit(settings)] == [
        ("promote", v1, "done"),
        ("promote", v2, "done"),
    ]
    assert (_tags(settings, v2)["review"], _tags(settings, v2)["review_by"]) == ("approved", "carol")


def test_reject_retried_after_crash_while_archiving(settings, served, monkeypatch):
    v1 = add_version(settings, served)
    promote(settings, v1, by="alice", reason="first", request="seed")
    v2 = add_version(settings, served, alias="challenger")
    _crash_once(monkeypatch, "transition_model_version_stage")

    with pytest.raises(ConnectionError):
        reject(settings, v2, by="erin", reason="slow", request="rj-1")
    assert read_audit(settings)[-1]["state"] == "requested"

    reject(settings, v2, by="erin", reason="slow", request="rj-1")
    reject(settings, v2, by="erin", reason="slow", request="rj-1")

    state = registry_state(settings)
    assert state["champion"] == v1 and state["challenger"] is None and state["stages"][v2] == "Archived"
    assert [(e["action"], e["state"]) for e in read_audit(settings)] == [("promote", "done"), ("reject", "done")]


def test_interrupted_request_is_abandoned_when_the_champion_moved_meanwhile(settings, served, monkeypatch):
    _two_champions(settings, served)
    v3 = add_version(settings, served)
    proxy = _crash_once(monkeypatch, "set_registered_model_alias")
    with pytest.raises(ConnectionError):
        rollback(settings, by="ops", reason="bad", request="rb-3")
    assert proxy["proxy"].crashed
    promote(settings, v3, by="bob", reason="hotfix", request="hotfix-1")

    with pytest.raises(PromotionRefused, match="request 'rb-3' to rollback sentiment version 1 was interrupted"):
        rollback(settings, by="ops", reason="bad", request="rb-3")

    assert registry_state(settings)["champion"] == v3
    assert [(e["request"], e["state"]) for e in read_audit(settings)][-2:] == [
        ("rb-3", "abandoned"),
        ("hotfix-1", "done"),
    ]


# --- concurrent registration -----------------------------------------------------------------------------
@pytest.fixture
def evaluated(tmp_path, demo_frames):
    """Settings plus a served double evaluated for run ``run-c`` (the real evaluate step)."""
    from test_register import _evaluated, _settings

    eval_set = demo_frames["batch_002_moderate"].reset_index(drop=True)
    settings, eval_uri = _settings(tmp_path, demo_frames, eval_set)
    served = save_served(
        tmp_path / "served-c", table=dict(zip(eval_set["text"], eval_set["label"], strict=True)), default="neutral"
    )
    assert _evaluated(settings, eval_uri, served, "run-c")["passed"]
    return settings, served


def _register(settings, served, run_id):
    from test_register import _register as register

    return register(settings, served, run_id)


def test_register_race_on_the_same_run_keeps_one_version(evaluated, monkeypatch):
    """Both registers checked before either created (injected): the second deletes its own duplicate."""
    import pipelines.steps.register as register_mod

    settings, served = evaluated
    monkeypatch.setattr(register_mod, "find_version", lambda s, run_id: None)

    first = _register(settings, served, "run-c")
    second = _register(settings, served, "run-c")

    assert (first["version"], first["created"]) == ("1", True)
    assert (second["version"], second["created"]) == ("1", False)
    versions = configure(settings).search_model_versions("name='sentiment'")
    assert [str(mv.version) for mv in versions] == ["1"]
    assert registry_state(settings)["challenger"] == "1"


def test_concurrent_registers_of_the_same_run_in_threads_give_one_version(evaluated, monkeypatch):
    import pipelines.steps.register as register_mod

    settings, served = evaluated
    real_find = register_mod.find_version
    barrier = threading.Barrier(2, timeout=60)

    def find_then_wait(s, run_id):
        found = real_find(s, run_id)
        barrier.wait()  # both have checked before either creates
        return found

    monkeypatch.setattr(register_mod, "find_version", find_then_wait)
    results, errors = [], []

    def worker():
        try:
            results.append(_register(settings, served, "run-c"))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)

    assert not errors, errors
    versions = configure(settings).search_model_versions("name='sentiment'")
    assert len(versions) == 1
    kept = str(versions[0].version)
    assert {r["version"] for r in results} == {kept}
    assert sorted(r["created"] for r in results) == [False, True]
    assert registry_state(settings)["challenger"] == kept


def test_two_runs_staging_at_once_leave_the_challenger_on_the_newer(settings, served):
    """Run A's alias write lands after run B's (a stale decision): A re-checks and gives the alias to B's newer
    version, so both agree whatever the order of their writes; B's staging superseded A's older version, which a
    late stage never brings back."""
    from pipelines.io.tracking import TAG_PIPELINE_RUN
    from pipelines.steps.register import _stage_challenger

    v1 = add_version(settings, served)
    v2 = add_version(settings, served)
    _tag(settings, v1, **{TAG_PIPELINE_RUN: "run-a"})
    _tag(settings, v2, **{TAG_PIPELINE_RUN: "run-b"})
    client = configure(settings)

    _stage_challenger(client, settings, v2)  # B first
    _stage_challenger(client, settings, v1)  # A's late write

    state = registry_state(settings)
    assert state["challenger"] == v2
    assert state["stages"] == {v1: "Archived", v2: "Staging"}
    assert _tags(settings, v1)["review"] == "superseded"


def test_a_register_whose_alias_write_races_another_still_stages_the_challenger(evaluated, monkeypatch):
    """The SQL store inserts an alias (not an upsert): the racer that loses gets an IntegrityError, re-reads, and
    finds the alias where it wanted it."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    settings, served = evaluated
    real_set = MlflowClient.set_registered_model_alias
    calls = []

    def set_then_collide(self, name, alias, version):
        calls.append(version)
        real_set(self, name, alias, version)  # the other register's write lands first ...
        if len(calls) == 1:
            raise MlflowException("UNIQUE constraint failed: registered_model_aliases")  # ... and ours collides

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", set_then_collide)
    result = _register(settings, served, "run-c")

    assert result["version"] == "1" and calls == ["1"]
    assert registry_state(settings)["challenger"] == "1"
