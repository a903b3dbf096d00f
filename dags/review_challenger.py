"""Review of a staged challenger: a Human-in-the-loop request in Airflow, or the review tags in MLflow; first wins.

Started by the ``mlops_challenger`` asset event that ``continuous_training`` emits when it stages a challenger (one
run per staged challenger), or by hand with a version. The ``review`` task waits without a worker slot (deferred to
the triggerer) until a reviewer decides in Airflow (Required Actions: Approve / Reject, the responding user is
recorded as ``review_by``) or in MLflow (tags ``review`` and ``review_by`` on the version page), until a newer
challenger supersedes this one, or until ``registry.review_timeout_minutes``. Then ``promote`` makes an approved
version the champion or archives a rejected one (keyed by the version, so a re-run never moves twice).
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param

from mlops_airflow.assets import CHALLENGER
from mlops_airflow.operators import RunStepOperator
from mlops_airflow.review import ChallengerReviewOperator


def _review(key: str) -> str:
    return f"{{{{ ti.xcom_pull(task_ids='review')['{key}'] }}}}"


with DAG(
    dag_id="review_challenger",
    description="Wait for a reviewer's decision on the staged challenger (Airflow or MLflow), then apply it",
    schedule=[CHALLENGER],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={
        "version": Param(
            None,
            type=["null", "string"],
            pattern=r"^[0-9]*$",
            maxLength=12,
            title="Model version (optional)",
            description="The version to review. Empty: the version named by the asset event, else the current "
            "challenger.",
        )
    },
    tags=["mlops", "registry", "review"],
    doc_md=__doc__,
) as dag:
    review = ChallengerReviewOperator.from_settings(task_id="review", version="{{ params.version }}", retries=0)
    promote = RunStepOperator(
        task_id="promote",
        step="promote",
        step_params={
            "action": _review("decision"),
            "version": _review("version"),
            "request_id": "review-v" + _review("version"),
        },
        retries=1,
    )
    review >> promote
