"""Registers the product's extra links with Airflow, so the UI shows them on step tasks, and the middleware that
makes a trigger form's refused value readable (:mod:`mlops_airflow.form_errors`)."""

from airflow.plugins_manager import AirflowPlugin

from mlops_airflow.form_errors import ReadableParamErrors
from mlops_airflow.links import MlflowRunLink, ModelVersionLink


class MlopsPlugin(AirflowPlugin):
    name = "mlops"
    operator_extra_links = [MlflowRunLink(), ModelVersionLink()]
    fastapi_root_middlewares = [{"middleware": ReadableParamErrors, "name": "mlops-readable-param-errors"}]
