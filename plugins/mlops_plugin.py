"""Registers the product's extra links with Airflow, so the UI shows them on step tasks."""

from airflow.plugins_manager import AirflowPlugin

from mlops_airflow.links import MlflowRunLink, ModelVersionLink


class MlopsPlugin(AirflowPlugin):
    name = "mlops"
    operator_extra_links = [MlflowRunLink(), ModelVersionLink()]
