"""The Markdown of the evaluation report and the review description, rendered from hand-written summaries."""

from __future__ import annotations

from pipelines.report import RunResults, compression_section, gate_rows, render_review_description, verdict


def _summary(**extra):
    gates = {
        "majority": {"passed": True, "outcome": "pass", "value": 0.21, "threshold": 0.05, "comparator": "CI low >"},
        "baseline": {
            "passed": True,
            "outcome": "review",
            "value": -0.04,
            "threshold": 0.0,
            "comparator": "Δ ≥",
            "diff": -0.04,
            "ci_low": -0.09,
            "ci_high": 0.01,
            "level": 0.95,
            "n": 104,
            "note": "candidate 0.41 vs TF-IDF baseline 0.45 on 104 rows",
        },
        "size_mb": {"passed": False, "value": 300.0, "threshold": 200.0, "comparator": "≤"},  # no outcome: older
    }
    summary = {
        "passed": True,
        "needs_review": True,
        "review_reasons": ["candidate macro-F1 0.410 below the TF-IDF + logistic-regression baseline 0.450"],
        "gates": gates,
        "metrics": {"macro_f1": 0.41, "baseline_macro_f1": 0.45, "majority_macro_f1": 0.2},
        "failures": [],
        "eval_rows": 104,
        "confusion": {"labels": ["a", "b"], "candidate": [[1, 0], [0, 1]], "champion": None},
        "report_uri": "runs/r/evaluate/report.md",
    }
    summary.update(extra)
    return summary


def test_gate_rows_mark_pass_fail_review_in_gate_order():
    rows = gate_rows(_summary()["gates"])
    assert [r[:2] for r in rows] == [["`majority`", "✅ pass"], ["`baseline`", "⚠️ REVIEW"], ["`size_mb`", "❌ FAIL"]]


def test_verdict_names_a_review():
    assert verdict(_summary()) == "PASSED, NEEDS REVIEW"
    assert verdict(_summary(needs_review=False)) == "PASSED"
    assert verdict(_summary(passed=False)) == "FAILED"


def test_compression_section_degrades_without_a_level():
    assert compression_section(None) == []
    assert compression_section({"served_uri": "x", "agreement": 0.99}) == []  # compress before levels: nothing
    lines = compression_section({"level": "int8", "agreement": 0.97})
    assert (
        lines[0] == "## Compression" and "level **int8**: same label as the fp32 model on 97.0 % of – rows" in lines[2]
    )


def test_review_description_flags_the_baseline_and_the_review_at_the_top():
    text = render_review_description(
        model_name="m",
        version="3",
        run_id="r",
        results=RunResults(evaluate=_summary()),
        review_tag="review",
        review_comment_tag="review_comment",
        policy="auto",
    )
    assert text.startswith("# m version 3\n\n**Status: awaiting review**")
    assert text.index("## How to decide") < text.index("## Evaluation report")
    head = text.split("## Evaluation report")[1].split("## Gates")[0]
    assert "**no gate failed, NEEDS REVIEW**; macro-F1 0.410 on 104 evaluation rows" in head
    assert "⚠️ **Below the TF-IDF baseline**" in head and "95% CI [-0.090, +0.010] on 104 rows" in head
    assert "## Needs a human review" in head
    assert "## Compression" not in text


def test_a_move_rewrites_the_top_and_keeps_the_report():
    from pipelines.report import compose_version_description, report_part, status_line

    pending = render_review_description(
        model_name="m",
        version="3",
        run_id="r",
        results=RunResults(evaluate=_summary()),
        review_tag="review",
        review_comment_tag="review_comment",
        policy="manual",
    )
    done = compose_version_description("m", "3", status_line("rejected", "by erin"), report_part(pending))
    assert done.startswith("# m version 3\n\n**Status: rejected**: by erin\n\n## Evaluation report")
    assert "## How to decide" not in done and report_part(done) == report_part(pending)
    # A description written another way is kept whole below the new top.
    assert report_part("# Challenger\n\nthe report") == "# Challenger\n\nthe report"
    cut = compose_version_description("m", "3", "**Status: x**: y", "## Evaluation report\n" + "row\n" * 3000)
    assert len(cut) <= 5000 and cut.endswith("(report cut to fit MLflow's description size)\n")


def test_tables_have_a_header_separator_row_github_renders():
    from pipelines.report import _table

    lines = _table(["a", "b"], [[1, 2]]).splitlines()
    assert lines == ["| a | b |", "| --- | --- |", "| 1 | 2 |"]


def test_the_decision_section_shows_training_cost_and_decision_offsets():
    from pipelines.report import _decision_section

    train = {
        "base": "minilm",
        "metrics": {
            "sample_passes": 1032.0,
            "train_seconds": 98.3,
            "best_epoch": 4.0,
            "epochs_run": 7.0,
            "val_macro_f1": 0.4375,
            "decision_offset_negative": 0.0,
            "decision_offset_neutral": 0.416,
            "decision_offset_positive": 0.0,
        },
    }
    lines = _decision_section({"action": "retrain", "severity": "none", "reasons": ["bootstrap"]}, train)
    assert "- training: 1032 sample passes, 98 s, best epoch 4 of 7 (validation macro-F1 0.438)" in lines
    offsets = [line for line in lines if line.startswith("- decision offsets")]
    assert offsets and "neutral +0.42" in offsets[0] and "negative" not in offsets[0]
    quiet = _decision_section(None, {"base": "minilm", "metrics": {"decision_offset_neutral": 0.0}})
    assert not [line for line in quiet if "decision offsets" in line or "training:" in line]
    whole = {**train["metrics"], "early_stopping": 0.0, "val_rows": 23.0, "epochs_run": 10.0}
    lines = _decision_section({"action": "retrain", "severity": "none", "reasons": ["bootstrap"]}, {"metrics": whole})
    assert (
        "- training: 1032 sample passes, 98 s, last of 10 epochs kept (23 validation rows: too few to stop early) "
        "(validation macro-F1 0.438)" in lines
    )
