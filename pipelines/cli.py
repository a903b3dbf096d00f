"""``python -m pipelines``: run one step, or write the demo batches. The container entrypoint."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from pipelines.config import ConfigError, get_settings
from pipelines.errors import PipelineError
from pipelines.steps import STEPS

_STEP_HELP = {
    "validate": "check a landing batch with Great Expectations; accept or quarantine it",
    "drift": "compare an accepted batch with the champion's reference (alibi-detect)",
    "decide": "map the drift result and params to skip / fine_tune / retrain",
    "train": "fine-tune or retrain the transformer classifier",
    "compress": "prune, export to ONNX, quantize; build the served pyfunc model",
    "evaluate": "gate the served candidate against floors, the champion and its slices",
    "register": "register the candidate as a model version and stage it as challenger",
    "promote": "apply a review decision or the auto policy to the challenger",
}


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} {item!r} must look like key=value")
        out[key] = value
    return out


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines",
        description="Run one step of the continuous-training loop, or write the demo batches.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for step in STEPS:
        p = sub.add_parser(step, help=_STEP_HELP.get(step, ""), description=_STEP_HELP.get(step, ""))
        p.add_argument("--run-id", required=True, help="pipeline run id; outputs go to <root>/runs/<run-id>/<step>/")
        p.add_argument("--input", action="append", default=[], metavar="NAME=URI", help="an upstream URI")
        p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="a run parameter (JSON)")
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="a setting override, dotted key, JSON value (drift.p_threshold=0.05)",
        )
        p.add_argument("--dag-id", default=None, help="orchestrating DAG id, for lineage")
        p.add_argument("--partition", default=None, help="data interval start (ISO)")
        p.add_argument("--mlflow-parent-run-id", default=None)
        p.add_argument(
            "--result-file",
            default=None,
            help="also write the summary here (the Kubernetes runtime reads /airflow/xcom/return.json)",
        )
    demo = sub.add_parser("demo-data", help="write the demo batches into the landing folder")
    demo.add_argument("--only", action="append", default=None, metavar="NAME", help="write only this batch")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        settings = get_settings()
        if args.command == "demo-data":
            from pipelines.demo import write_demo_batches

            for uri in write_demo_batches(settings, args.only):
                print(uri)
            return 0
        from pipelines.context import StepContext
        from pipelines.steps import run_step

        overrides = {k: _parse_value(v) for k, v in _pairs(args.set, "--set").items()}
        if overrides:
            settings = settings.with_overrides(overrides)
        ctx = StepContext(
            step=args.command,
            run_id=args.run_id,
            settings=settings,
            inputs=_pairs(args.input, "--input"),
            params={k: _parse_value(v) for k, v in _pairs(args.param, "--param").items()},
            partition=args.partition,
            mlflow_parent_run_id=args.mlflow_parent_run_id,
            dag_id=args.dag_id,
        )
        result = run_step(ctx)
        if args.result_file:
            from pathlib import Path

            Path(args.result_file).parent.mkdir(parents=True, exist_ok=True)
            Path(args.result_file).write_text(json.dumps(result, default=str))
    except (ConfigError, ValueError, FileNotFoundError, PipelineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # The last stdout line is the summary: the docker runtime reads it back as the task's XCom.
    print(json.dumps(result, sort_keys=True, default=str))
    return 0
