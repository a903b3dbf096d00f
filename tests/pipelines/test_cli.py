import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _cli(*args, env=None, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", "pipelines", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        timeout=120,
    )


def test_cli_help_lists_steps():
    out = _cli("--help")
    assert out.returncode == 0
    for step in ["validate", "drift", "decide", "train", "compress", "evaluate", "register", "promote", "demo-data"]:
        assert step in out.stdout


def test_cli_unknown_step_names_it():
    out = _cli("fly", "--run-id", "r")
    assert out.returncode != 0 and "'fly'" in out.stderr


def test_cli_bad_config_value_one_line(tmp_path):
    out = _cli("decide", "--run-id", "r", env={"MLOPS_RUNTIME__MODE": "podman"})
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "runtime.mode='podman'" in lines[0]


def test_cli_missing_input_one_line(tmp_path):
    out = _cli("validate", "--run-id", "r", env={"MLOPS_PATHS__ARTIFACT_ROOT": str(tmp_path)})
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "'batch_uri'" in errors[0] and "validate" in errors[0]
    assert "Traceback" not in out.stderr


def test_cli_demo_data_writes_landing(tmp_path):
    out = _cli("demo-data", env={"MLOPS_PATHS__ARTIFACT_ROOT": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    names = sorted(p.name for p in (tmp_path / "landing").iterdir())
    assert names == [
        "batch_000_reference.csv",
        "batch_001_in_domain.csv",
        "batch_002_moderate.csv",
        "batch_003_severe.csv",
        "batch_004_malformed.csv",
    ]


def test_cli_step_prints_summary_last_and_writes_result(tmp_path):
    out = _cli(
        "decide",
        "--run-id",
        "cli-run",
        "--param",
        'force_action="retrain"',
        env={"MLOPS_PATHS__ARTIFACT_ROOT": str(tmp_path)},
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["action"] == "retrain"
    stored = json.loads((tmp_path / "runs" / "cli-run" / "decide" / "result.json").read_text())
    assert stored == summary


# --- in-process: main() with the settings in the environment -------------------------------------------------
def _main(monkeypatch, root, *argv):
    from pipelines.cli import main

    monkeypatch.setenv("MLOPS_PATHS__ARTIFACT_ROOT", str(root))
    # run_step looks for the step's MLflow run when mlflow is imported (it is, later in a full run): keep that store
    # here, never the default var/mlflow.db in the working folder.
    monkeypatch.setenv("MLOPS_MLFLOW__TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    return main(list(argv))


def test_cli_result_file_holds_the_printed_summary(tmp_path, monkeypatch, capsys):
    target = tmp_path / "airflow" / "xcom" / "return.json"
    code = _main(
        monkeypatch,
        tmp_path,
        "decide",
        "--run-id",
        "r1",
        "--param",
        'force_action="skip"',
        "--result-file",
        str(target),
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["action"] == "skip" and json.loads(target.read_text()) == printed


def test_cli_set_override_reaches_the_step(tmp_path, monkeypatch, capsys):
    code = _main(
        monkeypatch,
        tmp_path,
        "decide",
        "--run-id",
        "r1",
        "--param",
        'force_action="retrain"',
        "--set",
        "paths.runs=runs2",
    )
    assert code == 0
    assert (tmp_path / "runs2" / "r1" / "decide" / "result.json").is_file()
    assert not (tmp_path / "runs").exists()


def test_cli_set_without_equals_sign_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    code = _main(monkeypatch, tmp_path, "decide", "--run-id", "r1", "--set", "drift.p_threshold")
    assert code == 2
    assert capsys.readouterr().err.strip() == "error: --set 'drift.p_threshold' must look like key=value"


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("", "is not a location"),
        ("   ", "is not a location"),
        ("a.csv\nrm -rf /", "is not a location"),
        ("s3:bucket/key.csv", "names no object"),
        ("s3://bucket", "names no object"),
        ("s3://bucket//", "names no object"),
    ],
)
def test_check_inputs_refuses_what_names_no_location(uri, problem):
    from pipelines.cli import check_inputs

    with pytest.raises(ValueError, match=f"input batch_uri=.* {problem}"):
        check_inputs({"batch_uri": uri})


def test_check_inputs_passes_paths_and_s3_objects():
    from pipelines.cli import check_inputs

    inputs = {"batch_uri": "var/landing/b.csv", "accepted_uri": "s3://bucket/accepted/x.parquet"}
    assert check_inputs(inputs) == inputs


def test_cli_bad_input_is_refused_before_the_step_runs(tmp_path, monkeypatch, capsys):
    code = _main(monkeypatch, tmp_path, "validate", "--run-id", "r1", "--input", "batch_uri=s3://bucket")
    assert code == 2
    assert "input batch_uri='s3://bucket' names no object" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("run_id", ["", "a b", "x" * 251, "r/1", "r'1"])
def test_check_run_id_refuses_and_names_the_allowed_characters(run_id):
    from pipelines.cli import check_run_id

    with pytest.raises(ValueError, match="is not allowed: use 1-250 of the characters A-Z a-z 0-9 _ . ~ : [+] -"):
        check_run_id(run_id)
    assert check_run_id("manual__2026-01-01T00:00:00+00:00") == "manual__2026-01-01T00:00:00+00:00"
