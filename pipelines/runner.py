"""The registry of steps and the one function that runs a step and records its summary."""

from __future__ import annotations

import importlib
import json
import logging
import sys
import time
from typing import Any

from pipelines import summaries
from pipelines.context import SPECS, StepContext
from pipelines.errors import BadInput
from pipelines.io.tracking import extend_parent_run, find_step_run

log = logging.getLogger(__name__)

#: step name -> its declaration (module with ``run(ctx) -> dict``, inputs, results read); in the loop's order.
STEPS = SPECS


def run_step(ctx: StepContext) -> dict[str, Any]:
    """Run ``ctx.step``, write its summary to ``result.json`` in the step folder, and return it.

    Raises:
        ValueError: the step is unknown.
    """
    if ctx.step not in STEPS:
        raise ValueError(f"unknown step {ctx.step!r}; expected one of: {', '.join(STEPS)}")
    spec = STEPS[ctx.step]
    unknown = sorted(set(ctx.inputs) - {i.name for i in spec.inputs})
    if unknown:
        takes = ", ".join(i.name for i in spec.inputs) or "none"
        raise BadInput(f"step {ctx.step!r} takes no input {', '.join(map(repr, unknown))} (it takes: {takes})")
    module = importlib.import_module(spec.module)
    started = time.perf_counter()
    log.info("step %s: run %s, inputs %s", ctx.step, ctx.run_id, ctx.inputs)
    result = module.run(ctx)
    result = dict(result)
    summaries.check(ctx.step, result, spec.summary)
    result.setdefault("step", ctx.step)
    result["compute_s"] = round(time.perf_counter() - started, 3)
    if "mlflow" in sys.modules:
        if "mlflow_run_id" not in result:  # the step used MLflow: hand its run on, so the task can link to it
            found = find_step_run(ctx)
            if found:
                result["mlflow_experiment_id"], result["mlflow_run_id"] = found
        try:
            extend_parent_run(ctx)  # the parent run's duration spans its children
        except Exception as exc:  # cosmetic (the UI's duration column): never fails a step that did its work
            log.warning("step %s: could not move the MLflow parent run's end time: %s", ctx.step, exc)
    text = json.dumps(result, indent=2, sort_keys=True, default=str)
    ctx.storage.write_text(ctx.output("result.json"), text)
    for line in outcome_lines(ctx.step, result):
        log.info("%s", line)
    log.info("step %s done in %.1fs: %s", ctx.step, result["compute_s"], ctx.output("result.json"))
    return json.loads(text)


def _num(value: Any, digits: int = 3) -> str:
    return f"{float(value):.{digits}f}" if isinstance(value, int | float) and not isinstance(value, bool) else "-"


def outcome_lines(step: str, result: dict[str, Any]) -> list[str]:
    """What a step decided and why, in a few lines for its log (the task log in Airflow, stderr on the CLI)."""
    r = result
    if step == "validate":
        if not r.get("passed"):
            why = "; ".join(str(f) for f in (r.get("failures") or [])[:5]) or "see the validation report"
            return [f"validate: batch {r.get('batch_id')} FAILED validation and was quarantined: {why}"]
        dup = f"; identical to {r['duplicate_of']} (duplicate: it will be skipped)" if r.get("duplicate_of") else ""
        return [f"validate: batch {r.get('batch_id')} passed ({r.get('rows')} rows) -> {r.get('accepted_uri')}{dup}"]
    if step == "drift":
        lines = [f"drift: severity {r.get('severity')} (rule: {r.get('rule', '-')})"]
        for name, t in (r.get("tests") or {}).items():
            verdict = "DRIFTED" if t.get("drifted") else "no drift"
            lines.append(
                f"drift:   {name}: statistic {_num(t.get('statistic'))}, p {_num(t.get('p_value'), 4)} "
                f"against {_num(t.get('threshold'), 4)}: {verdict}"
            )
        return lines
    if step == "decide":
        forced = " (forced by the run's force_action)" if r.get("forced") else ""
        return [f"decide: action {r.get('action')}{forced}"] + [
            f"decide:   because {x}" for x in r.get("reasons") or []
        ]
    if step == "train":
        m = r.get("metrics") or {}
        return [
            f"train: {r.get('action')} from {r.get('base')} on {r.get('new_rows')} new + {r.get('replay_rows')} "
            f"replayed rows ({r.get('device')}, {r.get('train_seconds')} s); validation macro-F1 "
            f"{_num(m.get('val_macro_f1'))}"
        ]
    if step == "compress":
        return [
            f"compress: level {r.get('level')}, agreement with fp32 {_num(r.get('agreement'), 4)}, "
            f"size {_num(r.get('size_mb'), 1)} MB"
        ]
    if step == "evaluate":
        outcome = "FAILED" if not r.get("passed") else "PASSED, NEEDS REVIEW" if r.get("needs_review") else "PASSED"
        m = r.get("metrics") or {}
        lines = [
            f"evaluate: gates {outcome}; macro-F1 {_num(m.get('macro_f1'))} (champion "
            f"{_num(m.get('champion_macro_f1'))}, TF-IDF baseline {_num(m.get('baseline_macro_f1'))}, majority "
            f"{_num(m.get('majority_macro_f1'))}) on {r.get('eval_rows')} rows"
        ]
        for name, g in sorted((r.get("gates") or {}).items()):
            result_word = (
                "skipped" if g.get("skipped") else str(g.get("outcome") or ("pass" if g.get("passed") else "fail"))
            )
            lines.append(
                f"evaluate:   gate {name}: {result_word} (value {_num(g.get('value'))} "
                f"{g.get('comparator', '')} {_num(g.get('threshold'))})"
            )
        lines += [f"evaluate:   failed because {f}" for f in r.get("failures") or []]
        lines += [f"evaluate:   needs a human because {f}" for f in r.get("review_reasons") or []]
        return lines
    if step == "register":
        where = (
            "promoted to champion by the auto policy"
            if r.get("promoted")
            else "staged as the challenger, awaiting a review (review_challenger DAG / MLflow version page)"
            if r.get("alias") == "challenger"
            else f"alias {r.get('alias')}"
        )
        sup = f"; superseded older pending versions {', '.join(r['superseded'])}" if r.get("superseded") else ""
        return [
            f"register: {r.get('model_name')} version {r.get('version')} (policy {r.get('policy')}): {where}; "
            f"champion before: {r.get('champion_before') or 'none'}{sup}"
        ]
    if step == "promote":
        return [
            f"promote: {r.get('action')} version {r.get('version')}: {r.get('status')}; champion "
            f"{r.get('champion_before') or 'none'} -> {r.get('champion_after') or 'none'} (request "
            f"{r.get('request_id')})"
        ]
    if step == "monitor":
        return [f"monitor: window {r.get('window_id')}: {r.get('status')}"] + [
            f"monitor:   because {x}" for x in r.get("reasons") or []
        ]
    return []
