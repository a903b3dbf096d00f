"""Monitor predictions: rate each window of captured traffic; start the loop, or ask for labels, when it must act.

Scheduled by ``monitoring.schedule`` (hourly by default) and triggered by hand. The ``monitor`` step claims the
captures written since the last window exactly once (see ``pipelines/steps/monitor.py``); a rerun of a window gives the
same result. ``act`` with labelled batches waiting in landing triggers ``continuous_training`` with the evidence in
its conf, under a run id made from the window, so one window never starts two runs; ``act`` without labels fails
``ask_for_labels`` with the reason.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, CronTriggerTimetable, task

from mlops_airflow import tasks
from mlops_airflow.operators import RunStepOperator
from pipelines.config import get_settings

settings = get_settings()

with DAG(
    dag_id="monitor_predictions",
    description="Drift, estimated macro-F1 and system figures of the served champion's captured traffic",
    schedule=CronTriggerTimetable(settings.monitoring.schedule, timezone="UTC")
    if settings.monitoring.schedule
    else None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # windows are claimed one at a time
    tags=["mlops", "monitoring"],
    default_args={
        "owner": settings.dag.owner,
        "retries": settings.dag.retries,
        "retry_delay": timedelta(seconds=settings.dag.retry_delay_seconds),
    },
    doc_md=__doc__,
) as dag:
    monitor = RunStepOperator(
        task_id="monitor",
        step="monitor",
        step_params={"window_end": "{{ (data_interval_end or dag_run.run_after).isoformat() }}"},
    )

    @task.branch(retries=0)
    def route(ti=None):
        return tasks.choose_after_monitor(ti.xcom_pull(task_ids="monitor"))

    @task(retries=0)
    def done():
        """ok or warn: nothing to start (a warn is in the summary, the MLflow run and this run's log)."""

    @task(retries=0)
    def trigger_training(ti=None):
        """Start continuous_training with the evidence (run id monitor__<window>: never twice per window)."""
        tasks.trigger_training(ti.xcom_pull(task_ids="monitor"))

    @task(retries=0)
    def ask_for_labels(ti=None):
        tasks.ask_for_labels(ti.xcom_pull(task_ids="monitor"))

    branch = route()
    monitor >> branch >> [done(), ask_for_labels(), trigger_training()]
