"""The MLflow Model Registry as the loop uses it: its vocabulary (aliases, tags, review values), the champion
moves (promote, reject, rollback) with their audit trail, the review record on a version, and superseding a stale
challenger. The register and promote steps and the review wait all go through this module, never through each
other.

Aliases are the source of truth: ``champion`` (served) and ``challenger`` (awaiting review). An alias names one
version at a time, and setting it moves it in one call, so there is never a moment with two champions or none.
The legacy stages (Staging / Production / Archived) are deprecated in MLflow 3 but the registry UI still shows
their column, and older tools still read ``models:/<name>/Production``; they are mirrored after every alias move
(new champion Production, every other Production version Archived), so both views tell the same story.

MLflow keeps no history of aliases. Every champion move is appended to an audit trail kept on the registered
model, where the UI shows it: a JSON list in the tag ``mlops.audit`` (read back by :func:`rollback`) and a Markdown
table in the registered model's description. Each entry: ``action`` (promote | rollback | reject | refuse),
``version``, ``from``, ``to``, ``when`` (UTC), ``by`` (a person, a DAG or a policy), ``why``, ``request`` and
``state`` (requested | done | abandoned). The entry is written with ``state=requested`` *before* the alias moves
and marked ``done`` after, keyed by its request id (default: the pipeline run id): a retry of the same request
finds it, finishes an interrupted move, and never moves twice. An entry is merged into the trail as stored at the
time of writing and read back (:func:`_store_entry`), so a mover with an older copy does not drop another's entry.
The audit timestamp and the time a challenger is superseded are the only places where this module reads the clock:
they record when a side effect happened, and are not an input to any decision.

Review (version tags): a reviewer sets ``review`` = ``approved`` | ``rejected`` and names themselves in
``review_by`` (``registry.require_reviewer``: an approval without a reviewer does not count). The pipeline never
writes ``approved`` for itself: under the ``auto`` policy it writes ``review=auto``, ``review_by=pipeline`` and
``review_evidence`` (the gate tags it relied on). MLflow does not record who set a tag, so ``review_by`` is the
reviewer's claim; the audit trail records it with the time the pipeline acted on it.

A newer challenger supersedes every older pending one (:func:`supersede_older`, called by the register step): the
older version gets ``review`` = ``superseded``, ``review_by`` = ``pipeline``, ``superseded_by`` = the newer version,
the status line "superseded" at the top of its description, and the stage Archived; its review wait ends. So there
are never two pending challengers. Superseding is not a champion move and writes no audit-trail entry (the trail
keeps only the last ``registry.audit_max_entries`` entries, and rollback reads its champion moves from it).

MLflow is imported inside the functions that call it: an Airflow worker imports this module only to check a run's
``promotion`` param with :func:`resolve_policy` (``mlops_airflow.params.split_params``, in a step task's
``execute``), and MLflow takes seconds to import.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import socket
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from pipelines.errors import PromotionRefused
from pipelines.io.storage import exclusive
from pipelines.io.tracking import TAG_PIPELINE_RUN, configure
from pipelines.report import compose_version_description, how_to_decide, report_part, status_line

if TYPE_CHECKING:
    from pipelines.config import Settings

log = logging.getLogger(__name__)

#: Aliases: the served version, and the newest version awaiting review.
CHAMPION = "champion"
CHALLENGER = "challenger"
#: Registered-model tag: the audit trail of champion moves (a JSON list).
AUDIT_TAG = "mlops.audit"
#: Values of the review tag (``registry.review_tag``) on a version.
APPROVED, REJECTED, AUTO, SUPERSEDED = "approved", "rejected", "auto", "superseded"
PIPELINE_REVIEWER = "pipeline"  # review_by of the pipeline's own records (policy auto); never a reviewer's name
#: Version tags (beside ``registry.review_tag`` / ``review_by_tag`` / ``review_comment_tag``).
REVIEW_EVIDENCE_TAG = "review_evidence"
REVIEW_AT_TAG = "review_at"
SUPERSEDED_BY_TAG = "superseded_by"
#: Version tags written by register and read by the policy and the review wait: a version that needs a human
#: review is never promoted by the policy.
TAG_NEEDS_REVIEW = "eval.needs_review"
#: "true" when every gate passed (the policy ``auto`` promotes only such a version); written by register.
TAG_EVAL_PASSED = "eval.passed"
#: The version's macro-F1 on its evaluation set: the baseline of the drift and monitor steps' quality checks.
QUALITY_TAG = "eval.macro_f1"
TAG_REVIEW_REASONS = "eval.review_reasons"
#: Optional version tag: the tree_digest of the version's bundle, checked against every download
#: (:mod:`pipelines.champion`).
TAG_BUNDLE_DIGEST = "mlops.bundle_sha256"
MOVES = ("promote", "rollback")
POLICIES = ("manual", "auto")
MAX_TEXT = 5000  # MLflow's SQL columns for tag values and descriptions hold 5000 characters
_REVIEW_VALUES = {
    "approved": APPROVED,
    "approve": APPROVED,
    "yes": APPROVED,
    "rejected": REJECTED,
    "reject": REJECTED,
    "no": REJECTED,
}
#: MLflow's error codes for an alias, version or model that does not exist.
_NOT_FOUND = {"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"}


# --- small helpers -------------------------------------------------------------------------------------------
def registry_client(settings: Settings, client: Any = None) -> Any:
    """``client`` when given, else an ``MlflowClient`` on the configured tracking and registry store."""
    return client if client is not None else configure(settings)


def parse_version(version: Any) -> str | None:
    """Normalise a version given as int, str, or an empty/"None" template rendering to a string or None.

    Raises:
        ValueError: the version is not a positive integer.
    """
    if version is None:
        return None
    text = str(version).strip()
    if text in {"", "None", "null"}:
        return None
    if not text.isdigit():
        raise ValueError(f"model version {version!r} must be a positive integer")
    return str(int(text))


def get_version(client: Any, name: str, version: str) -> Any:
    """The ``ModelVersion`` ``version`` of registered model ``name``.

    Raises:
        ValueError: there is no such version (or model); the message names both.
    """
    from mlflow.exceptions import MlflowException  # lazy: see the module doc

    try:
        return client.get_model_version(name, version)
    except MlflowException as exc:
        raise ValueError(f"registered model {name!r} has no version {version!r} ({exc.error_code})") from None


def _named_version(settings: Settings, version: Any, what: str) -> tuple[str, Any, Any]:
    """(the version number, the registry client, the ``ModelVersion``) for a caller ``what`` that needs one; a
    ValueError when ``version`` names none or it does not exist."""
    v = parse_version(version)
    if v is None:
        raise ValueError(f"{what} needs a model version")
    client = registry_client(settings)
    return v, client, get_version(client, settings.registry.model_name, v)


def version_by_alias(client: Any, name: str, alias: str) -> Any | None:
    """The ``ModelVersion`` holding ``alias`` on registered model ``name``, or None when there is none (or no
    registered model)."""
    from mlflow.exceptions import MlflowException  # lazy: see the module doc

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in _NOT_FOUND:
            return None
        raise


def alias_version(client: Any, name: str, alias: str) -> str | None:
    """The version (as a string) that holds ``alias`` on registered model ``name``, or None."""
    mv = version_by_alias(client, name, alias)
    return None if mv is None else str(mv.version)


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
    from mlflow.exceptions import MlflowException  # lazy: see the module doc

    try:
        tags = registry_client(settings).get_registered_model(settings.registry.model_name).tags
    except MlflowException:
        return []
    raw = tags.get(AUDIT_TAG)
    return json.loads(raw) if raw else []


def _write_audit(client: Any, settings: Settings, entries: list[dict[str, Any]]) -> None:
    name = settings.registry.model_name
    kept = entries[-settings.registry.audit_max_entries :]
    text = json.dumps(kept, separators=(",", ":"))
    while len(text) > MAX_TEXT and len(kept) > 1:
        kept = kept[1:]
        text = json.dumps(kept, separators=(",", ":"))
    client.set_registered_model_tag(name, AUDIT_TAG, text)
    client.update_registered_model(name, description=_audit_markdown(settings, client, entries))


def version_url(settings: Settings, version: Any) -> str:
    """The model version's page in the MLflow UI (its description holds the gate table: the evidence)."""
    return f"{settings.mlflow.ui_url.rstrip('/')}/#/models/{settings.registry.model_name}/versions/{version}"


def _cell(value: Any, limit: int = 160) -> str:
    return str(value or "").replace("|", "/").replace("\n", " ").strip()[:limit]


def _audit_markdown(settings: Settings, client: Any, entries: list[dict[str, Any]]) -> str:
    name, reg = settings.registry.model_name, settings.registry
    champion = alias_version(client, name, CHAMPION)
    challenger = alias_version(client, name, CHALLENGER)
    champ = f"[version {champion}]({version_url(settings, champion)})" if champion else "none yet"
    chall = f"[version {challenger}]({version_url(settings, challenger)})" if challenger else "none"
    head = [
        f"# {name}",
        "",
        f"**Champion** (alias `{CHAMPION}`, stage Production, served): {champ}. "
        f"**Challenger** (alias `{CHALLENGER}`, stage Staging, awaiting review): {chall}.",
        "",
        f"A reviewer decides on the challenger's version page (tags `{reg.review_tag}` = `approved` or `rejected` "
        f"and `{reg.review_by_tag}` = your name) or in Airflow's Required Actions. The machine-readable trail is the "
        f"JSON tag `{AUDIT_TAG}` on this registered model.",
        "",
        "## Champion history (newest first)",
        "",
        "| when (UTC) | action | version | from | to | by | why | request | evidence |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    rows = []
    for e in reversed(entries):
        action = e["action"] if _state(e) == "done" else f"{e['action']} ({_state(e)})"
        why = _cell(e.get("why"))
        if e.get("comment") and e.get("comment") != e.get("why"):
            why = f"{why} (comment: {_cell(e['comment'], 120)})" if why else _cell(e["comment"])
        evidence = f"[gates]({e['evidence']})" if e.get("evidence") else "–"
        rows.append(
            f"| {e['when']} | {action} | v{e['version']} | {('v' + e['from']) if e.get('from') else '–'} "
            f"| {('v' + e['to']) if e.get('to') else '–'} | {_cell(e.get('by'), 80)} | {why} "
            f"| `{_cell(e.get('request'), 80)}` | {evidence} |"
        )
    text = "\n".join(head)
    for row in rows:
        if len(text) + len(row) + 1 > MAX_TEXT:
            break
        text += "\n" + row
    return text + "\n"


def refresh_model_description(settings: Settings, client: Any = None) -> None:
    """Rewrite the registered model's description (champion, challenger, the trail) after an alias moved."""
    from mlflow.exceptions import MlflowException  # lazy: see the module doc

    client = client or registry_client(settings)
    name = settings.registry.model_name
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        return
    raw = (model.tags or {}).get(AUDIT_TAG)
    text = _audit_markdown(settings, client, json.loads(raw) if raw else [])
    if text != (model.description or ""):
        client.update_registered_model(name, description=text)


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
    client = registry_client(settings, client)
    name, reg = settings.registry.model_name, settings.registry
    mv = client.get_model_version(name, str(version))
    how = None
    if pending:
        how = how_to_decide(
            policy=policy,
            needs_review=(mv.tags or {}).get(TAG_NEEDS_REVIEW) == "true",
            review_tag=reg.review_tag,
            review_by_tag=reg.review_by_tag,
            review_comment_tag=reg.review_comment_tag,
        )
    text = compose_version_description(name, str(mv.version), status, report_part(mv.description), how=how)
    if text != (mv.description or ""):
        client.update_model_version(name, str(mv.version), description=text)
    return text


def _set_status(client: Any, settings: Settings, version: str | None, state: str, detail: str) -> None:
    if version:
        set_version_status(settings, version, status_line(state, detail), client=client)


def _state(entry: dict[str, Any]) -> str:
    return str(entry.get("state") or "done")  # entries written before the state field are done


def _done_moves(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in entries if e["action"] in MOVES and _state(e) == "done"]


def _last_move(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    moves = _done_moves(entries)
    return moves[-1] if moves else None


def _done_before(entries: list[dict[str, Any]], action: str, request: str | None) -> dict[str, Any] | None:
    if not request:
        return None
    return next((e for e in reversed(entries) if e.get("request") == request and e["action"] == action), None)


def _entry_key(entry: dict[str, Any]) -> tuple[Any, ...]:
    return (entry.get("request"), entry["action"], str(entry["version"]), entry["when"])


def _stored_audit(client: Any, name: str) -> list[dict[str, Any]]:
    raw = (client.get_registered_model(name).tags or {}).get(AUDIT_TAG)
    return json.loads(raw) if raw else []


def _store_entry(client: Any, settings: Settings, entries: list[dict[str, Any]], entry: dict[str, Any]) -> None:
    """Write ``entry`` (new, or with a new state) into the stored trail, then make ``entries`` that trail.

    MLflow has no compare-and-set for tags, and ``entries`` was read earlier: writing it back whole would drop an
    entry that another mover (a manual promote beside the DAG's) stored in between. So the entry is merged into the
    trail as stored now, and the trail is read back: when another write replaced it meanwhile, the merge is done
    again. This narrows the window to one read and one write; it does not make two movers atomic.

    Raises:
        RuntimeError: the entry was overwritten by other writes three times in a row.
    """
    name, key = settings.registry.model_name, _entry_key(entry)
    for _ in range(3):
        stored = _stored_audit(client, name)
        keys = [_entry_key(e) for e in stored]
        if key in keys:
            stored[keys.index(key)] = entry
        else:
            stored.append(entry)
        _write_audit(client, settings, stored)
        if any(_entry_key(e) == key and _state(e) == _state(entry) for e in _stored_audit(client, name)):
            entries[:] = stored
            return
    raise RuntimeError(
        f"the audit trail of {name!r} was rewritten by other writers three times while recording "
        f"{entry['action']} of version {entry['version']} (request {entry.get('request')!r}); retry the request"
    )


def _mark(client: Any, settings: Settings, entries: list[dict[str, Any]], entry: dict[str, Any], state: str) -> None:
    entry["state"] = state
    _store_entry(client, settings, entries, entry)


_F = TypeVar("_F", bound=Callable[..., Any])


def _serialized(func: _F) -> _F:
    """Run a registry decision (promote, reject, rollback) under the model's lock, from its checks to its last
    write: two movers (the DAG's auto promotion, a review's approval, a rollback from the form or the CLI) never
    interleave their reads and alias moves. The lock lives in the artifact root (:func:`pipelines.io.storage.exclusive`),
    which every runtime shares."""
    signature = inspect.signature(func)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        owner = (
            f"{func.__name__} of {bound.arguments.get('version')} by {bound.arguments.get('by')!r}, request "
            f"{bound.arguments.get('request')!r}"
        )
        with registry_lock(bound.arguments["settings"], owner):
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@contextmanager
def registry_lock(settings: Settings, owner: str) -> Iterator[None]:
    """The model's registry lock (not reentrant): held by promote, reject, rollback and the register step's
    challenger staging. ``owner`` says who holds it in a waiter's error."""
    reg = settings.registry
    who = f"{owner} (pid {os.getpid()} on {socket.gethostname()})"
    with exclusive(
        settings, f"registry-{reg.model_name}", who, wait_s=reg.lock_wait_seconds, ttl_s=reg.lock_ttl_seconds
    ):
        yield


# --- the promotion policy and the review -------------------------------------------------------------------------
def resolve_policy(settings: Settings, requested: Any = None) -> str:
    """The promotion policy of a run: ``registry.promotion``, lowered by the run's ``promotion`` param if asked.

    ``registry.promotion`` is the ceiling: a run may ask for ``manual`` when config says ``auto``, never ``auto``
    when config says ``manual`` (unless ``registry.allow_form_auto`` is true).

    Raises:
        PromotionRefused: an unknown value, or ``auto`` above a ``manual`` ceiling; the message names both.
    """
    configured = settings.registry.promotion
    text = "" if requested is None else str(requested).strip().lower()
    if text in {"", "config", "none", "null"}:
        return configured
    if text not in POLICIES:
        raise PromotionRefused(f"param promotion={requested!r} must be one of config, manual, auto")
    if text == AUTO and configured == "manual" and not settings.registry.allow_form_auto:
        raise PromotionRefused(
            "param promotion='auto' is refused: registry.promotion is 'manual' and registry.allow_form_auto is "
            "false; a run may ask for a review, never skip it"
        )
    return text


def read_review(settings: Settings, mv: Any) -> dict[str, Any]:
    """The reviewer's decision recorded on a model version (its ``review`` and ``review_by`` tags).

    Returns:
        ``state`` (``approved`` | ``rejected`` | None), ``by`` (the reviewer, or None) and ``problem`` (why a
        recorded approval does not count, or None). ``review=auto`` (the pipeline's own record) is no approval.
    """
    reg = settings.registry
    tags = mv.tags or {}
    state = _REVIEW_VALUES.get(str(tags.get(reg.review_tag, "")).strip().lower())
    by = str(tags.get(reg.review_by_tag, "")).strip() or None
    where = f"{reg.model_name} version {mv.version}"
    if state == APPROVED and by is not None and by.lower() == PIPELINE_REVIEWER:
        problem = (
            f"tag {reg.review_tag}=approved on {where} names {reg.review_by_tag}={by!r}, which is reserved for the "
            "pipeline's own records; a reviewer must name themselves"
        )
        return {"state": None, "by": None, "problem": problem}
    if state == APPROVED and by is None:
        if reg.require_reviewer:
            problem = (
                f"tag {reg.review_tag}=approved on {where} names no reviewer: add the tag {reg.review_by_tag}=<your "
                "name> (registry.require_reviewer is true)"
            )
            return {"state": None, "by": None, "problem": problem}
        by = "unknown"
    if state == REJECTED and by is None:
        by = "unknown"  # a rejection only keeps the champion: it counts without a name
    return {"state": state, "by": by, "problem": None}


def review_state(settings: Settings, version: Any) -> str | None:
    """The reviewer's decision on a version, from its ``review`` and ``review_by`` tags.

    Args:
        settings: the settings (registry section names the model and the tags).
        version: the model version.

    Returns:
        ``"approved"`` (with a reviewer named, when ``registry.require_reviewer``), ``"rejected"``, or None while no
        decision that counts is recorded.

    Raises:
        ValueError: the version does not exist.
    """
    return read_review(settings, _named_version(settings, version, "review_state")[2])["state"]


def is_pending(settings: Settings, mv: Any, champion: str | None) -> bool:
    """Whether a version (from a registry listing) still awaits its first review: registered by the pipeline, in
    stage None or Staging, not the champion, and no decision that counts in its tags (an approval that names no
    reviewer does not count; ``review=auto`` and ``review=superseded`` are closed)."""
    tags = mv.tags or {}
    raw = str(tags.get(settings.registry.review_tag, "")).strip().lower()
    return (
        mv.current_stage in {"None", "Staging"}
        and TAG_PIPELINE_RUN in tags
        and str(mv.version) != champion
        and raw not in {AUTO, SUPERSEDED}
        and read_review(settings, mv)["state"] is None
    )


def _auto_evidence(tags: dict[str, str]) -> str:
    """What the policy relied on: the gate tags the register step wrote."""
    parts = [f"{k}={tags.get(k, '')}" for k in (TAG_EVAL_PASSED, TAG_NEEDS_REVIEW, "eval.gates", "eval.report_uri")]
    return "; ".join(parts)[:MAX_TEXT]


# --- the champion moves --------------------------------------------------------------------------------------
def _already_done(
    client: Any, settings: Settings, entries: list[dict[str, Any]], entry: dict[str, Any], version: str, current: Any
) -> bool:
    """Check a request seen before (same action and request id): True when it was applied in full; raises
    PromotionRefused when it named another version, or was interrupted and the champion has moved since."""
    name = settings.registry.model_name
    action, request = entry["action"], entry.get("request")
    if entry["version"] != version:
        raise PromotionRefused(
            f"request {request!r} already asked to {action} {name} version {entry['version']}, not {version}; "
            "a different decision needs a new request id (param request_id)"
        )
    if _state(entry) == "done":
        log.info("%s: request %s already applied (v%s -> v%s); nothing to do", action, request, entry["from"], version)
        return True
    if _state(entry) == "abandoned" or current not in {entry["from"], version}:
        if _state(entry) != "abandoned":
            _mark(client, settings, entries, entry, "abandoned")
        raise PromotionRefused(
            f"request {request!r} to {action} {name} version {version} was interrupted and the champion has "
            f"since moved to v{current}; it is not applied (trigger a new request)"
        )
    return False


def _request_move(
    client: Any,
    settings: Settings,
    entries: list[dict[str, Any]],
    current: Any,
    *,
    action: str,
    version: str,
    by: str,
    reason: str,
    when: str | None,
    request: str | None,
) -> dict[str, Any] | None:
    """Append a new audit entry for this move before the alias moves; None when the version is already champion
    and recorded (only the stages are tidied then).

    Raises:
        ValueError: the version is not READY.
    """
    name, reg = settings.registry.model_name, settings.registry
    mv = get_version(client, name, version)
    if str(mv.status) not in {"READY", "ModelVersionStatus.READY"}:
        raise ValueError(f"{name} version {version} is {mv.status}, not READY; it cannot become champion")
    last = _last_move(entries)
    if current == version and last is not None and last.get("to") == version:
        return None
    entry = {
        "action": action,
        "version": version,
        "from": current if current != version else (last or {}).get("to"),
        "to": version,
        "when": _now(when),
        "by": by,
        "why": reason,
        "comment": (mv.tags or {}).get(reg.review_comment_tag) or None,
        "request": request,
        "evidence": version_url(settings, version),
        "state": "requested",
    }
    _store_entry(client, settings, entries, entry)  # recorded before the alias moves
    return entry


def _move_alias(client: Any, name: str, version: str, current: Any) -> None:
    """Point ``champion`` at ``version``, mirror the stages (exactly one Production version, the champion) and drop
    the ``challenger`` alias if it pointed at it."""
    if current != version:
        client.set_registered_model_alias(name, CHAMPION, version)  # one call: the alias moves atomically
    mirror_stage(client, name, version, "Production")
    for other in client.search_model_versions(f"name='{name}'"):
        if str(other.version) != version and other.current_stage == "Production":
            mirror_stage(client, name, str(other.version), "Archived")
    if alias_version(client, name, CHALLENGER) == version:
        client.delete_registered_model_alias(name, CHALLENGER)


def _record_review(
    client: Any, settings: Settings, version: str, entry: dict[str, Any], by: str, review: str | None
) -> None:
    """Tag the new champion with the review that made it (unless one is recorded) and when it became champion."""
    name, reg = settings.registry.model_name, settings.registry
    tags = get_version(client, name, version).tags or {}
    if review and not tags.get(reg.review_tag):
        record = {reg.review_tag: review, reg.review_by_tag: by, REVIEW_AT_TAG: entry["when"]}
        if review == AUTO:
            record.update({reg.review_by_tag: PIPELINE_REVIEWER, REVIEW_EVIDENCE_TAG: _auto_evidence(tags)})
        for key, value in record.items():
            client.set_model_version_tag(name, version, key, value)
    elif entry["action"] == "promote" and not tags.get(REVIEW_AT_TAG):
        client.set_model_version_tag(name, version, REVIEW_AT_TAG, entry["when"])  # when the approval took effect
    client.set_model_version_tag(name, version, "mlops.champion_since", entry["when"])


def _describe_move(
    client: Any, settings: Settings, version: str, entry: dict[str, Any], by: str, reason: str, review: str | None
) -> None:
    """Rewrite the status line of the new champion and of the one it replaced."""
    action, request = entry["action"], entry.get("request")
    at = f"on {entry['when']} (UTC)"
    if action == "rollback":
        _set_status(
            client,
            settings,
            version,
            "champion (restored)",
            f"rolled back to this version by {by} {at}: {reason}. Request `{request}`.",
        )
    elif review == AUTO:
        _set_status(
            client,
            settings,
            version,
            "champion",
            f"promoted by the `auto` policy {at}: every gate passed. Request `{request}`.",
        )
    else:
        _set_status(
            client, settings, version, "champion", f"approved by {by} and promoted {at}: {reason}. Request `{request}`."
        )
    before = entry.get("from")
    if before and before != version:
        verb = "rolled back" if action == "rollback" else "replaced"
        _set_status(
            client,
            settings,
            before,
            "archived",
            f"champion until {entry['when']} (UTC); {verb} by version {version} ({action} by {by}).",
        )


def _make_champion(
    settings: Settings,
    version: str,
    action: str,
    by: str,
    reason: str,
    when: str | None,
    request: str | None,
    review: str | None = None,
) -> dict[str, Any]:
    client = registry_client(settings)
    name = settings.registry.model_name
    entries = read_audit(settings)
    current = alias_version(client, name, CHAMPION)
    entry = _done_before(entries, action, request)
    resumed = entry is not None
    if entry is not None:  # the same request again: never a second move
        if _already_done(client, settings, entries, entry, version, current):
            return {"champion_before": entry["from"], "champion_after": version, "changed": False}
        by = entry.get("by") or by
        log.info("%s: finishing interrupted request %s (v%s -> v%s)", action, request, entry["from"], version)
    else:
        entry = _request_move(
            client,
            settings,
            entries,
            current,
            action=action,
            version=version,
            by=by,
            reason=reason,
            when=when,
            request=request,
        )
    # A resumed request changed the champion even when its alias move landed before the crash.
    changed = current != version or (resumed and entry["from"] != version)
    _move_alias(client, name, version, current)
    if entry is None:  # already champion and recorded: only the stages were tidied
        return {"champion_before": current, "champion_after": version, "changed": False}
    _record_review(client, settings, version, entry, by, review)
    _mark(client, settings, entries, entry, "done")
    _describe_move(client, settings, version, entry, by, reason, review)
    log.info("%s: %s v%s -> v%s by %s: %s", action, name, entry["from"], version, by, reason)
    return {"champion_before": entry["from"], "champion_after": version, "changed": changed}


@_serialized
def promote(
    settings: Settings,
    version: Any,
    by: str,
    reason: str,
    *,
    when: str | None = None,
    request: str | None = None,
    review: str | None = APPROVED,
) -> dict[str, Any]:
    """Make ``version`` the champion: alias ``champion`` moves to it, it goes to Production, the previous
    champion to Archived, and the ``challenger`` alias is removed if it pointed at it. Safe to repeat.

    Args:
        settings: the settings.
        version: the model version to promote.
        by: who decided (a person, or ``policy:auto``).
        reason: why; recorded in the audit trail.
        when: the audit timestamp (ISO 8601, UTC); default now.
        request: the request id (the pipeline run asking): a retry with it finds its audit entry and moves nothing
            twice.
        review: the review record to write on a version that has none: ``approved`` (``by`` decided, the default),
            ``auto`` (the policy; with ``review_by=pipeline`` and the gate evidence) or None (leave the tags: a
            reviewer's tags are already there).

    Returns:
        ``champion_before``, ``champion_after``, ``changed``.

    Raises:
        ValueError: the version does not exist, is not READY, or was rejected by a reviewer.
        PromotionRefused: ``review=auto`` for a version whose gates asked for a human, or a conflicting request.
    """
    v, client, mv = _named_version(settings, version, "promote")
    name, reg = settings.registry.model_name, settings.registry
    if read_review(settings, mv)["state"] == REJECTED and alias_version(client, name, CHAMPION) != v:
        raise ValueError(
            f"{name} version {v} was rejected (tag {reg.review_tag}=rejected); remove or change that tag in the "
            "MLflow UI before promoting it"
        )
    tags = mv.tags or {}
    if review == AUTO and (tags.get(TAG_NEEDS_REVIEW) == "true" or tags.get(TAG_EVAL_PASSED) == "false"):
        raise PromotionRefused(
            f"{name} version {v} is not promoted by the auto policy: its gates asked for a human review "
            f"({TAG_NEEDS_REVIEW}={tags.get(TAG_NEEDS_REVIEW)}, {TAG_EVAL_PASSED}={tags.get(TAG_EVAL_PASSED)})"
        )
    if review == APPROVED and (not str(by).strip() or str(by).strip().lower() in {PIPELINE_REVIEWER, "policy:auto"}):
        raise PromotionRefused(f"param by={by!r} cannot approve {name} version {v}: name the person who decides")
    return _make_champion(settings, v, "promote", by, reason, when, request, review)


@_serialized
def reject(
    settings: Settings, version: Any, by: str, reason: str, *, when: str | None = None, request: str | None = None
) -> dict[str, Any]:
    """Reject a challenger: it goes to Archived, loses the ``challenger`` alias; the champion is untouched.

    Args:
        settings: the settings.
        version: the version to reject.
        by: who or what decided (written to ``review_by`` when no reviewer is named there).
        reason: why; recorded in the audit trail and in the version's ``review_comment`` tag if none is set.
        when: the audit timestamp; default now.
        request: the request id: a retry with it adds no second entry.

    Returns:
        ``champion_before``, ``champion_after`` (the same), ``changed`` (False).

    Raises:
        ValueError: the version does not exist or is the champion (use promote or rollback to replace it).
    """
    v, client, mv = _named_version(settings, version, "reject")
    name, reg = settings.registry.model_name, settings.registry
    champion = alias_version(client, name, CHAMPION)
    entries = read_audit(settings)
    entry = _done_before(entries, "reject", request)
    if entry is not None and entry["version"] != v:
        raise PromotionRefused(
            f"request {request!r} already rejected {name} version {entry['version']}, not {v}; a different "
            "decision needs a new request id (param request_id)"
        )
    if entry is not None and _state(entry) == "done":
        log.info("reject: request %s already applied to v%s; nothing to do", request, v)
        return {"champion_before": champion, "champion_after": champion, "changed": False}
    if champion == v:
        raise ValueError(
            f"{name} version {v} is the champion and cannot be rejected; promote another version or roll back"
        )
    if entry is None and "mlops.rejected_at" not in mv.tags:
        entry = {
            "action": "reject",
            "version": v,
            "from": champion,
            "to": champion,
            "when": _now(when),
            "by": by,
            "why": reason,
            "comment": (mv.tags or {}).get(reg.review_comment_tag) or None,
            "request": request,
            "evidence": version_url(settings, v),
            "state": "requested",
        }
        _store_entry(client, settings, entries, entry)  # recorded before the version is archived
    tags = mv.tags or {}
    if read_review(settings, mv)["state"] != REJECTED:
        client.set_model_version_tag(name, v, reg.review_tag, REJECTED)
    if not str(tags.get(reg.review_by_tag, "")).strip() or read_review(settings, mv)["state"] != REJECTED:
        client.set_model_version_tag(name, v, reg.review_by_tag, by)
    if not tags.get(reg.review_comment_tag) and reason:
        client.set_model_version_tag(name, v, reg.review_comment_tag, reason[:MAX_TEXT])
    mirror_stage(client, name, v, "Archived")
    if alias_version(client, name, CHALLENGER) == v:
        client.delete_registered_model_alias(name, CHALLENGER)
    if entry is not None:
        client.set_model_version_tag(name, v, "mlops.rejected_at", entry["when"])
        client.set_model_version_tag(name, v, REVIEW_AT_TAG, entry["when"])
        _mark(client, settings, entries, entry, "done")
        keep = f"the champion stays version {champion}" if champion else "there is no champion yet"
        _set_status(
            client,
            settings,
            v,
            "rejected",
            f"by {entry['by']} on {entry['when']} (UTC): {reason}. Archived; {keep}. Request `{request}`.",
        )
        log.info("reject: %s v%s by %s: %s (champion stays v%s)", name, v, by, reason, champion)
    return {"champion_before": champion, "champion_after": champion, "changed": False}


@_serialized
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
        request: the request id: a retry with it resolves to the target its audit entry names, finishes a move
            interrupted by a crash, and never rolls back twice. Two separate requests without a version each step
            back once (so the second returns to where the first started).

    Returns:
        ``champion_before``, ``champion_after``, ``changed``.

    Raises:
        ValueError: there is no earlier champion in the trail, or ``version`` was never champion.
    """
    name = settings.registry.model_name
    entries = read_audit(settings)
    target = parse_version(version)
    done = _done_before(entries, "rollback", request)
    if done is not None:
        return _make_champion(settings, target or done["version"], "rollback", by, reason, when, request)
    moves = _done_moves(entries)
    if target is None:
        current = alias_version(registry_client(settings), name, CHAMPION)
        move = next((e for e in reversed(moves) if e.get("to") == current), None)
        if move is None or not move.get("from"):
            raise ValueError(
                f"no earlier champion of {name!r} in the audit trail (champion: v{current}); pass the version "
                "to roll back to"
            )
        target = move["from"]
    if not any(e.get("to") == target for e in moves):
        raise ValueError(
            f"{name} version {target} was never champion according to the audit trail; rollback restores an "
            "earlier champion (use promote for a new version)"
        )
    return _make_champion(settings, target, "rollback", by, reason, when, request)


def refuse(settings: Settings, version: str, champion: str | None, request: str, why: str) -> None:
    """Record a refused approval in the audit trail (once per request) and raise it.

    Raises:
        PromotionRefused: always, with ``why``.
    """
    client = registry_client(settings)
    entries = read_audit(settings)
    if _done_before(entries, "refuse", request) is None:
        entry = {
            "action": "refuse",
            "version": version,
            "from": champion,
            "to": champion,
            "when": _now(None),
            "by": "policy:require_reviewer",
            "why": why,
            "request": request,
            "state": "done",
        }
        _store_entry(client, settings, entries, entry)
    log.error("promote: %s", why)
    raise PromotionRefused(why)


# --- superseding a stale challenger ---------------------------------------------------------------------------
def supersede(settings: Settings, version: Any, newer: Any, client: Any = None, when: str | None = None) -> bool:
    """Mark the pending ``version`` superseded by ``newer``: tags, a status line on its description, stage
    Archived, and no ``challenger`` alias. Idempotent; a version with a decision or the champion is left alone.

    Returns:
        True when this call marked it (False: already superseded, decided, or the champion).
    """
    client = registry_client(settings, client)
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
        at = _now(when)
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
    client = registry_client(settings, client)
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
