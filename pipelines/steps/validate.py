"""Step ``validate``: check a landing batch with a Great Expectations suite; accept it or quarantine it.

The suite (:func:`build_suite`) is defined here in code from ``settings.validation`` and ``settings.data``:

| check | GX expectation |
| --- | --- |
| required columns present (text, label; the slice column when ``slice_required``) | ``expect_column_to_exist`` |
| at least ``min_rows`` rows | ``expect_table_row_count_to_be_between`` |
| text and label never null | ``expect_column_values_to_not_be_null`` |
| text length in [``min_text_chars``, ``max_text_chars``] (so not empty) | ``expect_column_value_lengths_to_be_between`` |
| text not blank (only whitespace) | ``expect_column_values_to_not_match_regex`` |
| label in ``data.labels`` | ``expect_column_values_to_be_in_set`` |
| duplicate texts at most ``max_duplicate_share`` | ``expect_column_proportion_of_unique_values_to_be_between`` |
| texts with control or U+FFFD replacement characters at most ``max_bad_char_share`` | ``expect_column_values_to_not_match_regex`` (``mostly``) |
| slice values in ``known_slices`` (when set) | ``expect_column_values_to_be_in_set`` |

A file that cannot be read as a table (not CSV, not UTF-8, empty, truncated inside a quoted field, a broken
Parquet file) fails before GX runs, with the same :class:`~pipelines.errors.DataValidationFailed` and a JSON report.

The batch reference goes through :func:`pipelines.io.storage.resolve_batch` first: it must name a CSV or Parquet
file inside the landing prefix. Messages name checks, columns and counts, never a cell's value or the header row;
examples of failing values go into the report only.

Outputs: ``<step folder>/validation.json`` (report + summary) and ``<step folder>/data_docs/`` (GX Data Docs HTML).
Names carry a content hash, so nothing is ever overwritten:

- pass: ``<root>/accepted/<batch_id>-<sha8>.parquet`` (immutable; ``sha8``: the first 8 hex digits of the
  Parquet's sha256), then the landing file is removed once the written copy's hash is verified, then a receipt
  ``<batch_id>-<sha8>.json`` is written beside it (the acceptance is complete).
- duplicate: a batch whose accepted Parquet would be identical to a completely accepted one is not accepted again:
  it moves to ``<root>/duplicates/<batch_id>-<src8>/`` (``src8``: of the landed file's sha256) with the report in
  ``<run_id>/validation.json``; the summary carries ``duplicate_of`` and the DAG skips training.
- fail: ``<root>/quarantine/<batch_id>-<src8>/`` receives the report (``<run_id>/validation.json`` and
  ``<run_id>/data_docs/``), then the original file by a verified move.

A rerun for the same run whose landing file is already gone returns (or raises) the earlier outcome. A run
interrupted between writing the accepted copy and removing the landing file leaves no receipt, so the next
attempt (any run) completes that acceptance instead of calling the batch a duplicate.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.context import safe_run_id
from pipelines.errors import DataValidationFailed
from pipelines.io.storage import basename, batch_id_of, clear_attempts, join, resolve_batch

if TYPE_CHECKING:
    import pandas as pd

    from pipelines.config import Settings
    from pipelines.context import StepContext

log = logging.getLogger(__name__)
# GX logs about 200 INFO lines on import (its docs decorators skipping closures), which bury the step's own lines
# in an Airflow task log. Its warnings and errors still show; a level someone set on purpose is kept.
_gx_log = logging.getLogger("great_expectations")
if _gx_log.level == logging.NOTSET:
    _gx_log.setLevel(logging.WARNING)

SUITE_NAME = "landing_batch"
REPORT_NAME = "validation.json"
DOCS_DIR = "data_docs"
#: C0 control characters except tab, newline and carriage return; DEL; the U+FFFD replacement character
#: (what a decoder leaves where bytes were not valid in the source encoding).
BAD_CHAR_REGEX = "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd]"
#: A text that is empty after stripping whitespace.
BLANK_REGEX = r"\A\s*\Z"
_DELIMITER_HINTS = (";", "\t", "|")
_DOC_SKIP = re.compile(r"(^|/)static/fonts/|\.gif$")
_QUOTED = re.compile(r"b?'[^']*'|b?\"[^\"]*\"")


def build_suite(settings: Settings) -> Any:
    """Build the GX expectation suite for a landing batch from the settings.

    Args:
        settings: the product settings (``validation`` thresholds, ``data`` columns and labels).

    Returns:
        A ``great_expectations.ExpectationSuite`` named :data:`SUITE_NAME`.
    """
    import great_expectations as gx  # heavy (great_expectations): imported when used

    v, d = settings.validation, settings.data
    E = gx.expectations
    text, label = d.text_column, d.label_column
    items: list[Any] = [
        E.ExpectColumnToExist(column=text, meta={"check": "text column present"}),
        E.ExpectColumnToExist(column=label, meta={"check": "label column present"}),
        E.ExpectTableRowCountToBeBetween(min_value=v.min_rows, meta={"check": f"at least {v.min_rows} rows"}),
        E.ExpectColumnValuesToNotBeNull(column=text, meta={"check": "text never null"}),
        E.ExpectColumnValuesToNotBeNull(column=label, meta={"check": "label never null"}),
        E.ExpectColumnValueLengthsToBeBetween(
            column=text,
            min_value=v.min_text_chars,
            max_value=v.max_text_chars,
            meta={"check": f"text length in [{v.min_text_chars}, {v.max_text_chars}] characters"},
        ),
        E.ExpectColumnValuesToNotMatchRegex(
            column=text, regex=BLANK_REGEX, meta={"check": "text not blank (only whitespace)"}
        ),
        E.ExpectColumnValuesToBeInSet(
            column=label, value_set=list(d.labels), meta={"check": f"label in {list(d.labels)}"}
        ),
        E.ExpectColumnProportionOfUniqueValuesToBeBetween(
            column=text,
            min_value=1.0 - v.max_duplicate_share,
            meta={"check": f"duplicate text share <= {v.max_duplicate_share}"},
        ),
        E.ExpectColumnValuesToNotMatchRegex(
            column=text,
            regex=BAD_CHAR_REGEX,
            mostly=1.0 - v.max_bad_char_share,
            meta={"check": f"share of texts with control or U+FFFD characters <= {v.max_bad_char_share}"},
        ),
    ]
    if v.slice_required:
        items.append(E.ExpectColumnToExist(column=d.slice_column, meta={"check": "slice column present"}))
    if v.known_slices is not None:
        items.append(
            E.ExpectColumnValuesToBeInSet(
                column=d.slice_column,
                value_set=list(v.known_slices),
                meta={"check": f"{d.slice_column} in {list(v.known_slices)}"},
            )
        )
    return gx.ExpectationSuite(name=SUITE_NAME, expectations=items)


def run(ctx: StepContext) -> dict[str, Any]:
    """Validate the landing batch ``inputs['batch_uri']``; accept it, set it aside as a duplicate, or quarantine it.

    Args:
        ctx: the step context; input ``batch_uri`` (a CSV or Parquet file inside the landing prefix: a name in it,
            a path or an ``s3://`` URI).

    Returns:
        ``passed``, ``batch_id``, ``batch_uri``, ``accepted_uri``, ``content_hash`` (sha256 of the accepted
        Parquet), ``source_hash``, ``rows``, ``report_uri``, ``data_docs_uri``; for a duplicate also
        ``duplicate_of`` (the accepted batch it repeats, which ``accepted_uri`` names too) and ``duplicate_uri``.

    Raises:
        BadInput: ``batch_uri`` does not name a CSV or Parquet file inside the landing prefix (one line).
        DataValidationFailed: the batch failed a check (or could not be read); it was quarantined with its report.
        FileNotFoundError: the batch does not exist and this run has not validated it before.
        ValueError: the input is missing.
    """
    storage = ctx.storage
    batch_uri = resolve_batch(ctx.settings, ctx.require("batch_uri"), must_exist=False)
    batch_id = batch_id_of(batch_uri)
    report_uri = ctx.output(REPORT_NAME)

    if not storage.exists(batch_uri):
        return _prior_outcome(ctx, batch_uri, report_uri)

    data = storage.read_bytes(batch_uri)
    source_hash = hashlib.sha256(data).hexdigest()
    df, read_failures, notes = _read_table(data, batch_uri)
    log.info(
        "validate %s: %s", batch_id, f"{len(df)} rows, {len(df.columns)} columns" if df is not None else "unreadable"
    )
    batch = _Batch(batch_uri, batch_id, source_hash, report_uri)

    with tempfile.TemporaryDirectory(prefix="mlops-validate-") as tmp:
        docs_dir = Path(tmp) / DOCS_DIR
        report, docs_page = _check(ctx, batch, df, read_failures, notes, docs_dir)
        docs_uri = join(ctx.step_uri, DOCS_DIR)
        if docs_dir.is_dir():
            _replace_dir(ctx, docs_dir, docs_uri, ctx.step_uri)
        report["data_docs_uri"] = join(docs_uri, docs_page) if docs_page else None
        if not report["passed"]:
            _quarantine(ctx, batch, report, docs_dir)  # raises DataValidationFailed

    parquet = _to_parquet(df)
    content_hash = hashlib.sha256(parquet).hexdigest()
    summary: dict[str, Any] = {
        "passed": True,
        "batch_id": batch_id,
        "batch_uri": batch_uri,
        "accepted_uri": None,
        "content_hash": content_hash,
        "source_hash": source_hash,
        "rows": int(len(df)),
        "report_uri": report_uri,
        "data_docs_uri": report["data_docs_uri"],
    }
    duplicate_of = _completed_acceptance(ctx, batch_id, content_hash)
    if duplicate_of:
        return _set_aside_duplicate(ctx, batch, report, summary, duplicate_of)

    accepted_uri = _accept(ctx, parquet, batch_id, content_hash)
    summary["accepted_uri"] = accepted_uri
    report["summary"] = summary
    storage.write_text(report_uri, json.dumps(report, indent=2, default=str))
    # Only now, with the accepted copy verified and the report written, does the batch leave landing.
    storage.delete(batch_uri)
    _write_receipt(ctx, summary)
    clear_attempts(ctx.settings, source_hash)
    log.info("validate %s: passed; accepted as %s (sha256 %s)", batch_id, accepted_uri, content_hash[:12])
    return summary


@dataclass(frozen=True)
class _Batch:
    """The landing batch being validated and where its report goes."""

    uri: str
    id: str
    source_hash: str
    report_uri: str


def _check(
    ctx: StepContext,
    batch: _Batch,
    df: pd.DataFrame | None,
    read_failures: list[str],
    notes: list[str],
    docs_dir: Path,
) -> tuple[dict[str, Any], str | None]:
    """Run the suite on a readable batch; the report (without its Data Docs link yet) and the Data Docs page."""
    examples: list[list[str]] = [[] for _ in read_failures]
    if df is not None:
        failures, suite_examples, results, docs_page = _run_suite(ctx, df, docs_dir)
        extra = read_failures + (notes if failures else [])
        examples = [[] for _ in extra] + suite_examples
        failures = extra + failures
    else:
        failures, results, docs_page = read_failures, None, None
    report: dict[str, Any] = {
        "batch_id": batch.id,
        "batch_uri": batch.uri,
        "source_hash": batch.source_hash,
        "run_id": ctx.run_id,
        "passed": not failures,
        "rows": int(len(df)) if df is not None else 0,
        "columns": [str(c) for c in df.columns] if df is not None else [],
        "failures": failures,
        "failure_examples": examples,
        "warnings": notes,
        "suite": build_suite(ctx.settings).to_json_dict() if df is not None else None,
        "gx_results": results,
    }
    return report, docs_page


def _quarantine(ctx: StepContext, batch: _Batch, report: dict[str, Any], docs_dir: Path) -> None:
    """Move a failed batch to quarantine with its report (written first) and Data Docs; raise the failure."""
    settings, storage = ctx.settings, ctx.storage
    quarantine = settings.uri(settings.paths.quarantine, f"{batch.id}-{batch.source_hash[:8]}")
    report["summary"] = None
    report["quarantine_uri"] = quarantine
    text = json.dumps(report, indent=2, default=str)
    storage.write_text(batch.report_uri, text)
    # The report lands beside the batch first, so a quarantined batch is never without its report.
    run_folder = join(quarantine, _safe(ctx.run_id))
    storage.write_text(join(run_folder, REPORT_NAME), text)
    if docs_dir.is_dir():
        _replace_dir(ctx, docs_dir, join(run_folder, DOCS_DIR), quarantine)
    storage.move(batch.uri, join(quarantine, basename(batch.uri)))
    clear_attempts(settings, batch.source_hash)
    failures = report["failures"]
    log.warning("validate %s: %d check(s) failed; quarantined in %s", batch.id, len(failures), quarantine)
    raise DataValidationFailed(batch.id, failures, batch.report_uri, quarantine)


def _set_aside_duplicate(
    ctx: StepContext, batch: _Batch, report: dict[str, Any], summary: dict[str, Any], duplicate_of: str
) -> dict[str, Any]:
    """A batch identical to an accepted one: moved to the duplicates folder with its report, not accepted again."""
    settings, storage = ctx.settings, ctx.storage
    folder = settings.uri(settings.paths.duplicates, f"{batch.id}-{batch.source_hash[:8]}")
    summary.update(accepted_uri=duplicate_of, duplicate_of=duplicate_of, duplicate_uri=folder)
    report["summary"] = summary
    text = json.dumps(report, indent=2, default=str)
    storage.write_text(batch.report_uri, text)
    storage.write_text(join(folder, _safe(ctx.run_id), REPORT_NAME), text)
    storage.move(batch.uri, join(folder, basename(batch.uri)))
    clear_attempts(settings, batch.source_hash)
    log.warning(
        "validate %s: identical to the accepted %s; moved to %s, not accepted again", batch.id, duplicate_of, folder
    )
    return summary


def _prior_outcome(ctx: StepContext, batch_uri: str, report_uri: str) -> dict[str, Any]:
    storage = ctx.storage
    if storage.exists(report_uri):
        prior = json.loads(storage.read_text(report_uri))
        if prior.get("batch_uri") == batch_uri:
            log.info("validate: %s already processed by run %s; returning the earlier outcome", batch_uri, ctx.run_id)
            if prior.get("passed"):
                summary = prior["summary"]
                if not summary.get("duplicate_of"):
                    _write_receipt(ctx, summary)  # the earlier attempt may have stopped just before it
                return summary
            raise DataValidationFailed(prior["batch_id"], prior["failures"], report_uri, prior.get("quarantine_uri"))
    raise FileNotFoundError(
        f"batch_uri={batch_uri!r} does not exist and run {ctx.run_id!r} has not validated it before; "
        f"expected a CSV or Parquet file under {ctx.settings.uri(ctx.settings.paths.landing)!r}"
    )


def _read_table(data: bytes, uri: str) -> tuple[pd.DataFrame | None, list[str], list[str]]:
    """Parse the raw bytes into (frame or None, failures, notes); an unreadable file gives (None, [reason], [])."""
    import pandas as pd  # heavy (pandas): imported when used

    name = basename(uri)
    if not data:
        return None, [f"file {name!r} is empty (0 bytes); expected a CSV with a header row or a Parquet file"], []
    if name.lower().endswith(".parquet"):
        try:
            return pd.read_parquet(io.BytesIO(data)), [], []
        except Exception as exc:  # pyarrow raises several types for broken or truncated files
            return None, [f"file {name!r} is not a readable Parquet file ({_reason(exc)})"], []
    if b"\x00" in data[:65536]:
        return None, [f"file {name!r} is not a text CSV file (binary content: NUL bytes); expected UTF-8 CSV"], []
    notes = []
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        # Rare damage is tolerated: undecodable bytes become U+FFFD and count against max_bad_char_share, so a
        # file in another encoding fails that check while one broken byte in a large batch does not.
        text = data.decode("utf-8-sig", errors="replace")
        notes.append(
            f"file {name!r} is not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}: {exc.reason}); "
            "undecodable bytes were replaced by U+FFFD; re-export it as UTF-8"
        )
    hint = _delimiter_hint(text, name)
    try:
        # Only an empty field is missing: a text that reads "NA" or "null" is a text.
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        return None, [f"file {name!r} is not a well-formed CSV ({_reason(exc)})", *hint], notes
    return df, hint, notes


def _reason(exc: Exception) -> str:
    """A parser's error as one short line, quoted parts (which may be file content) left out."""
    reason = _QUOTED.sub("'...'", " ".join(str(exc).split()))
    return f"{type(exc).__name__}: {reason[:160]}"


def _delimiter_hint(text: str, name: str) -> list[str]:
    """A failure line when the header row is split by another delimiter than ','."""
    header = text.split("\n", 1)[0].rstrip("\r")
    counts = {d: header.count(d) for d in (",", *_DELIMITER_HINTS)}
    best = max(counts, key=lambda d: counts[d])
    if best != "," and counts[best] > counts[","]:
        return [
            f"file {name!r}: the header row has {counts[best] + 1} fields split by {best!r} and "
            f"{counts[','] + 1} by ',': wrong delimiter {best!r}? expected ','"
        ]
    return []


def _run_suite(
    ctx: StepContext, df: pd.DataFrame, docs_dir: Path
) -> tuple[list[str], list[list[str]], dict[str, Any], str | None]:
    """Run the suite in an ephemeral GX context; returns (failures, their examples, GX result dict, docs page)."""
    import great_expectations as gx  # heavy (great_expectations): imported when used
    from great_expectations.core.run_identifier import RunIdentifier  # heavy (great_expectations): imported when used
    from great_expectations.data_context.types.base import (
        ProgressBarsConfig,  # heavy (great_expectations): imported when used
    )

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    context.add_data_docs_site(
        site_name="step",
        site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    source = context.data_sources.add_pandas("landing")
    batch_def = source.add_dataframe_asset("batch").add_batch_definition_whole_dataframe("whole")
    suite = context.suites.add(build_suite(ctx.settings))
    definition = context.validation_definitions.add(gx.ValidationDefinition(name="batch", data=batch_def, suite=suite))
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name="validate",
            validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=["step"])],
            result_format={"result_format": "SUMMARY"},
        )
    )
    run_time = None
    if ctx.partition:
        run_time = datetime.fromisoformat(ctx.partition)
    result = checkpoint.run(
        batch_parameters={"dataframe": df}, run_id=RunIdentifier(run_name=_safe(ctx.run_id), run_time=run_time)
    )
    vr = next(iter(result.run_results.values())).to_json_dict()
    failures, examples = _failures(vr, df)
    pages = sorted(p.relative_to(docs_dir).as_posix() for p in (docs_dir / "validations").rglob("*.html"))
    return failures, examples, vr, (pages[0] if pages else None)


def _safe(run_id: str) -> str:
    return safe_run_id(run_id)


def _failures(vr: dict[str, Any], df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """One line per failed expectation (the check, its column, counts, the expectation), and its examples.

    The lines carry no cell value and no header: they end up in logs and exception messages. Examples of the
    failing values (at most 3, each cut at 80 characters) go only into the report, beside each line.
    """
    present = {str(c) for c in df.columns}
    out: list[str] = []
    examples: list[list[str]] = []
    for item in vr.get("results", []):
        if item.get("success"):
            continue
        cfg = item["expectation_config"]
        kind, kwargs = cfg["type"], cfg.get("kwargs", {})
        check = (cfg.get("meta") or {}).get("check", kind)
        column = kwargs.get("column")
        res = item.get("result") or {}
        if kind == "expect_column_to_exist":
            out.append(f"{check}: column {column!r} is missing (the file has {len(present)} columns) [{kind}]")
            examples.append([f"columns: {sorted(present)}"[:400]])
            continue
        if column is not None and column not in present:
            continue  # reported once by the column's existence check
        if (item.get("exception_info") or {}).get("raised_exception"):
            message = str(item["exception_info"].get("exception_message"))
            out.append(f"{check}: column {column!r} could not be checked (see the report) [{kind}]")
            examples.append([message[:400]])
        elif "observed_value" in res:
            observed = res["observed_value"]
            if kind == "expect_column_proportion_of_unique_values_to_be_between" and observed is not None:
                observed = f"duplicate share {1 - float(observed):.3f}"
            where = f"column {column!r}" if column else "table"
            out.append(f"{check}: {where} observed {observed} [{kind}]")
            examples.append([])
        else:
            count, total = res.get("unexpected_count", 0), res.get("element_count", 0)
            share = res.get("unexpected_percent") or 0.0
            out.append(f"{check}: column {column!r} has {count} of {total} values ({share:.1f}%) failing [{kind}]")
            examples.append([repr(x)[:80] for x in (res.get("partial_unexpected_list") or [])[:3]])
    return out, examples


def _replace_dir(ctx: StepContext, local_dir: Path, uri: str, root: str) -> None:
    """Publish a Data Docs folder at ``uri`` in place of what an earlier attempt left there (fonts/gifs dropped)."""
    for path in sorted(local_dir.rglob("*")):
        if path.is_file() and _DOC_SKIP.search(path.relative_to(local_dir).as_posix()):
            path.unlink()
    if any(path.is_file() for path in local_dir.rglob("*")):
        ctx.storage.replace_dir(local_dir, uri, root=root)


def _to_parquet(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def _receipt_uri(accepted_uri: str) -> str:
    return accepted_uri[: -len(".parquet")] + ".json"


def _completed_acceptance(ctx: StepContext, batch_id: str, content_hash: str) -> str | None:
    """The accepted batch with this content whose acceptance completed (its receipt exists), or None.

    An accepted copy without a receipt was written by an attempt that stopped before the landing file was
    removed: it is completed by this attempt, not a duplicate. Batches accepted before receipts existed are named
    ``<batch_id>.parquet``: one of the same name and content counts as completed.
    """
    settings, storage = ctx.settings, ctx.storage
    for uri in storage.list(settings.uri(settings.paths.accepted)):
        name = basename(uri)
        if name.endswith(f"-{content_hash[:8]}.parquet"):
            if storage.exists(_receipt_uri(uri)) and storage.content_hash(uri) == content_hash:
                return uri
        elif name == f"{batch_id}.parquet" and storage.content_hash(uri) == content_hash:
            return uri
    return None


def _accept(ctx: StepContext, data: bytes, batch_id: str, content_hash: str) -> str:
    """Write the accepted Parquet (immutable, named by its hash) and verify it; returns its uri."""
    settings, storage = ctx.settings, ctx.storage
    uri = settings.uri(settings.paths.accepted, f"{batch_id}-{content_hash[:8]}.parquet")
    if storage.exists(uri):
        existing = storage.content_hash(uri)
        if existing != content_hash:
            raise ValueError(
                f"accepted batch {uri!r} exists with other content (sha256 {existing[:12]} != {content_hash[:12]}, "
                "the same first 8 hex digits); accepted batches are immutable: land the data under another name"
            )
        return uri
    storage.write_bytes(uri, data)
    written = storage.content_hash(uri)
    if written != content_hash:
        raise OSError(f"accepted copy {uri!r} does not match what was written (sha256 {written} != {content_hash})")
    return uri


def _write_receipt(ctx: StepContext, summary: dict[str, Any]) -> None:
    """Mark an acceptance complete (its landing file is gone): a later identical batch is then a duplicate."""
    uri = _receipt_uri(summary["accepted_uri"])
    if not ctx.storage.exists(uri):
        receipt = {k: summary[k] for k in ("accepted_uri", "content_hash", "batch_uri", "source_hash", "rows")}
        ctx.storage.write_text(uri, json.dumps({**receipt, "run_id": ctx.run_id}, indent=2))
