"""What each step's log says it decided and why (pipelines.runner.outcome_lines), from hand-written summaries."""

from pipelines.runner import outcome_lines


def test_decide_logs_the_action_and_each_reason():
    lines = outcome_lines("decide", {"action": "fine_tune", "forced": False, "reasons": ["moderate drift: p < 0.01"]})
    assert lines == ["decide: action fine_tune", "decide:   because moderate drift: p < 0.01"]
    forced = outcome_lines("decide", {"action": "retrain", "forced": True, "reasons": []})
    assert forced == ["decide: action retrain (forced by the run's force_action)"]


def test_evaluate_logs_every_gate_outcome_and_why_it_failed():
    summary = {
        "passed": False,
        "metrics": {"macro_f1": 0.41, "champion_macro_f1": 0.5, "baseline_macro_f1": 0.45, "majority_macro_f1": 0.2},
        "eval_rows": 104,
        "gates": {
            "non_inferiority": {"outcome": "fail", "value": -0.09, "comparator": ">=", "threshold": -0.02},
            "size_mb": {"passed": True, "value": 22.4, "comparator": "<=", "threshold": 200},
            "slices": {"skipped": True},
        },
        "failures": ["non_inferiority: lower end -0.090 below -0.020"],
    }
    lines = outcome_lines("evaluate", summary)
    assert lines[0].startswith("evaluate: gates FAILED; macro-F1 0.410 (champion 0.500")
    assert "evaluate:   gate non_inferiority: fail (value -0.090 >= -0.020)" in lines
    assert "evaluate:   gate size_mb: pass (value 22.400 <= 200.000)" in lines
    assert any(line.startswith("evaluate:   gate slices: skipped") for line in lines)
    assert lines[-1] == "evaluate:   failed because non_inferiority: lower end -0.090 below -0.020"


def test_register_and_promote_log_where_the_version_went():
    staged = outcome_lines(
        "register",
        {"model_name": "m", "version": "3", "policy": "manual", "alias": "challenger", "champion_before": "2"},
    )
    assert "m version 3 (policy manual): staged as the challenger, awaiting a review" in staged[0]
    moved = outcome_lines(
        "promote",
        {"action": "approve", "version": "3", "status": "promoted", "champion_before": "2", "champion_after": "3"},
    )
    assert moved[0].startswith("promote: approve version 3: promoted; champion 2 -> 3")
