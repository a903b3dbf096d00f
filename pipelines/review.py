"""The review of a staged challenger: where it stands, and who decided first.

A challenger is *pending* while it holds the ``challenger`` alias, is not archived and carries no decision. Two
places may decide on it, and the first decision wins:

- the MLflow version page: the tags ``review`` = ``approved`` | ``rejected`` and ``review_by`` = the reviewer (see
  :func:`pipelines.registry.read_review`: an approval without a reviewer does not count);
- Airflow's Required Actions: the ``review_challenger`` DAG's Human-in-the-loop task. Its response is written to
  the same tags (``review_by`` = the responding Airflow user, ``review_source`` = ``airflow``), unless the tags
  already hold a decision: then the decision in MLflow stands and the Airflow response is only logged.

The version tags are therefore the one record of the decision; both views show it (the Airflow request is answered
from the tags when the decision came from MLflow).

A newer challenger supersedes every older pending one (:func:`pipelines.registry.supersede_older`, called by the
register step): its review ends with the state ``superseded``.

No Airflow import here: the Airflow side lives in ``plugins/mlops_airflow/review.py``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pipelines.registry import (
    APPROVED,
    CHALLENGER,
    CHAMPION,
    MAX_TEXT,
    PIPELINE_REVIEWER,
    REJECTED,
    SUPERSEDED,
    SUPERSEDED_BY_TAG,
    alias_version,
    get_version,
    parse_version,
    read_review,
    registry_client,
)

if TYPE_CHECKING:
    from pipelines.config import Settings

log = logging.getLogger(__name__)

#: Review states of a version (the ``state`` of :func:`review_status`; ``approved``, ``rejected`` and ``superseded``
#: are also the values of the review tag, from :mod:`pipelines.registry`).
PENDING, CHAMPION_STATE, CLOSED = "pending", "champion", "closed"
#: Version tag written here (beside ``registry.review_tag`` / ``review_by_tag`` / ``review_comment_tag``).
REVIEW_SOURCE_TAG = "review_source"


def review_status(settings: Settings, version: Any, client: Any = None) -> dict[str, Any]:
    """Where the review of ``version`` stands.

    Returns:
        ``state``: ``pending`` (holds the challenger alias, no decision yet), ``approved`` / ``rejected`` (a decision
        that counts is in the tags), ``superseded``, ``champion`` (already promoted) or ``closed`` (archived or no
        longer the challenger without a decision); ``by`` (the reviewer, or the superseding version for
        ``superseded``), ``comment``, ``source`` (``mlflow`` or ``airflow``: where the decision was made), ``problem``
        (why a recorded approval does not count) and ``why`` (one line for logs and the Airflow request).

    Raises:
        ValueError: the version does not exist.
    """
    v = parse_version(version)
    if v is None:
        raise ValueError("review_status needs a model version")
    client = registry_client(settings, client)
    name, reg = settings.registry.model_name, settings.registry
    mv = get_version(client, name, v)
    tags = mv.tags or {}
    out: dict[str, Any] = {
        "version": v,
        "by": None,
        "comment": tags.get(reg.review_comment_tag) or None,
        "source": tags.get(REVIEW_SOURCE_TAG) or "mlflow",
        "problem": None,
    }
    if str(tags.get(reg.review_tag, "")).strip().lower() == SUPERSEDED:
        newer = tags.get(SUPERSEDED_BY_TAG) or "?"
        return {**out, "state": SUPERSEDED, "by": newer, "why": f"superseded by version {newer}; nothing to review"}
    if alias_version(client, name, CHAMPION) == v:
        return {**out, "state": CHAMPION_STATE, "why": f"version {v} is already the champion"}
    decided = read_review(settings, mv)
    if decided["state"] is not None:
        state = decided["state"]
        return {**out, "state": state, "by": decided["by"], "why": f"{state} by {decided['by']} ({out['source']})"}
    if mv.current_stage == "Archived":
        return {**out, "state": CLOSED, "why": f"version {v} is archived; nothing to review"}
    if alias_version(client, name, CHALLENGER) != v:
        return {**out, "state": CLOSED, "why": f"version {v} is no longer the {CHALLENGER}; nothing to review"}
    return {**out, "state": PENDING, "problem": decided["problem"], "why": "no decision yet"}


def first_decision(recorded: dict[str, Any], response: dict[str, Any] | None) -> dict[str, Any]:
    """Combine what the version tags say with a response from Airflow: the first decision wins.

    Args:
        recorded: :func:`review_status` of the version (the tags are the record of the decision).
        response: the Airflow reviewer's response, ``decision`` (approved | rejected), ``by`` (the Airflow user),
            ``comment``; or None.

    Returns:
        ``state``, ``by``, ``comment``, ``source``, ``write`` (True: the Airflow response is the first decision and
        must be written to the tags) and ``note`` (why an Airflow response was not applied, or None).
    """
    keep = {k: recorded.get(k) for k in ("state", "by", "comment", "source")}
    if recorded["state"] != PENDING:
        note = None
        if response is not None:
            note = (
                f"the Airflow response {response.get('decision')} by {response.get('by')} came after the decision "
                f"recorded in MLflow ({recorded.get('why')}); the first decision stands"
            )
        return {**keep, "write": False, "note": note}
    if response is None:
        return {**keep, "write": False, "note": None}
    decision = str(response.get("decision") or "").strip().lower()
    if decision not in {APPROVED, REJECTED}:
        raise ValueError(f"an Airflow review response must be approved or rejected, not {decision!r}")
    by = str(response.get("by") or "").strip()
    if not by:
        return {**keep, "write": False, "note": "the Airflow response names no user; it does not count"}
    if by.lower() in {PIPELINE_REVIEWER, "policy:auto"}:
        return {**keep, "write": False, "note": f"the Airflow user {by!r} is reserved for the pipeline's records"}
    return {
        "state": decision,
        "by": by,
        "comment": str(response.get("comment") or "").strip() or None,
        "source": "airflow",
        "write": True,
        "note": None,
    }


def record_response(
    settings: Settings, version: Any, decision: str, by: str, comment: str | None = None, client: Any = None
) -> dict[str, Any]:
    """Apply an Airflow reviewer's response to ``version``: written to the review tags when it is the first
    decision; otherwise the recorded decision stands. Returns :func:`first_decision`'s result."""
    client = registry_client(settings, client)
    name, reg = settings.registry.model_name, settings.registry
    recorded = review_status(settings, version, client)
    settled = first_decision(recorded, {"decision": decision, "by": by, "comment": comment})
    if settled["note"]:
        log.warning("review of %s version %s: %s", name, recorded["version"], settled["note"])
    if settled["write"]:
        v = recorded["version"]
        if settled["comment"]:
            client.set_model_version_tag(name, v, reg.review_comment_tag, settled["comment"][:MAX_TEXT])
        client.set_model_version_tag(name, v, REVIEW_SOURCE_TAG, "airflow")
        client.set_model_version_tag(name, v, reg.review_by_tag, settled["by"])
        client.set_model_version_tag(name, v, reg.review_tag, settled["state"])  # last: the decision itself
        log.info("review of %s version %s: %s by %s in Airflow", name, v, settled["state"], settled["by"])
    return settled
