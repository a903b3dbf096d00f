"""MLflow runs for a pipeline run: one parent run per pipeline run, one nested run per logging step.

Runs are found by tags before they are created, so a retried step reuses its run instead of adding one.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines.config import Settings
    from pipelines.context import StepContext

log = logging.getLogger(__name__)

TAG_PIPELINE_RUN = "mlops.pipeline_run_id"
TAG_STEP = "mlops.step"


def configure(settings: Settings) -> Any:
    """Point MLflow at the configured store and return an ``MlflowClient``."""
    import mlflow  # heavy (mlflow): imported when used
    from mlflow import MlflowClient  # heavy (mlflow): imported when used

    uri = settings.mlflow.tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(settings.mlflow.registry_uri or uri)
    if uri.startswith("sqlite:///"):
        rebase_moved_store(settings, Path(uri[len("sqlite:///") :]))
    return MlflowClient(tracking_uri=uri, registry_uri=settings.mlflow.registry_uri or uri)


# Columns of MLflow's SQL store that hold artifact locations (MLflow 3 schema).
_LOCATION_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
)
_rebased: set[tuple[str, str]] = set()


def _copied(con: Any, old: Path, new: Path) -> bool:
    """Whether ``new`` holds a copy of the runs under ``old`` (the first run's artifact folder is in both)."""
    row = con.execute(
        "SELECT artifact_uri FROM runs WHERE artifact_uri LIKE ? LIMIT 1", (old.as_uri() + "/%",)
    ).fetchone()
    return row is not None and (new / Path(row[0].removeprefix("file://")).relative_to(old)).exists()


def rebase_moved_store(settings: Settings, db: Path) -> int:
    """Make a SQLite store whose checkout moved point at its artifacts' new place; returns the rows changed.

    MLflow writes local artifact locations as absolute paths (``mlflow.utils.uri.resolve_uri_if_local``), so a
    copied or moved ``var/`` would still point at the old folder. The experiment's recorded location is compared
    with where the settings put it now; when they differ, the new folder exists and the old one is gone (a move) or
    holds the same runs as the new one (a copy), every location under the old folder is rewritten to the new one
    (``file://`` and bare forms), once per process. A store on S3 or behind a server, and a setting that points at
    an unrelated folder, are left alone.
    """
    location = settings.mlflow.artifact_location or settings.uri("mlruns")
    if location.startswith(("s3://", "mlflow-artifacts:")) or not db.is_file():
        return 0
    new = Path(location.removeprefix("file://")).resolve()
    key = (str(db.resolve()), str(new))
    if key in _rebased:
        return 0
    _rebased.add(key)
    with sqlite3.connect(db, timeout=30) as con:
        try:
            row = con.execute(
                "SELECT artifact_location FROM experiments WHERE name = ?", (settings.mlflow.experiment_name,)
            ).fetchone()
        except sqlite3.OperationalError:  # a store MLflow has not created its tables in yet
            return 0
        if row is None or not row[0]:
            return 0
        old = Path(row[0].removeprefix("file://"))
        if old == new or not new.exists() or (old.exists() and not _copied(con, old, new)):
            return 0
        changed = 0
        for old_prefix, new_prefix in ((old.as_uri(), new.as_uri()), (str(old), str(new))):
            for table, column in _LOCATION_COLUMNS:
                try:
                    changed += con.execute(
                        f"UPDATE {table} SET {column} = ? || substr({column}, ?) "  # noqa: S608 - fixed names
                        f"WHERE substr({column}, 1, ?) = ? AND (length({column}) = ? OR substr({column}, ?, 1) = '/')",
                        (
                            new_prefix,
                            len(old_prefix) + 1,
                            len(old_prefix),
                            old_prefix,
                            len(old_prefix),
                            len(old_prefix) + 1,
                        ),
                    ).rowcount
                except sqlite3.OperationalError:  # a column or table this MLflow version does not have
                    continue
    log.info("MLflow store %s moved: %d artifact locations rebased from %s to %s", db, changed, old, new)
    return changed


def experiment_id(settings: Settings) -> str:
    client = configure(settings)
    name = settings.mlflow.experiment_name
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = settings.mlflow.artifact_location or settings.uri("mlruns")
    if not location.startswith(("s3://", "file:", "mlflow-artifacts:")):
        location = Path(location).resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # a concurrent task created it first
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _find_run(client: Any, exp_id: str, filters: dict[str, str]) -> str | None:
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in filters.items())
    runs = client.search_runs([exp_id], filter_string=query, max_results=1, order_by=["attributes.start_time ASC"])
    return runs[0].info.run_id if runs else None


def parent_run_id(ctx: StepContext) -> str:
    """The MLflow parent run of this pipeline run, created on first use."""
    if ctx.mlflow_parent_run_id:
        return ctx.mlflow_parent_run_id
    client = configure(ctx.settings)
    exp_id = experiment_id(ctx.settings)
    found = _find_run(client, exp_id, {TAG_PIPELINE_RUN: ctx.run_id, TAG_STEP: "pipeline"})
    if found:
        return found
    tags = {TAG_PIPELINE_RUN: ctx.run_id, TAG_STEP: "pipeline", "mlflow.runName": f"pipeline {ctx.run_id}"}
    if ctx.dag_id:
        tags["mlops.dag_id"] = ctx.dag_id
    run = client.create_run(exp_id, tags=tags)
    client.set_terminated(run.info.run_id, status="FINISHED")
    return run.info.run_id


@contextmanager
def step_run(ctx: StepContext) -> Iterator[Any]:
    """Open (or reopen, on a retry) the nested MLflow run of ``ctx.step`` and make it active."""
    import mlflow  # heavy (mlflow): imported when used

    client = configure(ctx.settings)
    parent = parent_run_id(ctx)
    exp_id = experiment_id(ctx.settings)
    run_id = _find_run(client, exp_id, {TAG_PIPELINE_RUN: ctx.run_id, TAG_STEP: ctx.step})
    if run_id is None:
        run = client.create_run(
            exp_id,
            tags={
                TAG_PIPELINE_RUN: ctx.run_id,
                TAG_STEP: ctx.step,
                "mlflow.parentRunId": parent,
                "mlflow.runName": f"{ctx.step} {ctx.run_id}",
            },
        )
        run_id = run.info.run_id
    while mlflow.active_run() is not None:
        mlflow.end_run()
    with mlflow.start_run(run_id=run_id) as run:
        yield run


def extend_parent_run(ctx: StepContext) -> None:
    """Stretch the parent run's end time to now, so that it spans every nested run (and the register step) in the
    MLflow UI's duration column; the parent is created finished at its first use, and each step moves its end."""
    client = configure(ctx.settings)
    exp = client.get_experiment_by_name(ctx.settings.mlflow.experiment_name)
    if exp is None:
        return
    parent = _find_run(client, exp.experiment_id, {TAG_PIPELINE_RUN: ctx.run_id, TAG_STEP: "pipeline"})
    if parent is None:
        return
    info = client.get_run(parent).info
    now = int(time.time() * 1000)
    if info.end_time is None or info.end_time < now:
        client.set_terminated(parent, status=info.status if info.status != "RUNNING" else "FINISHED", end_time=now)


def find_step_run(ctx: StepContext) -> tuple[str, str] | None:
    """(experiment id, run id) of the step's nested run if the step logged one, else the parent run's, or None."""
    client = configure(ctx.settings)
    exp = client.get_experiment_by_name(ctx.settings.mlflow.experiment_name)
    if exp is None:
        return None
    for step in (ctx.step, "pipeline"):
        found = _find_run(client, exp.experiment_id, {TAG_PIPELINE_RUN: ctx.run_id, TAG_STEP: step})
        if found:
            return exp.experiment_id, found
    return None


def run_url(settings: Settings, run_id: str) -> str:
    """Link to a run in the MLflow UI."""
    exp = experiment_id(settings)
    return f"{settings.mlflow.ui_url.rstrip('/')}/#/experiments/{exp}/runs/{run_id}"
