import io
import json
from pathlib import Path

import pandas as pd
import pytest

from pipelines.context import StepContext
from pipelines.data import demo
from pipelines.errors import DataValidationFailed
from pipelines.runner import run_step
from pipelines.steps.validate import run


def _ctx(settings, batch_uri, run_id="r1"):
    return StepContext(step="validate", run_id=run_id, settings=settings, inputs={"batch_uri": batch_uri})


def _land(settings, name, data: bytes) -> str:
    path = Path(settings.uri(settings.paths.landing, name))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def _csv(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False).encode("utf-8")


@pytest.fixture
def reference_frame(demo_frames):
    return demo_frames["batch_000_reference"]


def test_validate_demo_batch_accepted_and_landing_removed(settings, reference_frame):
    uri = _land(settings, "batch_000_reference.csv", _csv(reference_frame))
    summary = run_step(_ctx(settings, uri))
    assert summary["passed"] is True and summary["batch_id"] == "batch_000_reference"
    assert summary["rows"] == len(reference_frame)
    accepted = Path(summary["accepted_uri"])
    assert accepted == Path(settings.uri("accepted", f"batch_000_reference-{summary['content_hash'][:8]}.parquet"))
    assert not Path(uri).exists()
    import hashlib

    assert hashlib.sha256(accepted.read_bytes()).hexdigest() == summary["content_hash"]
    receipt = json.loads(accepted.with_suffix(".json").read_text())
    assert receipt["run_id"] == "r1" and receipt["source_hash"] == summary["source_hash"]
    pd.testing.assert_frame_equal(pd.read_parquet(accepted), reference_frame.astype(str))
    report = json.loads(Path(summary["report_uri"]).read_text())
    assert report["passed"] and report["suite"]["name"] == "landing_batch"
    assert len(report["suite"]["expectations"]) >= 9
    assert Path(summary["data_docs_uri"]).is_file() and summary["data_docs_uri"].endswith(".html")
    assert "landing_batch" in Path(summary["data_docs_uri"]).read_text()


def test_validate_malformed_demo_batch_quarantined_with_report(settings):
    uri = _land(settings, "batch_004_malformed.csv", demo.malformed_batch())
    with pytest.raises(DataValidationFailed) as info:
        run(_ctx(settings, uri))
    message = str(info.value)
    assert "batch_004_malformed" in message
    assert "column 'label' is missing" in message and "column 'text' is missing" in message
    assert "wrong delimiter ';'" in message
    import hashlib

    src8 = hashlib.sha256(demo.malformed_batch()).hexdigest()[:8]
    quarantine = Path(settings.uri("quarantine", f"batch_004_malformed-{src8}"))
    assert (quarantine / "batch_004_malformed.csv").read_bytes() == demo.malformed_batch()
    report = json.loads((quarantine / "r1" / "validation.json").read_text())
    assert report["passed"] is False and report["failures"] == info.value.failures
    assert not Path(uri).exists()
    assert info.value.quarantine_uri == str(quarantine)
    assert Path(info.value.report_uri).is_file()
    assert not list(Path(settings.uri("accepted")).glob("batch_004_malformed*"))


def _truncated(df):
    data = _csv(df.assign(text='"quoted, text" ' + df["text"]))
    cut = data.index(b'"quoted', len(data) // 2) + 4  # cut inside a quoted field
    return data[:cut]


@pytest.mark.parametrize(
    ("name", "make", "expected"),
    [
        ("empty.csv", lambda df: b"", "is empty (0 bytes)"),
        ("image.csv", lambda df: b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), "binary content"),
        (
            "latin1.csv",
            lambda df: df.assign(text="café " + df["text"]).to_csv(index=False).encode("latin-1"),
            "not valid UTF-8",
        ),
        ("truncated.csv", _truncated, "not a well-formed CSV"),
        ("broken.parquet", lambda df: b"PAR1" + b"\x00garbage" * 10, "not a readable Parquet file"),
        ("tabs.csv", lambda df: df.to_csv(index=False, sep="\t").encode(), "wrong delimiter '\\t'"),
    ],
)
def test_validate_malformed_file_fails_cleanly(settings, reference_frame, name, make, expected):
    data = make(reference_frame.head(80))
    uri = _land(settings, name, data)
    with pytest.raises(DataValidationFailed) as info:
        run(_ctx(settings, uri))
    assert expected in str(info.value)
    import hashlib

    folder = Path(settings.uri("quarantine", f"{name.split('.')[0]}-{hashlib.sha256(data).hexdigest()[:8]}"))
    assert (folder / name).read_bytes() == data
    assert (folder / "r1" / "validation.json").is_file()
    assert not Path(uri).exists()


def test_validate_bad_rows_name_column_and_observed_value(settings, reference_frame):
    df = reference_frame.head(100).copy()
    df.loc[:4, "label"] = "meh"
    df.loc[10:39, "text"] = df.loc[0, "text"]  # 30 duplicates
    df.loc[50:52, "text"] = "ok"  # too short
    df.loc[60:64, "text"] = "broken \ufffd text"  # replacement chars
    uri = _land(settings, "bad_rows.csv", _csv(df))
    with pytest.raises(DataValidationFailed) as info:
        run(_ctx(settings, uri))
    failures = "\n".join(info.value.failures)
    assert "column 'label' has 5 of 100 values (5.0%) failing [" in failures
    assert "meh" not in str(info.value) and "broken" not in str(info.value)  # no cell value in the message
    report = json.loads(Path(info.value.report_uri).read_text())
    label_line = next(i for i, f in enumerate(report["failures"]) if "column 'label'" in f)
    assert report["failure_examples"][label_line][0] == "'meh'"
    assert "duplicate text share <= 0.2: column 'text' observed duplicate share 0.3" in failures
    assert "text length in [3, 5000] characters: column 'text' has 3 of 100" in failures
    assert "control or U+FFFD" in failures
    assert len(info.value.failures) == 4


def test_validate_threshold_from_config_changes_outcome(make_settings, reference_frame):
    settings = make_settings(validation__min_rows=1000)
    uri = _land(settings, "small.csv", _csv(reference_frame))
    with pytest.raises(DataValidationFailed, match=r"at least 1000 rows: table observed 800"):
        run(_ctx(settings, uri))


def test_validate_known_slices_reject_unknown_domain(make_settings, reference_frame):
    settings = make_settings(validation__known_slices=["electronics"])
    uri = _land(settings, "slices.csv", _csv(reference_frame))
    with pytest.raises(DataValidationFailed, match=r"column 'domain' has \d+ of 800 values") as info:
        run(_ctx(settings, uri))
    assert "books" not in str(info.value)


def test_validate_rerun_returns_prior_outcome(settings, reference_frame):
    uri = _land(settings, "batch_001.csv", _csv(reference_frame))
    first = run(_ctx(settings, uri))
    assert run(_ctx(settings, uri)) == first
    bad = _land(settings, "batch_bad.csv", demo.malformed_batch())
    with pytest.raises(DataValidationFailed) as one:
        run(_ctx(settings, bad, run_id="r2"))
    with pytest.raises(DataValidationFailed) as two:
        run(_ctx(settings, bad, run_id="r2"))
    assert one.value.failures == two.value.failures
    with pytest.raises(FileNotFoundError, match="has not validated it before"):
        run(_ctx(settings, uri, run_id="other-run"))


def test_validate_same_name_other_content_is_accepted_beside(settings, reference_frame):
    uri = _land(settings, "batch_x.csv", _csv(reference_frame))
    first = run(_ctx(settings, uri))
    uri = _land(settings, "batch_x.csv", _csv(reference_frame.head(400)))
    second = run(_ctx(settings, uri, run_id="r2"))
    assert first["accepted_uri"] != second["accepted_uri"]
    assert len(pd.read_parquet(first["accepted_uri"])) == 800 and len(pd.read_parquet(second["accepted_uri"])) == 400
    assert not Path(uri).exists()


def test_validate_missing_input_names_it(settings):
    with pytest.raises(ValueError, match="'batch_uri'"):
        run(StepContext(step="validate", run_id="r", settings=settings))


def test_validate_on_s3(make_settings, s3_endpoint, aws_env, reference_frame):
    settings = make_settings(paths__artifact_root="s3://test-bucket/validate", storage__s3_endpoint_url=s3_endpoint)
    storage = StepContext(step="validate", run_id="s3", settings=settings).storage
    uri = storage.write_bytes(settings.uri("landing", "b.csv"), _csv(reference_frame))
    summary = run(_ctx(settings, uri, run_id="s3"))
    assert summary["accepted_uri"] == f"s3://test-bucket/validate/accepted/b-{summary['content_hash'][:8]}.parquet"
    assert not storage.exists(uri)
    assert len(pd.read_parquet(io.BytesIO(storage.read_bytes(summary["accepted_uri"])))) == 800
    bad = storage.write_bytes(settings.uri("landing", "m.csv"), demo.malformed_batch())
    with pytest.raises(DataValidationFailed):
        run(_ctx(settings, bad, run_id="s3"))
    import hashlib

    src8 = hashlib.sha256(demo.malformed_batch()).hexdigest()[:8]
    assert storage.read_bytes(f"s3://test-bucket/validate/quarantine/m-{src8}/m.csv") == demo.malformed_batch()
    assert not storage.exists(bad)


def test_validate_rare_undecodable_bytes_pass_with_warning(settings, reference_frame):
    data = _csv(reference_frame)
    broken = data.replace(b"laptop", b"lapt\xf6p", 1)  # one Latin-1 byte in 800 rows: share 0.00125 < 0.01
    uri = _land(settings, "rare.csv", broken)
    summary = run(_ctx(settings, uri))
    report = json.loads(Path(summary["report_uri"]).read_text())
    assert summary["passed"] and "is not valid UTF-8 (byte 0xf6" in report["warnings"][0]
    assert pd.read_parquet(summary["accepted_uri"])["text"].str.contains("\ufffd").sum() == 1


def test_validate_blank_texts_are_invalid(settings, reference_frame):
    df = reference_frame.head(100).copy()
    df.loc[[3, 7], "text"] = "    \t  "  # long enough for the length check, but blank
    uri = _land(settings, "blank.csv", _csv(df))
    with pytest.raises(DataValidationFailed) as info:
        run(_ctx(settings, uri))
    assert info.value.failures == [
        "text not blank (only whitespace): column 'text' has 2 of 100 values (2.0%) failing "
        "[expect_column_values_to_not_match_regex]"
    ]
