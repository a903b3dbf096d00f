"""Step ``validate``: check a landing batch with a Great Expectations suite; accept it or quarantine it.

The suite (:func:`build_suite`) is defined here in code from ``settings.validation`` and ``settings.data``:

| check | GX expectation |
| --- | --- |
| required columns present (text, label; the slice column when ``slice_required``) | ``expect_column_to_exist`` |
| at least ``min_rows`` rows | ``expect_table_row_count_to_be_between`` |
| text and label never null | ``expect_column_values_to_not_be_null`` |
| text length in [``min_text_chars``, ``max_text_chars``] (so not empty) | ``expect_column_value_lengths_to_be_between`` |
| label in ``data.labels`` | ``expect_column_values_to_be_in_set`` |
| duplicate texts at most ``max_duplicate_share`` | ``expect_column_proportion_of_unique_values_to_be_between`` |
| texts with control or U+FFFD replacement characters at most ``max_bad_char_share`` | ``expect_column_values_to_not_match_regex`` (``mostly``) |
| slice values in ``known_slices`` (when set) | ``expect_column_values_to_be_in_set`` |

A file that cannot be read as a table (not CSV, not UTF-8, empty, truncated inside a quoted field, a broken
Parquet file) fails before GX runs, with the same :class:`~pipelines.errors.DataValidationFailed` and a JSON report.

Outputs: ``<step folder>/validation.json`` (report + summary) and ``<step folder>/data_docs/`` (GX Data Docs HTML).
Pass: ``<root>/accepted/<batch_id>.parquet`` (immutable), then the landing file is removed once the written copy's
hash is verified. Fail: ``<root>/quarantine/<batch_id>/`` receives the report, then the original file by a verified
move. A rerun for the same run whose landing file is already gone returns (or raises) the earlier outcome.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.errors import DataValidationFailed
from pipelines.storage import basename, join

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
_DELIMITER_HINTS = (";", "\t", "|")
_DOC_SKIP = re.compile(r"(^|/)static/fonts/|\.gif$")


def batch_id_of(uri: str) -> str:
    """The batch id of a landing file: its name without extensions, made safe as a path segment."""
    name = basename(uri)
    stem = name.split(".", 1)[0] if not name.startswith(".") else name
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("_.")
    if not cleaned:
        raise ValueError(f"batch_uri={uri!r} has no usable file name; expected e.g. landing/batch_007.csv")
    return cleaned


def build_suite(settings: Settings) -> Any:
    """Build the GX expectation suite for a landing batch from the settings.

    Args:
        settings: the product settings (``validation`` thresholds, ``data`` columns and labels).

    Returns:
        A ``great_expectations.ExpectationSuite`` named :data:`SUITE_NAME`.
    """
    import great_expectations as gx

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
    """Validate the landing batch ``inputs['batch_uri']``; accept it or quarantine it.

    Args:
        ctx: the step context; input ``batch_uri`` (a CSV or Parquet file under the landing folder).

    Returns:
        ``passed``, ``batch_id``, ``batch_uri``, ``accepted_uri``, ``content_hash`` (sha256 of the accepted
        Parquet), ``source_hash``, ``rows``, ``report_uri``, ``data_docs_uri``.

    Raises:
        DataValidationFailed: the batch failed a check (or could not be read); it was quarantined with its report.
        FileNotFoundError: the batch does not exist and this run has not validated it before.
        ValueError: the input is missing, or ``accepted/<batch_id>.parquet`` exists with other content.
    """
    settings, storage = ctx.settings, ctx.storage
    batch_uri = ctx.require("batch_uri")
    batch_id = batch_id_of(batch_uri)
    report_uri = ctx.output(REPORT_NAME)

    if not storage.exists(batch_uri):
        return _prior_outcome(ctx, batch_uri, report_uri)

    data = storage.read_bytes(batch_uri)
    source_hash = hashlib.sha256(data).hexdigest()
    df, read_failures, notes = _read_table(data, batch_uri)
    log.info(
        "validate %s: %s", batch_id, f"{len(df)} rows, columns {list(df.columns)}" if df is not None else "unreadable"
    )

    with tempfile.TemporaryDirectory(prefix="mlops-validate-") as tmp:
        docs_dir = Path(tmp) / DOCS_DIR
        if df is not None:
            failures, results, docs_page = _run_suite(ctx, df, docs_dir)
            failures = read_failures + (notes if failures else []) + failures
        else:
            failures, results, docs_page = read_failures, None, None
        passed = not failures
        report: dict[str, Any] = {
            "batch_id": batch_id,
            "batch_uri": batch_uri,
            "source_hash": source_hash,
            "run_id": ctx.run_id,
            "passed": passed,
            "rows": int(len(df)) if df is not None else 0,
            "columns": [str(c) for c in df.columns] if df is not None else [],
            "failures": failures,
            "warnings": notes,
            "suite": build_suite(settings).to_json_dict() if df is not None else None,
            "gx_results": results,
        }
        docs_uri = join(ctx.step_uri, DOCS_DIR)
        if docs_dir.is_dir():
            _replace_dir(ctx, docs_dir, docs_uri)
        data_docs_uri = join(docs_uri, docs_page) if docs_page else None

        if not passed:
            quarantine = settings.uri(settings.paths.quarantine, batch_id)
            report["summary"] = None
            report["quarantine_uri"] = quarantine
            report["data_docs_uri"] = data_docs_uri
            text = json.dumps(report, indent=2, default=str)
            storage.write_text(report_uri, text)
            # The report lands beside the batch first, so a quarantined batch is never without its report.
            storage.write_text(join(quarantine, REPORT_NAME), text)
            if docs_dir.is_dir():
                _replace_dir(ctx, docs_dir, join(quarantine, DOCS_DIR))
            storage.move(batch_uri, join(quarantine, basename(batch_uri)))
            log.warning("validate %s: %d check(s) failed; quarantined in %s", batch_id, len(failures), quarantine)
            raise DataValidationFailed(batch_id, failures, report_uri, quarantine)

    accepted_uri, content_hash = _accept(ctx, df, batch_id)
    summary = {
        "passed": True,
        "batch_id": batch_id,
        "batch_uri": batch_uri,
        "accepted_uri": accepted_uri,
        "content_hash": content_hash,
        "source_hash": source_hash,
        "rows": int(len(df)),
        "report_uri": report_uri,
        "data_docs_uri": data_docs_uri,
    }
    report["summary"] = summary
    report["data_docs_uri"] = data_docs_uri
    storage.write_text(report_uri, json.dumps(report, indent=2, default=str))
    # Only now, with the accepted copy verified and the report written, does the batch leave landing.
    storage.delete(batch_uri)
    log.info("validate %s: passed; accepted as %s (sha256 %s)", batch_id, accepted_uri, content_hash[:12])
    return summary


def _prior_outcome(ctx: StepContext, batch_uri: str, report_uri: str) -> dict[str, Any]:
    storage = ctx.storage
    if storage.exists(report_uri):
        prior = json.loads(storage.read_text(report_uri))
        if prior.get("batch_uri") == batch_uri:
            log.info("validate: %s already processed by run %s; returning the earlier outcome", batch_uri, ctx.run_id)
            if prior.get("passed"):
                return prior["summary"]
            raise DataValidationFailed(prior["batch_id"], prior["failures"], report_uri, prior.get("quarantine_uri"))
    raise FileNotFoundError(
        f"batch_uri={batch_uri!r} does not exist and run {ctx.run_id!r} has not validated it before; "
        f"expected a CSV or Parquet file under {ctx.settings.uri(ctx.settings.paths.landing)!r}"
    )


def _read_table(data: bytes, uri: str) -> tuple[pd.DataFrame | None, list[str], list[str]]:
    """Parse the raw bytes into (frame or None, failures, notes); an unreadable file gives (None, [reason], [])."""
    import pandas as pd

    name = basename(uri)
    if not data:
        return None, [f"file {name!r} is empty (0 bytes); expected a CSV with a header row or a Parquet file"], []
    if name.lower().endswith(".parquet"):
        try:
            return pd.read_parquet(io.BytesIO(data)), [], []
        except Exception as exc:  # pyarrow raises several types for broken or truncated files
            return None, [f"file {name!r} is not a readable Parquet file ({type(exc).__name__}: {exc})"], []
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
        reason = " ".join(str(exc).split())
        return None, [f"file {name!r} is not a well-formed CSV ({type(exc).__name__}: {reason})", *hint], notes
    return df, hint, notes


def _delimiter_hint(text: str, name: str) -> list[str]:
    """A failure line when the header row is split by another delimiter than ','."""
    header = text.split("\n", 1)[0].rstrip("\r")
    counts = {d: header.count(d) for d in (",", *_DELIMITER_HINTS)}
    best = max(counts, key=lambda d: counts[d])
    if best != "," and counts[best] > counts[","]:
        return [f"file {name!r}: header {header[:80]!r} is split by {best!r}: wrong delimiter {best!r}? expected ','"]
    return []


def _run_suite(ctx: StepContext, df: pd.DataFrame, docs_dir: Path) -> tuple[list[str], dict[str, Any], str | None]:
    """Run the suite in an ephemeral GX context; returns (failures, GX result dict, data docs page path)."""
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.base import ProgressBarsConfig

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
        from datetime import datetime

        run_time = datetime.fromisoformat(ctx.partition)
    result = checkpoint.run(
        batch_parameters={"dataframe": df}, run_id=RunIdentifier(run_name=_safe(ctx.run_id), run_time=run_time)
    )
    vr = next(iter(result.run_results.values())).to_json_dict()
    failures = _failures(vr, df)
    pages = sorted(p.relative_to(docs_dir).as_posix() for p in (docs_dir / "validations").rglob("*.html"))
    return failures, vr, (pages[0] if pages else None)


def _safe(run_id: str) -> str:
    from pipelines.context import safe_run_id

    return safe_run_id(run_id)


def _failures(vr: dict[str, Any], df: pd.DataFrame) -> list[str]:
    """One line per failed expectation: the check, its column, the observed value, the expectation."""
    present = {str(c) for c in df.columns}
    out = []
    for item in vr.get("results", []):
        if item.get("success"):
            continue
        cfg = item["expectation_config"]
        kind, kwargs = cfg["type"], cfg.get("kwargs", {})
        check = (cfg.get("meta") or {}).get("check", kind)
        column = kwargs.get("column")
        res = item.get("result") or {}
        if kind == "expect_column_to_exist":
            out.append(f"{check}: column {column!r} is missing (columns: {sorted(present)}) [{kind}]")
            continue
        if column is not None and column not in present:
            continue  # reported once by the column's existence check
        if (item.get("exception_info") or {}).get("raised_exception"):
            message = item["exception_info"].get("exception_message")
            out.append(f"{check}: column {column!r} could not be checked ({message}) [{kind}]")
        elif "observed_value" in res:
            observed = res["observed_value"]
            if kind == "expect_column_proportion_of_unique_values_to_be_between" and observed is not None:
                observed = f"duplicate share {1 - float(observed):.3f}"
            where = f"column {column!r}" if column else "table"
            out.append(f"{check}: {where} observed {observed} [{kind}]")
        else:
            count, total = res.get("unexpected_count", 0), res.get("element_count", 0)
            share = res.get("unexpected_percent") or 0.0
            examples = [repr(x)[:80] for x in (res.get("partial_unexpected_list") or [])[:3]]
            sample = f", e.g. {', '.join(examples)}" if examples else ""
            out.append(
                f"{check}: column {column!r} has {count} of {total} values ({share:.1f}%) failing{sample} [{kind}]"
            )
    return out


def _replace_dir(ctx: StepContext, local_dir: Path, uri: str) -> None:
    """Upload a Data Docs folder to ``uri``, replacing what an earlier attempt left there (fonts/gifs skipped)."""
    storage = ctx.storage
    for old in storage.list(uri):
        storage.delete(old)
    for path in sorted(local_dir.rglob("*")):
        rel = path.relative_to(local_dir).as_posix()
        if path.is_file() and not _DOC_SKIP.search(rel):
            storage.upload_file(path, join(uri, rel))


def _accept(ctx: StepContext, df: pd.DataFrame, batch_id: str) -> tuple[str, str]:
    """Write the accepted Parquet (immutable) and verify it; returns (uri, sha256)."""
    settings, storage = ctx.settings, ctx.storage
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    data = buf.getvalue()
    content_hash = hashlib.sha256(data).hexdigest()
    uri = settings.uri(settings.paths.accepted, f"{batch_id}.parquet")
    if storage.exists(uri):
        existing = storage.content_hash(uri)
        if existing != content_hash:
            raise ValueError(
                f"accepted batch {uri!r} already exists with other content (sha256 {existing[:12]} != "
                f"{content_hash[:12]}); accepted batches are immutable: land the new data under a new batch name"
            )
        return uri, content_hash
    storage.write_bytes(uri, data)
    written = storage.content_hash(uri)
    if written != content_hash:
        raise OSError(f"accepted copy {uri!r} does not match what was written (sha256 {written} != {content_hash})")
    return uri, content_hash
