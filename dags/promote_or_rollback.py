"""Manual promotion, rejection or rollback of a model version in the MLflow registry (recorded in the audit trail).

The triggering Airflow user is recorded as the decider. Each decision is keyed by a request id (default: the run
id), so a retried task never moves the champion twice.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG

from mlops_airflow.operators import RunStepOperator
from mlops_airflow.params import promote_or_rollback_params

with DAG(
    dag_id="promote_or_rollback",
    description="Promote, reject or roll back a model version by hand",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    params=promote_or_rollback_params(),
    tags=["mlops", "registry"],
    doc_md=__doc__,
) as dag:
    RunStepOperator(
        task_id="promote",
        step="promote",
        step_params={
            "action": "{{ 'approve' if params.action == 'promote' else params.action }}",
            "version": "{{ params.version }}",
            "reason": "{{ params.reason }}",
            "by": "{{ dag_run.triggering_user_name or 'airflow' }}",
            "request_id": "{{ params.request_id }}",
        },
        retries=0,
    )
