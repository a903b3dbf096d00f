"""End to end with compress.distill on: the real continuous_training DAG (dag.test on SQLite) with the tiny model.

bootstrap -> the compress step distills a 1-layer student from the 2-layer teacher, serves it, the gates evaluate
the served student and it becomes the champion, its version tags saying what was served; the next batch fine-tunes
from the champion's fp32 weights, which are the teacher's, and distills again.
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def distill_env(tmp_path_factory, demo_frames, tiny_model_dir):
    from conftest import build_tiny_bert, dag_environment, tiny_settings

    from pipelines.config import settings_env

    root = tmp_path_factory.mktemp("e2e-distill")
    tiny_classifier = build_tiny_bert(root / "tiny", [t for df in demo_frames.values() for t in df["text"]])
    env = settings_env(
        tiny_settings(
            root,
            tiny_classifier,
            drift__encoder=str(tiny_model_dir),
            train__epochs=10,
            train__early_stopping_patience=4,
            train__fine_tune_epochs=3,
            compress__distill=True,
            gates__noninferiority_margin=0.1,
            gates__min_macro_f1=0.4,
            gates__baseline_tolerance=1.0,  # as in test_continuous_training_dag: the tiny BERT trails TF-IDF by design
            decision__min_quality_drop=0.0,
            decision__min_data_growth=0.0,
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


def test_distilled_student_is_gated_registered_and_fine_tuned_from_its_teacher(distill_env):
    from pipelines.champion import champion_version, get_champion
    from scripts.dag_runner import run_dag

    settings = distill_env
    assert settings.compress.distill is True
    boot = run_dag(
        "continuous_training", {"batch_uri": _landing(settings, "batch_000_reference.csv"), "promotion": "auto"}
    )
    assert boot.state == "success", boot.task_states
    compress, evaluate = boot.results["compress"], boot.results["evaluate"]
    assert compress["served_model"] == "student" and compress["distill"]["layers"] == [1]
    assert compress["sample_passes"] > 0 and compress["train_seconds"] > 0
    # The gates saw the served student.
    assert evaluate["served_uri"] == compress["served_uri"] and evaluate["passed"] is True
    mv = champion_version(settings)
    assert mv is not None and str(mv.version) == str(boot.results["register"]["version"])
    assert mv.tags["compress.served_model"] == "student" and mv.tags["compress.layers"] == "1 of 2"
    for key in (
        "agreement_with_teacher",
        "teacher_macro_f1",
        "served_macro_f1",
        "served_mb",
        "speedup_vs_teacher_fp32",
    ):
        assert float(mv.tags[f"compress.{key}"]) >= 0, key
    assert int(mv.tags["compress.distill_sample_passes"]) == compress["sample_passes"]
    assert "### Distillation" in mv.description and "served: the **student**" in mv.description
    champion = get_champion(settings)
    assert json.loads((champion.fp32_dir / "config.json").read_text())["num_hidden_layers"] == 2  # the teacher

    # A fine-tune starts from the champion's fp32 weights (the 2-layer teacher) and distills a student again.
    nxt = run_dag(
        "continuous_training",
        {"batch_uri": _landing(settings, "batch_002_moderate.csv"), "force_action": "fine_tune", "promotion": "manual"},
    )
    assert nxt.results["train"]["action"] == "fine_tune", nxt.task_states
    assert nxt.results["train"]["base"].endswith(f"v{mv.version}")
    again = nxt.results["compress"]
    assert again["distill"]["teacher_layers"] == 2 and again["distill"]["layers"] == [1]
    assert again["served_model"] in ("student", "teacher") and again["sample_passes"] > 0
