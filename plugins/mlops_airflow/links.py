"""Extra links from a step's task to its MLflow run and to the model version it registered.

The operator stores each URL in an XCom when the step finishes; the link reads it back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.models.taskinstancekey import TaskInstanceKey
    from airflow.sdk import BaseOperator


class _XComLink(BaseOperatorLink):
    key: ClassVar[str]

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.providers.common.compat.sdk import XCom

        return XCom.get_value(key=self.key, ti_key=ti_key) or ""


class MlflowRunLink(_XComLink):
    name = "MLflow run"
    key = "mlops_mlflow_run_url"


class ModelVersionLink(_XComLink):
    name = "MLflow model version"
    key = "mlops_model_version_url"
