import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.context import StepContext
from pipelines.steps.decide import decide, run

REPO = Path(__file__).resolve().parents[2]


def _drift(severity="none", has_reference=True, rows=400, reasons=None, fine_tunes=None, **tests):
    base_tests = {
        "mmd": {"statistic": 0.0001, "p_value": 0.81, "threshold": 0.01, "drifted": False},
        "ks_embedding": {"statistic": 0.0, "p_value": 0.02, "threshold": 0.01 / 64, "drifted": False, "dims": 64},
        "label": {"statistic": 4.1, "p_value": 0.126, "threshold": 0.01, "drifted": False},
        "length": {"statistic": 0.05, "p_value": 0.61, "threshold": 0.01, "drifted": False},
        "quality": {"statistic": None, "p_value": None, "threshold": 0.05, "drifted": False, "skipped": "no champion"},
    }
    base_tests.update(tests)
    return {
        "severity": severity,
        "has_reference": has_reference,
        "rows": rows,
        "tests": base_tests,
        "reasons": reasons or [],
        "champion_version": "3" if has_reference else None,
        "fine_tunes_since_retrain": fine_tunes,
    }


def _ctx(settings, tmp_path, drift=None, validate=None, **params):
    inputs = {}
    for name, result in (("drift", drift), ("validate", validate)):
        if result is not None:
            path = tmp_path / f"{name}.json"
            path.write_text(json.dumps(result))
            inputs[f"{name}_result_uri"] = str(path)
    return StepContext(step="decide", run_id="r", settings=settings, inputs=inputs, params=params)


def test_decide_no_drift_skips_with_test_figures(settings):
    out = decide(_drift("none"), None, settings)
    assert out["action"] == "skip"
    assert out["reasons"] == [
        "no drift: mmd p=0.81 >= 0.01, embedding KS: 0 of 64 dimensions drifted, label p=0.126 >= 0.01, "
        "length p=0.61 >= 0.01, quality skipped (no champion)"
    ]


def test_decide_moderate_fine_tunes_and_keeps_drift_reasons(settings):
    out = decide(_drift("moderate", reasons=["label drift p=0.003 < 0.01 (statistic 11.6)"]), {"rows": 400}, settings)
    assert out["action"] == "fine_tune"
    assert out["reasons"] == [
        "moderate drift on 400 new rows: fine-tune the champion",
        "label drift p=0.003 < 0.01 (statistic 11.6)",
    ]


def test_decide_severe_fine_tunes_by_default_and_retrains_when_configured(settings):
    drift = _drift("severe", reasons=["embedding MMD p=0 < 0.01 (distance 0.2050), distance >= 0.05"])
    out = decide(drift, {"rows": 400}, settings)
    assert out["action"] == "fine_tune" and "decision.severe_action=fine_tune" in out["reasons"][0]
    assert "distance >= 0.05" in out["reasons"][1]
    retrain = settings.with_overrides({"decision.severe_action": "retrain"})
    out = decide(drift, None, retrain)
    assert out["action"] == "retrain" and "distance >= 0.05" in out["reasons"][1]


def test_decide_without_champion_bootstraps(settings):
    out = decide(_drift("none", has_reference=False), None, settings)
    assert out["action"] == "retrain" and "bootstrap" in out["reasons"][0]


def test_decide_small_batch_threshold_in_config_changes_decision(make_settings):
    drift = _drift("moderate", rows=120, reasons=["label drift p=0.003 < 0.01"])
    assert decide(drift, None, make_settings())["action"] == "fine_tune"
    strict = make_settings(decision__min_new_rows_fine_tune=200)
    out = decide(drift, None, strict)
    assert out["action"] == "skip"
    assert out["reasons"][0] == (
        "moderate drift but only 120 new rows < decision.min_new_rows_fine_tune=200: too little to fine-tune on"
    )


def test_decide_too_many_fine_tunes_retrain(make_settings):
    out = decide(_drift("moderate", fine_tunes=3), None, make_settings(decision__max_fine_tunes_before_retrain=3))
    assert (
        out["action"] == "retrain" and "3 fine-tunes >= decision.max_fine_tunes_before_retrain=3" in out["reasons"][0]
    )


def test_decide_run_reads_results_and_validate_rows(settings, tmp_path):
    out = run(_ctx(settings, tmp_path, drift=_drift("moderate", rows=400), validate={"rows": 30}))
    assert out["action"] == "skip" and out["new_rows"] == 30 and out["forced"] is False


@pytest.mark.parametrize("forced", ["skip", "fine_tune", "retrain"])
def test_decide_forced_action_wins(settings, tmp_path, forced):
    out = run(_ctx(settings, tmp_path, drift=_drift("severe"), force_action=forced))
    assert out["action"] == forced and out["forced"] is True and out["auto_action"] == "fine_tune"
    assert out["reasons"][0] == f"forced by run parameter force_action={forced!r}"


def test_decide_bad_force_action_names_param_and_choices(settings, tmp_path):
    with pytest.raises(ValueError, match=r"force_action='rebuild' .* auto, skip, fine_tune, retrain"):
        run(_ctx(settings, tmp_path, drift=_drift(), force_action="rebuild"))


def test_decide_auto_without_drift_result_fails_clearly(settings, tmp_path):
    with pytest.raises(ValueError, match=r"needs the drift result of run 'r'.*force_action"):
        run(_ctx(settings, tmp_path))


def test_decide_cli_forced_without_drift_result(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pipelines", "decide", "--run-id", "cli", "--param", 'force_action="retrain"'],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "MLOPS_PATHS__ARTIFACT_ROOT": str(tmp_path)},
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["action"] == "retrain" and summary["severity"] is None
    bad = subprocess.run(
        [sys.executable, "-m", "pipelines", "decide", "--run-id", "cli", "--param", "force_action=maybe"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "MLOPS_PATHS__ARTIFACT_ROOT": str(tmp_path)},
    )
    assert bad.returncode == 2 and "force_action='maybe'" in bad.stderr


def _quality(drop):
    return {
        "statistic": drop,
        "p_value": None,
        "threshold": 0.05,
        "drifted": drop >= 0.05,
        "batch_macro_f1": 0.62 - drop,
        "champion_macro_f1": 0.62,
    }


@pytest.mark.parametrize("severity", ["moderate", "severe"])
def test_decide_skips_drift_when_the_champions_quality_held(settings, severity):
    drift = _drift(severity, reasons=["embedding MMD p=0.001 < 0.01"], quality=_quality(0.01))
    out = decide(drift, {"rows": 400}, settings)
    assert out["action"] == "skip"
    assert out["reasons"][0].startswith("the distribution moved, but the champion's macro-F1 on the batch (0.610)")
    assert "decision.min_quality_drop=0.05" in out["reasons"][0]
    skipped = "fine_tune"
    assert out["reasons"][0].endswith(f"skip ({skipped} not worth its compute)")
    assert "embedding MMD p=0.001 < 0.01" in out["reasons"]


def test_decide_acts_when_the_champions_quality_dropped(settings):
    out = decide(_drift("moderate", quality=_quality(0.08)), {"rows": 400}, settings)
    assert out["action"] == "fine_tune"
    retrain = settings.with_overrides({"decision.severe_action": "retrain"})
    assert decide(_drift("severe", quality=_quality(0.2)), {"rows": 400}, retrain)["action"] == "retrain"


def test_decide_min_quality_drop_is_configurable(settings):
    strict = settings.with_overrides({"decision.min_quality_drop": 0.0})
    assert decide(_drift("moderate", quality=_quality(0.01)), {"rows": 400}, strict)["action"] == "fine_tune"


def test_decide_fine_tunes_a_young_history_although_the_quality_held(settings):
    drift = _drift("moderate", reasons=["label drift p=0.003 < 0.01"], quality=_quality(0.01))
    out = decide(drift, {"rows": 400}, settings, history_rows=500)
    assert out["action"] == "fine_tune"
    assert "the batch adds 400 rows to 500 accepted so far (80% >= decision.min_data_growth=50%)" in out["reasons"][0]
    assert out["reasons"][0].endswith(": fine-tune") and "label drift p=0.003 < 0.01" in out["reasons"]


@pytest.mark.parametrize(
    ("history", "overrides"),
    [(801, {}), (None, {}), (100, {"decision.min_data_growth": 0.0})],
    ids=["grown-history", "unknown-history", "rule-off"],
)
def test_decide_young_history_rule_stops_with_a_grown_history(settings, history, overrides):
    drift = _drift("moderate", quality=_quality(0.01))
    out = decide(drift, {"rows": 400}, settings.with_overrides(overrides) if overrides else settings, history)
    assert out["action"] == "skip"


def test_decide_young_history_fine_tunes_without_drift_but_never_retrains(settings):
    out = decide(_drift("none"), {"rows": 400}, settings, history_rows=100)
    assert out["action"] == "fine_tune" and out["reasons"][1].startswith("no drift: ")
    # the chain of fine-tunes is at its limit: a retrain is not worth it while the quality held
    drift = _drift("moderate", fine_tunes=5, quality=_quality(0.01))
    assert decide(drift, {"rows": 400}, settings, history_rows=100)["action"] == "skip"
    assert decide(_drift("none", fine_tunes=5), {"rows": 400}, settings, history_rows=100)["action"] == "skip"
    # too few new rows to learn from
    assert decide(_drift("none"), {"rows": 40}, settings, history_rows=10)["action"] == "skip"


def test_decide_skips_a_duplicate_batch_even_when_forced(settings, tmp_path):
    validate = {"rows": 400, "duplicate_of": "var/accepted/b1-0123abcd.parquet"}
    out = run(_ctx(settings, tmp_path, drift=_drift("severe"), validate=validate, force_action="retrain"))
    assert out["action"] == "skip" and out["new_rows"] == 0
    assert out["reasons"] == [
        "the batch repeats the accepted var/accepted/b1-0123abcd.parquet: nothing new to learn (skip)"
    ]
