"""The review of a staged challenger: where it stands, who decided first, and superseding a stale one.

A challenger is *pending* while it holds the ``challenger`` alias, is not archived and carries no decision. Two
places may decide on it, and the first decision wins:

- the MLflow version page: the tags ``review`` = ``approved`` | ``rejected`` and ``review_by`` = the reviewer (see
  :func:`pipelines.promote.read_review`: an approval without a reviewer does not count);
- Airflow's Required Actions: the ``review_challenger`` DAG's Human-in-the-loop task. Its response is written to
  the same tags (``review_by`` = the responding Airflow user, ``review_source`` = ``airflow``), unless the tags
  already hold a decision: then the decision in MLflow stands and the Airflow response is only logged.

The version tags are therefore the one record of the decision; both views show it (the Airflow request is answered
from the tags when the decision came from MLflow).

A newer challenger supersedes every older pending one (:func:`supersede_older`, called by the register step): the
older version gets ``review`` = ``superseded``, ``review_by`` = ``pipeline``, ``superseded_by`` = the newer version,
the status line "superseded" at the top of its description, and the stage Archived; its review wait ends. So there are never two
pending challengers. Superseding is not a champion move and writes no audit-trail entry (the trail keeps only the
last ``registry.audit_max_entries`` entries, and rollback reads its champion moves from it).

No Airflow import here: the Airflow side lives in ``plugins/mlops_airflow/review.py``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pipelines.champion import CHALLENGER, CHAMPION

if TYPE_CHECKING:
    from pipelines.config import Settings

log = logging.getLogger(__name__)

#: Review states of a version (the ``state`` of :func:`review_status`).
PENDING, APPROVED, REJECTED, SUPERSEDED, CHAMPION_STATE, CLOSED = (
    "pending",
    "approved",
    "rejected",
    "superseded",
    "champion",
    "closed",
)
#: Version tags written here (beside ``registry.review_tag`` / ``review_by_tag`` / ``review_comment_tag``).
SUPERSEDED_BY_TAG = "superseded_by"
REVIEW_SOURCE_TAG = "review_source"
_MAX_TEXT = 5000  # MLflow's SQL columns for tag values and descriptions


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _client(settings: Settings, client: Any = None) -> Any:
    if client is not None:
        return client
    from pipelines.tracking import configure

    return configure(settings)


def is_pending(settings: Settings, mv: Any, champion: str | None) -> bool:
    """Whether a version (from a registry listing) still awaits its first review: registered by the pipeline, in
    stage None or Staging, not the champion, and no decision that counts in its tags (an approval that names no
    reviewer does not count; ``review=auto`` and ``review=superseded`` are closed)."""
    from pipelines.promote import AUTO, read_review
    from pipelines.tracking import TAG_PIPELINE_RUN

    tags = mv.tags or {}
    raw = str(tags.get(settings.registry.review_tag, "")).strip().lower()
    return (
        mv.current_stage in {"None", "Staging"}
        and TAG_PIPELINE_RUN in tags
        and str(mv.version) != champion
        and raw not in {AUTO, SUPERSEDED}
        and read_review(settings, mv)["state"] is None
    )


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
    from pipelines.promote import _get_version, _version, alias_version, read_review

    v = _version(version)
    if v is None:
        raise ValueError("review_status needs a model version")
    client = _client(settings, client)
    name, reg = settings.registry.model_name, settings.registry
    mv = _get_version(client, name, v)
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
    from pipelines.promote import PIPELINE_REVIEWER

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
    client = _client(settings, client)
    name, reg = settings.registry.model_name, settings.registry
    recorded = review_status(settings, version, client)
    settled = first_decision(recorded, {"decision": decision, "by": by, "comment": comment})
    if settled["note"]:
        log.warning("review of %s version %s: %s", name, recorded["version"], settled["note"])
    if settled["write"]:
        v = recorded["version"]
        if settled["comment"]:
            client.set_model_version_tag(name, v, reg.review_comment_tag, settled["comment"][:_MAX_TEXT])
        client.set_model_version_tag(name, v, REVIEW_SOURCE_TAG, "airflow")
        client.set_model_version_tag(name, v, reg.review_by_tag, settled["by"])
        client.set_model_version_tag(name, v, reg.review_tag, settled["state"])  # last: the decision itself
        log.info("review of %s version %s: %s by %s in Airflow", name, v, settled["state"], settled["by"])
    return settled


def set_version_status(
    settings: Settings,
    version: Any,
    status: str,
    *,
    pending: bool = False,
    client: Any = None,
    policy: str | None = None,
) -> str:
    """Rewrite the top of a version's description: a neutral title, ``status`` (a :func:`status_line`), and the
    "how to decide" block only while the review is ``pending``; the evaluation report below is kept. Returns the
    description written (nothing is written when it is unchanged)."""
    from pipelines.report import compose_version_description, how_to_decide, report_part

    client = _client(settings, client)
    name, reg = settings.registry.model_name, settings.registry
    mv = client.get_model_version(name, str(version))
    how = None
    if pending:
        how = how_to_decide(
            policy=policy,
            needs_review=(mv.tags or {}).get("eval.needs_review") == "true",
            review_tag=reg.review_tag,
            review_by_tag=reg.review_by_tag,
            review_comment_tag=reg.review_comment_tag,
        )
    text = compose_version_description(name, str(mv.version), status, report_part(mv.description), how=how)
    if text != (mv.description or ""):
        client.update_model_version(name, str(mv.version), description=text)
    return text


def supersede(settings: Settings, version: Any, newer: Any, client: Any = None, when: str | None = None) -> bool:
    """Mark the pending ``version`` superseded by ``newer``: tags, a status line on its description, stage
    Archived, and no ``challenger`` alias. Idempotent; a version with a decision or the champion is left alone.

    Returns:
        True when this call marked it (False: already superseded, decided, or the champion).
    """
    from pipelines.promote import PIPELINE_REVIEWER, REVIEW_AT_TAG, alias_version, mirror_stage
    from pipelines.report import status_line

    client = _client(settings, client)
    name, reg = settings.registry.model_name, settings.registry
    v, newer = str(version), str(newer)
    mv = client.get_model_version(name, v)
    tags = mv.tags or {}
    current = str(tags.get(reg.review_tag, "")).strip().lower()
    if current != SUPERSEDED and not is_pending(settings, mv, alias_version(client, name, CHAMPION)):
        return False
    if alias_version(client, name, CHAMPION) == v:
        return False
    marked = current != SUPERSEDED
    if marked:
        at = when or _now()
        client.set_model_version_tag(name, v, SUPERSEDED_BY_TAG, newer)
        client.set_model_version_tag(name, v, reg.review_by_tag, PIPELINE_REVIEWER)
        client.set_model_version_tag(name, v, REVIEW_AT_TAG, at)
        client.set_model_version_tag(name, v, reg.review_tag, SUPERSEDED)
        set_version_status(
            settings,
            v,
            status_line(
                "superseded",
                f"by version {newer} on {at} (UTC): a newer challenger was staged before anyone reviewed this one. "
                "Its review is closed and it is archived; the report below is kept for the record.",
            ),
            client=client,
        )
        log.info("review: %s version %s superseded by version %s", name, v, newer)
    if alias_version(client, name, CHALLENGER) == v:
        client.delete_registered_model_alias(name, CHALLENGER)
    mirror_stage(client, name, v, "Archived")
    return marked


def supersede_older(settings: Settings, newest: Any, client: Any = None) -> list[str]:
    """Supersede every pending version older than ``newest`` (and archive any superseded version a racing
    register put back in Staging). Returns the versions this call marked."""
    from pipelines.promote import alias_version

    client = _client(settings, client)
    name, reg = settings.registry.model_name, settings.registry
    champion = alias_version(client, name, CHAMPION)
    marked = []
    for mv in sorted(client.search_model_versions(f"name='{name}'"), key=lambda m: int(m.version)):
        if int(mv.version) >= int(newest):
            continue
        stale = str((mv.tags or {}).get(reg.review_tag, "")).strip().lower() == SUPERSEDED
        if is_pending(settings, mv, champion) or (stale and mv.current_stage != "Archived"):
            if supersede(settings, mv.version, (mv.tags or {}).get(SUPERSEDED_BY_TAG) or newest, client):
                marked.append(str(mv.version))
    return marked
