"""Inference on a served bundle (onnxruntime + the fast tokenizer) and the served model's input handling, on a real
tiny ONNX bundle whose logits are (number of tokens) x weights: longer texts get more confident answers, so a row
that came back in the wrong place shows. Prediction capture is tested in test_capture.py."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from registry_doubles import LABELS, onnx_bundle

from pipelines.serving import (
    CaptureConfig,
    OnnxPredictor,
    capture_file_name,
    ids_from_input,
    texts_from_input,
)

WEIGHTS = [-0.5, 0.0, 0.5]  # more tokens: more 'positive'


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return onnx_bundle(tmp_path_factory.mktemp("serving") / "bundle", WEIGHTS)


def _expected(n_tokens: int) -> np.ndarray:
    logits = n_tokens * np.array(WEIGHTS)
    e = np.exp(logits - logits.max())
    return e / e.sum()


def test_predict_proba_rows_match_their_texts_across_sorted_batches(bundle):
    predictor = OnnxPredictor(bundle)
    assert predictor.batch_size == 16 and predictor.labels == LABELS
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 30, size=40)  # 40 rows: three batches of up to 16, sorted by length
    texts = [" ".join(["w"] * int(n)) for n in lengths]
    probs = predictor.predict_proba(texts)
    assert probs.shape == (40, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, np.vstack([_expected(int(n)) for n in lengths]), atol=1e-5)
    unsorted = OnnxPredictor(bundle, sort_by_length=False).predict_proba(texts)
    np.testing.assert_allclose(unsorted, probs, atol=1e-6)


def test_predict_proba_truncates_at_the_bundles_max_length(bundle):
    probs = OnnxPredictor(bundle).predict_proba([" ".join(["w"] * 100), " ".join(["w"] * 32)])
    np.testing.assert_allclose(probs[0], probs[1], atol=1e-6)
    np.testing.assert_allclose(probs[0], _expected(32), atol=1e-5)


def test_predict_returns_label_and_one_prob_column_per_class(bundle):
    out = OnnxPredictor(bundle).predict(pd.DataFrame({"id": ["a", "b"], "text": ["w " * 20, "w"]}))
    assert list(out.columns) == ["label", "prob_negative", "prob_neutral", "prob_positive"]
    assert out["label"].tolist() == ["positive", "positive"]
    assert out["prob_positive"].iloc[0] > out["prob_positive"].iloc[1]


def test_predict_no_texts_gives_an_empty_frame_with_the_columns(bundle):
    predictor = OnnxPredictor(bundle)
    assert predictor.predict_proba([]).shape == (0, 3)
    out = predictor.predict([])
    assert out.empty and list(out.columns) == ["label", "prob_negative", "prob_neutral", "prob_positive"]


def test_predictor_on_a_bundle_without_serving_config_fails_naming_the_file(tmp_path):
    broken = onnx_bundle(tmp_path / "bundle", WEIGHTS)
    (broken / "serving.json").unlink()
    with pytest.raises(FileNotFoundError, match="serving.json"):
        OnnxPredictor(broken)


def test_predictor_with_a_missing_graph_file_fails(bundle):
    with pytest.raises(Exception, match="model_int8.onnx"):
        OnnxPredictor(bundle, model_file="model_int8.onnx")


def test_texts_from_input_single_strings_and_single_columns():
    assert texts_from_input("one text") == ["one text"]
    assert texts_from_input({"text": "one text"}) == ["one text"]
    assert texts_from_input({"body": ["a", 1]}) == ["a", "1"]  # the only column, whatever its name
    assert texts_from_input(pd.Series(["a", "b"])) == ["a", "b"]
    with pytest.raises(ValueError, match="input is an array of shape"):
        texts_from_input(np.zeros((2, 2, 1)))


def test_ids_from_input_keeps_given_ids_and_blanks_missing_ones():
    frame = pd.DataFrame({"id": ["x", None, "", float("nan")], "text": list("abcd")})
    assert ids_from_input(frame) == ["x", None, None, None]
    assert ids_from_input({"id": 7, "text": "a"}) == ["7"]
    assert ids_from_input({"text": ["a"]}) is None
    assert ids_from_input(["a", "b"]) is None


def test_capture_config_from_env_reads_every_variable():
    env = {
        "MLOPS_SERVING__CAPTURE_URI": "s3://bucket/capture/",
        "MLOPS_SERVING__CAPTURE_SHARE": "0.25",
        "MLOPS_SERVING__CAPTURE_TEXTS": "no",
        "MLOPS_SERVING__CAPTURE_QUEUE_SIZE": "10",
        "MLOPS_SERVING__CAPTURE_FLUSH_ROWS": "5",
        "MLOPS_SERVING__CAPTURE_FLUSH_SECONDS": "2.5",
        "MLOPS_SERVED_MODEL_VERSION": " 4 ",
        "MLOPS_STORAGE__S3_ENDPOINT_URL": "http://127.0.0.1:9000",
        "MLOPS_STORAGE__S3_REGION": "",
    }
    config = CaptureConfig.from_env(env)
    assert (config.uri, config.share, config.keep_texts) == ("s3://bucket/capture", 0.25, False)
    assert (config.queue_size, config.flush_rows, config.flush_seconds) == (10, 5, 2.5)
    assert (config.model_version, config.s3_endpoint_url, config.s3_region) == (
        "4",
        "http://127.0.0.1:9000",
        "us-east-1",
    )


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"MLOPS_SERVING__CAPTURE_URI": " "},
        {"MLOPS_SERVING__CAPTURE_URI": "/c", "MLOPS_SERVING__CAPTURE_SHARE": "0"},
    ],
)
def test_capture_config_from_env_is_off_without_a_uri_or_share(env):
    assert CaptureConfig.from_env(env) is None


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_capture_config_share_outside_zero_one_is_refused(share):
    with pytest.raises(ValueError, match=rf"capture share {share!r} must lie in \[0, 1\]"):
        CaptureConfig("/tmp/capture", share=share)


def test_capture_config_from_env_share_above_one_is_refused_and_negative_means_off():
    with pytest.raises(ValueError, match=r"capture share 1.5 must lie in \[0, 1\]"):
        CaptureConfig.from_env({"MLOPS_SERVING__CAPTURE_URI": "/c", "MLOPS_SERVING__CAPTURE_SHARE": "1.5"})
    assert CaptureConfig.from_env({"MLOPS_SERVING__CAPTURE_URI": "/c", "MLOPS_SERVING__CAPTURE_SHARE": "-1"}) is None


def test_capture_file_names_sort_by_the_time_they_were_written():
    early = capture_file_name(datetime(2026, 3, 1, 23, 59, 59, 999999, tzinfo=UTC), "host-1-abc", 12)
    late = capture_file_name(datetime(2026, 3, 2, 0, 0, 0, tzinfo=UTC), "host-0-abc", 1)
    assert early == "date=2026-03-01/20260301T235959999999Z-host-1-abc-000012.jsonl"
    assert sorted([late, early]) == [early, late]
