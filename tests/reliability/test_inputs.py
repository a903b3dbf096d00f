"""Bad batch references, unsafe batch contents and faults during validate's moves, each with its exact outcome.

Every refused reference must leave storage exactly as it was (compared file by file, by hash); every fault must
leave each batch in exactly one place it can be found again (landing, accepted, quarantine, duplicates or set
aside), and a rerun must finish the job without a second copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from mlops_airflow import tasks
from pipelines.config import get_settings
from pipelines.context import StepContext
from pipelines.data import demo
from pipelines.errors import BadInput, DataValidationFailed
from pipelines.io.storage import Storage, get_storage, resolve_batch
from pipelines.steps.validate import run as validate

REPO = Path(__file__).resolve().parents[2]
SUFFIX = "expected a .csv or .parquet file inside the landing prefix"


# --- helpers -----------------------------------------------------------------------------------------
@pytest.fixture
def settings(tmp_path, monkeypatch):
    """Local settings on ``tmp_path/var``; exported too, since pick_batch builds its own."""
    root = tmp_path / "var"
    monkeypatch.setenv("MLOPS_PATHS__ARTIFACT_ROOT", str(root))
    monkeypatch.setenv("MLOPS_MLFLOW__TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    (root / "landing").mkdir(parents=True)
    return get_settings()


@pytest.fixture
def s3_settings(s3_endpoint, aws_env, tmp_path, monkeypatch):
    root = f"s3://test-bucket/{tmp_path.name}"
    monkeypatch.setenv("MLOPS_PATHS__ARTIFACT_ROOT", root)
    monkeypatch.setenv("MLOPS_STORAGE__S3_ENDPOINT_URL", s3_endpoint)
    return get_settings()


@pytest.fixture(scope="module")
def good_csv() -> bytes:
    return pd.DataFrame(demo.generate(demo.BATCHES[0])).head(120).to_csv(index=False).encode()


def _landing(settings) -> str:
    return settings.uri(settings.paths.landing)


def _refusal(settings, ref: str, problem: str) -> str:
    return f"param batch_uri={ref!r} {problem}; {SUFFIX} {_landing(settings)!r}"


def _land(settings, name: str, data: bytes) -> str:
    return get_storage(settings).write_bytes(f"{_landing(settings)}/{name}", data)


def _ctx(settings, ref: str, run_id: str = "r1") -> StepContext:
    return StepContext(step="validate", run_id=run_id, settings=settings, inputs={"batch_uri": ref})


def _snapshot(root: Path) -> dict[str, str]:
    """Every file (and symlink) under ``root``, by relative path, with its content hash."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            out[str(path.relative_to(root))] = "-> " + os.readlink(path)
        elif path.is_file():
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _s3_snapshot(storage: Storage, *prefixes: str) -> dict[str, str]:
    return {uri: storage.content_hash(uri) for prefix in prefixes for uri in storage.list(prefix)}


def _refused_locally(settings, tmp_path, ref: str, problem: str) -> None:
    """``ref`` is refused by resolve_batch, the validate step and the DAG's pick_batch, and nothing moves."""
    before = _snapshot(tmp_path)
    expected = _refusal(settings, ref, problem)
    with pytest.raises(BadInput) as info:
        resolve_batch(settings, ref)
    assert str(info.value) == expected
    with pytest.raises(BadInput) as info:
        validate(_ctx(settings, ref))
    assert str(info.value) == expected and "\n" not in expected
    with pytest.raises(AirflowFailException) as failed:
        tasks.pick_batch({"batch_uri": ref}, "run-1")
    assert str(failed.value) == expected
    assert _snapshot(tmp_path) == before


# --- local references ----------------------------------------------------------------------------------
def test_traversal_landing_dotdot_is_refused(settings, tmp_path, monkeypatch):
    (tmp_path / "x.csv").write_text("text,label\nsecret,positive\n")
    monkeypatch.chdir(tmp_path / "var")
    _refused_locally(settings, tmp_path, "landing/../../x.csv", "resolves outside the landing prefix")
    assert (tmp_path / "x.csv").read_text() == "text,label\nsecret,positive\n"


def test_traversal_bare_dotdot_name_is_refused(settings, tmp_path):
    (tmp_path / "var" / "golden").mkdir()
    (tmp_path / "var" / "golden" / "golden.csv").write_text("text,label\n")
    _refused_locally(settings, tmp_path, "../golden/golden.csv", "resolves outside the landing prefix")


def test_absolute_path_to_mlflow_db_is_refused(settings, tmp_path):
    db = tmp_path / "var" / "mlflow.db"
    db.write_bytes(b"SQLite format 3\x00" + b"\x00" * 100)
    _refused_locally(settings, tmp_path, str(db), "resolves outside the landing prefix")
    assert db.is_file()


def test_absolute_path_to_mlflow_db_renamed_csv_is_refused(settings, tmp_path):
    db = tmp_path / "var" / "mlflow.csv"  # the suffix alone does not make it a batch
    db.write_bytes(b"SQLite format 3\x00")
    _refused_locally(settings, tmp_path, str(db), "resolves outside the landing prefix")


def test_accepted_batch_path_is_refused(settings, tmp_path):
    accepted = tmp_path / "var" / "accepted"
    accepted.mkdir()
    (accepted / "b-0123abcd.parquet").write_bytes(b"PAR1")
    _refused_locally(settings, tmp_path, str(accepted / "b-0123abcd.parquet"), "resolves outside the landing prefix")


def test_symlink_in_landing_pointing_outside_is_refused(settings, tmp_path):
    db = tmp_path / "var" / "mlflow.db"
    db.write_bytes(b"SQLite format 3\x00")
    link = tmp_path / "var" / "landing" / "evil.csv"
    link.symlink_to(db)
    _refused_locally(settings, tmp_path, "evil.csv", "resolves outside the landing prefix")
    # Not picked from the queue either: left in place, never read.
    with pytest.raises(AirflowSkipException, match="no batch waiting"):
        tasks.pick_batch({}, "run-2")
    assert link.is_symlink() and db.is_file()


def test_symlinked_folder_in_landing_pointing_outside_is_refused(settings, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "b.csv").write_text("text,label\n")
    (tmp_path / "var" / "landing" / "link").symlink_to(outside, target_is_directory=True)
    _refused_locally(settings, tmp_path, "link/b.csv", "resolves outside the landing prefix")


def test_symlink_inside_landing_resolves_to_its_target(settings, tmp_path, good_csv):
    target = Path(_land(settings, "real.csv", good_csv))
    (tmp_path / "var" / "landing" / "alias.csv").symlink_to(target)
    assert resolve_batch(settings, "alias.csv") == f"{_landing(settings)}/real.csv"


def test_folder_is_refused(settings, tmp_path):
    (tmp_path / "var" / "landing" / "batch.csv").mkdir()
    (tmp_path / "var" / "landing" / "batch.csv" / "part.csv").write_text("text,label\n")
    _refused_locally(settings, tmp_path, "batch.csv", "is a folder, not a file")


def test_landing_folder_itself_is_refused(settings, tmp_path):
    _refused_locally(settings, tmp_path, _landing(settings), "is the landing folder itself")


def test_wrong_suffix_is_refused(settings, tmp_path):
    _land(settings, "notes.txt", b"text,label\nhello,positive\n")
    _refused_locally(settings, tmp_path, "notes.txt", "does not end in .csv or .parquet")


def test_hidden_partial_write_is_refused(settings, tmp_path):
    _land(settings, ".tmp-abc123.csv", b"text,label\nhalf")
    _refused_locally(settings, tmp_path, ".tmp-abc123.csv", "names a hidden or temporary file")


def test_missing_batch_is_refused_by_pick_batch(settings, tmp_path):
    before = _snapshot(tmp_path)
    with pytest.raises(AirflowFailException) as info:
        tasks.pick_batch({"batch_uri": "nope.csv"}, "run-1")
    assert str(info.value) == _refusal(settings, "nope.csv", "does not exist")
    assert _snapshot(tmp_path) == before


def test_control_characters_are_refused_on_one_line(settings, tmp_path):
    ref = "b.csv\n2026-01-01 ERROR forged log line"
    _refused_locally(settings, tmp_path, ref, "contains control characters")


def test_overlong_reference_is_refused_and_cut(settings, tmp_path):
    ref = "a" * 5000 + ".csv"
    with pytest.raises(BadInput) as info:
        resolve_batch(settings, ref)
    assert str(info.value) == _refusal(settings, ref[:200] + "...", "is longer than 1024 characters")


def test_blank_reference_is_refused_by_the_step_and_means_oldest_in_the_form(settings, tmp_path):
    before = _snapshot(tmp_path)
    with pytest.raises(BadInput) as info:
        validate(_ctx(settings, "   "))
    assert str(info.value) == _refusal(settings, "", "is empty")
    with pytest.raises(AirflowSkipException, match="no batch waiting"):  # the form's default: oldest waiting
        tasks.pick_batch({"batch_uri": "   "}, "run-1")
    assert _snapshot(tmp_path) == before


def test_s3_uri_with_local_landing_is_refused(settings, tmp_path):
    _refused_locally(
        settings, tmp_path, "s3://test-bucket/landing/b.csv", "is a URI, but the landing prefix is a local folder"
    )


def test_cli_refuses_mlflow_db_with_exit_2_and_one_line(settings, tmp_path, capsys):
    from pipelines.cli import main

    db = tmp_path / "var" / "mlflow.db"
    db.write_bytes(b"SQLite format 3\x00")
    before = _snapshot(tmp_path)
    rc = main(["validate", "--run-id", "cli", "--input", f"batch_uri={db}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].endswith(_refusal(settings, str(db), "resolves outside the landing prefix"))
    assert "SQLite" not in "\n".join(err)
    assert _snapshot(tmp_path) == before


# --- S3 references (moto server on loopback) -----------------------------------------------------------
@pytest.fixture
def s3_world(s3_settings):
    """An object in another bucket and an accepted batch beside landing: both must stay untouched."""
    import boto3

    storage = get_storage(s3_settings)
    s3 = boto3.client("s3", endpoint_url=s3_settings.storage.s3_endpoint_url, region_name="us-east-1")
    if "other-bucket" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket="other-bucket")
    storage.write_bytes("s3://other-bucket/landing/b.csv", b"text,label\nsecret,positive\n")
    storage.write_bytes(s3_settings.uri("accepted", "b-0123abcd.parquet"), b"PAR1")
    storage.write_bytes(s3_settings.uri("landing", "ok.csv"), b"text,label\n")
    prefixes = ("s3://other-bucket/", s3_settings.uri(""))
    return storage, prefixes


def _refused_on_s3(settings, world, ref: str, problem: str) -> None:
    storage, prefixes = world
    before = _s3_snapshot(storage, *prefixes)
    expected = _refusal(settings, ref, problem)
    with pytest.raises(BadInput) as info:
        validate(_ctx(settings, ref))
    assert str(info.value) == expected
    with pytest.raises(AirflowFailException) as failed:
        tasks.pick_batch({"batch_uri": ref}, "run-1")
    assert str(failed.value) == expected
    assert _s3_snapshot(storage, *prefixes) == before


def test_s3_other_bucket_is_refused(s3_settings, s3_world):
    _refused_on_s3(
        s3_settings, s3_world, "s3://other-bucket/landing/b.csv", "is in bucket 'other-bucket', not the landing bucket"
    )


def test_s3_key_outside_landing_prefix_is_refused(s3_settings, s3_world):
    ref = s3_settings.uri("accepted", "b-0123abcd.parquet")
    _refused_on_s3(s3_settings, s3_world, ref, "is outside the landing prefix")


def test_s3_bucket_without_key_is_refused(s3_settings, s3_world):
    _refused_on_s3(s3_settings, s3_world, "s3://test-bucket", "names a bucket, not an object")
    _refused_on_s3(s3_settings, s3_world, "s3://test-bucket/", "names a bucket, not an object")


def test_s3_dotdot_in_key_is_refused(s3_settings, s3_world):
    ref = s3_settings.uri("landing", "..", "accepted", "b-0123abcd.csv")
    _refused_on_s3(s3_settings, s3_world, ref, "has an empty, '.' or '..' segment in its key")


def test_s3_relative_dotdot_name_is_refused(s3_settings, s3_world):
    _refused_on_s3(s3_settings, s3_world, "../accepted/b.csv", "has an empty, '.' or '..' segment in its key")


def test_s3_missing_bucket_is_refused(s3_settings, s3_world):
    _refused_on_s3(s3_settings, s3_world, "s3:///landing/b.csv", "has no bucket")


def test_s3_folder_is_refused(s3_settings, s3_world):
    storage, _ = s3_world
    storage.write_bytes(s3_settings.uri("landing", "part.csv", "a.csv"), b"text,label\n")
    _refused_on_s3(s3_settings, s3_world, s3_settings.uri("landing", "part.csv"), "is a folder, not a file")
    _refused_on_s3(
        s3_settings,
        s3_world,
        s3_settings.uri("landing", "part.csv") + "/",
        "has an empty, '.' or '..' segment in its key",
    )


def test_s3_local_path_is_refused(s3_settings, s3_world):
    _refused_on_s3(s3_settings, s3_world, "/etc/passwd.csv", "is not inside the S3 landing prefix")


def test_s3_name_inside_landing_is_accepted(s3_settings, s3_world):
    assert resolve_batch(s3_settings, "ok.csv") == s3_settings.uri("landing", "ok.csv")
    assert tasks.pick_batch({}, None) == s3_settings.uri("landing", "ok.csv")


# --- contents ----------------------------------------------------------------------------------------------
def test_file_content_never_appears_in_the_error(settings):
    secret = "SECRET-TOKEN-8f3a"
    rows = [f"{secret} row {i},{secret}" for i in range(60)]
    data = (f"{secret}_text,label\n" + "\n".join(rows)).encode()  # no text column; every label unknown
    uri = _land(settings, "leaky.csv", data)
    with pytest.raises(DataValidationFailed) as info:
        validate(_ctx(settings, uri))
    assert secret not in str(info.value)
    assert "column 'text' is missing (the file has 2 columns)" in str(info.value)
    assert "column 'label' has 60 of 60 values (100.0%) failing" in str(info.value)
    report = json.loads(Path(info.value.report_uri).read_text())  # the evidence stays in the report
    assert secret in json.dumps(report["failure_examples"])


def test_whitespace_only_texts_are_invalid(settings, good_csv):
    df = pd.read_csv(pd.io.common.BytesIO(good_csv))
    df.loc[[0, 5, 9], "text"] = " \t  \u3000 "
    uri = _land(settings, "blank.csv", df.to_csv(index=False).encode())
    with pytest.raises(DataValidationFailed) as info:
        validate(_ctx(settings, uri))
    assert info.value.failures == [
        "text not blank (only whitespace): column 'text' has 3 of 120 values (2.5%) failing "
        "[expect_column_values_to_not_match_regex]"
    ]
    assert not Path(uri).exists() and Path(info.value.quarantine_uri, "blank.csv").is_file()


# --- names unique per content ------------------------------------------------------------------------------
def test_two_bad_batches_with_the_same_name_are_both_kept(settings, tmp_path):
    quarantine = tmp_path / "var" / "quarantine"
    first, second = b"", b"\x89PNG\r\n\x1a\n\x00\x00garbage"
    for run_id, data in (("r1", first), ("r2", second)):
        _land(settings, "bad.csv", data)
        with pytest.raises(DataValidationFailed):
            validate(_ctx(settings, "bad.csv", run_id))
    folders = {p.name: p for p in quarantine.iterdir()}
    expected = {f"bad-{hashlib.sha256(d).hexdigest()[:8]}": (d, r) for d, r in ((first, "r1"), (second, "r2"))}
    assert set(folders) == set(expected)
    for name, (data, run_id) in expected.items():
        assert (folders[name] / "bad.csv").read_bytes() == data
        assert json.loads((folders[name] / run_id / "validation.json").read_text())["run_id"] == run_id
    assert list((tmp_path / "var" / "landing").iterdir()) == []


def test_identical_batch_relanded_is_a_duplicate_not_retrained(settings, tmp_path, good_csv):
    first = validate(_ctx(settings, _land(settings, "b.csv", good_csv), "r1"))
    again = validate(_ctx(settings, _land(settings, "b_again.csv", good_csv), "r2"))
    assert again["duplicate_of"] == again["accepted_uri"] == first["accepted_uri"]
    folder = Path(settings.uri("duplicates", f"b_again-{hashlib.sha256(good_csv).hexdigest()[:8]}"))
    assert again["duplicate_uri"] == str(folder)
    assert (folder / "b_again.csv").read_bytes() == good_csv
    assert (
        json.loads((folder / "r2" / "validation.json").read_text())["summary"]["duplicate_of"] == first["accepted_uri"]
    )
    assert [p.name for p in (tmp_path / "var" / "accepted").glob("*.parquet")] == [Path(first["accepted_uri"]).name]
    assert list((tmp_path / "var" / "landing").iterdir()) == []
    # The DAG's branch skips training for it, whatever decide chose.
    assert tasks.choose_after_decide({"action": "retrain"}, again) == "skip"
    assert tasks.choose_after_decide({"action": "retrain"}, first) == "train"
    # A rerun of the same run returns the same outcome.
    assert validate(_ctx(settings, str(Path(_landing(settings)) / "b_again.csv"), "r2")) == again


# --- the queue ---------------------------------------------------------------------------------------------
def test_failing_batch_is_set_aside_after_max_attempts_and_next_proceeds(settings, tmp_path):
    a = _land(settings, "a.csv", b"text,label\n")
    b = _land(settings, "b.csv", b"text,label\n2")
    for run_id in ("run-1", "run-2", "run-3"):  # each run picks a and dies before validate moves it
        assert tasks.pick_batch({}, run_id) == a
    assert tasks.pick_batch({}, "run-3") == a  # the same run again (a cleared task) is not a new attempt
    assert tasks.pick_batch({}, "run-4") == b
    folder = tmp_path / "var" / "set_aside" / f"a-{hashlib.sha256(b'text,label' + bytes([10])).hexdigest()[:8]}"
    assert (folder / "a.csv").read_bytes() == b"text,label\n" and not Path(a).exists()
    note = json.loads((folder / "note-run-4.json").read_text())
    assert note["runs"] == ["run-1", "run-2", "run-3"] and "dag.batch_max_attempts=3" in note["reason"]
    assert not list((tmp_path / "var" / "set_aside" / "_attempts").glob(f"{note['source_hash']}*"))


def test_a_run_the_user_stopped_is_not_counted_toward_setting_the_batch_aside(settings, tmp_path):
    from pipelines.io.storage import batch_attempts, withdraw_attempt

    a = _land(settings, "a.csv", b"text,label\n")
    for run_id in ("run-1", "run-2", "run-3"):
        assert tasks.pick_batch({}, run_id) == a
        if run_id != "run-1":  # run-2 and run-3 were stopped by Ctrl-C / SIGTERM (make run, scripts/dag_runner)
            assert withdraw_attempt(get_settings(), run_id) == [a]
    assert batch_attempts(get_settings(), a)["runs"] == ["run-1"]
    assert withdraw_attempt(get_settings(), "run-9") == []
    assert tasks.pick_batch({}, "run-4") == a and Path(a).exists()  # still waiting, not set aside
    assert withdraw_attempt(get_settings(), "run-1") == [a]
    assert batch_attempts(get_settings(), a)["runs"] == ["run-4"]


def test_quarantined_batch_leaves_the_queue(settings, tmp_path):
    bad = _land(settings, "a_bad.csv", b"")
    good = _land(settings, "b_next.csv", b"text,label\n")
    assert tasks.pick_batch({}, "run-1") == bad
    with pytest.raises(DataValidationFailed):
        validate(_ctx(settings, bad, "run-1"))
    assert tasks.pick_batch({}, "run-2") == good
    assert not list((tmp_path / "var" / "set_aside" / "_attempts").glob(f"{hashlib.sha256(b'').hexdigest()}*"))


# --- injected faults ---------------------------------------------------------------------------------------
class Crash(Exception):
    pass


def _crash_on_landing_delete(monkeypatch):
    real = Storage.delete

    def delete(self, uri):
        if "/landing/" in uri:
            raise Crash(f"killed before deleting {uri}")
        return real(self, uri)

    monkeypatch.setattr(Storage, "delete", delete)


def test_fault_crash_during_quarantine_move_then_rerun(settings, tmp_path, monkeypatch):
    uri = _land(settings, "broken.csv", b"")
    with monkeypatch.context() as m:
        _crash_on_landing_delete(m)
        with pytest.raises(Crash):
            validate(_ctx(settings, uri))
    folder = Path(settings.uri("quarantine", f"broken-{hashlib.sha256(b'').hexdigest()[:8]}"))
    assert Path(uri).exists() and (folder / "broken.csv").exists()  # copied, not yet removed: nothing lost
    with pytest.raises(DataValidationFailed):
        validate(_ctx(settings, uri))
    assert not Path(uri).exists()
    assert sorted(p.name for p in folder.iterdir()) == ["broken.csv", "r1"]


def test_fault_copy_fails_during_quarantine_move(settings, tmp_path, monkeypatch):
    uri = _land(settings, "broken.csv", b"")

    def failing_copy(self, src, dst):
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(Storage, "copy", failing_copy)
        with pytest.raises(OSError, match="disk full"):
            validate(_ctx(settings, uri))
    assert Path(uri).read_bytes() == b""
    assert not list((tmp_path / "var" / "quarantine").rglob("broken.csv"))
    with pytest.raises(DataValidationFailed):
        validate(_ctx(settings, uri))
    assert not Path(uri).exists() and len(list((tmp_path / "var" / "quarantine").rglob("broken.csv"))) == 1


def test_fault_crash_after_accepting_then_same_run_retries(settings, tmp_path, monkeypatch, good_csv):
    uri = _land(settings, "b.csv", good_csv)
    with monkeypatch.context() as m:
        _crash_on_landing_delete(m)
        with pytest.raises(Crash):
            validate(_ctx(settings, uri))
    accepted = list((tmp_path / "var" / "accepted").glob("*.parquet"))
    assert len(accepted) == 1 and Path(uri).exists() and not accepted[0].with_suffix(".json").exists()
    summary = validate(_ctx(settings, uri))
    assert "duplicate_of" not in summary and summary["accepted_uri"] == str(accepted[0])
    assert not Path(uri).exists() and accepted[0].with_suffix(".json").is_file()
    assert list((tmp_path / "var" / "accepted").glob("*.parquet")) == accepted


def test_fault_crash_after_accepting_then_next_run_completes_it(settings, tmp_path, monkeypatch, good_csv):
    uri = _land(settings, "b.csv", good_csv)
    with monkeypatch.context() as m:
        _crash_on_landing_delete(m)
        with pytest.raises(Crash):
            validate(_ctx(settings, uri, "r1"))
    summary = validate(_ctx(settings, uri, "r2"))  # r1 failed for good; the queue hands the batch to r2
    assert "duplicate_of" not in summary  # completed, not mistaken for a re-landed duplicate
    assert not Path(uri).exists() and not (tmp_path / "var" / "duplicates").exists()
    assert json.loads(Path(summary["accepted_uri"]).with_suffix(".json").read_text())["run_id"] == "r2"


def test_fault_process_killed_during_quarantine_move_then_rerun(settings, tmp_path):
    uri = _land(settings, "killed.csv", b"")
    code = (
        "import os, signal, sys\n"
        "from pipelines.io.storage import Storage\n"
        "real = Storage.delete\n"
        "def delete(self, uri):\n"
        "    if '/landing/' in uri:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(self, uri)\n"
        "Storage.delete = delete\n"
        "from pipelines.cli import main\n"
        f"sys.exit(main(['validate', '--run-id', 'k1', '--input', 'batch_uri={uri}']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=os.environ.copy(), capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    folder = Path(settings.uri("quarantine", f"killed-{hashlib.sha256(b'').hexdigest()[:8]}"))
    assert Path(uri).exists() and (folder / "killed.csv").exists()
    with pytest.raises(DataValidationFailed):
        validate(_ctx(settings, uri, "k1"))
    assert not Path(uri).exists() and (folder / "killed.csv").read_bytes() == b""


def test_fault_crash_while_setting_aside_keeps_the_batch(settings, tmp_path, monkeypatch):
    a = _land(settings, "a.csv", b"text,label\n")
    for run_id in ("run-1", "run-2", "run-3"):
        tasks.pick_batch({}, run_id)

    def failing_move(self, src, dst):
        raise OSError("S3 unavailable")

    with monkeypatch.context() as m:
        m.setattr(Storage, "move", failing_move)
        with pytest.raises(OSError, match="S3 unavailable"):
            tasks.pick_batch({}, "run-4")
    assert Path(a).read_bytes() == b"text,label\n"  # still waiting, with fresh tries
    assert tasks.pick_batch({}, "run-5") == a
