"""Champion moves in the MLflow Model Registry: promote, reject, rollback, and the audit trail of every move.

Aliases are the source of truth: ``champion`` (served) and ``challenger`` (awaiting review). An alias names one
version at a time, and setting it moves it in one call, so there is never a moment with two champions or none.
The legacy stages (Staging / Production / Archived) are deprecated in MLflow 3 but the registry UI still shows
their column, and older tools still read ``models:/<name>/Production``; they are mirrored after every alias move
(new champion Production, every other Production version Archived), so both views tell the same story.

MLflow keeps no history of aliases. Every champion move is appended to an audit trail kept on the registered
model, where the UI shows it: a JSON list in the tag ``mlops.audit`` (read back by :func:`rollback`) and a Markdown
table in the registered model's description. Each entry: ``action`` (promote | rollback | reject), ``version``,
``from``, ``to``, ``when`` (UTC), ``by`` (a person, a DAG or a policy), ``why``, ``request`` (the pipeline run
that asked for it, so a retried task does not add a second entry). Rejections are recorded too (``from`` = ``to`` =
the unchanged champion). The audit timestamp is the one place where this module reads the clock: it records when
a side effect happened, and is not an input to any decision.
"""

from __future__ import annotations

import json
import logging
import warnings
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pipelines.champion import CHALLENGER, CHAMPION

if TYPE_CHECKING:
    from pipelines.config import Settings
    from pipelines.context import StepContext

log = logging.getLogger(__name__)

AUDIT_TAG = "mlops.audit"
APPROVED, REJECTED = "approved", "rejected"
MOVES = ("promote", "rollback")
_MAX_TEXT = 5000  # MLflow's SQL columns for tag values and descriptions hold 5000 characters
_REVIEW_VALUES = {
    "approved": APPROVED,
    "approve": APPROVED,
    "yes": APPROVED,
    "rejected": REJECTED,
    "reject": REJECTED,
    "no": REJECTED,
}


# --- small helpers -------------------------------------------------------------------------------------------
def _client(settings: Settings) -> Any:
    from pipelines.tracking import configure

    return configure(settings)


def _version(version: Any) -> str | None:
    """Normalise a version given as int, str, or an empty/"None" template rendering to a string or None."""
    if version is None:
        return None
    text = str(version).strip()
    if text in {"", "None", "null"}:
        return None
    if not text.isdigit():
        raise ValueError(f"model version {version!r} must be a positive integer")
    return str(int(text))


def _get_version(client: Any, name: str, version: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, version)
    except MlflowException as exc:
        raise ValueError(f"registered model {name!r} has no version {version!r} ({exc.error_code})") from None


def alias_version(client: Any, name: str, alias: str) -> str | None:
    """The version (as a string) that holds ``alias`` on registered model ``name``, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if exc.error_code in {"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"}:
            return None
        raise


def mirror_stage(client: Any, name: str, version: str, stage: str) -> None:
    """Set the legacy stage of a version (a no-op when it is already there)."""
    # Stages are deprecated since MLflow 2.9 (FutureWarning) but still shown in the registry UI; see module doc.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if client.get_model_version(name, version).current_stage != stage:
            client.transition_model_version_stage(name, version, stage, archive_existing_versions=False)


def _now(when: str | None) -> str:
    return when or datetime.now(UTC).isoformat(timespec="seconds")


def read_audit(settings: Settings) -> list[dict[str, Any]]:
    """The audit trail of the registered model, oldest first (empty when there is none)."""
    from mlflow.exceptions import MlflowException

    try:
        tags = _client(settings).get_registered_model(settings.registry.model_name).tags
    except MlflowException:
        return []
    raw = tags.get(AUDIT_TAG)
    return json.loads(raw) if raw else []


def _write_audit(client: Any, settings: Settings, entries: list[dict[str, Any]]) -> None:
    name = settings.registry.model_name
    kept = entries[-settings.registry.audit_max_entries :]
    text = json.dumps(kept, separators=(",", ":"))
    while len(text) > _MAX_TEXT and len(kept) > 1:
        kept = kept[1:]
        text = json.dumps(kept, separators=(",", ":"))
    client.set_registered_model_tag(name, AUDIT_TAG, text)
    client.update_registered_model(name, description=_audit_markdown(settings, client, entries))


def _audit_markdown(settings: Settings, client: Any, entries: list[dict[str, Any]]) -> str:
    name = settings.registry.model_name
    champion = alias_version(client, name, CHAMPION)
    challenger = alias_version(client, name, CHALLENGER)
    head = [
        f"# {name}",
        "",
        f"Champion (alias `{CHAMPION}`, stage Production): **{'v' + champion if champion else 'none'}**. "
        f"Challenger (alias `{CHALLENGER}`, stage Staging): {'v' + challenger if challenger else 'none'}.",
        "",
        f"To review a challenger, set the tag `{settings.registry.review_tag}` = `approved` or `rejected` on its "
        "version. The machine-readable trail is the JSON tag `mlops.audit` on this registered model.",
        "",
        "## Champion history (newest first)",
        "",
        "| when (UTC) | action | version | from | to | by | why |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    rows = []
    for e in reversed(entries):
        why = str(e.get("why", "")).replace("|", "/").replace("\n", " ")[:200]
        rows.append(
            f"| {e['when']} | {e['action']} | v{e['version']} | {('v' + e['from']) if e.get('from') else '–'} "
            f"| {('v' + e['to']) if e.get('to') else '–'} | {e.get('by', '')} | {why} |"
        )
    text = "\n".join(head)
    for row in rows:
        if len(text) + len(row) + 1 > _MAX_TEXT:
            break
        text += "\n" + row
    return text + "\n"


def _last_move(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((e for e in reversed(entries) if e["action"] in MOVES), None)


def _done_before(entries: list[dict[str, Any]], action: str, request: str | None) -> dict[str, Any] | None:
    if not request:
        return None
    return next((e for e in reversed(entries) if e.get("request") == request and e["action"] == action), None)


def review_state(settings: Settings, version: Any) -> str | None:
    """The reviewer's decision on a version, from its ``review`` tag.

    Args:
        settings: the settings (registry section names the model and the tag).
        version: the model version.

    Returns:
        ``"approved"``, ``"rejected"``, or None while no decision is recorded (or the tag holds something else).

    Raises:
        ValueError: the version does not exist.
    """
    v = _version(version)
    if v is None:
        raise ValueError("review_state needs a model version")
    mv = _get_version(_client(settings), settings.registry.model_name, v)
    value = str(mv.tags.get(settings.registry.review_tag, "")).strip().lower()
    return _REVIEW_VALUES.get(value)


# --- the champion moves --------------------------------------------------------------------------------------
def _make_champion(
    settings: Settings, version: str, action: str, by: str, reason: str, when: str | None, request: str | None
) -> dict[str, Any]:
    client = _client(settings)
    name = settings.registry.model_name
    mv = _get_version(client, name, version)
    if str(mv.status) not in {"READY", "ModelVersionStatus.READY"}:
        raise ValueError(f"{name} version {version} is {mv.status}, not READY; it cannot become champion")
    entries = read_audit(settings)
    before = alias_version(client, name, CHAMPION)
    changed = before != version
    if changed:
        client.set_registered_model_alias(name, CHAMPION, version)  # one call: the alias moves atomically
    # Mirror the stages: exactly one Production version, the champion.
    mirror_stage(client, name, version, "Production")
    for other in client.search_model_versions(f"name='{name}'"):
        if str(other.version) != version and other.current_stage == "Production":
            mirror_stage(client, name, str(other.version), "Archived")
    if alias_version(client, name, CHALLENGER) == version:
        client.delete_registered_model_alias(name, CHALLENGER)
    if not mv.tags.get(settings.registry.review_tag):
        client.set_model_version_tag(name, version, settings.registry.review_tag, APPROVED)
    last = _last_move(entries)
    # A retry after a crash between the alias move and the audit write still records the move once.
    if (last is None or last.get("to") != version) and not _done_before(entries, action, request):
        entry = {
            "action": action,
            "version": version,
            "from": before if changed else (last or {}).get("to"),
            "to": version,
            "when": _now(when),
            "by": by,
            "why": reason,
            "request": request,
        }
        entries.append(entry)
        client.set_model_version_tag(name, version, "mlops.champion_since", entry["when"])
        _write_audit(client, settings, entries)
        log.info("%s: %s v%s -> v%s by %s: %s", action, name, entry["from"], version, by, reason)
    elif changed:
        _write_audit(client, settings, entries)
    return {"champion_before": before, "champion_after": version, "changed": changed}


def promote(
    settings: Settings, version: Any, by: str, reason: str, *, when: str | None = None, request: str | None = None
) -> dict[str, Any]:
    """Make ``version`` the champion: alias ``champion`` moves to it, it goes to Production, the previous
    champion to Archived, and the ``challenger`` alias is removed if it pointed at it. Safe to repeat.

    Args:
        settings: the settings.
        version: the model version to promote.
        by: who or what decided (a user, ``policy:auto``, a DAG).
        reason: why; recorded in the audit trail.
        when: the audit timestamp (ISO 8601, UTC); default now.
        request: the pipeline run asking, so that a retried request adds no second audit entry.

    Returns:
        ``champion_before``, ``champion_after``, ``changed``.

    Raises:
        ValueError: the version does not exist, is not READY, or was rejected by a reviewer.
    """
    v = _version(version)
    if v is None:
        raise ValueError("promote needs a model version")
    if (
        review_state(settings, v) == REJECTED
        and alias_version(_client(settings), settings.registry.model_name, CHAMPION) != v
    ):
        raise ValueError(
            f"{settings.registry.model_name} version {v} was rejected (tag {settings.registry.review_tag}="
            f"rejected); remove or change that tag in the MLflow UI before promoting it"
        )
    return _make_champion(settings, v, "promote", by, reason, when, request)


def reject(
    settings: Settings, version: Any, by: str, reason: str, *, when: str | None = None, request: str | None = None
) -> dict[str, Any]:
    """Reject a challenger: it goes to Archived, loses the ``challenger`` alias; the champion is untouched.

    Args:
        settings: the settings.
        version: the version to reject.
        by: who or what decided.
        reason: why; recorded in the audit trail and in the version's ``review_comment`` tag if none is set.
        when: the audit timestamp; default now.
        request: the pipeline run asking (idempotency of the audit entry).

    Returns:
        ``champion_before``, ``champion_after`` (the same), ``changed`` (False).

    Raises:
        ValueError: the version does not exist or is the champion (use promote or rollback to replace it).
    """
    v = _version(version)
    if v is None:
        raise ValueError("reject needs a model version")
    client = _client(settings)
    name, reg = settings.registry.model_name, settings.registry
    mv = _get_version(client, name, v)
    champion = alias_version(client, name, CHAMPION)
    if champion == v:
        raise ValueError(
            f"{name} version {v} is the champion and cannot be rejected; promote another version or roll back"
        )
    if str(mv.tags.get(reg.review_tag, "")).strip().lower() not in {"rejected", "reject", "no"}:
        client.set_model_version_tag(name, v, reg.review_tag, REJECTED)
    if not mv.tags.get(reg.review_comment_tag) and reason:
        client.set_model_version_tag(name, v, reg.review_comment_tag, reason[:_MAX_TEXT])
    mirror_stage(client, name, v, "Archived")
    if alias_version(client, name, CHALLENGER) == v:
        client.delete_registered_model_alias(name, CHALLENGER)
    if "mlops.rejected_at" not in mv.tags:
        entries = read_audit(settings)
        if not _done_before(entries, "reject", request):
            entry = {
                "action": "reject",
                "version": v,
                "from": champion,
                "to": champion,
                "when": _now(when),
                "by": by,
                "why": reason,
                "request": request,
            }
            entries.append(entry)
            _write_audit(client, settings, entries)
            client.set_model_version_tag(name, v, "mlops.rejected_at", entry["when"])
            log.info("reject: %s v%s by %s: %s (champion stays v%s)", name, v, by, reason, champion)
    return {"champion_before": champion, "champion_after": champion, "changed": False}


def rollback(
    settings: Settings,
    version: Any = None,
    *,
    by: str,
    reason: str,
    when: str | None = None,
    request: str | None = None,
) -> dict[str, Any]:
    """Make an earlier champion the champion again (its served model, fp32 weights and drift reference with it).

    Args:
        settings: the settings.
        version: the version to restore; None picks the champion before the current one from the audit trail.
        by: who or what decided.
        reason: why.
        when: the audit timestamp; default now.
        request: the pipeline run asking: a retried request resolves to the same target and adds no entry.
            Two separate requests without a version each step back once (so the second returns to where the
            first started).

    Returns:
        ``champion_before``, ``champion_after``, ``changed``.

    Raises:
        ValueError: there is no earlier champion in the trail, or ``version`` was never champion.
    """
    name = settings.registry.model_name
    entries = read_audit(settings)
    target = _version(version)
    done = _done_before(entries, "rollback", request)
    if target is None and done:
        target = done["to"]
    if target is None:
        current = alias_version(_client(settings), name, CHAMPION)
        move = next((e for e in reversed(entries) if e["action"] in MOVES and e.get("to") == current), None)
        if move is None or not move.get("from"):
            raise ValueError(
                f"no earlier champion of {name!r} in the audit trail (champion: v{current}); pass the version "
                "to roll back to"
            )
        target = move["from"]
    if not any(e["action"] in MOVES and e.get("to") == target for e in entries):
        raise ValueError(
            f"{name} version {target} was never champion according to the audit trail; rollback restores an "
            "earlier champion (use promote for a new version)"
        )
    return _make_champion(settings, target, "rollback", by, reason, when, request)


# --- the step ------------------------------------------------------------------------------------------------
def run(ctx: StepContext) -> dict[str, Any]:
    """Apply a decision on a model version.

    Params:
        action: ``auto`` (default: the policy and the review tag decide), ``approve``, ``reject`` or ``rollback``.
        version: the version (default: the challenger; for rollback, the previous champion from the trail).
        by, reason: recorded in the audit trail.
        promotion: overrides ``registry.promotion`` (manual | auto) for ``auto``.

    Returns:
        ``action``, ``version``, ``status`` (promoted | already_champion | rejected | rolled_back | pending |
        no_challenger),
        ``champion_before``, ``champion_after``.

    Raises:
        ValueError: an unknown action, or approve/reject with no version and no challenger.
    """
    s, p = ctx.settings, ctx.params
    name, reg = s.registry.model_name, s.registry
    action = str(p.get("action") or "auto").strip().lower()
    if action == "promote":
        action = "approve"
    if action not in {"auto", "approve", "reject", "rollback"}:
        raise ValueError(f"param action={action!r} must be one of auto, approve, reject, rollback")
    client = _client(s)
    version = _version(p.get("version"))
    if version is None and action != "rollback":
        version = alias_version(client, name, CHALLENGER)
    before = alias_version(client, name, CHAMPION)
    by = str(p.get("by") or f"dag:{ctx.dag_id or 'cli'}")
    reason = str(p.get("reason") or "").strip()
    summary: dict[str, Any] = {"action": action, "version": version, "champion_before": before}

    if action == "auto":
        if version is None:
            return {**summary, "status": "no_challenger", "champion_after": before}
        policy = str(p.get("promotion") or reg.promotion)
        tags = _get_version(client, name, version).tags
        state = review_state(s, version)
        held = tags.get("eval.needs_review") == "true"  # the gates asked for a human: auto never approves it
        if state is None and policy == "auto" and tags.get("eval.passed") == "true" and not held:
            action, by, reason = "approve", "policy:auto", reason or "promotion policy auto: every gate passed"
        elif state == APPROVED:
            comment = tags.get(reg.review_comment_tag)
            action, by = "approve", f"reviewer (tag {reg.review_tag}={APPROVED})"
            reason = reason or comment or "approved in the MLflow UI"
        elif state == REJECTED:
            comment = tags.get(reg.review_comment_tag)
            action, by = "reject", f"reviewer (tag {reg.review_tag}={REJECTED})"
            reason = reason or comment or "rejected in the MLflow UI"
        else:
            return {**summary, "status": "pending", "champion_after": before}

    if action in {"approve", "reject"} and version is None:
        raise ValueError(f"no version to {action}: model {name!r} has no {CHALLENGER!r} alias; pass param version")
    if action == "approve":
        out = promote(s, version, by=by, reason=reason or "approved", request=ctx.run_id)
        status = "promoted" if out["changed"] else "already_champion"
    elif action == "reject":
        out = reject(s, version, by=by, reason=reason or "rejected", request=ctx.run_id)
        status = "rejected"
    else:
        out = rollback(s, version, by=by, reason=reason or "rollback", request=ctx.run_id)
        version, status = out["champion_after"], "rolled_back"
    return {**summary, "action": action, "version": version, "status": status, "champion_after": out["champion_after"]}
