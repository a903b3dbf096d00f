"""Airflow pieces of the product: the step operator, the review wait (Human-in-the-loop), extra links, the form.

Like ``dags/``, these modules import only Airflow's SDK and the standard library at module level; the product's
code (``pipelines``) and the heavy libraries are imported inside ``execute`` and the review trigger.
"""
