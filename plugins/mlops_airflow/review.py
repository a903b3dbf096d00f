"""The review wait of a staged challenger: a Human-in-the-loop task that also watches the MLflow review tags.

``ChallengerReviewOperator`` is an Airflow Human-in-the-loop operator (``apache-airflow-providers-standard``'s
``HITLOperator``, options ``Approve`` / ``Reject`` and a ``comment`` field): the request appears in Airflow's
*Required Actions*, and the response records the Airflow user who gave it. Its wait is deferred to
:class:`ReviewTrigger`, which runs in the triggerer (no worker slot, no run lock) and ends at the first of:

- a response in Airflow (the Core API also resumes the task at once when a user responds);
- a decision in the MLflow tags (``review`` + ``review_by`` on the version page), a newer challenger superseding
  this one, or the version leaving review another way (promoted or rejected by ``promote_or_rollback``). The
  trigger then answers the Airflow request itself (``Approve`` / ``Reject`` with a comment naming the MLflow
  decision), so Required Actions no longer lists it as pending;
- ``registry.review_timeout_minutes``: the task fails with "review timed out"; nothing is promoted.

Why a deferral and not Airflow 3.3's ``awaiting_input`` state: a task parked in ``awaiting_input`` is resumed only
by a response through Airflow's API or by its timeout, so a decision taken in MLflow could not end it. The deferred
task holds no worker slot either, and Airflow's HITL API resumes a deferred HITL task just like an awaiting one.

On resume the first decision wins (:func:`pipelines.review.first_decision`): an Airflow response is written to the
version's tags (``review_by`` = the responding user, ``review_source=airflow``) unless the tags already hold a
decision, which then stands. The task returns ``{"decision": "approve" | "reject", "version", "by", "source"}`` for
the ``promote`` task, and is skipped (so is ``promote``) when there is nothing left to decide.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import Param
from airflow.triggers.base import BaseTrigger, TriggerEvent

from mlops_airflow.links import ModelVersionLink

if TYPE_CHECKING:
    from airflow.sdk import Context

log = logging.getLogger(__name__)

APPROVE, REJECT = "Approve", "Reject"
#: The option that closes the Airflow request for each state a version can leave review in.
OPTION_FOR_STATE = {"approved": APPROVE, "champion": APPROVE, "rejected": REJECT, "superseded": REJECT}


def _settings() -> Any:
    from pipelines.config import get_settings

    return get_settings()


def _status(version: str) -> dict[str, Any]:
    from pipelines.review import review_status

    return review_status(_settings(), version)


def closing_comment(status: dict[str, Any]) -> str:
    """The comment written into the Airflow request when the review ended outside Airflow."""
    if status["state"] in {"approved", "rejected"}:
        text = f"{status['state']} in MLflow by {status['by']}"
        return text + (f": {status['comment']}" if status.get("comment") else "")
    return f"closed without a decision here: {status['why']}"


class ReviewTrigger(BaseTrigger):
    """Waits for the first of: a response to the HITL request of task instance ``ti_id``, a review decision (or
    the end of the review) of model ``version`` in MLflow, or ``timeout_datetime``."""

    def __init__(
        self,
        *,
        ti_id: Any,
        version: str,
        poke_interval: float = 60.0,
        timeout_datetime: datetime | None = None,
    ) -> None:
        super().__init__()
        self.ti_id = ti_id
        self.version = str(version)
        self.poke_interval = float(poke_interval)
        self.timeout_datetime = timeout_datetime

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "ti_id": self.ti_id,
                "version": self.version,
                "poke_interval": self.poke_interval,
                "timeout_datetime": self.timeout_datetime,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow.sdk.timezone import utcnow
        from asgiref.sync import sync_to_async

        while True:
            response = await sync_to_async(airflow_response)(self.ti_id)
            if response is not None:
                yield TriggerEvent({"source": "airflow", "version": self.version, **response})
                return
            try:
                status = await sync_to_async(_status, thread_sensitive=False)(self.version)
            except Exception as exc:  # MLflow unreachable for a moment: keep waiting, the next poll retries
                self.log.warning("review of version %s: could not read MLflow (%s); retrying", self.version, exc)
                status = {"state": "pending"}
            if status["state"] != "pending":
                option = OPTION_FOR_STATE.get(status["state"], REJECT)
                closed = await sync_to_async(close_request)(self.ti_id, option, closing_comment(status))
                if not closed and await sync_to_async(airflow_response)(self.ti_id) is not None:
                    continue  # a user answered in Airflow at the same moment: settle it on resume (first wins)
                yield TriggerEvent({"source": "mlflow", "version": self.version, "status": status})
                return
            if self.timeout_datetime is not None and utcnow() >= self.timeout_datetime:
                yield TriggerEvent(
                    {"error": "no review decision before the timeout", "error_type": "timeout", "version": self.version}
                )
                return
            await asyncio.sleep(self.poke_interval)


# The triggerer serves a trigger's HITL reads and writes. ``dag.test()`` (and ``airflow dags test``) runs a trigger in
# line under a task supervisor that answers them with None; there, in the process that holds the metadata DB, the
# HITL table is read and written directly instead.
def airflow_response(ti_id: Any) -> dict[str, Any] | None:
    """The response to the HITL request of ``ti_id`` in Airflow, or None while there is none."""
    from airflow.sdk.execution_time.hitl import get_hitl_detail_content_detail

    resp = get_hitl_detail_content_detail(ti_id=ti_id)
    if resp is None:
        return _response_from_db(ti_id)
    if not (resp.response_received and resp.chosen_options):
        return None
    user = resp.responded_by_user
    return {
        "chosen_options": list(resp.chosen_options),
        "params_input": resp.params_input or {},
        "responded_at": resp.responded_at,
        "responded_by_user": {"id": user.id, "name": user.name} if user else None,
    }


def close_request(ti_id: Any, option: str, comment: str) -> bool:
    """Answer the HITL request of ``ti_id`` with ``option`` and ``comment`` (the review ended elsewhere); False when
    it already has a response (a user answered in Airflow meanwhile)."""
    from airflow.sdk.execution_time.hitl import update_hitl_detail_response

    try:
        resp = update_hitl_detail_response(ti_id=ti_id, chosen_options=[option], params_input={"comment": comment})
    except Exception as exc:  # 409: already answered
        log.info("HITL request %s not closed: %s", ti_id, exc)
        return False
    return resp is not None or _close_in_db(ti_id, option, comment)


def _response_from_db(ti_id: Any) -> dict[str, Any] | None:
    from airflow.models.hitl import HITLDetail
    from airflow.utils.session import create_session

    with create_session() as session:
        detail = session.query(HITLDetail).filter(HITLDetail.ti_id == ti_id).one_or_none()
        if detail is None or not detail.chosen_options:
            return None
        return {
            "chosen_options": list(detail.chosen_options),
            "params_input": dict(detail.params_input or {}),
            "responded_at": detail.responded_at,
            "responded_by_user": detail.responded_by_user,
        }


def _close_in_db(ti_id: Any, option: str, comment: str) -> bool:
    from airflow.models.hitl import HITLDetail
    from airflow.utils import timezone
    from airflow.utils.session import create_session

    with create_session() as session:
        detail = session.query(HITLDetail).filter(HITLDetail.ti_id == ti_id).one_or_none()
        if detail is None or detail.chosen_options:
            return False
        detail.responded_at = timezone.utcnow()
        detail.chosen_options = [option]
        detail.params_input = {"comment": comment}
    return True


def version_to_review(given: Any, events: Any, challenger: str | None) -> str | None:
    """The version a review run is about: the ``version`` param, else the newest version named by the triggering
    asset events, else the current challenger."""
    text = "" if given is None else str(given).strip()
    if text and text not in {"None", "null"}:
        if not text.isdigit():
            raise ValueError(f"param version={given!r} must be a model version number")
        return str(int(text))
    named = []
    for evs in events.values() if events else []:
        for ev in evs:
            v = str((getattr(ev, "extra", None) or {}).get("version") or "")
            if v.isdigit():
                named.append(int(v))
    if named:
        return str(max(named))
    return challenger


class ChallengerReviewOperator(HITLOperator):
    """Human-in-the-loop review of model ``version`` (templated; empty: from the triggering asset event, else the
    current challenger). See the module doc for how the wait ends."""

    template_fields: Sequence[str] = ("subject", "body", "version")
    operator_extra_links = (ModelVersionLink(),)
    ui_color = "#fff3c4"

    def __init__(self, *, version: str = "", poke_interval: float | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("subject", "Review the staged challenger")
        # The DAG's params arrive merged in kwargs["params"]; HITLOperator keeps only the task-level ones in its form.
        given = kwargs.pop("params", None) or {}
        params = {k: given.get_param(k) if hasattr(given, "get_param") else given[k] for k in given}
        params.setdefault(
            "comment",
            Param(
                None,
                type=["null", "string"],
                maxLength=2000,
                title="Comment (optional)",
                description="Why you approve or reject (kept in the MLflow tag review_comment and the audit trail).",
                source="task",
            ),
        )
        super().__init__(options=[APPROVE, REJECT], multiple=False, params=params, **kwargs)
        self.version = version
        self.poke_interval = poke_interval

    @classmethod
    def from_settings(cls, **kwargs: Any) -> ChallengerReviewOperator:
        """An operator whose poll interval and response timeout come from the ``registry`` settings."""
        registry = _settings().registry
        kwargs.setdefault("poke_interval", registry.review_poke_seconds)
        kwargs.setdefault("response_timeout", timedelta(minutes=registry.review_timeout_minutes))
        return cls(**kwargs)

    # --- the wait ---------------------------------------------------------------------------------------------
    def execute(self, context: Context) -> Any:
        from airflow.sdk.execution_time.hitl import upsert_hitl_detail
        from airflow.sdk.timezone import utcnow

        from pipelines.io.tracking import configure
        from pipelines.registry import CHALLENGER, alias_version  # lazy: DAG files import this module

        settings = _settings()
        name = settings.registry.model_name
        version = version_to_review(
            self.version, context.get("triggering_asset_events"), alias_version(configure(settings), name, CHALLENGER)
        )
        if version is None:
            return self._finish({"state": "closed", "why": f"model {name!r} has no {CHALLENGER}; nothing to review"})
        self.version = version
        url = f"{settings.mlflow.ui_url.rstrip('/')}/#/models/{name}/versions/{version}"
        context["ti"].xcom_push(key=ModelVersionLink.key, value=url)
        status = _status(version)
        if status["state"] != "pending":
            return self._finish(status)
        self.subject = f"Review {name} version {version}"
        self.body = review_body(settings, version, url)
        upsert_hitl_detail(
            ti_id=context["task_instance"].id,
            options=self.options,
            subject=self.subject,
            body=self.body,
            defaults=self.defaults,
            multiple=self.multiple,
            params=self.serialized_params,
            assigned_users=self.assigned_users,
        )
        timeout_at = utcnow() + self.response_timeout if self.response_timeout else None
        self.log.info(
            "waiting for a review of %s version %s: Airflow Required Actions (this task) or the MLflow version page "
            "(%s; tags %s=approved|rejected and %s=<your name>); the first decision wins%s",
            name,
            version,
            url,
            settings.registry.review_tag,
            settings.registry.review_by_tag,
            f"; times out at {timeout_at.isoformat(timespec='seconds')}" if timeout_at else "",
        )
        self.defer(
            trigger=ReviewTrigger(
                ti_id=context["task_instance"].id,
                version=version,
                poke_interval=self.poke_interval or settings.registry.review_poke_seconds,
                timeout_datetime=timeout_at,
            ),
            method_name="execute_complete",
            kwargs={"version": version},
        )

    def execute_complete(self, context: Context, event: dict[str, Any], version: str | None = None) -> Any:
        from airflow.sdk.exceptions import AirflowFailException

        from pipelines.review import first_decision, record_response

        # The version travels in the defer kwargs and in the trigger's event (dag.test keeps only the event).
        version = str(version or event.get("version") or self.version)
        self.version = version
        if event.get("error"):
            if event.get("error_type") == "timeout":
                raise AirflowFailException(
                    f"review timed out: no reviewer approved or rejected version {version} within "
                    f"{self.response_timeout}; nothing was promoted and the champion is unchanged (the version "
                    "stays the challenger: trigger review_challenger again to reopen its review)"
                )
            raise AirflowFailException(f"review of version {version} failed: {event['error']}")
        if event.get("source") == "mlflow":
            return self._finish(first_decision(event["status"], None) | {"why": event["status"].get("why")})
        # A response in Airflow (from the trigger, or the Core API resuming the task directly).
        payload = {k: event.get(k) for k in ("chosen_options", "params_input", "responded_at", "responded_by_user")}
        payload["params_input"] = payload["params_input"] or {}
        super().execute_complete(context, payload)  # validates the option and the form, records the summary
        choice = (payload["chosen_options"] or [REJECT])[0]
        user = payload.get("responded_by_user") or {}
        settled = record_response(
            _settings(),
            version,
            "approved" if choice == APPROVE else "rejected",
            str(user.get("name") or ""),
            (payload["params_input"] or {}).get("comment"),
        )
        return self._finish(settled)

    def _finish(self, settled: dict[str, Any]) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        state = settled.get("state")
        if state in {"approved", "rejected"}:
            out = {
                "decision": "approve" if state == "approved" else "reject",
                "version": str(self.version),
                "by": settled.get("by"),
                "source": settled.get("source"),
            }
            self.log.info("review of version %s: %s", self.version, out)
            return out
        raise AirflowSkipException(f"version {self.version}: {settled.get('why') or state}; nothing to promote")


def review_body(settings: Any, version: str, url: str) -> str:
    """The Markdown shown with the request in Required Actions: the numbers, the link, the two ways to decide."""
    from pipelines.io.tracking import configure

    reg = settings.registry
    tags = configure(settings).get_model_version(reg.model_name, version).tags or {}
    lines = [
        f"**{reg.model_name} version {version}** is staged as the challenger ([MLflow version page]({url}): the "
        "full evaluation report).",
        "",
        f"- macro-F1 {tags.get('eval.macro_f1', '–')} (champion {tags.get('eval.champion_macro_f1', '–')}, TF-IDF "
        f"baseline {tags.get('eval.baseline_macro_f1', '–')}) on {tags.get('eval.rows', '–')} evaluation rows",
        f"- decision: {tags.get('decision.action', '–')}; batch {tags.get('batch.id', '–')}",
    ]
    if tags.get("eval.needs_review") == "true":
        lines.append(f"- held for a human: {tags.get('eval.review_reasons', 'see the report')}")
    lines += [
        "",
        f"Approve or Reject here, or on the MLflow version page with the tags `{reg.review_tag}` = `approved` | "
        f"`rejected` and `{reg.review_by_tag}` = your name. The first decision wins; Approve makes it the champion.",
    ]
    return "\n".join(lines)
