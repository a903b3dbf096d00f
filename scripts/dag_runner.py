"""Run a DAG of this repo for real (``dag.test()``, on the embedded SQLite metadata DB) and collect its outcome.

Used by ``make run``, the end-to-end tests and ``bench/loop.py``. Call :func:`prepare_airflow` before anything
imports Airflow: Airflow reads ``AIRFLOW_HOME`` when it is first imported.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent.parent


def write_airflow_cfg(home: Path) -> Path:
    """Write ``airflow.cfg`` before Airflow writes its own, which expands every path to an absolute one (the DAGs
    folder, the SQLite file, the logs): this one holds only the generated secrets, and the paths are set from
    ``AIRFLOW_HOME`` by environment variables at every start (:func:`prepare_airflow`), so ``var/`` may be moved
    or copied. An existing file is left alone (the environment overrides its paths)."""
    import base64
    import secrets

    cfg = home / "airflow.cfg"
    if cfg.exists():
        return cfg
    fernet = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    text = (
        "# Written by scripts/dag_runner.py: no absolute path here, so this folder can be moved or copied.\n"
        "# The DAGs and plugins folders, the metadata DB and the logs are set from AIRFLOW_HOME by environment\n"
        "# variables at every start (make run, make ui, the tests); anything else is Airflow's default.\n"
        "[core]\n"
        f"fernet_key = {fernet}\n"
        "load_examples = False\n"
        "\n[api]\n"
        f"secret_key = {secrets.token_urlsafe(16)}\n"
        "\n[api_auth]\n"
        f"jwt_secret = {secrets.token_urlsafe(16)}\n"
    )
    cfg.write_text(text)
    cfg.chmod(0o600)
    return cfg


def prepare_airflow(airflow_home: str | Path) -> Path:
    """Point Airflow at ``airflow_home`` with this repo's DAGs and plugins, and migrate its SQLite DB once.

    Every path Airflow needs is derived here from ``airflow_home`` and this checkout and passed in the
    environment; ``airflow.cfg`` holds none (:func:`write_airflow_cfg`)."""
    home = Path(airflow_home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    write_airflow_cfg(home)
    os.environ["AIRFLOW_HOME"] = str(home)
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
    os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(REPO / "plugins")
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{home / 'airflow.db'}"
    os.environ["AIRFLOW__LOGGING__BASE_LOG_FOLDER"] = str(home / "logs")
    os.environ["AIRFLOW__LOGGING__DAG_PROCESSOR_CHILD_PROCESS_LOG_DIRECTORY"] = str(home / "logs" / "dag_processor")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for path in (str(REPO), str(REPO / "plugins")):
        if path not in sys.path:
            sys.path.insert(0, path)
    pythonpath = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), str(REPO / "plugins"), pythonpath) if p)
    if not (home / ".migrated").exists():
        subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True, env=os.environ.copy()
        )
        (home / ".migrated").write_text("ok\n")
    return home


@dataclass
class DagRunOutcome:
    dag_id: str
    run_id: str
    state: str
    wall_s: float
    task_states: dict[str, str] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)

    def compute_s(self) -> float:
        """Sum of the steps' own compute time, as reported in their summaries."""
        return sum(float(r.get("compute_s", 0)) for r in self.results.values() if isinstance(r, dict))


def load_dag(dag_id: str) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    if bag.import_errors:
        raise RuntimeError(f"DAG import errors: {bag.import_errors}")
    if dag_id not in bag.dags:
        raise KeyError(f"no DAG {dag_id!r} in {REPO / 'dags'}; found {sorted(bag.dags)}")
    return bag.dags[dag_id]


def _withdraw_attempt(dag_id: str, logical_date: Any) -> None:
    """A run stopped by the user does not count toward its batch's ``dag.batch_max_attempts``."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    from pipelines.config import get_settings
    from pipelines.io.storage import withdraw_attempt

    try:
        with create_session() as session:
            run = session.query(DagRun).filter(DagRun.dag_id == dag_id, DagRun.logical_date == logical_date).first()
            run_id = run.run_id if run is not None else None
        if run_id is None:  # stopped before the run was created: nothing was counted
            return
        for batch in withdraw_attempt(get_settings(), run_id):
            log.warning("%s stopped: its pick of %s is not counted as a failed attempt", run_id, batch)
    except Exception as exc:  # the stop goes on; the attempt then counts, as a failed run's would
        log.warning("DAG run of %r stopped; could not withdraw its batch attempt: %s", dag_id, exc)


def run_dag(dag_id: str, conf: dict[str, Any] | None = None) -> DagRunOutcome:
    """Run one DAG run in this process and return its state, task states and step summaries."""
    from airflow.sdk import timezone

    dag = load_dag(dag_id)
    from airflow.sdk.exceptions import AirflowFailException

    from mlops_airflow.operators import IN_LINE, TERMINATED  # the plugins folder is on sys.path once Airflow is loaded

    # Under dag.test() a signal would not stop this process: each task runs under Airflow's SIGTERM handler, which
    # only calls the task's on_kill() and stays installed after the run, and the task runner catches a Ctrl-C's
    # KeyboardInterrupt and retries the task. So SIGTERM (through RunStepOperator.on_kill) and SIGINT (here) fail
    # the running step without a retry, the run ends, the caller's handlers are put back, and the signal is
    # delivered again.
    interrupted = threading.Event()

    def _on_sigint(signum: int, frame: Any) -> None:
        interrupted.set()
        raise AirflowFailException(f"DAG run of {dag_id!r} stopped by Ctrl-C (SIGINT)")

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    TERMINATED.clear()
    IN_LINE.set()
    if previous[signal.SIGINT] is not signal.SIG_IGN:  # a background job ignores SIGINT: leave it so
        signal.signal(signal.SIGINT, _on_sigint)
    started = time.perf_counter()
    logical_date = timezone.utcnow()
    try:
        dr = dag.test(run_conf=conf or {}, logical_date=logical_date)
    except Exception:
        if not (TERMINATED.is_set() or interrupted.is_set()):  # the stop raises wherever it lands, e.g. between tasks
            raise
    finally:
        IN_LINE.clear()
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)
    if interrupted.is_set() or TERMINATED.is_set():
        _withdraw_attempt(dag_id, logical_date)
    if interrupted.is_set():
        raise KeyboardInterrupt(f"DAG run of {dag_id!r} stopped by Ctrl-C")
    if TERMINATED.is_set():
        signal.raise_signal(signal.SIGTERM)
        raise RuntimeError(f"DAG run of {dag_id!r} stopped by SIGTERM")  # when the caller's handler returns
    wall = time.perf_counter() - started
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    outcome = DagRunOutcome(dag_id=dag_id, run_id=dr.run_id, state=str(dr.state), wall_s=wall)
    with create_session() as session:
        tis = session.query(TaskInstance).filter(TaskInstance.dag_id == dag_id, TaskInstance.run_id == dr.run_id)
        for ti in tis:
            outcome.task_states[ti.task_id] = str(ti.state)
            if str(ti.state) == "success":
                value = ti.xcom_pull(task_ids=ti.task_id, key="return_value", session=session)
                if value is not None:
                    outcome.results[ti.task_id] = value
    return outcome
