"""The typed trigger form of the continuous-training DAG and how its values reach the steps."""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param

ACTIONS = ["auto", "skip", "fine_tune", "retrain"]
PROMOTION_MODES = ["config", "manual", "auto"]

#: form param -> dotted setting it overrides (None / blank leaves the configured value).
THRESHOLD_OVERRIDES: dict[str, str] = {
    "drift_p_threshold": "drift.p_threshold",
    "min_macro_f1": "gates.min_macro_f1",
    "noninferiority_margin": "gates.noninferiority_margin",
}


def promotion_modes(settings: Any = None) -> list[str]:
    """The values the form's ``promotion`` may take: ``auto`` only where config allows it (the ceiling)."""
    from pipelines.config import get_settings

    reg = (settings or get_settings()).registry
    return PROMOTION_MODES if reg.promotion == "auto" or reg.allow_form_auto else ["config", "manual"]


def _configured(value: Any) -> str:
    return "off" if value in (0, 0.0) else f"{value:g}" if isinstance(value, float) else str(value)


def continuous_training_params(settings: Any = None) -> dict[str, Param]:
    """The trigger form: simple typed values only (object-typed params have trigger-form bugs in Airflow 3).

    Airflow 3's form marks a field required unless its type includes ``"null"``, and sends ``null`` for a cleared
    field: every field a user may leave empty is therefore nullable (``None`` / empty means "use the default").
    Bounds are in each schema (``minimum``, ``maximum``, ``enum``, ``maxLength``): the number inputs are bounded by
    them, and the API refuses an out-of-range value before a run is created. Each description names the value
    configured in ``pipelines.config`` (the one configuration source) that an empty field leaves in force.
    """
    from pipelines.config import get_settings

    s = settings or get_settings()
    return {
        "batch_uri": Param(
            None,
            type=["null", "string"],
            maxLength=1000,
            title="Batch URI (optional)",
            description="Empty: the oldest batch waiting in landing "
            f"({s.uri(s.paths.landing)}). Otherwise a CSV or Parquet batch inside it: its name there "
            "(batch_007.csv), a path or an s3:// URI under the landing prefix; anything outside landing is refused.",
        ),
        "force_action": Param(
            "auto",
            type="string",
            enum=ACTIONS,
            title="Action",
            description="auto (default): decided from drift by the thresholds in the decision and drift settings. "
            "skip / fine_tune / retrain force that action.",
        ),
        "promotion": Param(
            "config",
            type="string",
            enum=promotion_modes(s),
            title="Promotion",
            description=f"config (default): registry.promotion, configured {s.registry.promotion}. manual: a "
            "reviewer decides (the review_challenger DAG). auto: promote when every gate passes; offered only when "
            "registry.promotion is auto or registry.allow_form_auto is true (the form may lower the configured "
            "policy, never lift it).",
        ),
        "drift_p_threshold": Param(
            None,
            type=["null", "number"],
            minimum=0.000001,
            maximum=0.5,
            title="Drift p-value threshold (optional)",
            description=f"Empty: drift.p_threshold, configured {_configured(s.drift.p_threshold)}. A test whose "
            "p-value is below it counts as drift. From 0.000001 to 0.5.",
        ),
        "min_macro_f1": Param(
            None,
            type=["null", "number"],
            minimum=0,
            maximum=1,
            title="Macro-F1 floor (optional)",
            description=f"Empty: gates.min_macro_f1, configured {_configured(s.gates.min_macro_f1)}. The "
            "candidate's macro-F1 must reach it. From 0 (off) to 1.",
        ),
        "noninferiority_margin": Param(
            None,
            type=["null", "number"],
            minimum=0,
            maximum=0.5,
            title="Non-inferiority margin (optional)",
            description=f"Empty: gates.noninferiority_margin, configured {_configured(s.gates.noninferiority_margin)}"
            ". How far (macro-F1 as a fraction) the candidate may fall below the champion. From 0 to 0.5.",
        ),
    }


def promote_or_rollback_params() -> dict[str, Param]:
    return {
        "action": Param(
            "rollback",
            type="string",
            enum=["promote", "reject", "rollback"],
            title="Action",
            description="promote: make the version champion. reject: archive a challenger. "
            "rollback: make an earlier version champion again.",
        ),
        "version": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            title="Model version (optional)",
            description="The version to act on. Empty: the challenger (promote/reject) or the "
            "previous champion from the audit trail (rollback).",
        ),
        "reason": Param(
            None,
            type=["null", "string"],
            maxLength=1000,
            title="Reason (optional)",
            description="Recorded in the audit trail.",
        ),
        "request_id": Param(
            None,
            type=["null", "string"],
            maxLength=200,
            title="Request id (optional)",
            description="Empty: this run's id. To finish a request whose run failed part-way, give that run's id: "
            "the audit trail finds it and nothing is moved twice.",
        ),
    }


def split_params(params: dict[str, Any], settings: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a DAG run's params into (step params, dotted setting overrides), checking their values.

    ``promotion`` is checked against the configured ceiling (``settings``, default :func:`get_settings`).

    Raises:
        ValueError: a param has a value outside what the form allows; the message names the param (and, for a
            refused ``promotion``, the config keys).
    """
    step_params: dict[str, Any] = {}
    force = params.get("force_action", "auto") or "auto"
    if force not in ACTIONS:
        raise ValueError(f"param force_action={force!r} must be one of {ACTIONS}")
    step_params["force_action"] = force
    promotion = params.get("promotion", "config") or "config"
    if promotion not in PROMOTION_MODES:
        raise ValueError(f"param promotion={promotion!r} must be one of {PROMOTION_MODES}")
    if promotion != "config":
        from pipelines.config import get_settings
        from pipelines.registry import resolve_policy  # lazy: DAG files import this module at parse time

        resolve_policy(settings or get_settings(), promotion)  # raises when it would lift a manual ceiling
        step_params["promotion"] = promotion
    overrides = {}
    for name, key in THRESHOLD_OVERRIDES.items():
        value = params.get(name)
        if value in (None, ""):
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"param {name}={value!r} must be a number")
        overrides[key] = value
    return step_params, overrides
