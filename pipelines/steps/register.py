"""Register the served artifact as one model version per pipeline run, staged as the challenger.

How the version is made (MLflow 3): the served pyfunc folder is uploaded as a *LoggedModel* whose source run is
the pipeline's parent run (so it appears under that run's "Logged models"), and the model version is created from
``models:/<model_id>`` with ``run_id`` = the parent run. The version's artifact is therefore the whole served folder,
bundle included: the int8 ONNX graph that is served, the fp32 weights the next fine-tune starts from and the drift
reference, so a rollback restores all three together.

Idempotency: the version carries the tag ``mlops.pipeline_run_id``; a retried or re-run register for the same run
id finds it (and a LoggedModel already uploaded for it) and completes what is missing instead of creating another.
Two registers of the same run at once (a retry racing a zombie task, two workers) may both create a version: each
re-reads the versions tagged with the run after creating its own, the lowest version number wins, and a loser
deletes its own version and LoggedModel, so exactly one remains. This needs nothing but the shared MLflow server
(version numbers are assigned in order by the registry), not a local lock.

The ``challenger`` alias goes to the newest staged version still awaiting review (unreviewed, not the champion):
a register sets it, re-reads the candidates and corrects the alias if a newer version appeared meanwhile, so two
runs registering at once end with the alias on the newer one whatever the order of their writes. Every older
version still pending is then superseded (``review=superseded``, archived: :func:`pipelines.registry.supersede`),
so there is never more than one pending challenger, and its review in the ``review_challenger`` DAG ends.

The version gets the ``challenger`` alias and the legacy stage ``Staging``: aliases are the source of truth in
MLflow 3, stages are deprecated but still shown in the registry UI's stage column, so both are set to tell the same
story (see :mod:`pipelines.registry`). Under the promotion policy ``auto`` (``registry.promotion``; a run's
``promotion`` param may lower it to ``manual``, never lift it: :func:`pipelines.registry.resolve_policy`) a
version whose every gate passed is promoted at once, recorded as ``review=auto`` (never ``approved``); one that
needs a review (a gate with outcome ``review``: below the TF-IDF baseline, or non-inferiority inconclusive) stays
the challenger with the tags ``eval.needs_review=true`` and ``eval.review_reasons``, and waits
for a human as under ``manual`` (in the ``review_challenger`` DAG; the training run itself never waits).
"""

from __future__ import annotations

import json
import logging
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.entities import LoggedModelOutput
from mlflow.exceptions import MlflowException

from pipelines import report
from pipelines.champion import find_bundle, tree_digest
from pipelines.config import REPO_ROOT
from pipelines.data.datasets import accepted_uris
from pipelines.errors import ModelRejected
from pipelines.io.storage import basename
from pipelines.io.tracking import TAG_PIPELINE_RUN, configure, experiment_id, parent_run_id, run_url
from pipelines.registry import (
    AUTO,
    CHALLENGER,
    CHAMPION,
    MAX_TEXT,
    TAG_BUNDLE_DIGEST,
    TAG_EVAL_PASSED,
    TAG_NEEDS_REVIEW,
    TAG_REVIEW_REASONS,
    alias_version,
    mirror_stage,
    promote,
    refresh_model_description,
    registry_lock,
    resolve_policy,
    supersede_older,
)

if TYPE_CHECKING:
    from pipelines.config import Settings
    from pipelines.context import StepContext

log = logging.getLogger(__name__)


def git_commit() -> str:
    """The commit of this checkout (or the ``GIT_COMMIT`` file an image build writes), else ``unknown``."""
    baked = REPO_ROOT / "GIT_COMMIT"
    if baked.is_file():
        return baked.read_text().strip() or "unknown"
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def find_version(settings: Settings, run_id: str) -> Any | None:
    """The model version registered for pipeline run ``run_id``, or None."""
    client = configure(settings)
    name = settings.registry.model_name
    found = client.search_model_versions(f"name='{name}' and tags.`{TAG_PIPELINE_RUN}` = '{run_id}'")
    return min(found, key=lambda mv: int(mv.version)) if found else None


def _settle_duplicates(client: Any, settings: Settings, run_id: str, mine: Any) -> Any:
    """After creating ``mine``, keep the lowest version registered for ``run_id`` and delete ``mine`` if it lost.

    Version numbers grow in creation order, so every racer that sees the winner agrees on it, and a loser always
    sees it (the winner was created first)."""
    name = settings.registry.model_name
    found = client.search_model_versions(f"name='{name}' and tags.`{TAG_PIPELINE_RUN}` = '{run_id}'")
    winner = min([*found, mine], key=lambda mv: int(mv.version))
    if str(winner.version) == str(mine.version):
        return mine
    log.warning(
        "register: run %s was registered twice at once (%s versions %s and %s); keeping %s, deleting %s",
        run_id,
        name,
        winner.version,
        mine.version,
        winner.version,
        mine.version,
    )
    client.delete_model_version(name, str(mine.version))
    model_id = str(mine.source).removeprefix("models:/")
    if model_id != str(winner.source).removeprefix("models:/"):
        try:
            client.delete_logged_model(model_id)
        except MlflowException as exc:  # only clutter is left behind; the version is what counts
            log.warning("register: could not delete the duplicate logged model %s: %s", model_id, exc)
    return client.get_model_version(name, str(winner.version))


def _set_version_tag(client: Any, name: str, version: str, key: str, value: str) -> None:
    """Set a version tag; a concurrent register writing the same tag at once (the SQL store's insert of a new tag
    is not an upsert) is fine when the tag ends up with this value."""
    for attempt in range(3):
        try:
            client.set_model_version_tag(name, version, key, value)
            return
        except MlflowException:
            if client.get_model_version(name, version).tags.get(key) == value:
                return
            if attempt == 2:
                raise


def _stage_challenger(client: Any, settings: Settings, version: str) -> list[str]:
    """Give the ``challenger`` alias to the newest version awaiting review (this one, or a newer one registered at
    the same time), re-checking once the alias is set so that concurrent registers agree; then supersede every
    older pending version (:func:`pipelines.registry.supersede_older`), so there is never more than one pending
    challenger. Returns the versions superseded by this call."""
    name, reg = settings.registry.model_name, settings.registry
    if str(client.get_model_version(name, version).tags.get(reg.review_tag, "")).strip():
        return []  # superseded (or decided) meanwhile, e.g. by a newer run's register: never staged again
    mirror_stage(client, name, version, "Staging")
    target = version
    for _ in range(3):
        champion = alias_version(client, name, CHAMPION)
        waiting = [
            int(mv.version)
            for mv in client.search_model_versions(f"name='{name}'")
            if mv.current_stage in {"None", "Staging"}
            and TAG_PIPELINE_RUN in (mv.tags or {})
            and not (mv.tags or {}).get(reg.review_tag)
            and str(mv.version) != champion
        ]
        target = str(max([*waiting, int(version)]))
        if alias_version(client, name, CHALLENGER) == target:
            break
        try:
            client.set_registered_model_alias(name, CHALLENGER, target)
        except MlflowException as exc:  # a concurrent register inserting the alias at once: not an upsert in SQL
            log.warning(
                "register: setting %s@%s -> %s raced another register (%s); re-reading", name, CHALLENGER, target, exc
            )
    else:
        if alias_version(client, name, CHALLENGER) != target:
            raise RuntimeError(f"register: could not set {name}@{CHALLENGER} to version {target} in 3 tries")
    return supersede_older(settings, target, client)


def _utc(millis: Any) -> str:
    """A registry timestamp (ms since the epoch) as ``YYYY-MM-DD HH:MM UTC``."""
    if not millis:
        return "(time unknown)"
    return "on " + datetime.fromtimestamp(int(millis) / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _tag(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text[:MAX_TEXT]


def _lineage_tags(ctx: StepContext, results: dict[str, dict[str, Any] | None]) -> dict[str, str]:
    s = ctx.settings
    validate, drift, decide, train, evaluate, compress = (
        results.get(k) or {} for k in ("validate", "drift", "decide", "train", "evaluate", "compress")
    )
    tags: dict[str, Any] = {
        TAG_PIPELINE_RUN: ctx.run_id,
        "mlops.dag_id": ctx.dag_id or "",
        "mlops.git_commit": git_commit(),
        "mlops.image": s.runtime.image if s.runtime.mode != "local" else f"local ({s.runtime.image} not used)",
        "mlops.runtime": s.runtime.mode,
        "mlops.served_uri": ctx.get("served_uri") or "",
        "batch.id": validate.get("batch_id", ""),
        "batch.uri": validate.get("accepted_uri") or train.get("accepted_uri", ""),
        "batch.content_hash": validate.get("content_hash", ""),
        "batch.rows": validate.get("rows", ""),
        "data.accepted_batches": [basename(u) for u in accepted_uris(s)],
        "validation.passed": str(validate.get("passed", "")).lower(),
        "validation.report_uri": validate.get("report_uri", ""),
        "drift.severity": drift.get("severity", ""),
        "drift.rule": drift.get("rule", ""),
        "drift.champion_version": drift.get("champion_version") or "",
        "drift.tests": {
            k: {f: v.get(f) for f in ("statistic", "p_value", "threshold", "drifted")}
            for k, v in (drift.get("tests") or {}).items()
        },
        "drift.report_uri": drift.get("report_uri", ""),
        "decision.action": decide.get("action") or train.get("action", ""),
        "decision.reasons": decide.get("reasons", []),
        "train.base": train.get("base", ""),
        "train.model_uri": train.get("model_uri", ""),
        "train.eval_uri": train.get("eval_uri", ""),
        TAG_EVAL_PASSED: str(bool(evaluate.get("passed"))).lower(),
        "eval.report_uri": evaluate.get("report_uri", ""),
        "eval.gates": {
            k: "skipped" if g.get("skipped") else report.gate_outcome(g)
            for k, g in (evaluate.get("gates") or {}).items()
        },
        "eval.rows": evaluate.get("eval_rows", ""),
        "eval.champion_version": evaluate.get("champion_version") or "",
        TAG_NEEDS_REVIEW: str(bool(evaluate.get("needs_review"))).lower(),
    }
    if evaluate.get("needs_review"):
        tags[TAG_REVIEW_REASONS] = "; ".join(evaluate.get("review_reasons") or []) or "see the evaluation report"
    # Written by compress when it chose a compression level (older results have no level: no tags then).
    if compress.get("level") is not None:
        tags["compress.level"] = str(compress["level"])
        if compress.get("agreement") is not None:
            tags["compress.agreement"] = f"{float(compress['agreement']):.5f}"
        if compress.get("served_model"):
            tags["compress.served_model"] = str(compress["served_model"])
        distill = compress.get("distill") or {}
        if distill.get("enabled"):
            # What was served (teacher or student) and what distillation cost, on the version itself.
            tags["compress.layers"] = f"{distill.get('served_layers', '?')} of {distill.get('teacher_layers', '?')}"
            for key in (
                "served_mb",
                "speedup_vs_teacher_fp32",
                "agreement_with_teacher",
                "teacher_macro_f1",
                "served_macro_f1",
                "skipped",
            ):
                if distill.get(key) is not None:
                    tags[f"compress.{key}"] = str(distill[key])
            tags["compress.distill_sample_passes"] = int(compress.get("sample_passes") or 0)
    # Read by drift/decide: after decision.max_fine_tunes_before_retrain fine-tunes in a row, retrain.
    action = tags["decision.action"]
    tags["fine_tunes_since_retrain"] = 0 if action == "retrain" else int(drift.get("fine_tunes_since_retrain") or 0) + 1
    metrics = evaluate.get("metrics") or {}
    for key in ("macro_f1", "accuracy", "champion_macro_f1", "baseline_macro_f1", "majority_macro_f1", "ece"):
        if metrics.get(key) is not None:
            tags[f"eval.{key}"] = f"{float(metrics[key]):.6f}"
    for gate in ("latency_p95_ms", "size_mb"):
        value = ((evaluate.get("gates") or {}).get(gate) or {}).get("value")
        if value is not None:
            tags[f"eval.{gate}"] = f"{float(value):.4f}"
    return {k: _tag(v) for k, v in tags.items()}


def _logged_model(client: Any, ctx: StepContext, parent: str, served_dir: Path, metrics: dict[str, float]) -> str:
    """The id of the LoggedModel holding the served folder for this run, uploading it once."""
    exp = experiment_id(ctx.settings)
    found = client.search_logged_models([exp], filter_string=f"tags.`{TAG_PIPELINE_RUN}` = '{ctx.run_id}'")
    ready = [m for m in found if str(m.status).endswith("READY")]
    if ready:
        return ready[0].model_id
    for stale in found:  # an upload interrupted by a crash: mark it failed, upload again
        client.finalize_logged_model(stale.model_id, "FAILED")
    model = client.create_logged_model(
        exp,
        name="served",
        source_run_id=parent,
        tags={TAG_PIPELINE_RUN: ctx.run_id, "mlops.step": "register"},
        model_type="served-pyfunc",
    )
    log.info("register: uploading %s as logged model %s", served_dir, model.model_id)
    client.log_model_artifacts(model.model_id, str(served_dir))
    client.finalize_logged_model(model.model_id, "READY")
    client.log_outputs(parent, [LoggedModelOutput(model.model_id, 0)])
    for key, value in metrics.items():  # the model version page shows its logged model's metrics
        client.log_metric(parent, key, value, model_id=model.model_id)
    return model.model_id


def _passed_evaluation(ctx: StepContext, evaluate: dict[str, Any] | None) -> dict[str, Any]:
    """The evaluate result of this run, checked: present and passed."""
    if evaluate is None:
        raise ValueError(
            f"register needs the evaluate result of run {ctx.run_id!r} ({ctx.run_uri}/evaluate/result.json); "
            "run the evaluate step first"
        )
    if not evaluate.get("passed"):
        raise ModelRejected(
            f"candidate of run {ctx.run_id!r} failed evaluation; it is not registered",
            failures=evaluate.get("failures"),
            report_uri=evaluate.get("report_uri"),
        )
    return evaluate


def _create_version(
    client: Any, ctx: StepContext, parent: str, served_uri: str, evaluate: dict[str, Any]
) -> tuple[Any, bool]:
    """Upload the served folder and create this run's model version; returns the version kept (a concurrent
    register of the same run may have won) and whether it is the one created here."""
    s = ctx.settings
    name = s.registry.model_name
    with tempfile.TemporaryDirectory(prefix="mlops-register-") as tmp:
        served_dir = ctx.storage.local_dir(
            served_uri, tmp, what="served model folder", hint="run the compress step first"
        )
        digest = tree_digest(find_bundle(served_dir))  # every download of the version is checked against it
        metrics = {
            f"eval.{k}": float(v)
            for k, v in evaluate["metrics"].items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        model_id = _logged_model(client, ctx, parent, served_dir, metrics)
    try:
        client.create_registered_model(name, description=f"# {name}\n\nNo champion yet.\n")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    mv = client.create_model_version(
        name,
        source=f"models:/{model_id}",
        run_id=parent,
        model_id=model_id,
        tags={TAG_PIPELINE_RUN: ctx.run_id, TAG_BUNDLE_DIGEST: digest},
    )
    log.info("register: created %s version %s for run %s", name, mv.version, ctx.run_id)
    kept = _settle_duplicates(client, s, ctx.run_id, mv)
    return kept, str(kept.version) == str(mv.version)


def _describe_once(
    client: Any,
    ctx: StepContext,
    mv: Any,
    results: dict[str, dict[str, Any] | None],
    parent: str,
    policy: str,
) -> None:
    """Write the version's review description, unless an earlier attempt already did (every move then rewrites
    only its top)."""
    s = ctx.settings
    name, reg, version = s.registry.model_name, s.registry, str(mv.version)
    if report.REPORT_HEADING in (mv.description or ""):
        return
    evaluate = results["evaluate"] or {}
    when = _utc(mv.creation_timestamp)
    description = report.render_review_description(
        model_name=name,
        version=version,
        run_id=ctx.run_id,
        results=report.RunResults(
            evaluate=evaluate,
            **{step: results[step] for step in ("validate", "drift", "decide", "train", "compress")},
        ),
        review_tag=reg.review_tag,
        review_comment_tag=reg.review_comment_tag,
        review_by_tag=reg.review_by_tag,
        policy=policy,
        run_url=run_url(s, parent),
        figures_run_id=evaluate.get("mlflow_run_id"),
        status_detail=f"registered {when} by pipeline run `{ctx.run_id}` and staged as the challenger "
        f"(policy `{policy}`).",
    )
    client.update_model_version(name, version, description=description)


def _auto_promote(
    ctx: StepContext, version: str, evaluate: dict[str, Any], policy: str, *, fresh: bool, champion_before: str | None
) -> bool:
    """Promote at once under policy ``auto`` when no review is needed; returns whether it promoted."""
    name = ctx.settings.registry.model_name
    if policy == "auto" and evaluate.get("needs_review") and fresh:
        log.warning(
            "register: policy auto, but %s version %s needs a human review (%s); staged as the challenger",
            name,
            version,
            "; ".join(evaluate.get("review_reasons") or []),
        )
        return False
    if policy == "auto" and champion_before != version and fresh:
        promote(
            ctx.settings,
            version,
            by="policy:auto",
            reason="promotion policy auto: every gate passed",
            request=ctx.run_id,
            review=AUTO,
        )
        return True
    return False


def _alias_of(client: Any, name: str, version: str) -> str | None:
    """``champion`` or ``challenger`` when that alias points at ``version``, else None."""
    if alias_version(client, name, CHAMPION) == version:
        return CHAMPION
    return CHALLENGER if alias_version(client, name, CHALLENGER) == version else None


def run(ctx: StepContext) -> dict[str, Any]:
    """Register the served model of this run (once), describe it for review, and stage it as the challenger.

    Inputs: ``served_uri``. Reads the ``validate``, ``drift``, ``decide``, ``train``, ``compress`` and
    ``evaluate`` results of the same run for the description and the lineage tags. Params: ``promotion``
    (config | manual | auto) may lower ``registry.promotion`` to manual, never lift it. Under ``auto`` the version
    is promoted only when it passed and needs no review; one that needs a review is staged as the challenger like
    under ``manual``.

    Returns:
        ``model_name``, ``version``, ``alias`` (challenger, or champion once promoted), ``model_uri``, ``created``,
        ``policy``, ``promoted``, ``needs_review``, ``held_for_review`` (staged for a human although the policy is
        auto, or under manual), ``champion_before``, ``superseded`` (older pending challengers this version
        superseded).

    Raises:
        PromotionRefused: param ``promotion`` is unknown or asks for auto above a manual ceiling.
        ValueError: the evaluate result of this run is missing.
        ModelRejected: the candidate did not pass evaluation (nothing is registered).
        FileNotFoundError: the served folder has no bundle.
    """
    s = ctx.settings
    name, reg = s.registry.model_name, s.registry
    served_uri = ctx.require("served_uri")
    results = {k: ctx.result_of(k) for k in ("validate", "drift", "decide", "train", "compress", "evaluate")}
    evaluate = _passed_evaluation(ctx, results["evaluate"])
    policy = resolve_policy(s, ctx.params.get("promotion"))

    client = configure(s)
    parent = parent_run_id(ctx)
    tags = _lineage_tags(ctx, results)
    mv = find_version(s, ctx.run_id)
    created = mv is None
    if created:
        mv, created = _create_version(client, ctx, parent, served_uri, evaluate)
    else:
        log.info("register: run %s already has %s version %s; reusing it", ctx.run_id, name, mv.version)
    version = str(mv.version)

    for key, value in tags.items():
        if mv.tags.get(key) != value:
            _set_version_tag(client, name, version, key, value)
    _describe_once(client, ctx, mv, results, parent, policy)

    champion_before = alias_version(client, name, CHAMPION)
    fresh = mv.current_stage in {"None", "Staging"} and not mv.tags.get(reg.review_tag)
    superseded: list[str] = []
    if fresh and champion_before != version:
        with registry_lock(s, f"register of {version}, run {ctx.run_id!r}"):  # one mover at a time, as promote
            superseded = _stage_challenger(client, s, version)
    needs_review = bool(evaluate.get("needs_review"))
    promoted = _auto_promote(ctx, version, evaluate, policy, fresh=fresh, champion_before=champion_before)
    refresh_model_description(s, client)  # it names the champion and the challenger
    alias = _alias_of(client, name, version)
    return {
        "model_name": name,
        "version": version,
        "alias": alias,
        "model_uri": f"models:/{name}/{version}",
        "created": created,
        "policy": policy,
        "promoted": promoted,
        "needs_review": needs_review,
        "held_for_review": needs_review and not promoted and alias == CHALLENGER,
        "champion_before": champion_before,
        "superseded": superseded,
        "parent_run_id": parent,
    }
