"""Assets shared by the DAGs (kept apart so that a DAG file imports only ``airflow.sdk`` to name them)."""

from __future__ import annotations

from airflow.sdk import Asset

#: Updated by ``continuous_training.request_review`` each time a challenger is staged for a human review; the event's
#: ``extra`` carries ``model_name`` and ``version``. It starts one ``review_challenger`` run per staged challenger.
CHALLENGER = Asset(name="mlops_challenger")
