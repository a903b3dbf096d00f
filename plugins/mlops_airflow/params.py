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


def continuous_training_params() -> dict[str, Param]:
    """The trigger form: simple typed values only (object-typed params have trigger-form bugs in Airflow 3)."""
    return {
        "batch_uri": Param(
            "",
            type="string",
            title="Batch URI",
            description="A CSV or Parquet batch inside the landing folder: its name there (batch_007.csv), a path "
            "or an s3:// URI under the landing prefix; anything outside landing is refused. "
            "Empty: the oldest waiting batch.",
        ),
        "force_action": Param(
            "auto",
            type="string",
            enum=ACTIONS,
            title="Action",
            description="auto: decided from drift. skip / fine_tune / retrain force that action.",
        ),
        "promotion": Param(
            "config",
            type="string",
            enum=promotion_modes(),
            title="Promotion",
            description="config: registry.promotion from the configuration. manual: wait for a reviewer. "
            "auto: promote when every gate passes; offered only when registry.promotion is auto or "
            "registry.allow_form_auto is true (the form may lower the configured policy, never lift it).",
        ),
        "drift_p_threshold": Param(
            None,
            type=["null", "number"],
            exclusiveMinimum=0,
            exclusiveMaximum=1,
            title="Drift p-value threshold",
            description="Override drift.p_threshold for this run.",
        ),
        "min_macro_f1": Param(
            None,
            type=["null", "number"],
            minimum=0,
            maximum=1,
            title="Macro-F1 floor",
            description="Override gates.min_macro_f1 for this run.",
        ),
        "noninferiority_margin": Param(
            None,
            type=["null", "number"],
            minimum=0,
            maximum=1,
            title="Non-inferiority margin",
            description="Override gates.noninferiority_margin (macro-F1 points as a fraction) for this run.",
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
            title="Model version",
            description="The version to act on. Empty: the challenger (promote/reject) or the "
            "previous champion from the audit trail (rollback).",
        ),
        "reason": Param("", type="string", title="Reason", description="Recorded in the audit trail."),
        "request_id": Param(
            "",
            type="string",
            maxLength=200,
            title="Request id",
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
        from pipelines.promote import resolve_policy

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
