import json
import os
import subprocess
import sys
from pathlib import Path

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
