"""Step ``decide``: map the drift result, the champion's quality drop and the amount of new data to an action.

Policy (thresholds in ``settings.decision``; the severity rule itself lives in ``pipelines.detectors``):

0. A batch that validate found identical to an accepted one (``duplicate_of``) is skipped, whatever was asked.
1. A run parameter ``force_action`` other than ``auto`` wins.
2. No reference (no champion yet): ``retrain`` from the base model (bootstrap).
3. ``severe`` drift (embedding shift, most dimensions drifted, or a large quality drop): ``decision.severe_action``,
   ``fine_tune`` by default (measured: as good as a retrain on the public stream at about 40 % of the compute; see
   the setting's notes), ``retrain`` if so configured.
4. ``moderate`` drift, or severe drift handled by fine-tuning: ``fine_tune`` from the champion, unless the batch
   has fewer than ``min_new_rows_fine_tune`` rows (``skip``: too little to learn from) or the champion already
   descends from ``max_fine_tunes_before_retrain`` fine-tunes in a row (``retrain``, so fine-tunes do not stack
   forever).
5. Otherwise ``skip``.

Benefit, not only significance: on a large batch every distribution test is significant. So when the drift step
measured the champion's labelled quality on the batch (its ``quality`` test), and the only evidence is that the
distribution moved (embeddings, labels, lengths) while the champion's macro-F1 on the batch did not drop by at least
``decision.min_quality_drop`` against its recorded evaluation score, the action is ``skip``: the champion still
does its job on this data, and neither a fine-tune nor a retrain would be worth its compute. A bootstrap (no
champion) and a forced action are not subject to this rule.

Young history: while the labelled history is small, each batch adds a large share of all labelled data, and a model
learnt from n rows still gains from 1.5 n (learning curves flatten only later), drift or not. So a batch that would
be skipped (no drift, or the quality held) but whose rows are at least ``decision.min_data_growth`` of the accepted
rows before it is a ``fine_tune`` instead: never a retrain (not worth it while the quality held), not with fewer
than ``min_new_rows_fine_tune`` rows, not past ``max_fine_tunes_before_retrain``. As the history grows the rule
stops firing by itself.

The summary's ``reasons`` are human-readable lines ("label drift p=0.003 < 0.01") that go into the model
version's report.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from pipelines.data.datasets import accepted_rows

if TYPE_CHECKING:
    from pipelines.config import DecisionSettings, Settings
    from pipelines.context import StepContext

ACTIONS = ("skip", "fine_tune", "retrain")
FORCE_CHOICES = ("auto", *ACTIONS)


def run(ctx: StepContext) -> dict[str, Any]:
    """Choose ``skip``, ``fine_tune`` or ``retrain`` for this run.

    Args:
        ctx: the step context. Reads this run's ``drift`` and ``validate`` results (or inputs
            ``drift_result_uri`` / ``validate_result_uri`` pointing at their ``result.json``; optional input
            ``accepted_uri``, the batch, when no drift result names it); param ``force_action``
            (auto|skip|fine_tune|retrain, default auto).

    Returns:
        ``action``, ``reasons``, ``severity``, ``forced``, ``auto_action``, ``has_reference``, ``new_rows``,
        ``champion_version``.

    Raises:
        ValueError: ``force_action`` is not an allowed value, or the policy needs a drift result and none exists.
    """
    force = ctx.params.get("force_action", "auto")
    force = "auto" if force in (None, "") else force
    if not isinstance(force, str) or force not in FORCE_CHOICES:
        raise ValueError(f"param force_action={force!r} is not allowed; expected one of: {', '.join(FORCE_CHOICES)}")
    drift = _result(ctx, "drift", "drift_result_uri")
    validate = _result(ctx, "validate", "validate_result_uri")
    if (validate or {}).get("duplicate_of"):
        return {
            "action": "skip",
            "reasons": [f"the batch repeats the accepted {validate['duplicate_of']}: nothing new to learn (skip)"],
            "forced": False,
            "auto_action": "skip",
            "severity": (drift or {}).get("severity"),
            "has_reference": (drift or {}).get("has_reference"),
            "new_rows": 0,
            "champion_version": (drift or {}).get("champion_version"),
            "duplicate_of": validate["duplicate_of"],
        }
    history = _history_rows(ctx, drift)
    if force != "auto":
        summary = {
            "action": force,
            "reasons": [f"forced by run parameter force_action={force!r}"],
            "forced": True,
            "auto_action": None,
            "severity": drift.get("severity") if drift else None,
            "has_reference": drift.get("has_reference") if drift else None,
            "new_rows": _new_rows(drift, validate),
            "champion_version": drift.get("champion_version") if drift else None,
        }
        if drift is not None:
            auto = decide(drift, validate, ctx.settings, history)
            summary["auto_action"] = auto["action"]
            summary["reasons"].append(f"the policy alone would choose {auto['action']}: " + "; ".join(auto["reasons"]))
        return summary
    if drift is None:
        raise ValueError(
            f"decide needs the drift result of run {ctx.run_id!r}: run the drift step first, pass "
            '--input drift_result_uri=<drift result.json>, or force an action with --param force_action="retrain"'
        )
    return {**decide(drift, validate, ctx.settings, history), "forced": False}


def decide(
    drift: dict[str, Any], validate: dict[str, Any] | None, settings: Settings, history_rows: int | None = None
) -> dict[str, Any]:
    """Apply the policy to a drift summary.

    Args:
        drift: the drift step's summary (``severity``, ``has_reference``, ``tests``, ``reasons`` ...).
        validate: the validate step's summary (for ``rows``), or None.
        settings: the settings holding ``decision`` thresholds.
        history_rows: accepted labelled rows before this batch (for the young-history rule), None if unknown.

    Returns:
        ``action``, ``auto_action`` (the same), ``reasons``, ``severity``, ``has_reference``, ``new_rows``,
        ``champion_version``.
    """
    cfg = settings.decision
    severity = drift.get("severity", "none")
    if severity not in ("none", "moderate", "severe"):
        raise ValueError(f"drift severity={severity!r} is not one of none, moderate, severe")
    new_rows = _new_rows(drift, validate)
    action, reasons = _action_for_drift(drift, severity, new_rows, cfg)
    action, reasons = _weigh_benefit(drift, action, reasons, new_rows, history_rows, cfg)
    return {
        "action": action,
        "auto_action": action,
        "reasons": reasons,
        "severity": severity,
        "has_reference": bool(drift.get("has_reference", True)),
        "new_rows": new_rows,
        "champion_version": drift.get("champion_version"),
    }


def _action_for_drift(
    drift: dict[str, Any], severity: str, new_rows: int | None, cfg: DecisionSettings
) -> tuple[str, list[str]]:
    """The action the drift alone calls for (bootstrap, severity, batch size, fine-tunes in a row), with reasons."""
    reasons: list[str] = []
    if not drift.get("has_reference", True):
        reasons.append("no champion and no drift reference yet: retrain from the base model (bootstrap)")
        return "retrain", reasons
    if severity == "severe" and cfg.severe_action == "retrain":
        reasons.append("severe drift: retrain from the base model on all accepted data (decision.severe_action)")
        reasons.extend(drift.get("reasons", []))
        return "retrain", reasons
    if severity == "none":
        reasons.append("no drift: " + _quiet_tests(drift.get("tests", {})))
        return "skip", reasons
    reasons.extend(drift.get("reasons", []))
    fine_tunes = drift.get("fine_tunes_since_retrain")
    if new_rows is not None and new_rows < cfg.min_new_rows_fine_tune:
        action = "skip"
        first = (
            f"{severity} drift but only {new_rows} new rows < decision.min_new_rows_fine_tune="
            f"{cfg.min_new_rows_fine_tune}: too little to fine-tune on"
        )
    elif fine_tunes is not None and fine_tunes >= cfg.max_fine_tunes_before_retrain:
        action = "retrain"
        first = (
            f"{severity} drift, but the champion already follows {fine_tunes} fine-tunes >= "
            f"decision.max_fine_tunes_before_retrain={cfg.max_fine_tunes_before_retrain}: retrain"
        )
    else:
        action = "fine_tune"
        first = (
            f"{severity} drift on {new_rows if new_rows is not None else 'the'} new rows: fine-tune the champion"
            + (" (decision.severe_action=fine_tune)" if severity == "severe" else "")
        )
    return action, [first, *reasons]


def _weigh_benefit(
    drift: dict[str, Any],
    action: str,
    reasons: list[str],
    new_rows: int | None,
    history_rows: int | None,
    cfg: DecisionSettings,
) -> tuple[str, list[str]]:
    """Skip training the champion's labelled quality says is not worth it; fine-tune a young history that grows."""
    has_reference = drift.get("has_reference", True)
    held = _quality_held(drift, cfg.min_quality_drop) if action != "skip" and has_reference else None
    proposed = action
    if held:
        # The drift lines stay as evidence; the line that proposed the action goes.
        reasons = [held, *drift.get("reasons", [])]
        action = "skip"
    fine_tunes = drift.get("fine_tunes_since_retrain") or 0
    grows = (
        _young_history(new_rows, history_rows, cfg)
        if action == "skip"
        and has_reference
        and (new_rows or 0) >= cfg.min_new_rows_fine_tune
        and fine_tunes < cfg.max_fine_tunes_before_retrain
        else None
    )
    if grows:
        reasons = [f"{grows}: fine-tune", *reasons]
        action = "fine_tune"
    elif held:
        reasons[0] = f"{held}: skip ({proposed} not worth its compute)"
    return action, reasons


def _quality_held(drift: dict[str, Any], min_drop: float) -> str | None:
    """A reason to skip when the champion's labelled quality on the batch held up, else None."""
    quality = (drift.get("tests") or {}).get("quality") or {}
    drop = quality.get("statistic")
    if quality.get("skipped") or not isinstance(drop, int | float) or drop >= min_drop:
        return None
    return (
        f"the distribution moved, but the champion's macro-F1 on the batch ({quality.get('batch_macro_f1', 0):.3f}) "
        f"is within decision.min_quality_drop={min_drop} of its evaluation score "
        f"({quality.get('champion_macro_f1', 0):.3f}, drop {drop:+.3f})"
    )


def _young_history(new_rows: int | None, history_rows: int | None, cfg: Any) -> str | None:
    """Why the batch is worth learning from although the quality held (young history), else None."""
    if not new_rows or history_rows is None or cfg.min_data_growth <= 0:
        return None
    growth = new_rows / max(history_rows, 1)
    if growth < cfg.min_data_growth:
        return None
    return (
        f"the batch adds {new_rows} rows to {history_rows} accepted so far ({growth:.0%} >= "
        f"decision.min_data_growth={cfg.min_data_growth:.0%}): a model on a young history still learns from them"
    )


def _history_rows(ctx: StepContext, drift: dict[str, Any] | None) -> int | None:
    """Rows of the accepted batches other than this run's, or None when unknown."""
    current = (drift or {}).get("accepted_uri") or ctx.get("accepted_uri")
    if not current:
        return None
    return accepted_rows(ctx.settings, exclude={current})


def _quiet_tests(tests: dict[str, Any]) -> str:
    parts = []
    for name, test in tests.items():
        if test.get("skipped"):
            parts.append(f"{name} skipped ({test['skipped']})")
        elif isinstance(test.get("p_value"), (int, float)) and name != "ks_embedding":
            parts.append(f"{name} p={test['p_value']:.3g} >= {test['threshold']}")
        elif name == "ks_embedding":
            parts.append(f"embedding KS: 0 of {test.get('dims')} dimensions drifted")
        elif isinstance(test.get("statistic"), (int, float)):
            parts.append(f"{name} {test['statistic']:.3g} < {test['threshold']}")
    return ", ".join(parts) or "no test fired"


def _new_rows(drift: dict[str, Any] | None, validate: dict[str, Any] | None) -> int | None:
    for source in (validate, drift):
        if source and isinstance(source.get("rows"), int):
            return source["rows"]
    return None


def _result(ctx: StepContext, step: str, input_name: str) -> dict[str, Any] | None:
    uri = ctx.get(input_name)
    if uri:
        return json.loads(ctx.storage.read_text(uri))
    return ctx.result_of(step)
