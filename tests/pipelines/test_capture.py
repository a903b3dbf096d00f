"""Prediction capture inside the served pyfunc model: it never blocks or fails a prediction, and files appear."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from registry_doubles import onnx_bundle

from pipelines.serving import CaptureConfig, CaptureWriter, OnnxTextClassifier

TEXTS = ["good stuff", "bad bad stuff here", "meh"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return onnx_bundle(tmp_path_factory.mktemp("capture") / "bundle", [-1.0, 0.0, 1.0])


def _model(bundle: Path, monkeypatch, capture_uri: str | None, **env: str) -> OnnxTextClassifier:
    for key in ("CAPTURE_URI", "CAPTURE_SHARE", "CAPTURE_TEXTS", "CAPTURE_QUEUE_SIZE", "CAPTURE_FLUSH_ROWS"):
        monkeypatch.delenv(f"MLOPS_SERVING__{key}", raising=False)
    if capture_uri:
        monkeypatch.setenv("MLOPS_SERVING__CAPTURE_URI", capture_uri)
    monkeypatch.setenv("MLOPS_SERVED_MODEL_VERSION", "7")
    for key, value in env.items():
        monkeypatch.setenv(f"MLOPS_SERVING__{key.upper()}", value)
    model = OnnxTextClassifier()
    model.load_context(SimpleNamespace(artifacts={"bundle": str(bundle)}))
    return model


class SlowSink:
    def __init__(self, delay: float) -> None:
        self.delay, self.files = delay, []

    def write(self, relpath: str, data: bytes) -> str:
        time.sleep(self.delay)
        self.files.append((relpath, data))
        return relpath


class FailingSink:
    calls = 0

    def write(self, relpath: str, data: bytes) -> str:
        self.calls += 1
        raise OSError("sink is down")


def _read(root: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(root.rglob("*.jsonl")) for line in f.read_text().splitlines()]


def test_capture_off_without_uri(bundle, monkeypatch):
    model = _model(bundle, monkeypatch, None)
    assert model._capture is None
    assert model.predict(None, TEXTS)["label"].tolist() == ["positive"] * 3


def test_capture_writes_jsonl_with_every_field(bundle, monkeypatch, tmp_path):
    model = _model(bundle, monkeypatch, str(tmp_path / "captures"), capture_flush_rows="4")
    for _ in range(5):
        model.predict(None, TEXTS)
    model._capture.close()
    stats = model._capture.stats()
    assert stats["rows_written"] == 15 and stats["rows_dropped"] == 0 and stats["files_written"] == 4
    files = sorted((tmp_path / "captures").rglob("*.jsonl"))
    assert all(f.parent.name.startswith("date=") for f in files)
    rows = _read(tmp_path / "captures")
    assert len(rows) == 15
    row = rows[0]
    assert row["text"] == "good stuff" and row["label"] == "positive" and row["model_version"] == "7"
    assert set(row["probs"]) == {"negative", "neutral", "positive"}
    assert row["confidence"] == pytest.approx(max(row["probs"].values()))
    assert row["status"] == "ok" and row["latency_ms"] >= 0 and row["text_length"] == len("good stuff")
    assert len(row["text_sha256"]) == 64 and row["id"] == row["text_sha256"]
    assert len({r["request_id"] for r in rows}) == 5


def test_capture_keeps_only_hashes_when_told(bundle, monkeypatch, tmp_path):
    model = _model(bundle, monkeypatch, str(tmp_path / "c"), capture_texts="false")
    model.predict(None, TEXTS)
    model._capture.close()
    rows = _read(tmp_path / "c")
    assert [r["text"] for r in rows] == [None] * 3
    assert all(len(r["text_sha256"]) == 64 for r in rows)
    assert "good stuff" not in "".join(f.read_text() for f in (tmp_path / "c").rglob("*.jsonl"))


def test_capture_ids_from_the_request_are_kept(bundle, monkeypatch, tmp_path):
    import pandas as pd

    model = _model(bundle, monkeypatch, str(tmp_path / "c"))
    model.predict(None, pd.DataFrame({"id": ["a1", "a2", "a3"], "text": TEXTS}))
    model._capture.close()
    assert [r["id"] for r in _read(tmp_path / "c")] == ["a1", "a2", "a3"]


def test_missing_ids_fall_back_to_the_text_hash(bundle, monkeypatch, tmp_path):
    import pandas as pd

    model = _model(bundle, monkeypatch, str(tmp_path / "c"))
    model.predict(None, pd.DataFrame({"text": TEXTS, "id": ["a1", None, float("nan")]}))
    model._capture.close()
    rows = _read(tmp_path / "c")
    assert rows[0]["id"] == "a1" and [r["id"] for r in rows[1:]] == [r["text_sha256"] for r in rows[1:]]


def test_params_capture_false_leaves_a_request_out(bundle, monkeypatch, tmp_path):
    model = _model(bundle, monkeypatch, str(tmp_path / "c"))
    assert model.predict(None, ["warm-up"], params={"capture": False})["label"].tolist() == ["positive"]
    model.predict(None, TEXTS, params={"capture": True})
    model._capture.close()
    assert [r["text"] for r in _read(tmp_path / "c")] == TEXTS
    assert model._capture.stats()["requests_seen"] == 1


def test_inputs_the_scoring_server_hands_over():
    import numpy as np
    import pandas as pd

    from pipelines.serving import ids_from_input, texts_from_input

    assert texts_from_input(np.array(["a", "b"])) == ["a", "b"]
    assert texts_from_input(np.array([["a"], ["b"]])) == ["a", "b"]
    assert texts_from_input({"text": np.array(["a"]), "id": np.array(["1"])}) == ["a"]
    assert texts_from_input(pd.DataFrame({"id": [1], "text": ["a"]})) == ["a"]
    assert ids_from_input(pd.DataFrame({"id": [1], "text": ["a"]})) == ["1"]
    with pytest.raises(ValueError, match="expected a column 'text'"):
        texts_from_input({"x": ["a"], "y": ["b"]})
    with pytest.raises(ValueError, match="one text per row"):
        texts_from_input(np.array([["a", "b"]]))


def test_slow_sink_never_blocks_a_prediction_and_counts_drops(bundle, monkeypatch, tmp_path):
    model = _model(bundle, monkeypatch, str(tmp_path / "unused"), capture_queue_size="4", capture_flush_rows="1")
    model._capture.close()
    sink = SlowSink(delay=1.0)
    model._capture = CaptureWriter(model._capture.config, sink=sink)
    plain = _model(bundle, monkeypatch, None)
    start = time.perf_counter()
    for _ in range(200):
        plain.predict(None, TEXTS)
    baseline = time.perf_counter() - start
    worst = 0.0
    start = time.perf_counter()
    for _ in range(200):
        t = time.perf_counter()
        assert model.predict(None, TEXTS)["label"].tolist() == ["positive"] * 3
        worst = max(worst, time.perf_counter() - t)
    took = time.perf_counter() - start
    stats = model._capture.stats()
    assert worst < 0.5, f"a prediction waited {worst:.3f}s with a sink that takes 1 s a write"
    assert took < baseline * 3 + 1.0, (took, baseline)
    assert stats["requests_seen"] == 200 and stats["rows_dropped"] > 0
    assert stats["rows_captured"] + stats["rows_dropped"] == 600


def test_failing_sink_never_fails_a_prediction(bundle, monkeypatch, tmp_path):
    model = _model(bundle, monkeypatch, str(tmp_path / "unused"), capture_flush_rows="3")
    model._capture.close()
    sink = FailingSink()
    model._capture = CaptureWriter(model._capture.config, sink=sink)
    for _ in range(10):
        assert len(model.predict(None, TEXTS)) == 3
    model._capture.close()
    stats = model._capture.stats()
    assert sink.calls >= 1 and stats["write_errors"] == sink.calls
    assert stats["rows_dropped"] == 30 and stats["rows_written"] == 0


def test_unwritable_local_folder_never_fails_a_prediction(bundle, monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    model = _model(bundle, monkeypatch, str(blocker / "captures"), capture_flush_rows="1")
    assert len(model.predict(None, TEXTS)) == 3
    model._capture.close()
    assert model._capture.stats()["write_errors"] == 3  # one file a row


def test_share_samples_requests(bundle, monkeypatch, tmp_path):
    model = _model(bundle, monkeypatch, str(tmp_path / "c"), capture_share="0.25")
    for _ in range(400):
        model.predict(None, ["x"])
    model._capture.close()
    stats = model._capture.stats()
    assert stats["requests_seen"] == 400 and 50 <= stats["requests_sampled"] <= 150
    assert stats["rows_written"] == stats["requests_sampled"]
    assert CaptureConfig.from_env({"MLOPS_SERVING__CAPTURE_URI": "x", "MLOPS_SERVING__CAPTURE_SHARE": "0"}) is None


def test_a_failed_prediction_is_captured_as_an_error_and_still_raises(bundle, monkeypatch, tmp_path):
    model = _model(bundle, monkeypatch, str(tmp_path / "c"))

    def boom(texts):
        raise RuntimeError("graph failed")

    model._predictor.predict_proba = boom
    with pytest.raises(RuntimeError, match="graph failed"):
        model.predict(None, TEXTS)
    model._capture.close()
    rows = _read(tmp_path / "c")
    assert [r["status"] for r in rows] == ["error"] * 3 and rows[0]["error"] == "RuntimeError"


def test_capture_from_many_threads(bundle, monkeypatch, tmp_path):
    model = _model(bundle, monkeypatch, str(tmp_path / "c"), capture_flush_rows="50")
    threads = [threading.Thread(target=lambda: [model.predict(None, TEXTS) for _ in range(20)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    model._capture.close()
    assert len(_read(tmp_path / "c")) == 240


def test_capture_to_s3(bundle, monkeypatch, s3_endpoint, aws_env):
    import boto3

    monkeypatch.setenv("MLOPS_STORAGE__S3_ENDPOINT_URL", s3_endpoint)
    model = _model(bundle, monkeypatch, "s3://test-bucket/cap-test/captures")
    model.predict(None, TEXTS)
    model._capture.close()
    assert model._capture.stats()["rows_written"] == 3
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="test-bucket", Prefix="cap-test/captures/")["Contents"]]
    assert len(keys) == 1 and keys[0].endswith(".jsonl") and "/date=" in keys[0]


def test_sigterm_writes_the_queued_rows_before_the_process_ends(bundle, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    code = (
        "import os, signal, sys\n"
        "from types import SimpleNamespace\n"
        "from pipelines.serving import OnnxTextClassifier\n"
        "m = OnnxTextClassifier(); m.load_context(SimpleNamespace(artifacts={'bundle': sys.argv[1]}))\n"
        "m.predict(None, ['a b', 'c'])\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "print('not reached')\n"
    )
    env = {
        **os.environ,
        "MLOPS_SERVING__CAPTURE_URI": str(tmp_path / "c"),
        "MLOPS_SERVING__CAPTURE_FLUSH_SECONDS": "3600",  # only the SIGTERM handler writes
    }
    out = subprocess.run([sys.executable, "-c", code, str(bundle)], env=env, capture_output=True, text=True)
    assert out.returncode == -signal.SIGTERM and "not reached" not in out.stdout, out.stderr[-2000:]
    assert [r["text"] for r in _read(tmp_path / "c")] == ["a b", "c"]
