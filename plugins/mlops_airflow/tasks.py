"""Small Python callables the DAGs run as tasks (kept here so that DAG files only wire)."""

from __future__ import annotations

from typing import Any


def pick_batch(params: dict[str, Any]) -> str:
    """The batch this run processes: the ``batch_uri`` param, or the oldest unprocessed batch in landing.

    Raises:
        AirflowSkipException: no batch is waiting (a scheduled run with nothing to do).
        AirflowFailException: a param is invalid, or the given ``batch_uri`` does not exist; the message names it.
    """
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from mlops_airflow.params import split_params
    from pipelines.config import ConfigError, get_settings
    from pipelines.storage import get_storage

    # The form validates params at trigger time; this catches what reaches a run by another way, first.
    try:
        _, overrides = split_params(params)
        settings = get_settings().with_overrides(overrides)
    except (ConfigError, ValueError) as exc:
        raise AirflowFailException(str(exc)) from None
    storage = get_storage(settings)
    given = (params.get("batch_uri") or "").strip()
    if given:
        if not storage.exists(given):
            raise AirflowFailException(f"param batch_uri={given!r} does not exist; drop the batch there or fix the URI")
        return given
    landing = settings.uri(settings.paths.landing)
    waiting = [u for u in storage.list(landing) if u.endswith((".csv", ".parquet"))]
    if not waiting:
        raise AirflowSkipException(f"no batch waiting in {landing}")
    return waiting[0]


def choose_after_decide(decision: dict[str, Any] | None) -> str:
    """Branch: ``skip`` ends the run cleanly; ``fine_tune`` and ``retrain`` go to training."""
    action = (decision or {}).get("action")
    if action == "skip":
        return "skip"
    if action in ("fine_tune", "retrain"):
        return "train"
    raise ValueError(f"decide returned action={action!r}; expected skip, fine_tune or retrain")


def choose_after_evaluate(evaluation: dict[str, Any] | None) -> str:
    return "register" if (evaluation or {}).get("passed") else "gate_failed"


def gate_failed(evaluation: dict[str, Any] | None) -> None:
    """End the run as failed with the gates' reasons; the champion is untouched."""
    from airflow.sdk.exceptions import AirflowFailException

    evaluation = evaluation or {}
    reasons = "; ".join(evaluation.get("failures") or []) or "see the evaluation report"
    raise AirflowFailException(
        f"candidate rejected by the evaluation gates ({reasons}); champion unchanged; "
        f"report: {evaluation.get('report_uri')}"
    )
