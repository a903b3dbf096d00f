"""The summary each step returns (its ``result.json`` and the Airflow task's XCom), as typed dicts.

Keys that other tasks read are required; the rest are documented and type-checked when present.
:func:`check` runs on every summary before it is written (:func:`pipelines.runner.run_step`), so a step that drops
or mistypes a key fails at once, naming the step and the key, instead of a later task failing on a missing value. (No ``from __future__ import annotations`` here: TypedDict
reads ``NotRequired`` from evaluated annotations.)
"""

import types
import typing
from typing import Any, NotRequired, TypedDict, Union


class ValidateSummary(TypedDict):
    passed: bool
    batch_id: str
    batch_uri: str
    accepted_uri: str | None
    rows: NotRequired[int]
    content_hash: NotRequired[str]
    source_hash: NotRequired[str]
    report_uri: NotRequired[str]
    data_docs_uri: NotRequired[str | None]
    duplicate_of: NotRequired[str]
    duplicate_uri: NotRequired[str]


class DriftSummary(TypedDict):
    severity: str
    has_reference: bool
    tests: dict[str, Any]
    reasons: list[str]
    champion_version: NotRequired[str | None]
    rule: NotRequired[str]
    rows: NotRequired[int]
    report_uri: NotRequired[str]


class DecideSummary(TypedDict):
    action: str
    reasons: list[str]
    severity: NotRequired[str | None]
    forced: NotRequired[bool]
    auto_action: NotRequired[str | None]
    new_rows: NotRequired[int | None]


class TrainSummary(TypedDict):
    action: str
    model_uri: str
    reference_uri: str
    eval_uri: str
    base: NotRequired[str]
    metrics: NotRequired[dict[str, Any]]
    sample_passes: NotRequired[int]
    train_seconds: NotRequired[float]
    new_rows: NotRequired[int]
    replay_rows: NotRequired[int]
    catch_up_batches: NotRequired[list[str]]


class CompressSummary(TypedDict):
    served_uri: str
    level: str
    agreement: float
    agreement_rows: NotRequired[int]
    size_mb: NotRequired[float]
    served_model: NotRequired[str]


class EvaluateSummary(TypedDict):
    passed: bool
    needs_review: bool
    gates: dict[str, Any]
    metrics: dict[str, Any]
    failures: list[str]
    review_reasons: NotRequired[list[str]]
    report_uri: NotRequired[str]
    eval_rows: NotRequired[int]


class RegisterSummary(TypedDict):
    model_name: str
    version: str | int
    alias: str
    promoted: bool
    needs_review: NotRequired[bool]
    policy: NotRequired[str]
    champion_before: NotRequired[str | None]


class PromoteSummary(TypedDict):
    action: str
    status: str
    version: NotRequired[str | int | None]
    champion_before: NotRequired[str | None]
    champion_after: NotRequired[str | None]


class MonitorSummary(TypedDict):
    status: str
    reasons: list[str]
    window_id: NotRequired[str | None]


def check(step: str, summary: dict[str, Any], schema: type | None) -> None:
    """Raise TypeError when ``summary`` lacks a required key of ``schema`` or a key has the wrong type."""
    if schema is None:
        return
    hints = typing.get_type_hints(schema, include_extras=True)
    for key in sorted(getattr(schema, "__required_keys__", frozenset())):
        if key not in summary:
            raise TypeError(f"step {step!r} returned a summary without {key!r} (pipelines.summaries.{schema.__name__})")
    for key, hint in hints.items():
        if key in summary and not _matches(summary[key], _strip(hint)):
            raise TypeError(
                f"step {step!r} returned {key}={type(summary[key]).__name__} where "
                f"pipelines.summaries.{schema.__name__} declares {_strip(hint)}"
            )


def _strip(hint: Any) -> Any:
    while typing.get_origin(hint) is NotRequired:
        hint = typing.get_args(hint)[0]
    return hint


def _matches(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is not None:
        return isinstance(value, origin)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)
