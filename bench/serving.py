"""Benchmark the real scoring server (``mlflow models serve``) with prediction capture off and on.

The served model is ``--model-uri`` (default: the champion of the configured registry, ``models:/<name>@champion``),
or, with no champion, a small stand-in built like the tests' (a one-layer ONNX graph and a word-level tokenizer,
saved by the compress step's own :func:`pipelines.compress.save_served_model`): it measures the capture path, not
a transformer. Texts are drug reviews from ``../shared/data`` when present, else the demo batches.

For each mode, one scoring server starts (capture off: no ``MLOPS_SERVING__CAPTURE_URI``; on: every request
captured to a temporary folder), takes a warm-up, then ``--clients`` threads send one text per request for
``--seconds``. Printed: requests/s, p50 and p95 latency per mode, then one JSON line with ``capture_overhead``
(relative throughput loss with capture on; goal <= 0.05) and the figures.

    .venv/bin/python bench/serving.py --seconds 10 --clients 4
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _texts() -> list[str]:
    import pandas as pd

    path = REPO.parent / "shared" / "data" / "drug_reviews.csv"
    if path.is_file():
        return pd.read_csv(path)["text"].astype(str).tolist()
    from pipelines import demo

    return [row["text"] for spec in demo.BATCHES[:2] for row in demo.generate(spec)]


def _stand_in(tmp: Path) -> str:
    """A small served model folder (see the module doc)."""
    import onnx
    from onnx import TensorProto, helper
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    from pipelines.compress import save_served_model

    bundle = tmp / "bundle"
    (bundle / "tokenizer").mkdir(parents=True)
    tok = Tokenizer(WordLevel({"[PAD]": 0, "[UNK]": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    tok.save(str(bundle / "tokenizer" / "tokenizer.json"))
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
            helper.make_node("ReduceSum", ["mask_f", "axes"], ["count"], keepdims=1),
            helper.make_node("MatMul", ["count", "w"], ["logits"]),
        ],
        "stand_in",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["n", "l"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["n", "l"]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 3])],
        initializer=[
            helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
            helper.make_tensor("w", TensorProto.FLOAT, [1, 3], [-0.01, 0.0, 0.01]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(bundle / "model.onnx"))
    (bundle / "labels.json").write_text(json.dumps(["negative", "neutral", "positive"]))
    (bundle / "serving.json").write_text(json.dumps({"max_length": 256, "batch_size": 32, "pad_id": 0}))
    save_served_model(tmp / "served", bundle, ["a b", "c"], tmp / "scratch")
    return str(tmp / "served")


def _model_uri(args: argparse.Namespace, tmp: Path) -> tuple[str, str, dict[str, str]]:
    from pipelines.config import get_settings

    settings = get_settings()
    env = {"MLFLOW_TRACKING_URI": settings.mlflow.tracking_uri}
    if args.model_uri:
        return args.model_uri, args.model_uri, env
    try:
        from pipelines.champion import champion_version

        mv = champion_version(settings)
    except Exception:  # no store yet
        mv = None
    if mv is not None:
        uri = f"models:/{settings.registry.model_name}/{mv.version}"
        return uri, f"champion version {mv.version}", env
    return _stand_in(tmp), "stand-in model (no champion in the configured registry)", env


def _post(url: str, text: str) -> float:
    body = json.dumps({"inputs": [text]}).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as resp:
        resp.read()
    return (time.perf_counter() - start) * 1000


def _serve(model_uri: str, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, **env, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    from pipelines.serve import serve_command

    proc = subprocess.Popen(
        serve_command(model_uri, port),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the scoring server exited with code {proc.returncode}")
        try:
            urllib.request.urlopen(url + "/ping", timeout=2)
            return proc, url
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("the scoring server did not answer within 180 s")


def _measure(url: str, texts: list[str], seconds: float, clients: int) -> dict[str, float]:
    import numpy as np

    for text in texts[:20]:
        _post(url + "/invocations", text)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0]
    stop = time.perf_counter() + seconds

    def client(i: int) -> None:
        j = i
        while time.perf_counter() < stop:
            try:
                latencies[i].append(_post(url + "/invocations", texts[j % len(texts)]))
            except OSError:
                errors[0] += 1
            j += clients

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.perf_counter() - start
    flat = np.array([x for lat in latencies for x in lat])
    return {
        "requests": int(len(flat)),
        "errors": errors[0],
        "requests_per_s": round(len(flat) / took, 2),
        "p50_ms": round(float(np.percentile(flat, 50)), 2),
        "p95_ms": round(float(np.percentile(flat, 95)), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-uri", default=None)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    texts = _texts()
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        model_uri, what, env = _model_uri(args, Path(tmp))
        results, captured = {}, 0
        for mode in ("off", "on"):
            mode_env = dict(env)
            if mode == "on":
                mode_env.update(
                    {
                        "MLOPS_SERVING__CAPTURE_URI": str(Path(tmp) / "captures"),
                        "MLOPS_SERVING__CAPTURE_SHARE": "1.0",
                        "MLOPS_SERVED_MODEL_VERSION": "bench",
                    }
                )
            proc, url = _serve(model_uri, mode_env)
            try:
                results[mode] = _measure(url, texts, args.seconds, args.clients)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            if mode == "on":
                captured = sum(1 for f in (Path(tmp) / "captures").rglob("*.jsonl") for _ in f.read_text().splitlines())
    overhead = 1 - results["on"]["requests_per_s"] / results["off"]["requests_per_s"]
    print(f"model: {what}; {args.clients} clients x {args.seconds:.0f} s per mode, one text per request")
    print(f"{'capture':<8} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'requests':>9} {'errors':>7}")
    for mode, r in results.items():
        print(
            f"{mode:<8} {r['requests_per_s']:>8.1f} {r['p50_ms']:>8.2f} {r['p95_ms']:>8.2f} "
            f"{r['requests']:>9d} {r['errors']:>7d}"
        )
    print(f"capture overhead (relative throughput loss): {overhead:+.3f} (goal <= 0.05); rows captured: {captured}")
    print(
        json.dumps(
            {
                "bench": "serving",
                "model": what,
                "clients": args.clients,
                "seconds": args.seconds,
                "capture_off": results["off"],
                "capture_on": results["on"],
                "rows_captured": captured,
                "capture_overhead": round(overhead, 4),
                "goal": 0.05,
            }
        )
    )


if __name__ == "__main__":
    main()
