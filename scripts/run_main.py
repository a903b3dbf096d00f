"""``make run``: the continuous-training DAG on the embedded default, unattended.

Writes the demo batches into ``var/landing``, then runs the real ``continuous_training`` DAG twice with Airflow
(SQLite metadata under ``var/airflow``, MLflow on ``var/mlflow.db``, the packaged MiniLM): first on the
reference batch (no champion yet: bootstrap retrain), then on a moderately drifted batch (its distribution moved
and the champion's labelled quality held, but the batch doubles a young history: a fine-tune). ``registry.promotion`` is ``auto`` in this process (unless
``MLOPS_REGISTRY__PROMOTION`` is set) so the job finishes without a reviewer; scheduled runs keep the configured
policy (``manual``).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from scripts.dag_runner import REPO, prepare_airflow, run_dag

RUNS = [
    ("bootstrap on the reference batch", "batch_000_reference.csv"),
    ("a moderately drifted batch", "batch_002_moderate.csv"),
]


def _tee_output(path: Path) -> None:
    """Copy everything this process prints (the task logs of ``dag.test`` included) into ``path`` as well."""
    import subprocess

    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    import atexit

    saved = os.dup(sys.stdout.fileno()), os.dup(sys.stderr.fileno())
    tee = subprocess.Popen(["tee", str(path)], stdin=subprocess.PIPE)
    os.dup2(tee.stdin.fileno(), sys.stdout.fileno())
    os.dup2(tee.stdin.fileno(), sys.stderr.fileno())

    def _restore() -> None:  # let tee write the last lines before the shell prompt comes back
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], sys.stdout.fileno())
        os.dup2(saved[1], sys.stderr.fileno())
        tee.stdin.close()
        tee.wait(timeout=10)

    atexit.register(_restore)


def main() -> int:
    # Unattended demo: the policy is auto for this process (a run's promotion=auto cannot lift a manual config).
    os.environ.setdefault("MLOPS_REGISTRY__PROMOTION", "auto")
    log_file = REPO / "var" / "airflow" / "logs" / "make_run" / time.strftime("%Y%m%dT%H%M%SZ.log", time.gmtime())
    _tee_output(log_file)
    prepare_airflow(REPO / "var" / "airflow")
    from pipelines.config import get_settings
    from pipelines.data.demo import write_demo_batches
    from pipelines.io.storage import get_storage, join

    settings = get_settings()
    storage = get_storage(settings)
    landing = settings.uri(settings.paths.landing)
    written = write_demo_batches(settings)
    print(f"demo batches written to {landing}: {', '.join(Path(u).name for u in written)}")
    print(f"promotion: {settings.registry.promotion} for these runs, so the job finishes unattended")
    started = time.perf_counter()
    outcomes = []
    for title, name in RUNS:
        uri = join(landing, name)
        if not storage.exists(uri):
            print(f"skipping {title}: {uri} is not in landing")
            continue
        print(f"\n=== continuous_training: {title} ({uri}) ===", flush=True)
        outcome = run_dag("continuous_training", {"batch_uri": uri, "promotion": "auto"})
        outcomes.append((title, outcome))
        print(f"--- run {outcome.run_id}: {outcome.state} in {outcome.wall_s:.0f}s", flush=True)
    print(_summary(settings, outcomes, time.perf_counter() - started, log_file))
    return 0 if all(o.state == "success" for _, o in outcomes) else 1


def _summary(settings, outcomes, total_s: float, log_file: Path | None = None) -> str:
    from pipelines.champion import champion_version

    lines = ["", "=" * 78, f"continuous_training finished {len(outcomes)} run(s) in {total_s:.0f}s", ""]
    for title, o in outcomes:
        decide = o.results.get("decide", {})
        evaluate = o.results.get("evaluate", {})
        register = o.results.get("register", {})
        lines.append(f"* {title}: {o.state}  (run {o.run_id})")
        lines.append(f"    action: {decide.get('action')}  reasons: {'; '.join(decide.get('reasons', []))}")
        if evaluate:
            lines.append(
                f"    gates passed: {evaluate.get('passed')}  macro-F1: {evaluate.get('metrics', {}).get('macro_f1')}"
            )
            lines.append(f"    evaluation report: {evaluate.get('report_uri')}")
        if register:
            lines.append(f"    model version: {register.get('model_name')} v{register.get('version')}")
            if register.get("alias") == "challenger":
                lines.append(
                    "    staged as the challenger, awaiting a review: the review_challenger DAG (Airflow: Browse -> "
                    "Required Actions) or the tags review / review_by on its MLflow version page"
                )
        failed = [t for t, s in o.task_states.items() if s == "failed"]
        if failed:
            lines.append(f"    failed tasks: {', '.join(failed)}")
    champion = champion_version(settings)
    name = settings.registry.model_name
    lines += [
        "",
        f"champion: {name} v{champion.version if champion else '-'}  (models:/{name}@champion)",
        f"artifacts and step outputs: {settings.uri(settings.paths.runs)}/<run_id>/<step>/",
        f"MLflow store: {settings.mlflow.tracking_uri}   Airflow metadata: var/airflow/airflow.db",
        "look at them: `make ui`, then MLflow at http://127.0.0.1:5000 and Airflow at http://127.0.0.1:8080",
        "task logs: `make run` runs each task in this process (dag.test), so its task logs are the lines above "
        "(each step logs what it decided and why: lines starting 'decide:', 'evaluate:', 'register:')"
        + (f", also saved in {_rel(log_file)}" if log_file else "")
        + "; the Airflow UI's Logs tab has none for these runs. Runs triggered in the Airflow UI (`make ui`) "
        "keep theirs under var/airflow/logs/ and show them in the task's Logs tab.",
    ]
    return "\n".join(lines)


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as exc:  # Ctrl-C: run_dag ended the run (its step failed, nothing half-written)
        print(f"\nstopped: {exc or 'Ctrl-C'}; the runs so far are in the Airflow and MLflow stores", file=sys.stderr)
        sys.exit(130)
