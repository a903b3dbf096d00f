"""Airflow pieces of the product: the step operator, the review sensor, extra links, the trigger-form params.

Like ``dags/``, these modules import only Airflow's SDK and the standard library at module level; the product's
code (``pipelines``) and the heavy libraries are imported inside ``execute`` / ``poke``.
"""
