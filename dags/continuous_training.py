"""Continuous training: validate a new batch, check drift, decide, train, compress, gate, register.

Scheduled (``dag.schedule`` in the configuration) and whenever the landing asset is updated; also triggered by
hand with a typed form. Each step is one task; only small JSON summaries travel through XCom.

The run ends once the candidate is registered: promoted under the ``auto`` policy, or staged as the challenger.
A staged challenger's review runs in the ``review_challenger`` DAG (started by the ``mlops_challenger`` asset event
that ``request_review`` emits), so a pending review never holds this DAG's run slot (``max_active_runs=1``, which
also keeps two runs from picking the same landing batch).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.sdk import DAG, Asset, AssetOrTimeSchedule, CronTriggerTimetable, task

from mlops_airflow import tasks
from mlops_airflow.assets import CHALLENGER
from mlops_airflow.operators import RunStepOperator
from mlops_airflow.params import continuous_training_params
from pipelines.config import get_settings

settings = get_settings()
_landing = settings.uri(settings.paths.landing)
# An upstream job that drops a batch emits an event on this asset to start a run at once.
LANDING = Asset(name="mlops_landing", uri=_landing if "://" in _landing else Path(_landing).resolve().as_uri())


schedule = (
    AssetOrTimeSchedule(timetable=CronTriggerTimetable(settings.dag.schedule, timezone="UTC"), assets=LANDING)
    if settings.dag.schedule
    else LANDING
)

with DAG(
    dag_id="continuous_training",
    description="Validate, drift-check and, when needed, retrain and stage the text classifier",
    schedule=schedule,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    params=continuous_training_params(),
    tags=["mlops", "continuous-training"],
    default_args={
        "owner": settings.dag.owner,
        "retries": settings.dag.retries,
        "retry_delay": timedelta(seconds=settings.dag.retry_delay_seconds),
        "retry_exponential_backoff": True,
    },
    doc_md=__doc__,
) as dag:

    @task(retries=0)
    def pick_batch(params=None, run_id=None):
        return tasks.pick_batch(params or {}, run_id)

    # Each step's inputs are the XCom pulls it declares in pipelines.context.SPECS.
    validate = RunStepOperator(task_id="validate", step="validate")
    drift = RunStepOperator(task_id="drift", step="drift")
    decide = RunStepOperator(task_id="decide", step="decide")

    @task.branch(retries=0)
    def route(ti=None):
        return tasks.choose_after_decide(ti.xcom_pull(task_ids="decide"), ti.xcom_pull(task_ids="validate"))

    @task(retries=0)
    def skip():
        """Nothing to train (no drift worth it, or a duplicate batch): keep the champion."""

    train = RunStepOperator(task_id="train", step="train", execution_timeout=timedelta(hours=6))
    compress = RunStepOperator(task_id="compress", step="compress")
    evaluate = RunStepOperator(task_id="evaluate", step="evaluate")

    @task.branch(retries=0)
    def gate(ti=None):
        return tasks.choose_after_evaluate(ti.xcom_pull(task_ids="evaluate"))

    @task(retries=0)
    def gate_failed(ti=None):
        tasks.gate_failed(ti.xcom_pull(task_ids="evaluate"))

    register = RunStepOperator(task_id="register", step="register")

    @task(retries=0, outlets=[CHALLENGER])
    def request_review(ti=None, outlet_events=None):
        return tasks.request_review(ti.xcom_pull(task_ids="register"), outlet_events[CHALLENGER])

    picked = pick_batch()
    picked >> validate >> drift >> decide
    branch = route()
    decide >> branch >> [skip(), train]
    train >> compress >> evaluate
    gated = gate()
    evaluate >> gated >> [gate_failed(), register]
    register >> request_review()
