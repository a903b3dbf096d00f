"""Promote step: apply a decision on a model version (auto, approve, reject or rollback).

The decision comes from the step's params (the ``promote_or_rollback`` DAG's form, or the ``review_challenger`` DAG
once a reviewer decided) and the version's review tags; the moves themselves (promote, reject, rollback), their
audit trail and the review rules live in :mod:`pipelines.registry`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from mlflow.exceptions import MlflowException

from pipelines.registry import (
    APPROVED,
    AUTO,
    CHALLENGER,
    CHAMPION,
    REJECTED,
    TAG_EVAL_PASSED,
    TAG_NEEDS_REVIEW,
    alias_version,
    get_version,
    parse_version,
    promote,
    read_review,
    refuse,
    registry_client,
    reject,
    resolve_policy,
    rollback,
)

if TYPE_CHECKING:
    from pipelines.config import Settings
    from pipelines.context import StepContext


def run(ctx: StepContext) -> dict[str, Any]:
    """Apply a decision on a model version (see :func:`apply_decision`), and name the version's model and its
    MLflow run in the summary, so the Airflow task links to both like the training tasks do."""
    out = apply_decision(ctx)
    return {**out, **_links(ctx.settings, out.get("version") or out.get("champion_after"))}


def _links(settings: Settings, version: Any) -> dict[str, Any]:
    name = settings.registry.model_name
    v = parse_version(version) if version is not None else None
    if v is None:
        return {"model_name": name}
    client = registry_client(settings)
    try:
        mv = client.get_model_version(name, v)
        if not mv.run_id:
            return {"model_name": name}
        exp = client.get_run(mv.run_id).info.experiment_id
    except MlflowException:
        return {"model_name": name}
    return {"model_name": name, "mlflow_run_id": mv.run_id, "mlflow_experiment_id": exp}


class _Decision(NamedTuple):
    """What to apply: the move (approve, reject or rollback), who decided, why, and the review tag to record."""

    action: str
    by: str
    reason: str
    review: str | None


def _parse_action(value: Any) -> str:
    action = str(value or "auto").strip().lower()
    if action == "promote":
        action = "approve"
    if action not in {"auto", "approve", "reject", "rollback"}:
        raise ValueError(f"param action={action!r} must be one of auto, approve, reject, rollback")
    return action


def _auto_decision(
    s: Settings, mv: Any, d: _Decision, *, policy: str, version: str, before: str | None, request: str
) -> _Decision | None:
    """Under action ``auto``: the policy approves a version that passed and needs no review; else the reviewer's
    recorded decision applies; else the version is still pending (None). A recorded approval that does not count
    is refused (raises PromotionRefused)."""
    tags = mv.tags or {}
    decided = read_review(s, mv)
    comment = tags.get(s.registry.review_comment_tag)
    held = tags.get(TAG_NEEDS_REVIEW) == "true"  # the gates asked for a human: auto never approves it
    if decided["state"] is None and policy == AUTO and tags.get(TAG_EVAL_PASSED) == "true" and not held:
        return _Decision("approve", "policy:auto", d.reason or "promotion policy auto: every gate passed", AUTO)
    if decided["state"] is not None:
        action = "approve" if decided["state"] == APPROVED else "reject"
        return _Decision(action, decided["by"], d.reason or comment or f"{decided['state']} in the MLflow UI", None)
    if decided["problem"]:
        refuse(s, version, before, request, decided["problem"])
    return None


def _reviewer_decision(
    s: Settings, mv: Any, d: _Decision, *, version: str, before: str | None, request: str
) -> _Decision:
    """Under approve or reject with no param ``by``: the reviewer recorded on the version is who decided (an
    approval without one is refused: raises PromotionRefused)."""
    name = s.registry.model_name
    tags = mv.tags or {}
    decided = read_review(s, mv)
    comment = tags.get(s.registry.review_comment_tag)
    if d.action == "approve":
        # The review wait passes no `by`: the reviewer's approval on the version is the decision.
        if decided["state"] != APPROVED:
            refuse(
                s,
                version,
                before,
                request,
                decided["problem"]
                or f"param by is required to approve {name} version {version} without a reviewer's approval "
                f"(tags {s.registry.review_tag}=approved and {s.registry.review_by_tag}=<name>)",
            )
        return _Decision("approve", decided["by"], d.reason or comment or "approved in the MLflow UI", None)
    if d.action == "reject" and decided["state"] == REJECTED:
        return d._replace(by=decided["by"], reason=d.reason or comment or "rejected in the MLflow UI")
    return d


def _apply(s: Settings, d: _Decision, version: Any, request: str) -> tuple[Any, str, Any]:
    """Make the move; returns the version moved to, the status and the champion after it."""
    if d.action == "approve":
        out = promote(s, version, by=d.by, reason=d.reason or "approved", request=request, review=d.review)
        return version, "promoted" if out["changed"] else "already_champion", out["champion_after"]
    if d.action == "reject":
        out = reject(s, version, by=d.by, reason=d.reason or "rejected", request=request)
        return version, "rejected", out["champion_after"]
    out = rollback(s, version, by=d.by, reason=d.reason or "rollback", request=request)
    return out["champion_after"], "rolled_back", out["champion_after"]


def apply_decision(ctx: StepContext) -> dict[str, Any]:
    """Apply a decision on a model version.

    Params:
        action: ``auto`` (default: the policy and the review tags decide), ``approve``, ``reject`` or ``rollback``.
        version: the version (default: the challenger; for rollback, the previous champion from the trail).
        by: who decides; ``approve`` needs it unless the version carries a reviewer's approval (``review`` +
            ``review_by`` tags), whose reviewer is then recorded.
        reason: recorded in the audit trail.
        promotion: lowers ``registry.promotion`` to ``manual`` for ``auto`` (never lifts it: see
            :func:`resolve_policy`).
        request_id: the idempotency key of this decision; default the run id.

    Returns:
        ``action``, ``version``, ``status`` (promoted | already_champion | rejected | rolled_back | pending |
        no_challenger), ``champion_before``, ``champion_after``, ``request_id``.

    Raises:
        ValueError: an unknown action, or approve/reject with no version and no challenger.
        PromotionRefused: a refused policy, an approval without a reviewer, a conflicting request.
    """
    s, p = ctx.settings, ctx.params
    name = s.registry.model_name
    action = _parse_action(p.get("action"))
    policy = resolve_policy(s, p.get("promotion"))
    request = str(p.get("request_id") or ctx.run_id).strip()
    client = registry_client(s)
    version = parse_version(p.get("version"))
    if version is None and action != "rollback":
        version = alias_version(client, name, CHALLENGER)
    before = alias_version(client, name, CHAMPION)
    given_by = str(p.get("by") or "").strip()
    d = _Decision(action, given_by or f"dag:{ctx.dag_id or 'cli'}", str(p.get("reason") or "").strip(), APPROVED)
    summary: dict[str, Any] = {"action": action, "version": version, "champion_before": before, "request_id": request}
    if action in {"auto", "approve", "reject"} and version is None:
        if action == "auto":
            return {**summary, "status": "no_challenger", "champion_after": before}
        raise ValueError(f"no version to {action}: model {name!r} has no {CHALLENGER!r} alias; pass param version")

    if action in {"auto", "approve", "reject"}:
        mv = get_version(client, name, version)
        if action == "auto" and version == before:  # e.g. promoted by the policy in register
            return {**summary, "status": "already_champion", "champion_after": before}
        if action == "auto":
            decided = _auto_decision(s, mv, d, policy=policy, version=version, before=before, request=request)
            if decided is None:
                return {**summary, "status": "pending", "champion_after": before}
            d = decided
        elif not given_by:
            d = _reviewer_decision(s, mv, d, version=version, before=before, request=request)

    version, status, after = _apply(s, d, version, request)
    return {**summary, "action": d.action, "version": version, "status": status, "champion_after": after}
