"""Benchmark the real scoring server (``mlflow models serve``) with prediction capture off and on.

The served model is, in order: ``--bundle DIR`` (an existing served bundle, e.g. a compressed MiniLM's
``artifacts/bundle``, saved again as a pyfunc model with this checkout's serving code by the compress step's own
:func:`pipelines.steps.compress.save_served_model`; nothing is trained), ``--model-uri``, the champion of the configured
registry, or a small stand-in built like the tests' (a one-layer ONNX graph and a word-level tokenizer): that one
measures the capture path, not a transformer. A registered model serves the capture code it was saved with.
Texts are drug reviews from ``../shared/data`` when present, else the demo batches.

Two scoring servers start side by side from the same model (capture off: no ``MLOPS_SERVING__CAPTURE_URI``; on:
every request captured to a temporary folder) and take a warm-up (``capture: false``). Then ``--rounds`` rounds
each measure both, in alternating order (off-on, on-off, ...), ``--clients`` threads sending one text per request
for ``--seconds``, so that slow drifts of a shared machine fall on both modes alike. Printed: requests/s, p50 and
p95 latency per round and mode, the medians, and the rows the "on" server wrote (it is stopped with SIGTERM first,
which writes its last captures); then one JSON line with ``capture_overhead``, the median over rounds of the
relative throughput loss ``1 - on/off`` (goal <= 0.05), and the figures. Also printed: the capture path's own CPU
time measured in-process (request thread, writer per row), which the load of a shared machine does not blur, and
its share of one core at the measured throughput. ``--control`` runs the same with both servers capturing nothing
(an A/A run: what the end-to-end figure reads when there is no difference).

    .venv/bin/python bench/serving.py --rounds 5 --seconds 10 --clients 4
    .venv/bin/python bench/serving.py --bundle <served model>/artifacts/bundle
"""

from __future__ import annotations

import argparse
import json
import os
import signal
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
    from pipelines.data import demo

    return [row["text"] for spec in demo.BATCHES[:2] for row in demo.generate(spec)]


def _stand_in(tmp: Path) -> str:
    """A small served model folder (see the module doc)."""
    import onnx
    from onnx import TensorProto, helper
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    from pipelines.steps.compress import save_served_model

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


def _from_bundle(bundle: Path, tmp: Path) -> str:
    """A served model folder from an existing bundle (copies of what serving reads; fp32/ is left out)."""
    import shutil

    from pipelines.steps.compress import save_served_model

    copy = tmp / "bundle-from-arg" / "bundle"  # MLflow keeps the folder name under artifacts/
    copy.mkdir(parents=True)
    for name in ("model.onnx", "tokenizer", "labels.json", "serving.json", "reference"):
        src = bundle / name
        if src.is_dir():
            shutil.copytree(src, copy / name)
        elif src.is_file():
            shutil.copy2(src, copy / name)
    save_served_model(tmp / "served-from-bundle", copy, ["a fine drug", "no effect", "made me dizzy"], tmp / "s")
    return str(tmp / "served-from-bundle")


def _model_uri(args: argparse.Namespace, tmp: Path) -> tuple[str, str, dict[str, str]]:
    from pipelines.config import get_settings

    settings = get_settings()
    env = {"MLFLOW_TRACKING_URI": settings.mlflow.tracking_uri}
    if args.bundle:
        bundle = Path(args.bundle)
        if not (bundle / "model.onnx").is_file() or not (bundle / "serving.json").is_file():
            raise SystemExit(f"--bundle {bundle}: no model.onnx and serving.json there")
        return _from_bundle(bundle, tmp), f"bundle {bundle} (saved with this checkout's serving code)", env
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


def _post(url: str, text: str, capture: bool = True) -> float:
    body = json.dumps({"inputs": [text]} if capture else {"inputs": [text], "params": {"capture": False}}).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as resp:
        resp.read()
    return (time.perf_counter() - start) * 1000


def _serve(model_uri: str, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_SERVING__")}  # capture only as told
    env = {**base, **env, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    from pipelines.model.serve import serve_command

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
    _stop(proc)
    raise RuntimeError("the scoring server did not answer within 180 s")


def _warm_up(url: str, texts: list[str]) -> None:
    for text in texts[:20]:
        _post(url + "/invocations", text, capture=False)


def _measure(url: str, texts: list[str], seconds: float, clients: int, offset: int) -> dict[str, float]:
    import numpy as np

    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0]
    stop = time.perf_counter() + seconds

    def client(i: int) -> None:
        j = offset + i
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


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's group (the "on" server writes its last captures), then wait for every process."""
    from pipelines.model.serve import group_alive

    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + 30
    while (proc.poll() is None or group_alive(proc.pid)) and time.time() < deadline:
        time.sleep(0.1)
    if proc.poll() is None or group_alive(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _capture_cost(texts: list[str], tmp: Path, n: int = 3000) -> dict[str, float]:
    """CPU time of the capture path alone, in-process (a floor the load of a shared machine cannot blur): the
    request thread's share (sampling and queueing) and the writer thread's (records, JSON, file) per row."""
    import numpy as np

    from pipelines.serving import CaptureConfig, CaptureWriter

    writer = CaptureWriter(CaptureConfig(str(tmp / "cost"), queue_size=n + 1, flush_rows=500, flush_seconds=3600))
    writer._stop.set()  # the writer thread ends; its work is timed below, on this thread
    writer._thread.join()
    writer._stop.clear()
    classes = ["negative", "neutral", "positive"]
    probs = np.full((1, 3), 1 / 3, dtype=np.float32)
    items = [[texts[i % len(texts)]] for i in range(n)]
    start = time.thread_time()
    for one in items:
        if writer.sampled():
            writer.capture(one, None, probs, classes, 12.5)
    request = (time.thread_time() - start) / n
    start = time.thread_time()
    rows = [r for item in list(writer._queue) for r in writer.records(item)]
    for i in range(0, len(rows), 500):
        writer._write(rows[i : i + 500])
    per_row = (time.thread_time() - start) / len(rows)
    return {"request_thread_us": round(request * 1e6, 2), "writer_per_row_us": round(per_row * 1e6, 2)}


def main() -> None:
    import numpy as np

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default=None, help="an existing served bundle folder (model.onnx, tokenizer/ ...)")
    parser.add_argument("--model-uri", default=None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0, help="per mode and round")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument(
        "--control", action="store_true", help="A/A: the 'on' server captures nothing either (the noise floor)"
    )
    args = parser.parse_args()
    texts = _texts()
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        cost = _capture_cost(texts, Path(tmp))
        model_uri, what, env = _model_uri(args, Path(tmp))
        captures = Path(tmp) / "captures"
        on_env = {
            **env,
            "MLOPS_SERVING__CAPTURE_URI": str(captures),
            "MLOPS_SERVING__CAPTURE_SHARE": "1.0",
            "MLOPS_SERVED_MODEL_VERSION": "bench",
        }
        if args.control:
            on_env = dict(env)
        servers: dict[str, tuple[subprocess.Popen, str]] = {}
        rounds: list[dict[str, dict[str, float]]] = []
        try:
            servers["off"] = _serve(model_uri, env)
            servers["on"] = _serve(model_uri, on_env)
            for _proc, url in servers.values():
                _warm_up(url, texts)
            for r in range(args.rounds):
                result = {}
                for mode in ("off", "on") if r % 2 == 0 else ("on", "off"):
                    result[mode] = _measure(servers[mode][1], texts, args.seconds, args.clients, offset=r * 997)
                rounds.append(result)
                print(
                    f"round {r + 1}/{args.rounds}: off {result['off']['requests_per_s']:.1f} req/s, "
                    f"on {result['on']['requests_per_s']:.1f} req/s",
                    file=sys.stderr,
                )
        finally:
            for proc, _url in servers.values():
                _stop(proc)
        captured = sum(1 for f in captures.rglob("*.jsonl") for _ in f.read_text().splitlines())
    sent_on = sum(r["on"]["requests"] for r in rounds)
    per_round = [1 - r["on"]["requests_per_s"] / r["off"]["requests_per_s"] for r in rounds]
    overhead = float(np.median(per_round))

    def median(mode: str, key: str) -> float:
        return round(float(np.median([r[mode][key] for r in rounds])), 2)

    summary = {mode: {k: median(mode, k) for k in ("requests_per_s", "p50_ms", "p95_ms")} for mode in ("off", "on")}
    print(f"model: {what}")
    print(f"{args.rounds} rounds x {args.seconds:.0f} s per mode, alternating order, {args.clients} clients, one text")
    print(f"{'round':<6} {'capture':<8} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'requests':>9} {'errors':>7}")
    for i, r in enumerate(rounds):
        for mode in ("off", "on"):
            m = r[mode]
            print(
                f"{i + 1:<6} {mode:<8} {m['requests_per_s']:>8.1f} {m['p50_ms']:>8.2f} {m['p95_ms']:>8.2f} "
                f"{m['requests']:>9d} {m['errors']:>7d}"
            )
    for mode in ("off", "on"):
        m = summary[mode]
        print(f"{'median':<6} {mode:<8} {m['requests_per_s']:>8.1f} {m['p50_ms']:>8.2f} {m['p95_ms']:>8.2f}")
    print(
        f"capture overhead (median of per-round 1 - on/off): {overhead:+.3f} (goal <= 0.05); per round: "
        + ", ".join(f"{x:+.3f}" for x in per_round)
    )
    print(f"rows captured: {captured} of {sent_on} requests sent with capture on")
    # CPU seconds per second that capture takes at the capture-off throughput: an upper bound of its true share.
    cpu_share = (cost["request_thread_us"] + cost["writer_per_row_us"]) * 1e-6 * summary["off"]["requests_per_s"]
    print(
        f"capture path alone, in-process: {cost['request_thread_us']:.1f} us on the request thread + "
        f"{cost['writer_per_row_us']:.1f} us per row on the writer thread = {100 * cpu_share:.3f} % of one core "
        f"at {summary['off']['requests_per_s']:.1f} req/s"
    )
    if args.control:
        print("CONTROL RUN (--control): both servers capture nothing; the 'overhead' is the noise floor")
    print(
        json.dumps(
            {
                "bench": "serving",
                "model": what,
                "clients": args.clients,
                "seconds": args.seconds,
                "rounds": args.rounds,
                "capture_off": summary["off"],
                "capture_on": summary["on"],
                "per_round_overhead": [round(x, 4) for x in per_round],
                "rounds_detail": rounds,
                "requests_with_capture": sent_on,
                "rows_captured": captured,
                "capture_overhead": round(overhead, 4),
                "goal": 0.05,
                "control": args.control,
                "capture_path_cost": {**cost, "cpu_share_of_one_core": round(cpu_share, 6)},
            }
        )
    )


if __name__ == "__main__":
    main()
