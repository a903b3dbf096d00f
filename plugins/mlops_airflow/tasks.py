"""Small Python callables the DAGs run as tasks (kept here so that DAG files only wire)."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def pick_batch(params: dict[str, Any], run_id: str | None = None) -> str:
    """The batch this run processes: the ``batch_uri`` param, or the oldest waiting batch in landing.

    The param must name a CSV or Parquet file inside the landing prefix (see
    :func:`pipelines.io.storage.resolve_batch`). With ``run_id``, each pick is counted per batch content; a waiting
    batch already picked by ``dag.batch_max_attempts`` runs (so each of them failed before it left landing) is set
    aside with a note, and the next one is taken. A batch named by the param is never set aside.

    Raises:
        AirflowSkipException: no batch is waiting (a scheduled run with nothing to do).
        AirflowFailException: a param is invalid, or ``batch_uri`` is outside landing or absent; the message names
            the param and the landing prefix.
    """
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from mlops_airflow.params import split_params
    from pipelines.config import ConfigError, get_settings
    from pipelines.io.storage import batch_attempts, note_attempt, resolve_batch, set_aside, waiting_batches

    # The form validates params at trigger time; this catches what reaches a run by another way, first.
    try:
        _, overrides = split_params(params)
        settings = get_settings().with_overrides(overrides)
    except (ConfigError, ValueError) as exc:
        raise AirflowFailException(str(exc)) from None
    given = (params.get("batch_uri") or "").strip()
    if given:
        try:
            uri = resolve_batch(settings, given)
        except ValueError as exc:
            raise AirflowFailException(str(exc)) from None
        if run_id:
            note_attempt(settings, batch_attempts(settings, uri), run_id)
        return uri
    for waiting in waiting_batches(settings):
        try:
            uri = resolve_batch(settings, waiting)
        except ValueError as exc:  # e.g. a symlink in landing that points outside it: never read, left in place
            log.warning("skipping %s in landing: %s", waiting, exc)
            continue
        if not run_id:
            return uri
        record = batch_attempts(settings, uri)
        if run_id not in record["runs"] and len(record["runs"]) >= settings.dag.batch_max_attempts:
            folder = set_aside(settings, uri, record, run_id)
            log.warning("set aside %s after %d failed run(s): %s", uri, len(record["runs"]), folder)
            continue
        note_attempt(settings, record, run_id)
        return uri
    raise AirflowSkipException(f"no batch waiting in {settings.uri(settings.paths.landing)}")


def choose_after_decide(decision: dict[str, Any] | None, validation: dict[str, Any] | None = None) -> str:
    """Branch: ``skip`` ends the run cleanly; ``fine_tune`` and ``retrain`` go to training.

    A batch that validate found identical to an accepted one (``duplicate_of``) is never trained on again.
    """
    if (validation or {}).get("duplicate_of"):
        log.info("batch is a duplicate of %s: skip", validation["duplicate_of"])
        return "skip"
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


def request_review(registered: dict[str, Any] | None, event: Any = None) -> dict[str, Any]:
    """Ask for a human review of the version the register task staged: fill the ``mlops_challenger`` asset event
    (``event.extra``), which starts a ``review_challenger`` run. The training run ends here; it never waits.

    Raises:
        AirflowSkipException: nothing to review (promoted by the auto policy, or not the challenger any more); a
            skipped task emits no asset event.
    """
    from airflow.sdk.exceptions import AirflowSkipException

    registered = registered or {}
    version, name = registered.get("version"), registered.get("model_name")
    if registered.get("alias") != "challenger":
        raise AirflowSkipException(
            f"{name} version {version} is {registered.get('alias') or 'not staged'} (policy "
            f"{registered.get('policy')}): nothing to review"
        )
    extra = {"model_name": name, "version": str(version), "needs_review": bool(registered.get("needs_review"))}
    if event is not None:
        event.extra = extra
    superseded = registered.get("superseded") or []
    log.info(
        "%s version %s staged as the challenger%s; its review runs in the review_challenger DAG (Airflow: Required "
        "Actions; MLflow: the version page, tags review and review_by). This run ends now.",
        name,
        version,
        f" (it supersedes the pending version(s) {', '.join(superseded)})" if superseded else "",
    )
    return {**extra, "superseded": superseded, "review_dag": "review_challenger"}


def choose_after_monitor(summary: dict[str, Any] | None) -> str:
    """Branch after ``monitor``: ``act`` with labelled batches waiting starts training; ``act`` without them asks
    for labels; ``ok`` and ``warn`` end the run (``warn`` is in the summary, the MLflow run and the task log)."""
    summary = summary or {}
    if summary.get("status") != "act":
        if summary.get("status") == "warn":
            log.warning("monitor: warn: %s", "; ".join(summary.get("reasons") or []))
        return "done"
    return "trigger_training" if summary.get("labels_waiting") else "ask_for_labels"


def monitor_evidence(summary: dict[str, Any]) -> dict[str, Any]:
    """The small part of the monitor summary that travels to ``continuous_training`` as its conf."""
    estimate = summary.get("estimate") or {}
    return {
        "window_id": summary.get("window_id"),
        "status": summary.get("status"),
        "reasons": summary.get("reasons") or [],
        "rows": summary.get("rows"),
        "champion_version": summary.get("champion_version"),
        "estimated_macro_f1": estimate.get("macro_f1"),
        "baseline_macro_f1": estimate.get("baseline_macro_f1"),
        "report_uri": summary.get("report_uri"),
    }


def ask_for_labels(summary: dict[str, Any] | None) -> None:
    """Fail visibly: the window needs action but no labelled batch waits in landing to train on."""
    from airflow.sdk.exceptions import AirflowFailException

    summary = summary or {}
    reasons = "; ".join(summary.get("reasons") or [])
    raise AirflowFailException(
        f"monitoring window {summary.get('window_id')} needs action ({reasons}) but no labelled batch waits in "
        f"landing: label a sample of the captured traffic and drop it there; report: {summary.get('report_uri')}"
    )


def trigger_training(summary: dict[str, Any]) -> None:
    """Start ``continuous_training`` with the window's evidence in its conf, under the run id
    ``monitor__<window>``: a rerun of the window finds that run and starts nothing (never twice for one window).

    Raises the Task SDK's trigger request (what ``TriggerDagRunOperator`` raises), imported here rather than the
    operator at parse time: importing the operator costs the DAG file half a second.
    """
    from airflow.sdk.exceptions import DagRunTriggerException

    evidence = monitor_evidence(summary)
    raise DagRunTriggerException(
        trigger_dag_id="continuous_training",
        dag_run_id=training_run_id(summary),
        conf={"monitor_evidence": evidence},
        logical_date=None,
        reset_dag_run=False,
        skip_when_already_exists=True,
        wait_for_completion=False,
        allowed_states=["success"],
        failed_states=["failed"],
        poke_interval=60,
        deferrable=False,
        note=f"started by monitor_predictions: {'; '.join(evidence['reasons'])[:400]}",
    )


def training_run_id(summary: dict[str, Any]) -> str:
    return f"monitor__{summary.get('window_id')}"
