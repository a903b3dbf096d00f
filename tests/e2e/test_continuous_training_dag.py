"""End to end: the real continuous_training DAG (dag.test on SQLite) over the demo batches with the tiny model.

bootstrap -> champion; in-domain batch -> skip; shifted batch -> fine-tune -> challenger staged, the run ends
without waiting; the next batch runs to completion although that review is pending, and its challenger supersedes
the first; review_challenger: the superseded version's review ends at once, the new one's waits until an approval
tag in MLflow -> promoted; malformed batch -> quarantined, champion untouched; rollback.
"""

from __future__ import annotations

import threading
import time

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def loop_env(tmp_path_factory, demo_frames, tiny_model_dir):
    from conftest import build_tiny_bert, dag_environment, tiny_settings

    from pipelines.config import settings_env

    root = tmp_path_factory.mktemp("e2e")
    # A tiny BERT whose vocabulary comes from the demo text only, so it learns the demo task in seconds.
    # The drift encoder stays the shared tiny encoder that the drift tests calibrate the thresholds with.
    tiny_classifier = build_tiny_bert(root / "tiny", [t for df in demo_frames.values() for t in df["text"]])
    # The operator builds its settings from the environment, as a step container would: export the test settings.
    # A tiny model needs more epochs and patience than MiniLM to get past predicting no neutral at all.
    env = settings_env(
        tiny_settings(
            root,
            tiny_classifier,
            drift__encoder=str(tiny_model_dir),
            train__epochs=10,
            train__early_stopping_patience=4,
            train__fine_tune_epochs=3,
            gates__noninferiority_margin=0.1,
            gates__min_macro_f1=0.4,
            # The tiny BERT is a test double of the encoder and trails TF-IDF on the demo text by design; the baseline
            # gate and the quality-held skip have their own tests (test_evaluate, test_decide).
            gates__baseline_tolerance=1.0,
            decision__min_quality_drop=0.0,
            decision__min_data_growth=0.0,  # the young-history rule has its own tests: here no drift is a skip
            registry__review_poke_seconds=1,
            # The bootstrap run is promoted by the policy; later runs lower it to manual from the form.
            registry__promotion="auto",
            dag__retries=0,
        )
    )
    with dag_environment(env):
        from pipelines.config import get_settings
        from pipelines.data.demo import write_demo_batches

        settings = get_settings()
        write_demo_batches(settings)
        yield settings


def _landing(settings, name):
    from pipelines.io.storage import join

    return join(settings.uri(settings.paths.landing), name)


def _champion(settings):
    from pipelines.champion import champion_version

    mv = champion_version(settings)
    return mv.version if mv else None


def _approve_when_waiting(settings, version: str, stop: threading.Event):
    """Approve ``version`` in MLflow once the review_challenger run is waiting for it in Airflow."""
    from airflow.models.hitl import HITLDetail
    from airflow.utils.session import create_session

    from pipelines.io.tracking import configure

    while not stop.is_set():
        with create_session() as session:
            if session.query(HITLDetail).filter(HITLDetail.chosen_options.is_(None)).first() is not None:
                break
        time.sleep(0.3)
    client = configure(settings)
    name, reg = settings.registry.model_name, settings.registry
    client.set_model_version_tag(name, version, reg.review_by_tag, "e2e-reviewer")
    client.set_model_version_tag(name, version, reg.review_comment_tag, "looks good (e2e reviewer)")
    client.set_model_version_tag(name, version, reg.review_tag, "approved")


def test_loop_end_to_end(loop_env):
    from scripts.dag_runner import run_dag

    settings = loop_env
    from pipelines.io.storage import get_storage

    storage = get_storage(settings)

    # 1. bootstrap: no champion -> retrain -> auto promotion -> champion v1
    boot = run_dag(
        "continuous_training", {"batch_uri": _landing(settings, "batch_000_reference.csv"), "promotion": "auto"}
    )
    assert boot.state == "success", boot.task_states
    assert boot.results["decide"]["action"] == "retrain"
    assert boot.task_states["skip"] == "skipped" and boot.task_states["gate_failed"] == "skipped"
    assert boot.results["evaluate"]["metrics"]["macro_f1"] >= 0.4
    champion_v1 = _champion(settings)
    assert champion_v1 is not None
    assert not storage.exists(_landing(settings, "batch_000_reference.csv"))

    # 2. in-domain batch -> skip, nothing registered
    same = run_dag("continuous_training", {"batch_uri": _landing(settings, "batch_001_in_domain.csv")})
    assert same.state == "success", same.task_states
    assert same.results["decide"]["action"] == "skip"
    assert same.task_states["train"] == "skipped" and same.task_states["register"] == "skipped"
    assert _champion(settings) == champion_v1

    # 3. shifted batch -> fine-tune -> challenger staged under manual promotion; the run ends, it never waits
    shifted = run_dag(
        "continuous_training", {"batch_uri": _landing(settings, "batch_002_moderate.csv"), "promotion": "manual"}
    )
    assert shifted.state == "success", shifted.task_states
    assert shifted.results["decide"]["action"] == "fine_tune"
    first = shifted.results["register"]["version"]
    assert shifted.results["register"]["alias"] == "challenger"
    assert shifted.results["request_review"]["version"] == str(first)
    assert not any("review" in t and t != "request_review" for t in shifted.task_states), shifted.task_states
    assert str(_champion(settings)) == str(champion_v1)

    # 3b. the next batch, with that review still pending: runs to completion, and its challenger supersedes the
    # first (fine_tune is forced; the policy chooses it too: decision.severe_action is fine_tune by default)
    nxt = run_dag(
        "continuous_training",
        {"batch_uri": _landing(settings, "batch_003_severe.csv"), "promotion": "manual", "force_action": "fine_tune"},
    )
    assert nxt.state == "success", nxt.task_states
    assert nxt.results["decide"]["auto_action"] == "fine_tune"
    version = nxt.results["register"]["version"]
    assert int(version) > int(first)
    assert nxt.results["register"]["superseded"] == [str(first)]
    assert nxt.results["request_review"]["superseded"] == [str(first)]
    from pipelines.champion import champion_version
    from pipelines.io.tracking import configure

    client = configure(settings)
    old = client.get_model_version(settings.registry.model_name, str(first))
    assert old.tags["review"] == "superseded" and old.tags["superseded_by"] == str(version)
    assert old.current_stage == "Archived" and "**Status: superseded**: by version" in old.description.split("\n")[2]
    assert str(champion_version(settings, "challenger").version) == str(version)
    assert str(_champion(settings)) == str(champion_v1)

    # 3c. the superseded version's review ends at once; the new challenger's waits for the reviewer, who approves
    # in MLflow -> promoted
    stale = run_dag("review_challenger", {"version": str(first)})
    assert stale.state == "success" and stale.task_states["review"] == "skipped", stale.task_states
    from airflow.models.hitl import HITLDetail  # noqa: F401  (imported here: two threads importing it deadlock)

    stop = threading.Event()
    reviewer = threading.Thread(target=_approve_when_waiting, args=(settings, str(version), stop), daemon=True)
    reviewer.start()
    try:
        reviewed = run_dag("review_challenger", {})  # no version: the current challenger
    finally:
        stop.set()
        reviewer.join(timeout=5)
    assert reviewed.state == "success", reviewed.task_states
    assert reviewed.results["review"] == {
        "decision": "approve",
        "version": str(version),
        "by": "e2e-reviewer",
        "source": "mlflow",
    }
    assert str(_champion(settings)) == str(version) != str(champion_v1)
    assert champion_version(settings).tags["fine_tunes_since_retrain"] == "1"

    # 4. malformed batch -> validate fails, batch quarantined, champion untouched
    bad = run_dag("continuous_training", {"batch_uri": _landing(settings, "batch_004_malformed.csv")})
    assert bad.state == "failed"
    assert bad.task_states["validate"] == "failed"
    assert bad.task_states.get("drift") in ("upstream_failed", None)
    quarantined = storage.list(settings.uri(settings.paths.quarantine))
    assert any(u.endswith("batch_004_malformed.csv") for u in quarantined), quarantined
    assert not storage.exists(_landing(settings, "batch_004_malformed.csv"))
    assert str(_champion(settings)) == str(version)

    # 5. the manual DAG rolls the champion back to the previous one from the audit trail
    rolled = run_dag("promote_or_rollback", {"action": "rollback", "reason": "e2e rollback"})
    assert rolled.state == "success", rolled.task_states
    assert str(_champion(settings)) == str(champion_v1)
    assert str(rolled.results["promote"]["champion_after"]) == str(champion_v1)
