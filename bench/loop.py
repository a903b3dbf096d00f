"""Orchestration overhead of the continuous-training DAG on the embedded default.

Runs the real DAG (dag.test, SQLite) twice on fresh state: bootstrap (retrain) then a drifted batch (fine-tune,
forced so that the tiny model measures the same kind of run),
and reports for the fine-tune run the wall time, the sum of the steps' own compute time (from their summaries),
and the overhead share (wall - compute) / compute. Also the DAG parse time.

    .venv/bin/python bench/loop.py            # the real MiniLM (the product default)
    .venv/bin/python bench/loop.py --tiny     # a tiny BERT built on the fly (seconds per step)

Last line: {"wall_s": w, "compute_s": c, "overhead_share": o, "dag_parse_s": p}
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _parse_time() -> float:
    code = (
        "import time, importlib.util, airflow.sdk\n"
        "t = time.perf_counter()\n"
        f"spec = importlib.util.spec_from_file_location('d', {str(REPO / 'dags' / 'continuous_training.py')!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "print(time.perf_counter() - t)\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'plugins'}"}
    runs = [
        float(
            subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
            .stdout.strip()
            .splitlines()[-1]
        )
        for _ in range(3)
    ]
    return min(runs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="use a tiny BERT instead of the packaged MiniLM")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-loop-"))
    env = {
        "MLOPS_PATHS__ARTIFACT_ROOT": str(work / "var"),
        "MLOPS_MLFLOW__TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
        "MLOPS_DAG__RETRIES": "0",
        # No reviewer in a benchmark: the policy is auto (the form's promotion=auto cannot lift a manual config).
        "MLOPS_REGISTRY__PROMOTION": "auto",
    }
    if args.tiny:
        sys.path.insert(0, str(REPO / "tests"))
        from conftest import build_tiny_bert

        from pipelines.data import demo

        texts = [r["text"] for spec in demo.BATCHES for r in demo.generate(spec)]
        tiny = build_tiny_bert(work / "tiny", texts)
        env.update(
            {
                "MLOPS_TRAIN__BASE_MODEL": str(tiny),
                "MLOPS_DRIFT__ENCODER": str(tiny),
                "MLOPS_TRAIN__MAX_LENGTH": "64",
                "MLOPS_TRAIN__LEARNING_RATE": "0.001",
                "MLOPS_TRAIN__FINE_TUNE_LEARNING_RATE": "0.0005",
                "MLOPS_GATES__MIN_MACRO_F1": "0.3",
                "MLOPS_GATES__NONINFERIORITY_MARGIN": "0.2",
            }
        )
    os.environ.update(env)
    from scripts.dag_runner import prepare_airflow, run_dag

    prepare_airflow(work / "airflow")
    from pipelines.config import get_settings
    from pipelines.data.demo import write_demo_batches
    from pipelines.io.storage import join

    settings = get_settings()
    write_demo_batches(settings)
    landing = settings.uri(settings.paths.landing)
    rows = []
    # The second run forces fine_tune so both models measure the same kind of run (MiniLM's drift check picks
    # fine_tune for this batch by itself; a random tiny encoder is too weak a drift detector to be relied on).
    runs = [("bootstrap", "batch_000_reference.csv", "auto"), ("fine-tune", "batch_002_moderate.csv", "fine_tune")]
    for label, name, action in runs:
        t = time.perf_counter()
        conf = {"batch_uri": join(landing, name), "promotion": "auto", "force_action": action}
        out = run_dag("continuous_training", conf)
        wall = time.perf_counter() - t
        compute = out.compute_s()
        rows.append((label, out.state, out.results.get("decide", {}).get("action"), wall, compute))
    parse = _parse_time()
    print(f"\n{'run':<10} {'state':<8} {'action':<10} {'wall s':>8} {'compute s':>10} {'overhead':>9}")
    for label, state, action, wall, compute in rows:
        print(f"{label:<10} {state:<8} {str(action):<10} {wall:8.1f} {compute:10.1f} {(wall - compute) / compute:9.1%}")
    print(f"DAG parse time: {parse * 1000:.0f} ms   model: {'tiny BERT' if args.tiny else 'MiniLM (packaged)'}")
    _, _, _, wall, compute = rows[-1]
    print(
        json.dumps(
            {
                "wall_s": round(wall, 2),
                "compute_s": round(compute, 2),
                "overhead_share": round((wall - compute) / compute, 4),
                "dag_parse_s": round(parse, 4),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
