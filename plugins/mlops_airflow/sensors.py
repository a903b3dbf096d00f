"""``ReviewSensor``: waits for a reviewer's decision on the challenger, recorded as a tag in MLflow."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue

from mlops_airflow.links import ModelVersionLink
from mlops_airflow.params import split_params

if TYPE_CHECKING:
    from airflow.sdk import Context

    from pipelines.config import Settings


def needs_review(settings: Settings, version: str) -> tuple[bool, str]:
    """Whether the model ``version`` carries ``eval.needs_review=true``, and its ``eval.review_reasons`` (both set by
    the register step)."""
    from pipelines.register import TAG_NEEDS_REVIEW, TAG_REVIEW_REASONS
    from pipelines.tracking import configure

    mv = configure(settings).get_model_version(settings.registry.model_name, str(version))
    tags = mv.tags or {}
    return str(tags.get(TAG_NEEDS_REVIEW, "")).strip().lower() == "true", str(tags.get(TAG_REVIEW_REASONS, ""))


class ReviewSensor(BaseSensorOperator):
    """Wait until the model ``version`` is approved or rejected (the ``review`` tag on the version, with the reviewer
    named in ``review_by``: an approval without one does not count while ``registry.require_reviewer`` is true; the
    sensor logs why and keeps waiting).

    Runs in ``reschedule`` mode, so no worker slot is held between pokes. Under the ``auto`` promotion policy it
    returns at once, unless the version carries the tag ``eval.needs_review=true`` (a gate asked for a human: below
    the TF-IDF baseline, or non-inferiority inconclusive); then it waits for the review tag as under ``manual``.
    On timeout the task fails with "review timed out" and nothing is promoted.

    Args:
        version: the model version to watch (templated; typically the register task's XCom).
    """

    template_fields: Sequence[str] = ("version",)
    operator_extra_links = (ModelVersionLink(),)
    ui_color = "#fff3c4"

    def __init__(self, *, version: str, **kwargs: Any) -> None:
        kwargs.setdefault("mode", "reschedule")
        super().__init__(**kwargs)
        self.version = version

    def poke(self, context: Context) -> PokeReturnValue | bool:
        from pipelines.config import get_settings
        from pipelines.promote import read_review, resolve_policy
        from pipelines.tracking import configure

        settings = get_settings()
        step_params, _ = split_params(dict(context.get("params") or {}), settings)
        policy = resolve_policy(settings, step_params.get("promotion"))
        name = settings.registry.model_name
        if policy == "auto":
            held, reasons = needs_review(settings, self.version)
            if not held:
                self.log.info("promotion policy is auto: no review needed for %s version %s", name, self.version)
                return PokeReturnValue(is_done=True, xcom_value={"decision": "auto", "version": self.version})
            self.log.info(
                "promotion policy is auto, but %s version %s is tagged eval.needs_review=true (%s): waiting for a "
                "human review as under manual",
                name,
                self.version,
                reasons or "see the version description",
            )
        review = read_review(settings, configure(settings).get_model_version(name, str(self.version)))
        state = review["state"]
        if review["problem"]:
            self.log.warning("not counted: %s", review["problem"])
        self.log.info(
            "waiting for review of %s version %s (tags %r = approved|rejected and %r = the reviewer, in the MLflow "
            "UI): %s",
            name,
            self.version,
            settings.registry.review_tag,
            settings.registry.review_by_tag,
            f"{state} by {review['by']}" if state else "no decision yet",
        )
        if state is None:
            return False
        action = {"approved": "approve", "rejected": "reject"}[state]
        return PokeReturnValue(is_done=True, xcom_value={"decision": action, "version": self.version})

    def execute(self, context: Context) -> Any:
        from airflow.sdk.exceptions import AirflowSensorTimeout

        try:
            return super().execute(context)
        except AirflowSensorTimeout:
            raise AirflowSensorTimeout(
                f"review timed out: no reviewer approved or rejected version {self.version} within "
                f"{self.timeout:.0f}s; nothing was promoted and the champion is unchanged"
            ) from None

    @classmethod
    def from_settings(cls, **kwargs: Any) -> ReviewSensor:
        """A sensor whose poke interval and timeout come from ``registry`` settings."""
        from pipelines.config import get_settings

        registry = get_settings().registry
        kwargs.setdefault("poke_interval", registry.review_poke_seconds)
        kwargs.setdefault("timeout", timedelta(minutes=registry.review_timeout_minutes).total_seconds())
        return cls(**kwargs)
