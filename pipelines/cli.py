"""``python -m pipelines``: run one step, or write the demo batches. The container entrypoint.

Exit codes (the contract the Airflow operator relies on in every runtime; see :func:`pipelines.errors.exit_code`,
which decides by the error's type, never by its text):

- 0: done; the last stdout line is the step's JSON summary.
- 2: an expected failure that a retry cannot help: bad config (YAML, key, value, store URI), a bad argument,
  param, run id or input URI, bad data, a rejected model, a corrupt artifact. One line ``error: ...`` on stderr,
  no traceback. Airflow fails the task without retrying.
- 3: a service (MLflow, S3) was unreachable or timed out. One line ``error (transient): ...``; Airflow retries.
- 1: anything else (a bug): Python's traceback; Airflow retries as configured.

``--debug`` (or ``MLOPS_DEBUG=1``) also prints the traceback of an expected failure, and logs at debug level.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Any, NoReturn

from pipelines import runner
from pipelines.config import check_params, get_settings
from pipelines.context import StepContext, StepSpec
from pipelines.data.demo import write_demo_batches
from pipelines.errors import EXIT_PERMANENT, EXIT_UNEXPECTED, exit_code, one_line
from pipelines.model.serve import Supervisor
from pipelines.runner import STEPS

#: Airflow's default ``allowed_run_id_pattern``, capped: no quotes, spaces or slashes reach a path or a query.
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.~:+-]{1,250}$")


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} {item!r} must look like key=value")
        out[key] = value
    return out


def check_run_id(run_id: str) -> str:
    """The run id, if it is 1-250 of ``A-Z a-z 0-9 _ . ~ : + -`` (Airflow's default run id pattern).

    Raises:
        ValueError: naming the run id and the allowed characters.
    """
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.match(run_id):
        raise ValueError(f"run id {run_id!r} is not allowed: use 1-250 of the characters A-Z a-z 0-9 _ . ~ : + -")
    return run_id


def check_inputs(inputs: dict[str, str]) -> dict[str, str]:
    """Inputs with a usable location: non-empty, one line, and for S3 a bucket and a key.

    Raises:
        ValueError: naming the input.
    """
    for name, uri in inputs.items():
        if not uri.strip() or any(c in uri for c in "\x00\r\n"):
            raise ValueError(f"input {name}={uri!r} is not a location: expected a path or s3://bucket/key")
        if uri.startswith("s3:"):
            bucket, _, key = uri.removeprefix("s3://").partition("/")
            if not uri.startswith("s3://") or not bucket or not key.strip("/"):
                raise ValueError(f"input {name}={uri!r} names no object: expected s3://bucket/key")
    return inputs


def _inputs_help(spec: StepSpec) -> str:
    """The step's declared inputs and reads, for its ``--help``."""
    lines = [
        f"input {i.name}{'' if i.required else ' (optional)'}: {i.doc}"
        + (f" (in a DAG run: {i.source})" if i.source else "")
        for i in spec.inputs
    ]
    if spec.reads:
        lines.append("reads this run's results of: " + ", ".join(spec.reads))
    return "; ".join(lines)


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr, exit 2 (argparse prints the usage block too)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_PERMANENT, f"error: {message} (see {self.prog} --help)\n")


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m pipelines",
        description="Run one step of the continuous-training loop, write the demo batches, or serve the champion.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--debug", action="store_true", help="debug logging, and a traceback with every error (or MLOPS_DEBUG=1)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for step, spec in STEPS.items():
        p = sub.add_parser(step, help=spec.help, description=spec.help, epilog=_inputs_help(spec))
        p.add_argument("--run-id", required=True, help="pipeline run id; outputs go to <root>/runs/<run-id>/<step>/")
        p.add_argument(
            "--input",
            action="append",
            default=[],
            metavar="NAME=URI",
            help="an upstream URI: " + (", ".join(i.name for i in spec.inputs) or "none for this step"),
        )
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
    sub.add_parser(
        "serve",
        help="serve the champion with MLflow's scoring server behind a front that follows the alias (make serve)",
        description="Serve models:/<registry.model_name>@champion on serving.host:serving.port; see pipelines/model/serve.py.",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; return its exit code (see the module doc). Unexpected errors propagate (exit 1)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("MLOPS_DEBUG", "").strip().lower() in {"1", "true", "yes"}
    logging.basicConfig(
        level=logging.DEBUG if args.verbose or debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return _run(args)
    except Exception as exc:
        code = exit_code(exc)
        if code == EXIT_UNEXPECTED:
            raise
        if debug:
            traceback.print_exc(file=sys.stderr)
        prefix = "error" if code == EXIT_PERMANENT else "error (transient)"
        print(f"{prefix}: {one_line(exc)}", file=sys.stderr)
        return code


def _run(args: argparse.Namespace) -> int:
    settings = get_settings()
    if args.command == "demo-data":
        for uri in write_demo_batches(settings, args.only):
            print(uri)
        return 0
    if args.command == "serve":
        Supervisor(settings).run(announce=lambda line: print(line, flush=True))
        return 0
    overrides = {k: _parse_value(v) for k, v in _pairs(args.set, "--set").items()}
    if overrides:
        settings = settings.with_overrides(overrides)
    ctx = StepContext(
        step=args.command,
        run_id=check_run_id(args.run_id),
        settings=settings,
        inputs=check_inputs(_pairs(args.input, "--input")),
        params=check_params({k: _parse_value(v) for k, v in _pairs(args.param, "--param").items()}),
        partition=args.partition,
        mlflow_parent_run_id=args.mlflow_parent_run_id,
        dag_id=args.dag_id,
    )
    result = runner.run_step(ctx)  # an attribute lookup: tests replace run_step
    if args.result_file:
        Path(args.result_file).parent.mkdir(parents=True, exist_ok=True)
        Path(args.result_file).write_text(json.dumps(result, default=str))
    # The last stdout line is the summary: the docker runtime reads it back as the task's XCom.
    print(json.dumps(result, sort_keys=True, default=str))
    return 0
