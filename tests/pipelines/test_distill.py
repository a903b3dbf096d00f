"""Distillation as a compression mode (compress.distill): the student, its training, its levels, the back-off."""

import json
from datetime import UTC, datetime

import numpy as np
import pytest
from conftest import tiny_settings

from pipelines.context import StepContext
from pipelines.data.datasets import write_parquet
from pipelines.runner import run_step


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir, demo_frames):
    """A tiny 2-layer BERT retrained on the reference batch, with distillation on; yields (settings, train result)."""
    settings = tiny_settings(tmp_path_factory.mktemp("distill"), tiny_model_dir, compress__distill=True)
    uri = settings.uri(settings.paths.accepted, "batch_000.parquet")
    write_parquet(demo_frames["batch_000_reference"], uri, settings)
    ctx = StepContext(
        step="train", run_id="run-1", settings=settings, inputs={"accepted_uri": uri}, params={"action": "retrain"}
    )
    return settings, run_step(ctx)


def _compress(settings, train, run_id):
    ctx = StepContext(
        step="compress",
        run_id=run_id,
        settings=settings,
        inputs={
            "model_uri": train["model_uri"],
            "reference_uri": train["reference_uri"],
            "eval_uri": train["eval_uri"],
        },
    )
    return run_step(ctx)


def test_default_layers_are_every_other_ending_with_the_top():
    from pipelines.model.distill import default_layers

    assert default_layers(6) == [1, 3, 5] and default_layers(12) == [1, 3, 5, 7, 9, 11]
    assert default_layers(4) == [1, 3] and default_layers(3) == [0, 2] and default_layers(2) == [1]


def test_student_layer_settings_are_checked(make_settings):
    from pipelines.config import ConfigError
    from pipelines.model.distill import student_layers

    assert student_layers(make_settings(), 6) == [1, 3, 5]
    assert student_layers(make_settings(compress__distill_layers=[0, 5]), 6) == [0, 5]
    with pytest.raises(ValueError, match=r"names layer\(s\) \[6\], but the trained model has 6 encoder layers"):
        student_layers(make_settings(compress__distill_layers=[1, 6]), 6)
    with pytest.raises(ValueError, match="keeps all 2 encoder layers"):
        student_layers(make_settings(compress__distill_layers=[0, 1]), 2)
    with pytest.raises(ConfigError, match="ascending, each once"):
        make_settings(compress__distill_layers=[3, 1])


def test_student_keeps_the_chosen_teacher_layers(trained):
    import torch

    from pipelines.model.distill import make_student
    from pipelines.model.modeling import load_classifier

    settings, train = trained
    teacher, tokenizer = load_classifier(train["model_uri"], settings)
    student = make_student(teacher, [1])
    assert student.config.num_hidden_layers == 1 and len(student.bert.encoder.layer) == 1
    assert teacher.config.num_hidden_layers == 2 and len(teacher.bert.encoder.layer) == 2  # the teacher is untouched
    s, t = student.state_dict(), teacher.state_dict()
    for name, value in s.items():
        source = name.replace("encoder.layer.0.", "encoder.layer.1.")
        assert torch.equal(value, t[source]), name  # layer 1 became layer 0; embeddings and head are the teacher's
    enc = tokenizer(["a masterpiece", "junk"], padding=True, return_tensors="pt")
    assert student(**enc).logits.shape == (2, 3)


def test_compress_serves_a_distilled_student(trained):
    import mlflow
    import onnx
    import pandas as pd

    from pipelines.champion import find_bundle
    from pipelines.data.datasets import capture_root
    from pipelines.io.storage import get_storage, join
    from pipelines.report import compression_section
    from pipelines.serving import capture_file_name

    settings, train = trained
    # Captured requests add unlabelled texts (soft targets only); a hash-only or failed row adds nothing.
    rows = [
        {"request_id": "r1", "row": i, "status": "ok", "text": f"captured text number {i} was fine"} for i in range(5)
    ]
    rows += [{"request_id": "r2", "row": 0, "status": "error", "text": "failed request"}]
    rows += [{"request_id": "r3", "row": 0, "status": "ok", "text": None}]
    data = "".join(json.dumps(r) + "\n" for r in rows)
    name = capture_file_name(datetime(2026, 1, 1, tzinfo=UTC), "w", 1)
    get_storage(settings).write_text(join(capture_root(settings), name), data)

    result = _compress(settings, train, "run-d1")

    d = result["distill"]
    assert d["enabled"] is True and d["layers"] == [1] and d["teacher_layers"] == 2 and d["student_layers"] == 1
    m = d["metrics"]
    assert m["unlabelled_rows"] == 5 and m["labelled_rows"] > 0 and m["epochs_run"] >= 1
    assert result["sample_passes"] == int(m["sample_passes"]) > 0 and result["train_seconds"] > 0
    assert 0 <= d["fp32_agreement_with_teacher"] <= 1
    # The student went through the same levels, its agreement measured against the teacher.
    assert result["served_model"] == "student" == d["served"] and d["served_layers"] == 1
    assert result["level"] == result["levels_tried"][-1]["level"] and result["levels_tried"][-1]["accepted"]
    assert result["agreement"] == d["agreement_with_teacher"] >= settings.compress.distill_min_agreement
    assert d["served_mb"] == result["size_mb"] and d["speedup_vs_teacher_fp32"] > 0
    assert 0 <= d["teacher_macro_f1"] <= 1 and 0 <= d["served_macro_f1"] <= 1 and d["eval_rows"] > 0
    # The served graph has one encoder layer; the bundle's fp32 weights stay the teacher's (the next fine-tune's start).
    bundle = find_bundle(result["served_uri"])
    names = [n.name for n in onnx.load(str(bundle / "model.onnx")).graph.node]
    assert any("/encoder/layer.0/" in n for n in names) and not any("/encoder/layer.1/" in n for n in names)
    assert json.loads((bundle / "fp32" / "config.json").read_text())["num_hidden_layers"] == 2
    out = mlflow.pyfunc.load_model(result["served_uri"]).predict(pd.DataFrame({"text": ["a masterpiece", "junk"]}))
    assert len(out) == 2 and set(out["label"]) <= set(settings.data.labels)

    run = mlflow.MlflowClient(settings.mlflow.tracking_uri).get_run(result["mlflow_run_id"])
    assert run.data.tags["compress.served_model"] == "student" and run.data.params["distill_layers"] == "1"
    assert run.data.metrics["distill_sample_passes"] == result["sample_passes"]
    assert "distill_loss" in run.data.metrics and "distill_val_agreement" in run.data.metrics
    text = "\n".join(compression_section(result))
    assert "### Distillation" in text and "served: the **student**, 1 of the teacher's 2 encoder layers" in text


def test_student_trained_without_the_evaluation_texts(trained, monkeypatch):
    from pipelines.model import distill

    settings, train = trained
    seen = {}
    original = distill.distill

    def spy(settings, teacher, tokenizer, labelled, unlabelled):
        seen["texts"] = set(labelled[settings.data.text_column]) | set(unlabelled)
        return original(settings, teacher, tokenizer, labelled, unlabelled)

    monkeypatch.setattr(distill, "distill", spy)
    fast = settings.with_overrides({"compress.distill_epochs": 1, "compress.levels": ["fp32"]})
    _compress(fast, train, "run-d2")
    import pandas as pd

    eval_texts = set(pd.read_parquet(train["eval_uri"])[settings.data.text_column])
    assert seen["texts"] and not seen["texts"] & eval_texts


def test_teacher_served_when_no_student_level_agrees(trained, monkeypatch):
    from pipelines.report import compression_section
    from pipelines.steps import compress

    settings, train = trained
    original = compress._run_candidate

    def run_candidate(level, probe, graph, texts):
        labels, p50 = original(level, probe, graph, texts)
        return ((labels + 1) % 3 if "student" in str(graph) else labels), p50

    monkeypatch.setattr(compress, "_run_candidate", run_candidate)
    fast = settings.with_overrides({"compress.distill_epochs": 1})
    result = _compress(fast, train, "run-d3")

    d = result["distill"]
    assert result["served_model"] == "teacher" == d["served"] and d["served_layers"] == 2
    assert "distill_min_agreement=0.9" in d["backed_off"] and len(d["student_failures"]) >= 1
    assert result["agreement"] >= settings.compress.min_agreement  # the teacher's own levels, its own floor
    assert result["sample_passes"] > 0  # the student's training still counts
    assert "the student (1 of the teacher's 2 encoder layers ([1])) was not served" in "\n".join(
        compression_section(result)
    )


def test_distill_off_by_default(make_settings):
    assert make_settings().compress.distill is False
    assert np.isclose(make_settings().compress.distill_temperature, 2.0)
