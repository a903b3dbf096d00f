import json

import numpy as np
import pytest
from conftest import tiny_settings

from pipelines.context import StepContext
from pipelines.data.datasets import write_parquet
from pipelines.errors import ModelRejected
from pipelines.runner import run_step


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir, demo_frames):
    """A tiny BERT retrained on the reference batch; yields (settings, train result).

    Decision offsets off: the tiny BERT leaves a class unpredicted on the demo batch, and raising it puts many rows
    on a near-tie that pruning flips, so prune+int8 would miss the agreement floor. These tests are about the levels;
    the offsets have their own (tests/pipelines/test_decision.py)."""
    settings = tiny_settings(tmp_path_factory.mktemp("compress"), tiny_model_dir, train__decision_floor=0)
    uri = settings.uri(settings.paths.accepted, "batch_000.parquet")
    write_parquet(demo_frames["batch_000_reference"], uri, settings)
    ctx = StepContext(
        step="train", run_id="run-1", settings=settings, inputs={"accepted_uri": uri}, params={"action": "retrain"}
    )
    return settings, run_step(ctx)


def _compress(settings, train, run_id="run-1", **inputs):
    ctx = StepContext(
        step="compress",
        run_id=run_id,
        settings=settings,
        inputs={"model_uri": train["model_uri"], "reference_uri": train["reference_uri"], **inputs},
    )
    return run_step(ctx)


def test_compress_serves_int8_pyfunc_that_predicts_raw_text(trained):
    import mlflow
    import pandas as pd

    from pipelines.champion import find_bundle

    settings, train = trained
    result = _compress(settings, train)

    assert result["agreement"] >= settings.compress.min_agreement
    assert result["parity_max_abs_diff"] <= settings.compress.parity_atol
    assert result["prune"]["method"] == "heads" and result["quantized"] is True
    # The strongest level agreed: nothing else was tried.
    assert result["level"] == "prune+int8" and result["prune"]["applied_share"] > 0
    [tried] = result["levels_tried"]
    assert tried["level"] == "prune+int8" and tried["accepted"] is True and tried["agreement"] == result["agreement"]
    assert tried["size_mb"] == result["size_mb"] and tried["p50_ms_batch32"] > 0
    assert result["agreement_rows"] == settings.compress.parity_sample_rows == 64
    low, high = result["agreement_ci"]
    assert 0 < low <= result["agreement"] <= high <= 1 and tried["agreement_ci"] == [low, high]
    assert result["fused_ops"] == {}  # compress.optimize_graph is off by default
    assert result["size_mb"] < result["sizes"]["onnx_fp32_mb"]
    # Default: every linear layer (6 per encoder layer, 2 layers) is weight-only int8.
    assert len(result["weight_only_int8"]) == 12 and result["kept_fp32"] == []
    assert set(result["latency"]) >= {"p50_ms_batch1", "p95_ms_batch1", "p50_ms_batch32", "p95_ms_batch32"}
    bundle = find_bundle(result["served_uri"])
    for name in [
        "model.onnx",
        "labels.json",
        "tokenizer/tokenizer.json",
        "fp32/model.safetensors",
        "reference/reference.npz",
    ]:
        assert (bundle / name).is_file(), name

    model = mlflow.pyfunc.load_model(result["served_uri"])
    texts = ["the battery died after a week, total junk", "an ordinary read", "kept me up all night, a masterpiece"]
    out = model.predict(pd.DataFrame({"text": texts}))
    assert list(out.columns) == ["label", "prob_negative", "prob_neutral", "prob_positive"]
    assert len(out) == 3 and set(out["label"]) <= {"negative", "neutral", "positive"}
    assert np.allclose(out.filter(like="prob_").sum(axis=1), 1.0, atol=1e-5)
    # Weight-only int8 makes a row's output independent of its batch-mates (dynamic int8 scales per batch).
    for i, text in enumerate(texts):
        alone = model.predict([text])
        assert alone["label"][0] == out["label"][i]
        assert np.allclose(alone.filter(like="prob_").to_numpy(), out.filter(like="prob_").to_numpy()[i], atol=1e-3)
    assert model.metadata.get_input_schema() is None  # the model parses its input (an id column passes)
    assert [p.name for p in model.metadata.get_params_schema().params] == ["capture"]
    assert "prob_neutral" in model.metadata.get_output_schema().input_names()


def test_compress_served_model_loads_without_the_repository(trained, tmp_path):
    import os
    import subprocess
    import sys

    settings, train = trained
    result = _compress(settings, train)
    code = (
        "import sys, mlflow; m = mlflow.pyfunc.load_model(sys.argv[1]); "
        "print(m.predict(['a masterpiece', 'died after a week']).to_json(orient='records'))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", code, result["served_uri"]], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(rows) == 2 and {"label", "prob_positive"} <= set(rows[0])


def test_compress_served_predictions_match_fp32_labels(trained):
    import pandas as pd

    from pipelines.champion import find_bundle
    from pipelines.model.modeling import load_classifier
    from pipelines.serving import OnnxPredictor

    settings, train = trained
    result = _compress(settings, train)  # same run id: replaces the served folder
    eval_df = pd.read_parquet(train["eval_uri"])
    texts = eval_df["text"].tolist()[:64]
    model, tokenizer = load_classifier(train["model_uri"], settings)
    from pipelines.model.modeling import torch_logits

    fp32 = torch_logits(model, tokenizer, texts, 64, 32).argmax(1)
    served = OnnxPredictor(find_bundle(result["served_uri"])).predict_proba(texts).argmax(1)
    assert np.mean(fp32 == served) >= settings.compress.min_agreement


def test_compress_magnitude_pruning_with_graph_fusion(trained):
    settings, train = trained
    settings = settings.with_overrides({"compress.prune": "magnitude", "compress.optimize_graph": True})
    result = _compress(settings, train, run_id="run-2")

    assert result["level"] == "prune+int8" and result["quantized"] is True
    assert result["prune"]["method"] == "magnitude" and result["prune"]["applied_share"] > 0
    assert result["prune"]["weights_zeroed"] > 0 and result["fused_ops"]["Attention"] == 2


def test_compress_without_quantization_serves_the_fp32_graph_directly(trained):
    settings, train = trained
    settings = settings.with_overrides({"compress.quantize": False})
    result = _compress(settings, train, run_id="run-7")

    assert result["level"] == "fp32" and result["quantized"] is False
    assert [t["level"] for t in result["levels_tried"]] == ["fp32"]
    assert set(result["levels_skipped"]) == {"prune+int8", "int8", "int8_sensitive_fp32"}
    assert result["prune"]["applied_share"] == 0.0  # pruning is part of the prune+int8 level only
    assert result["size_mb"] == result["sizes"]["onnx_fp32_mb"]


def test_compress_quantize_exclude_keeps_named_nodes_fp32(trained):
    import onnx

    from pipelines.champion import find_bundle

    settings, train = trained
    settings = settings.with_overrides(
        {"compress.prune": "none", "compress.quantize_exclude": ["layer.1/output/dense/", "no-such-node"]}
    )
    result = _compress(settings, train, run_id="run-5")

    assert result["level"] == "int8" and "prune+int8" in result["levels_skipped"]  # prune none starts at int8
    assert "/bert/encoder/layer.1/output/dense/MatMul" in result["kept_fp32"]  # and its bias Add
    assert all("layer.1/output/dense/" in name for name in result["kept_fp32"])
    ops = {n.name: n.op_type for n in onnx.load(str(find_bundle(result["served_uri"]) / "model.onnx")).graph.node}
    assert ops["/bert/encoder/layer.1/output/dense/MatMul"] == "MatMul"
    assert (
        "MatMulNBits" in ops.values() and "/bert/encoder/layer.1/output/dense/MatMul" not in result["weight_only_int8"]
    )


def test_compress_dynamic_int8_only_when_weight_only_is_empty(trained):
    import onnx

    from pipelines.champion import find_bundle

    settings, train = trained
    settings = settings.with_overrides({"compress.prune": "none", "compress.quantize_weight_only": []})
    result = _compress(settings, train, run_id="run-6")

    assert result["weight_only_int8"] == [] and result["agreement"] >= settings.compress.min_agreement
    assert result["level"] == "int8"
    ops = [n.op_type for n in onnx.load(str(find_bundle(result["served_uri"]) / "model.onnx")).graph.node]
    assert "MatMulInteger" in ops and "MatMulNBits" not in ops


@pytest.mark.parametrize("prune", ["none", "heads"])
def test_compress_parity_failure_is_rejected(trained, prune):
    # With pruning, the pruned graph fails parity first and the step backs off to the unpruned graph, which fails too.
    settings, train = trained
    strict = settings.with_overrides({"compress.parity_atol": 1e-12, "compress.prune": prune})
    with pytest.raises(ModelRejected, match=r"does not reproduce PyTorch.*compress.parity_atol=1e-12"):
        _compress(strict, train, run_id="run-3")


def _disagree_at(monkeypatch, levels):
    """Make the served graph of ``levels`` disagree with the fp32 model on every text (labels rotated)."""
    from pipelines.steps import compress

    original = compress._run_candidate

    def run_candidate(level, probe, graph, texts):
        labels, p50 = original(level, probe, graph, texts)
        return ((labels + 1) % 3 if level in levels else labels), p50

    monkeypatch.setattr(compress, "_run_candidate", run_candidate)


def test_compress_backs_off_to_fp32_when_no_int8_level_agrees(trained, monkeypatch):
    import mlflow
    import onnx
    import pandas as pd

    from pipelines.champion import find_bundle

    settings, train = trained
    _disagree_at(monkeypatch, {"prune+int8", "int8", "int8_sensitive_fp32"})
    result = _compress(settings, train, run_id="run-8")

    assert result["level"] == "fp32" and result["quantized"] is False
    tried = result["levels_tried"]
    assert [(t["level"], t["accepted"]) for t in tried] == [
        ("prune+int8", False),
        ("int8", False),
        ("int8_sensitive_fp32", False),
        ("fp32", True),
    ]
    assert all(t["agreement"] == 0.0 and t["agreement_ci"][0] == 0.0 for t in tried[:3])
    assert tried[3]["agreement"] == result["agreement"] >= settings.compress.min_agreement
    assert tried[0]["size_mb"] < tried[1]["size_mb"] < tried[2]["size_mb"] < tried[3]["size_mb"] == result["size_mb"]
    assert result["agreement_rows"] == 64 and len(result["agreement_ci"]) == 2
    assert result["prune"]["applied_share"] == 0.0 and result["prune"]["tried"]["applied_share"] > 0
    assert result["kept_fp32"] == [] and result["weight_only_int8"] == []
    ops = {n.op_type for n in onnx.load(str(find_bundle(result["served_uri"]) / "model.onnx")).graph.node}
    assert not ops & {"MatMulNBits", "MatMulInteger", "DynamicQuantizeLinear"}

    out = mlflow.pyfunc.load_model(result["served_uri"]).predict(pd.DataFrame({"text": ["a masterpiece", "junk"]}))
    assert len(out) == 2 and set(out["label"]) <= {"negative", "neutral", "positive"}

    run = mlflow.MlflowClient(settings.mlflow.tracking_uri).get_run(result["mlflow_run_id"])
    assert run.data.params["level"] == "fp32" and run.data.tags["compress.level"] == "fp32"
    assert run.data.metrics["agreement_rows"] == 64 and run.data.metrics["level_int8_agreement"] == 0.0
    assert run.data.metrics["agreement_ci_low"] == result["agreement_ci"][0]
    logged = mlflow.artifacts.load_dict(run.info.artifact_uri + "/compress.json")
    assert logged["level"] == "fp32" and logged["levels_tried"] == tried


def test_compress_keeps_the_most_sensitive_layer_fp32_when_int8_disagrees(trained, monkeypatch):
    import onnx

    from pipelines.champion import find_bundle

    settings, train = trained
    _disagree_at(monkeypatch, {"prune+int8", "int8"})
    result = _compress(settings, train, run_id="run-9")

    assert result["level"] == "int8_sensitive_fp32" and result["quantized"] is True
    assert [t["accepted"] for t in result["levels_tried"]] == [False, False, True]
    sensitive = result["sensitive_layers"]
    # 2 encoder layers, compress.sensitive_layers_share 0.25: one layer stays fp32, the one that moved the logits most.
    scores = sensitive["layer_sensitivity"]
    assert {s["layer"] for s in scores} == {"/bert/encoder/layer.0/", "/bert/encoder/layer.1/"}
    order = [(-s["flipped"], -s["mean_abs_logit_diff"]) for s in scores]
    assert order == sorted(order)
    [kept_layer] = sensitive["fp32_layers"]
    assert kept_layer == scores[0]["layer"] and sensitive["sensitivity_rows"] == 64
    ops = {n.name: n.op_type for n in onnx.load(str(find_bundle(result["served_uri"]) / "model.onnx")).graph.node}
    fp32_matmuls = [name for name, op in ops.items() if name.startswith(kept_layer) and op == "MatMul"]
    assert len(fp32_matmuls) >= 6 and all(name in result["kept_fp32"] for name in fp32_matmuls)
    assert len(result["weight_only_int8"]) == 6  # the other layer's linear layers
    assert not any(name.startswith(kept_layer) for name in result["weight_only_int8"])


def test_compress_without_fp32_level_rejects_a_model_no_level_serves(trained, monkeypatch):
    settings, train = trained
    settings = settings.with_overrides({"compress.prune": "none", "compress.levels": ["int8"]})
    _disagree_at(monkeypatch, {"int8"})
    with pytest.raises(ModelRejected, match=r"no compression level .* compress.min_agreement=0.95 of 64 texts"):
        _compress(settings, train, run_id="run-10")


def test_compress_levels_setting_is_validated():
    from pipelines.config import CompressSettings, ConfigError, get_settings
    from pipelines.steps.compress import LEVELS

    assert CompressSettings().levels == list(LEVELS)
    assert get_settings(compress__levels=["int8", "fp32"]).compress.levels == ["int8", "fp32"]
    for bad, why in [
        (["fp32", "int8"], "strongest to the mildest"),
        (["int8", "int8"], "strongest to the mildest"),
        ([], "at least one level"),
        (["int4"], "int8_sensitive_fp32"),
    ]:
        with pytest.raises(ConfigError, match=why):
            get_settings(compress__levels=bad)


def test_wilson_interval():
    from pipelines.steps.compress import wilson_interval

    low, high = wilson_interval(50, 100)
    assert round(low, 4) == 0.4038 and round(high, 4) == 0.5962
    low, high = wilson_interval(100, 106)  # the sample: 0.943 on 106 texts
    assert 0.88 < low < 0.89 and 0.97 < high < 0.98
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(0, 0) == (0.0, 1.0)


def test_agreement_sample_holds_unseen_texts_only_unless_training_rows_are_asked_for(
    trained, tmp_path, caplog, monkeypatch
):
    import logging

    import pandas as pd

    from pipelines.steps import compress
    from pipelines.steps.compress import sample_texts

    settings, train = trained
    few = tmp_path / "eval_small.parquet"
    held_out = pd.read_parquet(train["eval_uri"]).head(20)
    held_out.to_parquet(few)
    ctx = StepContext(step="compress", run_id="run-11", settings=settings, inputs={"eval_uri": str(few)})
    with monkeypatch.context() as m, caplog.at_level(logging.WARNING, logger="pipelines.steps.compress"):
        m.setattr(compress, "load_accepted", lambda s: pytest.fail("training rows read with no capture to check"))
        texts, counts = sample_texts(ctx)
    assert counts == {"held_out": 20, "captured": 0, "train": 0} and sorted(texts) == sorted(held_out["text"])
    assert "agreement measured on only 20 texts (20 held-out, 0 captured requests, 0 training rows)" in caplog.text

    topped = settings.with_overrides({"compress.agreement_train_rows": True})
    ctx = StepContext(step="compress", run_id="run-11", settings=topped, inputs={"eval_uri": str(few)})
    texts, counts = sample_texts(ctx)
    assert counts == {"held_out": 20, "captured": 0, "train": 44} and len(texts) == 64


def test_agreement_sample_takes_captured_requests_that_are_not_training_rows(trained, tmp_path):
    from datetime import UTC, datetime

    import pandas as pd

    from pipelines.data.datasets import capture_root, load_accepted, split_holdout
    from pipelines.io.storage import get_storage, join
    from pipelines.serving import capture_file_name
    from pipelines.steps.compress import sample_texts

    settings, train = trained
    few = tmp_path / "eval_small.parquet"
    pd.read_parquet(train["eval_uri"]).head(20).to_parquet(few)
    trained_on = split_holdout(load_accepted(settings), settings)[0]["text"].astype(str).iloc[0]
    rows = [{"request_id": "r1", "row": i, "status": "ok", "text": f"served request number {i}"} for i in range(7)]
    rows += [{"request_id": "r2", "row": 0, "status": "ok", "text": trained_on}]  # seen in training: not unseen
    rows += [{"request_id": "r3", "row": 0, "status": "error", "text": "a failed request"}]
    name = capture_file_name(datetime(2026, 1, 2, tzinfo=UTC), "w", 1)
    storage, root = get_storage(settings), capture_root(settings)
    storage.write_text(join(root, name), "".join(json.dumps(r) + "\n" for r in rows))
    try:
        ctx = StepContext(step="compress", run_id="run-12", settings=settings, inputs={"eval_uri": str(few)})
        texts, counts = sample_texts(ctx)
    finally:
        storage.delete(join(root, name))
    assert counts == {"held_out": 20, "captured": 7, "train": 0}
    assert {f"served request number {i}" for i in range(7)} <= set(texts) and trained_on not in texts[20:]


def test_compress_without_held_out_texts_says_where_to_get_them(trained, tmp_path):
    settings, train = trained
    empty = settings.with_overrides({"paths.artifact_root": str(tmp_path / "empty")})
    with pytest.raises(ValueError, match="give input eval_uri"):
        _compress(empty, train, run_id="run-4")


def test_heads_to_prune_keeps_one_head_per_layer():
    from pipelines.steps.compress import heads_to_prune

    scores = np.array([[0.1, 0.2, 0.3, 0.4], [5.0, 6.0, 7.0, 8.0]])
    assert heads_to_prune(scores, 0.5) == {0: [0, 1, 2], 1: [0]}
    assert heads_to_prune(scores, 0.0) == {}


def test_texts_from_input_frame_without_text_column_names_it():
    import pandas as pd

    from pipelines.serving import texts_from_input

    with pytest.raises(ValueError, match="expected a column 'text'"):
        texts_from_input(pd.DataFrame({"a": ["x"], "b": ["y"]}))
    assert texts_from_input(["x", "y"]) == ["x", "y"] and texts_from_input("z") == ["z"]


def test_train_and_compress_on_s3_artifact_root(s3_endpoint, aws_env, tiny_model_dir, demo_frames, tmp_path):
    from pipelines.champion import find_bundle
    from pipelines.io.storage import get_storage

    settings = tiny_settings(
        tmp_path,
        tiny_model_dir,
        paths__artifact_root="s3://test-bucket/compress-s3",
        storage__s3_endpoint_url=s3_endpoint,
        mlflow__artifact_location=str(tmp_path / "mlruns"),
    )
    uri = settings.uri(settings.paths.accepted, "batch_000.parquet")
    write_parquet(demo_frames["batch_000_reference"], uri, settings)
    ctx = StepContext(
        step="train", run_id="s3-run", settings=settings, inputs={"accepted_uri": uri}, params={"action": "retrain"}
    )
    train = run_step(ctx)
    assert train["model_uri"].startswith("s3://") and train["eval_uri"].startswith("s3://")

    result = _compress(settings, train, run_id="s3-run")

    storage = get_storage(settings)
    assert storage.exists(train["model_uri"] + "/model.safetensors")
    local = storage.download_dir(result["served_uri"], tmp_path / "served")
    assert (find_bundle(local) / "fp32" / "model.safetensors").is_file()
