"""The registry of steps and the one function that runs a step and records its summary."""

from __future__ import annotations

import importlib
import json
import logging
import sys
import time
from typing import Any

from pipelines.context import StepContext

log = logging.getLogger(__name__)

#: step name -> module with ``run(ctx) -> dict``; the order is the loop's order.
STEPS: dict[str, str] = {
    "validate": "pipelines.validate",
    "drift": "pipelines.drift",
    "decide": "pipelines.decide",
    "train": "pipelines.train",
    "compress": "pipelines.compress",
    "evaluate": "pipelines.evaluate",
    "register": "pipelines.register",
    "promote": "pipelines.promote",
    "monitor": "pipelines.monitor",
}


def run_step(ctx: StepContext) -> dict[str, Any]:
    """Run ``ctx.step``, write its summary to ``result.json`` in the step folder, and return it.

    Raises:
        ValueError: the step is unknown.
    """
    if ctx.step not in STEPS:
        raise ValueError(f"unknown step {ctx.step!r}; expected one of: {', '.join(STEPS)}")
    module = importlib.import_module(STEPS[ctx.step])
    started = time.perf_counter()
    log.info("step %s: run %s, inputs %s", ctx.step, ctx.run_id, ctx.inputs)
    result = module.run(ctx)
    result = dict(result)
    result.setdefault("step", ctx.step)
    result["compute_s"] = round(time.perf_counter() - started, 3)
    if "mlflow" in sys.modules and "mlflow_run_id" not in result:
        # The step used MLflow: hand its run on, so the task can link to it.
        from pipelines.tracking import find_step_run

        found = find_step_run(ctx)
        if found:
            result["mlflow_experiment_id"], result["mlflow_run_id"] = found
    text = json.dumps(result, indent=2, sort_keys=True, default=str)
    ctx.storage.write_text(ctx.output("result.json"), text)
    log.info("step %s done in %.1fs: %s", ctx.step, result["compute_s"], ctx.output("result.json"))
    return json.loads(text)
