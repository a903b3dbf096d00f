"""The review_challenger DAG for real (dag.test on SQLite; the review's trigger runs in line) against a real MLflow
registry with stand-in model versions: a decision in MLflow, a response in Airflow's Required Actions (written to
the HITL table as the Core API does), a newer challenger superseding the one under review, a timeout; and a
continuous_training run with nothing to do, which ends in seconds."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pipelines"))  # registry_doubles

from registry_doubles import add_version, make_registry_settings, registry_state, save_served  # noqa: E402

pytestmark = pytest.mark.slow
MODEL = "reviewed"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from conftest import dag_environment

    from pipelines.config import settings_env

    root = tmp_path_factory.mktemp("review-dag")
    settings = make_registry_settings(
        root, registry__model_name=MODEL, registry__review_poke_seconds=1, registry__promotion="manual"
    )
    values = {**settings_env(settings), "MLOPS_DAG__RETRIES": "0"}
    with dag_environment(values):
        # Import and map everything here, in the main thread: the reviewer threads below query Airflow's tables while
        # the DAG runs, and two threads importing Airflow's models at once deadlock on the import lock.
        from airflow.models.hitl import HITLDetail  # noqa: F401
        from airflow.models.taskinstance import TaskInstance  # noqa: F401
        from sqlalchemy.orm import configure_mappers

        from scripts.dag_runner import load_dag

        load_dag("review_challenger")
        configure_mappers()
        served = save_served(root / "served", default="neutral")
        champion = add_version(settings, served, alias="champion")
        yield settings, served, champion


def _stage(settings, served, run_id: str) -> str:
    from pipelines.io.tracking import TAG_PIPELINE_RUN, configure
    from pipelines.steps.register import _stage_challenger

    v = add_version(settings, served)
    client = configure(settings)
    client.set_model_version_tag(MODEL, v, TAG_PIPELINE_RUN, run_id)
    _stage_challenger(client, settings, v)
    return v


def _tags(settings, version) -> dict[str, str]:
    from pipelines.io.tracking import configure

    return dict(configure(settings).get_model_version(MODEL, str(version)).tags)


def _hitl_request(timeout: float = 60.0):
    """The open HITL request of the running review task (waits for it to appear)."""
    from airflow.models.hitl import HITLDetail
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    deadline = time.time() + timeout
    while time.time() < deadline:
        with create_session() as session:
            found = (
                session.query(HITLDetail.ti_id)
                .join(TaskInstance, HITLDetail.ti_id == TaskInstance.id)
                .filter(TaskInstance.dag_id == "review_challenger", HITLDetail.chosen_options.is_(None))
                .first()
            )
            if found:
                return found[0]
        time.sleep(0.3)
    raise AssertionError("the review task opened no Human-in-the-loop request")


def _respond_in_airflow(ti_id, option: str, user: str, comment: str) -> None:
    """What the Core API does when a user answers in Required Actions (less the resume, which the trigger sees)."""
    from airflow.models.hitl import HITLDetail
    from airflow.utils import timezone
    from airflow.utils.session import create_session

    with create_session() as session:
        detail = session.query(HITLDetail).filter(HITLDetail.ti_id == ti_id).one()
        detail.responded_by = {"id": "7", "name": user}
        detail.responded_at = timezone.utcnow()
        detail.chosen_options = [option]
        detail.params_input = {"comment": comment}


def _answer(ti_id):
    from airflow.models.hitl import HITLDetail
    from airflow.utils.session import create_session

    with create_session() as session:
        d = session.query(HITLDetail).filter(HITLDetail.ti_id == ti_id).one()
        return list(d.chosen_options or []), dict(d.params_input or {}), d.responded_by_user


def _in_thread(fn):
    errors: list[BaseException] = []

    def wrapped():
        try:
            fn()
        except BaseException as exc:  # surfaced by the test
            errors.append(exc)

    t = threading.Thread(target=wrapped, daemon=True)
    t.start()
    return t, errors


def test_a_decision_in_mlflow_ends_the_wait_and_closes_the_airflow_request(env):
    from pipelines.io.tracking import configure
    from scripts.dag_runner import run_dag

    settings, served, _ = env
    v = _stage(settings, served, "run-mlflow")
    seen = {}

    def reviewer():
        seen["ti_id"] = _hitl_request()  # the wait is open in Airflow too
        client = configure(settings)
        client.set_model_version_tag(MODEL, v, "review_by", "dora")
        client.set_model_version_tag(MODEL, v, "review_comment", "fine on every slice")
        client.set_model_version_tag(MODEL, v, "review", "approved")

    t, errors = _in_thread(reviewer)
    out = run_dag("review_challenger", {"version": v})
    t.join(timeout=30)
    assert not errors, errors
    assert out.state == "success", out.task_states
    assert out.results["review"] == {"decision": "approve", "version": v, "by": "dora", "source": "mlflow"}
    assert out.results["promote"]["status"] == "promoted"
    assert registry_state(settings)["champion"] == v
    chosen, params, by = _answer(seen["ti_id"])  # Required Actions shows the MLflow decision
    assert chosen == ["Approve"] and params == {"comment": "approved in MLflow by dora: fine on every slice"}


def test_a_response_in_airflow_is_recorded_in_mlflow_with_the_airflow_user(env):
    from scripts.dag_runner import run_dag

    settings, served, _ = env
    champion = registry_state(settings)["champion"]
    v = _stage(settings, served, "run-airflow")
    t, errors = _in_thread(lambda: _respond_in_airflow(_hitl_request(), "Reject", "erin", "worse on books"))
    out = run_dag("review_challenger", {"version": v})
    t.join(timeout=30)
    assert not errors, errors
    assert out.state == "success", out.task_states
    assert out.results["review"] == {"decision": "reject", "version": v, "by": "erin", "source": "airflow"}
    tags = _tags(settings, v)
    assert (tags["review"], tags["review_by"], tags["review_comment"], tags["review_source"]) == (
        "rejected",
        "erin",
        "worse on books",
        "airflow",
    )
    assert out.results["promote"]["status"] == "rejected"
    state = registry_state(settings)
    assert state["champion"] == champion and state["stages"][v] == "Archived" and state["challenger"] is None


def test_a_newer_challenger_ends_the_review_of_the_older_one(env):
    from scripts.dag_runner import run_dag

    settings, served, _ = env
    champion = registry_state(settings)["champion"]
    old = _stage(settings, served, "run-old")
    seen = {}

    def newer_run():
        seen["ti_id"] = _hitl_request()
        seen["new"] = _stage(settings, served, "run-new")  # the next batch's register

    t, errors = _in_thread(newer_run)
    started = time.perf_counter()
    out = run_dag("review_challenger", {"version": old})
    t.join(timeout=30)
    assert not errors, errors
    assert out.state == "success", out.task_states
    assert out.task_states["review"] == "skipped" and out.task_states["promote"] == "skipped"
    assert time.perf_counter() - started < 60
    assert _tags(settings, old)["review"] == "superseded"
    chosen, params, _ = _answer(seen["ti_id"])
    assert chosen == ["Reject"]
    assert (
        params["comment"] == f"closed without a decision here: superseded by version {seen['new']}; nothing to review"
    )
    state = registry_state(settings)
    assert state["challenger"] == seen["new"] and state["champion"] == champion

    # A review started for the superseded version ends at once, without a request in Airflow.
    again = run_dag("review_challenger", {"version": old})
    assert again.task_states["review"] == "skipped" and again.state == "success"


def test_no_decision_within_the_timeout_fails_the_review_and_keeps_the_champion(env):
    from scripts.dag_runner import run_dag

    settings, served, _ = env
    state = registry_state(settings)
    pending = state["challenger"]
    os.environ["MLOPS_REGISTRY__REVIEW_TIMEOUT_MINUTES"] = "0.03"
    try:
        out = run_dag("review_challenger", {})  # no version: the current challenger
    finally:
        os.environ.pop("MLOPS_REGISTRY__REVIEW_TIMEOUT_MINUTES")
    assert out.task_states["review"] == "failed" and out.task_states["promote"] == "upstream_failed"
    after = registry_state(settings)
    assert after["champion"] == state["champion"] and after["challenger"] == pending


def test_a_continuous_training_run_with_nothing_to_do_ends_in_seconds(env):
    import signal

    from scripts.dag_runner import run_dag

    handler = signal.getsignal(signal.SIGTERM)
    out = run_dag("continuous_training", {})
    assert signal.getsignal(signal.SIGTERM) is handler  # dag.test() leaves Airflow's in place; run_dag restores it
    assert out.state == "success", out.task_states
    assert out.task_states["pick_batch"] == "skipped"
    assert set(out.task_states.values()) == {"skipped"}
    assert out.wall_s < 30, out.wall_s
