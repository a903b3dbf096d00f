"""make serve: MLflow's scoring server behind the front, following the champion alias without dropping requests."""

from __future__ import annotations

import json
import random
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from registry_doubles import add_version, make_registry_settings, onnx_bundle

from pipelines.model.serve import Supervisor, server_env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_pair() -> int:
    """Two free consecutive ports below the ephemeral range (client sockets of the test traffic cannot take them)."""
    for base in range(random.randrange(20000, 30000, 2), 32000, 2):
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", base))
                b.bind(("127.0.0.1", base + 1))
                return base
        except OSError:
            continue
    raise RuntimeError("no two free consecutive ports below 32000")


def _served(tmp: Path, weights: list[float]) -> Path:
    """A served pyfunc folder (the compress step's own save) whose graph's logits are tokens x ``weights``."""
    import onnx
    from onnx import numpy_helper

    from pipelines.steps.compress import save_served_model

    bundle = onnx_bundle(tmp / "bundle", [-1.0, 0.0, 1.0])
    model = onnx.load(str(bundle / "model.onnx"))
    for i, init in enumerate(model.graph.initializer):
        if init.name == "w":
            import numpy as np

            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.array([weights], dtype=np.float32), "w"))
    onnx.save(model, str(bundle / "model.onnx"))
    save_served_model(tmp / "served", bundle, ["a b", "c", "d e f"], tmp / "scratch")
    return tmp / "served"


def _invoke(url: str, texts: list[str]) -> tuple[int, str | None, list[str]]:
    req = urllib.request.Request(
        url + "/invocations",
        data=json.dumps({"inputs": texts}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        body = json.loads(resp.read())
        return resp.status, resp.headers.get("X-Model-Version"), [r["label"] for r in body["predictions"]]


def test_server_env_carries_capture_settings(tmp_path):
    settings = make_registry_settings(tmp_path, serving__capture_share=0.5, serving__capture_texts=False)
    env = server_env(settings, "3", base={})
    assert env["MLOPS_SERVED_MODEL_VERSION"] == "3" and env["MLOPS_SERVING__CAPTURE_SHARE"] == "0.5"
    assert env["MLOPS_SERVING__CAPTURE_TEXTS"] == "false"
    assert env["MLOPS_SERVING__CAPTURE_URI"] == str((tmp_path / "var" / "captures").resolve())
    off = server_env(make_registry_settings(tmp_path, serving__capture_share=0.0), "3", base={})
    assert "MLOPS_SERVING__CAPTURE_URI" not in off


@pytest.mark.slow  # two real scoring servers start (10-40 s on two shared cores)
def test_serve_follows_the_alias_without_dropping_requests(tmp_path):
    from pipelines.io.tracking import configure

    backend = _free_pair()
    settings = make_registry_settings(
        tmp_path,
        registry__model_name="serve-test",
        serving__port=_free_port(),
        serving__backend_port=backend,
        serving__capture_flush_seconds=0.5,
        serving__drain_seconds=10,
    )
    v1 = add_version(settings, _served(tmp_path / "v1", [-1.0, 0.0, 1.0]), alias="champion")
    v2 = add_version(settings, _served(tmp_path / "v2", [1.0, 0.0, -1.0]))
    sup = Supervisor(settings)
    url = sup.start_front()
    try:
        assert sup.sync() == v1
        assert _invoke(url, ["good one"]) == (200, v1, ["positive"])

        results: list[tuple[int, str | None, list[str]]] = []
        errors: list[Exception] = []
        stop = threading.Event()

        def traffic() -> None:
            while not stop.is_set():
                try:
                    results.append(_invoke(url, ["a b c", "d"]))
                except Exception as exc:  # noqa: BLE001 - any failure is what the test looks for
                    errors.append(exc)
                stop.wait(0.02)  # steady traffic that leaves the new server CPU to start on two cores

        threads = [threading.Thread(target=traffic, daemon=True) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            configure(settings).set_registered_model_alias("serve-test", "champion", v2)
            assert sup.sync() == v2
            time.sleep(1.0)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=90)
        assert errors == [], errors[:3]
        versions = [v for _, v, _ in results]
        assert {v1, v2} <= set(versions), "traffic ran before and after the switch"
        assert all(s == 200 for s, _, _ in results)
        assert versions[-1] == v2 and results[-1][2] == ["negative", "negative"]
        assert sup.switches[-1]["from"] == v1 and sup.switches[-1]["to"] == v2
        status = json.loads(urllib.request.urlopen(url + "/mlops/status", timeout=5).read())
        assert status["version"] == v2
    finally:
        sup.shutdown()
    rows = [
        json.loads(line)
        for f in (tmp_path / "var" / "captures").rglob("*.jsonl")
        for line in f.read_text().splitlines()
    ]
    assert {r["model_version"] for r in rows} == {v1, v2}
    assert {r["label"] for r in rows if r["model_version"] == v2} == {"negative"}


def _post(url: str, payload: dict) -> dict:
    req = urllib.request.Request(
        url + "/invocations", data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


@pytest.mark.slow  # one real scoring server starts (10-25 s on two shared cores)
def test_served_ids_pass_the_warm_up_is_left_out_and_a_stop_flushes(tmp_path):
    settings = make_registry_settings(
        tmp_path,
        registry__model_name="serve-capture-test",
        serving__port=_free_port(),
        serving__backend_port=_free_pair(),
        serving__capture_flush_seconds=3600,  # nothing is written before the stop
        serving__capture_flush_rows=10_000,
    )
    version = add_version(settings, _served(tmp_path / "v1", [-1.0, 0.0, 1.0]), alias="champion")
    sup = Supervisor(settings)
    url = sup.start_front()
    try:
        assert sup.sync() == version  # after /ping and the warm-up prediction
        with_ids = {"dataframe_split": {"columns": ["id", "text"], "data": [["r-1", "a b"], [2, "c"]]}}
        assert [p["label"] for p in _post(url, with_ids)["predictions"]] == ["positive", "positive"]
        assert len(_post(url, {"inputs": ["d e f"]})["predictions"]) == 1
        assert len(_post(url, {"inputs": ["not captured"], "params": {"capture": False}})["predictions"]) == 1
        captures = tmp_path / "var" / "captures"
        assert not list(captures.rglob("*.jsonl")), "written before the stop"
    finally:
        sup.shutdown()  # SIGTERM; returns once the scoring server's processes have exited
    rows = [json.loads(line) for f in sorted(captures.rglob("*.jsonl")) for line in f.read_text().splitlines()]
    assert [(r["id"], r["text"]) for r in rows[:2]] == [("r-1", "a b"), ("2", "c")]
    assert [r["text"] for r in rows] == ["a b", "c", "d e f"]  # no warm-up, no capture=false request
    assert rows[2]["id"] == rows[2]["text_sha256"] and {r["model_version"] for r in rows} == {version}
