"""Evaluation report: Markdown rendered from the evaluate summary, and the matplotlib figures.

Both Markdown documents are rendered from JSON summaries (the evaluate result and the earlier steps' results), so
the register step can build the reviewer's description from ``result.json`` files without re-running anything.
Figures use the Agg backend and are written as PNG files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

#: MLflow keeps at most 5000 characters in a model version's or registered model's description (SQL column size).
MAX_DESCRIPTION_CHARS = 5000


# --- formatting helpers -------------------------------------------------------------------------------------
def _f(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return f"{float(value):.{digits}f}"
    return str(value)


def _signed(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{float(value):+.{digits}f}"


def _pct(fraction: Any) -> str:
    return "–" if fraction is None else f"{float(fraction) * 100:.1f} %"


def _mark(passed: bool | None, skipped: bool = False) -> str:
    if skipped:
        return "⏭ skipped"
    return "✅ pass" if passed else "❌ FAIL"


def gate_outcome(gate: dict[str, Any]) -> str:
    """``pass``, ``fail`` or ``review`` of a gate dict (from ``passed`` for a summary written before outcomes)."""
    return str(gate.get("outcome") or ("pass" if gate.get("passed") else "fail"))


def _gate_mark(gate: dict[str, Any]) -> str:
    if gate.get("skipped"):
        return "⏭ skipped"
    return {"pass": "✅ pass", "fail": "❌ FAIL", "review": "⚠️ REVIEW"}.get(gate_outcome(gate), "❌ FAIL")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


#: The order gates are listed in (result.json is written with sorted keys, so the order is restored here).
GATE_ORDER = [
    "majority",
    "baseline",
    "non_inferiority",
    "slices",
    "macro_f1_floor",
    "class_recall_floor",
    "latency_p95_ms",
    "size_mb",
]

#: The header of the gate table (:func:`gate_rows`).
GATE_HEADER = ["gate", "result", "value", "threshold", "note"]


def gate_rows(gates: dict[str, dict[str, Any]]) -> list[list[str]]:
    """One table row per gate, in :data:`GATE_ORDER`: name, result (pass / FAIL / REVIEW / skipped), value,
    threshold, note (statistical gates name the evaluation set size there)."""
    rows = []
    order = {name: i for i, name in enumerate(GATE_ORDER)}
    for name, gate in sorted(gates.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])):
        rows.append(
            [
                f"`{name}`",
                _gate_mark(gate),
                _f(gate.get("value")),
                f"{gate.get('comparator', '')} {_f(gate.get('threshold'))}".strip(),
                str(gate.get("note", "")).replace("|", "/"),
            ]
        )
    return rows


def slice_table(gate: dict[str, Any]) -> str | None:
    """The slice table (size, candidate and champion macro-F1, delta), or None when there is no slice."""
    slices = gate.get("slices") or []
    if not slices:
        return None
    rows = [
        [
            f"`{s['slice']}`",
            s["n"],
            _f(s.get("candidate")),
            _f(s.get("champion")),
            _signed(s.get("delta")),
            _mark(s.get("passed"), not s.get("checked", True)),
        ]
        for s in slices
    ]
    return _table(["slice", "rows", "candidate F1", "champion F1", "Δ", "result"], rows)


def confusion_tables(confusion: dict[str, Any]) -> str:
    """The candidate's confusion matrix and, when there is a champion, the change against it."""
    labels = confusion["labels"]
    cand = np.asarray(confusion["candidate"])
    out = ["Candidate (rows: true, columns: predicted):", ""]
    out.append(_table(["true \\ pred", *labels], [[f"**{lab}**", *cand[i].tolist()] for i, lab in enumerate(labels)]))
    if confusion.get("champion") is not None:
        delta = cand - np.asarray(confusion["champion"])
        rows = [[f"**{lab}**", *(f"{int(v):+d}" for v in delta[i])] for i, lab in enumerate(labels)]
        out += ["", "Change against the champion (candidate − champion; more on the diagonal is better):", ""]
        out.append(_table(["true \\ pred", *labels], rows))
    return "\n".join(out)


def _scoreboard(summary: dict[str, Any]) -> str:
    m = summary["metrics"]
    rows = [["candidate (served artifact)", _f(m.get("macro_f1")), _f(m.get("accuracy"))]]
    if m.get("champion_macro_f1") is not None:
        rows.append(
            [f"champion v{summary.get('champion_version')}", _f(m["champion_macro_f1"]), _f(m.get("champion_accuracy"))]
        )
    rows.append(
        ["TF-IDF + logistic regression baseline", _f(m.get("baseline_macro_f1")), _f(m.get("baseline_accuracy"))]
    )
    rows.append(["majority class", _f(m.get("majority_macro_f1")), _f(m.get("majority_accuracy"))])
    return _table(["model", "macro-F1", "accuracy"], rows)


def baseline_warning(summary: dict[str, Any]) -> str | None:
    """A one-line warning when the candidate scores below the TF-IDF baseline, with the interval of the difference
    when the ``baseline`` gate computed it."""
    m = summary["metrics"]
    base = m.get("baseline_macro_f1")
    if base is None or m.get("macro_f1") is None or m["macro_f1"] >= base:
        return None
    gate = (summary.get("gates") or {}).get("baseline") or {}
    ci = ""
    if gate.get("ci_low") is not None:
        level = f"{float(gate['level']):.0%} " if gate.get("level") is not None else ""
        ci = (
            f" (Δ {_signed(gate.get('diff'))}, {level}CI [{_signed(gate['ci_low'])}, "
            f"{_signed(gate.get('ci_high'))}] on {gate.get('n')} rows)"
        )
    held = " It is held for a human review." if gate_outcome(gate) == "review" else ""
    return (
        f"⚠️ **Below the TF-IDF baseline**: the candidate ({m['macro_f1']:.3f}) scores below the TF-IDF + "
        f"logistic-regression baseline ({base:.3f}) trained on the same data{ci}.{held}"
    )


def verdict(summary: dict[str, Any]) -> str:
    """``PASSED``, ``PASSED, NEEDS REVIEW`` or ``FAILED``."""
    if not summary.get("passed"):
        return "FAILED"
    return "PASSED, NEEDS REVIEW" if summary.get("needs_review") else "PASSED"


def review_section(summary: dict[str, Any]) -> list[str]:
    """Why a human has to decide (the gates with outcome review), or nothing."""
    if not summary.get("needs_review"):
        return []
    lines = ["## Needs a human review", ""]
    lines.append("Not promoted automatically, even under the `auto` policy; a reviewer approves or rejects it:")
    lines += [f"- {r}" for r in summary.get("review_reasons") or []]
    return lines


def compression_section(compress: dict[str, Any] | None) -> list[str]:
    """The compression level chosen and how far it agrees with the fp32 model, or nothing when the compress result
    does not name a level."""
    if not compress or compress.get("level") is None:
        return []
    lines = ["## Compression", ""]
    line = f"- level **{compress['level']}**"
    if compress.get("agreement") is not None:
        line += f": same label as the fp32 model on {_pct(compress['agreement'])} of"
        line += f" {compress.get('agreement_rows', '–')} rows"
        ci = compress.get("agreement_ci")
        if isinstance(ci, list | tuple) and len(ci) == 2 and None not in ci:
            line += f" (CI {_pct(ci[0])} to {_pct(ci[1])})"
    if compress.get("size_mb") is not None:
        line += f"; served size {_f(compress['size_mb'], 2)} MB"
    lines.append(line)
    tried = [t for t in compress.get("levels_tried") or [] if isinstance(t, dict)]
    if tried:
        rows = [[f"`{t.get('level')}`", _pct(t.get("agreement")), _f(t.get("size_mb"), 2)] for t in tried]
        lines += ["", "Levels tried (the most compressed one that agrees well enough is served):", ""]
        lines.append(_table(["level", "agreement", "size MB"], rows))
    return lines + distillation_lines(compress)


def distillation_lines(compress: dict[str, Any]) -> list[str]:
    """What distillation served (teacher or student): layers, size, speed, agreement with the teacher, and the
    teacher's macro-F1 beside the served model's; nothing when distillation was off."""
    d = compress.get("distill")
    if not isinstance(d, dict) or not d.get("enabled"):
        return []
    lines = ["", "### Distillation", ""]
    served = d.get("served") or compress.get("served_model") or "teacher"
    teacher_layers = d.get("teacher_layers", "–")
    if d.get("skipped"):
        lines.append(f"- skipped: {d['skipped']}; the **teacher** is served")
        return lines
    student = f"{d.get('student_layers', '–')} of the teacher's {teacher_layers} encoder layers ({d.get('layers')})"
    if served == "student":
        lines.append(f"- served: the **student**, {student}")
    else:
        lines.append(f"- served: the **teacher** ({teacher_layers} layers); the student ({student}) was not served")
        if d.get("backed_off"):
            lines.append(f"- why: {d['backed_off']}")
    rows = [
        ["agreement with the teacher (served graph, agreement sample)", _pct(d.get("agreement_with_teacher"))],
        [
            "size MB (served) / fp32 teacher",
            f"{_f(d.get('served_mb'), 2)} ({_f(d.get('size_ratio_vs_teacher_fp32'), 2)}x smaller)",
        ],
        [
            "ms per batch of 32 (served) / fp32 PyTorch teacher",
            f"{_f(d.get('served_p50_ms_batch32'), 1)} / {_f(d.get('teacher_fp32_p50_ms_batch32'), 1)} "
            f"({_f(d.get('speedup_vs_teacher_fp32'), 2)}x faster)",
        ],
    ]
    if d.get("teacher_macro_f1") is not None:
        rows.append(
            [
                f"macro-F1 on the {d.get('eval_rows', '–')} evaluation rows: teacher (fp32) / served {served}",
                f"{_f(d.get('teacher_macro_f1'))} / {_f(d.get('served_macro_f1'))}",
            ]
        )
    m = d.get("metrics") or {}
    if m:
        rows.append(
            [
                "distillation cost",
                f"{_f(m.get('sample_passes'), 0)} sample passes, {_f(m.get('train_seconds'), 1)} s "
                f"({_f(m.get('labelled_rows'), 0)} labelled + {_f(m.get('unlabelled_rows'), 0)} captured texts, "
                f"best epoch {_f(m.get('best_epoch'), 0)} of {_f(m.get('epochs_run'), 0)})",
            ]
        )
    lines.append("")
    lines.append(_table(["", "value"], rows))
    return lines


# --- the evaluation report ----------------------------------------------------------------------------------
def render_evaluation_report(summary: dict[str, Any]) -> str:
    """The full evaluation report in Markdown, from the evaluate step's summary.

    Args:
        summary: the dict ``pipelines.steps.evaluate.run`` returns.

    Returns:
        Markdown text.
    """
    lines = [f"# Evaluation: {verdict(summary)}", ""]
    if warning := baseline_warning(summary):
        lines += [warning, ""]
    lines.append(f"- eval set: `{summary.get('eval_uri')}` ({summary.get('eval_rows')} rows)")
    lines.append(f"- candidate: `{summary.get('served_uri')}`")
    if summary.get("champion_version"):
        lines.append(f"- champion: version {summary['champion_version']}")
    else:
        lines.append("- champion: none (bootstrap): the non-inferiority and slice gates are skipped")
    lines.append("")
    if summary.get("failures"):
        lines += ["## Why it failed", ""] + [f"- {f}" for f in summary["failures"]] + [""]
    if review := review_section(summary):
        lines += [*review, ""]
    lines += [
        "## Gates",
        "",
        f"On {summary.get('eval_rows')} evaluation rows.",
        "",
        _table(GATE_HEADER, gate_rows(summary["gates"])),
        "",
    ]
    lines += ["## Scores", "", _scoreboard(summary), ""]
    per_class = summary["metrics"].get("per_class", {})
    if per_class:
        rows = [
            [
                f"`{lab}`",
                _f(v.get("precision")),
                _f(v.get("recall")),
                _f(v.get("f1")),
                v.get("support"),
                _f(v.get("champion_recall")),
            ]
            for lab, v in per_class.items()
        ]
        lines += [
            "## Per class",
            "",
            _table(["class", "precision", "recall", "F1", "support", "champion recall"], rows),
            "",
        ]
    ni = summary["gates"].get("non_inferiority", {})
    if not ni.get("skipped"):
        lines += ["## Non-inferiority against the champion", "", f"{ni.get('note', '')}", ""]
        if ni.get("mcnemar"):
            mc = ni["mcnemar"]
            lines += [
                f"McNemar exact test: candidate alone right on {mc['candidate_only']} rows, champion alone "
                f"right on {mc['reference_only']} rows, p = {mc['p_value']:.3g}.",
                "",
            ]
    if table := slice_table(summary["gates"].get("slices", {})):
        lines += ["## Slices", "", table, ""]
    lines += ["## Confusion matrix", "", confusion_tables(summary["confusion"]), ""]
    lat, size = summary["gates"].get("latency_p95_ms", {}), summary["gates"].get("size_mb", {})
    lines += [
        "## Budgets",
        "",
        f"- latency p95 at batch 1: {_f(lat.get('value'), 1)} ms (p50 {_f(lat.get('p50_ms'), 1)} ms, "
        f"{lat.get('samples')} calls) against a budget of {_f(lat.get('threshold'), 1)} ms",
        f"- served model size: {_f(size.get('value'), 2)} MB against a budget of {_f(size.get('threshold'), 1)} MB",
        "",
    ]
    if summary.get("figures"):
        lines += ["## Figures", ""] + [f"![{name}]({Path(uri).name})" for name, uri in summary["figures"].items()]
    return "\n".join(lines).rstrip() + "\n"


# --- the reviewer's description -----------------------------------------------------------------------------
@dataclass(frozen=True)
class RunResults:
    """The step summaries of one pipeline run that a version's report shows (None: no such result)."""

    evaluate: dict[str, Any]
    validate: dict[str, Any] | None = None
    drift: dict[str, Any] | None = None
    decide: dict[str, Any] | None = None
    train: dict[str, Any] | None = None
    compress: dict[str, Any] | None = None


def render_review_description(
    *,
    model_name: str,
    version: str | None,
    run_id: str,
    results: RunResults,
    review_tag: str,
    review_comment_tag: str,
    policy: str,
    run_url: str | None = None,
    max_chars: int = MAX_DESCRIPTION_CHARS,
    review_by_tag: str = "review_by",
    figures_run_id: str | None = None,
    status_detail: str | None = None,
) -> str:
    """The model version description a reviewer decides on, within MLflow's description size limit.

    Args:
        model_name: the registered model.
        version: the version number, when known.
        run_id: the pipeline run id.
        results: the run's step summaries (evaluate; validate, drift, decide, train, compress when present:
            compress's ``level``, ``agreement``, ``agreement_rows``, ``agreement_ci`` and ``levels_tried``).
        review_tag: the tag a reviewer sets (``review``).
        review_comment_tag: the optional comment tag.
        policy: the promotion policy in force (manual or auto).
        run_url: link to the pipeline's MLflow run.
        max_chars: the size limit; the least important sections are dropped first to fit.
        review_by_tag: the tag naming the reviewer (``review_by``).
        figures_run_id: the evaluate step's MLflow run, whose figures are then shown inline.
        status_detail: the status line's text after "awaiting review" (default: staged by run ``run_id``).

    Returns:
        Markdown text of at most ``max_chars`` characters.
    """
    report = render_report_body(
        model_name=model_name,
        run_id=run_id,
        results=results,
        run_url=run_url,
        max_chars=max_chars - HEAD_BUDGET,
        figures_run_id=figures_run_id,
    )
    how = how_to_decide(
        policy=policy,
        needs_review=bool(results.evaluate.get("needs_review")),
        review_tag=review_tag,
        review_by_tag=review_by_tag,
        review_comment_tag=review_comment_tag,
    )
    status = status_line("awaiting review", status_detail or f"staged as the challenger by pipeline run `{run_id}`.")
    return compose_version_description(model_name, version, status, report, how=how, max_chars=max_chars)


#: The heading the evaluation report of a version description starts with; what is above it (title, status line,
#: how to decide) is rewritten on every move, what is below it is kept.
REPORT_HEADING = "## Evaluation report"
#: Room kept above the report for the title, the status line and the "how to decide" block.
HEAD_BUDGET = 1600


def status_line(state: str, detail: str) -> str:
    """The status line at the top of a version description: ``**Status: <state>**: <detail>``."""
    return f"**Status: {state}**: {detail}".strip()


def how_to_decide(
    *, policy: str | None, needs_review: bool, review_tag: str, review_by_tag: str, review_comment_tag: str
) -> list[str]:
    """The block that tells a reviewer how to decide (shown only while a review is pending)."""
    held = " This version needs a review, so it is not promoted automatically." if needs_review else ""
    policy_text = f"Policy: `{policy}`.{held} " if policy else held.lstrip() + (" " if held else "")
    return [
        "## How to decide",
        "",
        f"{policy_text}In the MLflow UI, on this page, add the tag `{review_tag}` = `approved` or `rejected` and "
        f"`{review_by_tag}` = your name (an approval without it does not count), optionally with "
        f"`{review_comment_tag}` = your reason. Or in Airflow: Browse → Required Actions, the `review_challenger` "
        "request for this version (your Airflow user is recorded). The first decision wins. Approval makes this "
        "version the `champion` (stage Production) and archives the old one; rejection archives it and keeps the "
        "champion. A newer challenger supersedes this one while it is pending.",
    ]


def report_part(description: str | None) -> str:
    """The evaluation report of a version description (from :data:`REPORT_HEADING` on); a description written
    another way is kept whole, without an earlier title and status line of ours."""
    text = description or ""
    at = text.find(REPORT_HEADING)
    if at >= 0:
        return text[at:]
    lines = text.splitlines()
    while lines and (lines[0].startswith(("**Status:", "> **")) or not lines[0].strip()):
        lines.pop(0)
    return "\n".join(lines)


def compose_version_description(
    model_name: str,
    version: str | None,
    status: str,
    report: str,
    *,
    how: Sequence[str] | None = None,
    max_chars: int = MAX_DESCRIPTION_CHARS,
) -> str:
    """A version description: a neutral title, the status line, the "how to decide" block (while pending), then
    the report; the report is cut at a line to fit ``max_chars``."""
    head = [f"# {model_name}" + (f" version {version}" if version else ""), "", status]
    if how:
        head += ["", *how]
    top = "\n".join(head) + "\n\n"
    body = report.strip() + "\n"
    if len(top) + len(body) > max_chars:
        note = "\n\n(report cut to fit MLflow's description size)\n"
        room = max(max_chars - len(top) - len(note), 0)
        body = body[:room].rsplit("\n", 1)[0] + note
    return (top + body)[:max_chars]


def figure_section(figures: dict[str, str] | None, run_id: str | None) -> list[str]:
    """The evaluation figures as images served by the MLflow server from the evaluate run (or nothing)."""
    if not figures or not run_id:
        return []
    images = [
        f"![{name.replace('_', ' ')}](get-artifact?path={quote('evaluation/' + Path(uri).name)}&run_uuid={run_id})"
        for name, uri in figures.items()
    ]
    return ["## Figures", "", " ".join(images)]


def _head_section(evaluate: dict[str, Any], run_id: str, run_url: str | None) -> list[str]:
    """The heading, the outcome in one sentence, then the baseline warning and the review reasons if any."""
    m = evaluate["metrics"]
    if not evaluate["passed"]:
        outcome = "gates FAILED"
    elif evaluate.get("needs_review"):
        outcome = "no gate failed, NEEDS REVIEW"
    else:
        outcome = "all gates passed"
    head = [
        REPORT_HEADING,
        "",
        f"**{outcome}**; macro-F1 {_f(m.get('macro_f1'))} on {evaluate.get('eval_rows', '–')} evaluation rows "
        f"(champion {_f(m.get('champion_macro_f1'))}, TF-IDF baseline {_f(m.get('baseline_macro_f1'))}, "
        f"majority class {_f(m.get('majority_macro_f1'))}). Pipeline run `{run_id}`"
        + (f" ([MLflow run]({run_url}): training curve, drift plots, evaluation images)" if run_url else "")
        + ".",
    ]
    if warning := baseline_warning(evaluate):
        head += ["", warning]
    if review := review_section(evaluate):
        head += ["", *review]
    return head


def _decision_section(decide: dict[str, Any] | None, train: dict[str, Any] | None) -> list[str]:
    decision = ["## Decision", ""]
    if decide:
        decision.append(f"Action **{decide.get('action')}** (drift severity {decide.get('severity')}).")
        decision.append("")
        decision += [f"- {r}" for r in decide.get("reasons", [])]
    else:
        decision.append("No decide result for this run.")
    if train:
        decision.append(f"- trained from: {train.get('base', '–')}")
        decision += _training_lines(train.get("metrics") or {})
    return decision


def _training_lines(m: dict[str, Any]) -> list[str]:
    """The training cost, and the decision offsets when a class the model never predicted was raised."""
    lines = []
    if m.get("sample_passes") is not None:
        kept = (
            f"last of {_f(m.get('epochs_run'), 0)} epochs kept ({_f(m.get('val_rows'), 0)} validation rows: too few "
            "to stop early)"
            if m.get("early_stopping") == 0
            else f"best epoch {_f(m.get('best_epoch'), 0)} of {_f(m.get('epochs_run'), 0)}"
        )
        lines.append(
            f"- training: {_f(m.get('sample_passes'), 0)} sample passes, {_f(m.get('train_seconds'), 0)} s, "
            f"{kept} (validation macro-F1 {_f(m.get('val_macro_f1'))})"
        )
    raised = {k.removeprefix("decision_offset_"): v for k, v in m.items() if k.startswith("decision_offset_") and v}
    if raised:
        shown = ", ".join(f"{label} +{value:.2f}" for label, value in raised.items())
        lines.append(
            f"- decision offsets: {shown} (the model never predicted these classes on unseen texts; "
            "their bias was raised to their training share, `train.decision_floor`)"
        )
    return lines


def _data_section(validate: dict[str, Any] | None, drift: dict[str, Any] | None) -> list[str]:
    data = ["## Data and drift", ""]
    if validate:
        data.append(
            f"- batch `{validate.get('batch_id')}`: {validate.get('rows')} rows, validation "
            f"{'passed' if validate.get('passed') else 'failed'}, hash `{str(validate.get('content_hash'))[:16]}`"
        )
    if drift:
        data.append(
            f"- drift severity **{drift.get('severity')}** against champion "
            f"v{drift.get('champion_version') or '–'}; rule: {drift.get('rule', '–')}"
        )
        rows = [
            [
                f"`{name}`",
                _f(t.get("statistic")),
                _f(t.get("p_value"), 4),
                _f(t.get("threshold"), 4),
                "yes" if t.get("drifted") else "no",
            ]
            for name, t in (drift.get("tests") or {}).items()
        ]
        if rows:
            data += ["", _table(["test", "statistic", "p-value", "threshold", "drifted"], rows)]
    return data


def _gates_section(evaluate: dict[str, Any]) -> list[str]:
    gates = ["## Gates", "", _table(GATE_HEADER, gate_rows(evaluate["gates"]))]
    if evaluate.get("failures"):
        gates += ["", "Failures:", ""] + [f"- {f}" for f in evaluate["failures"]]
    return gates


def _budgets_section(evaluate: dict[str, Any]) -> list[str]:
    lat, size = evaluate["gates"].get("latency_p95_ms", {}), evaluate["gates"].get("size_mb", {})
    return [
        "## Size and latency",
        "",
        f"- latency p95 (batch 1): {_f(lat.get('value'), 1)} ms of {_f(lat.get('threshold'), 1)} ms budget",
        f"- size: {_f(size.get('value'), 2)} MB of {_f(size.get('threshold'), 1)} MB budget",
    ]


def render_report_body(
    *,
    model_name: str,
    run_id: str,
    results: RunResults,
    run_url: str | None = None,
    max_chars: int = MAX_DESCRIPTION_CHARS - HEAD_BUDGET,
    figures_run_id: str | None = None,
) -> str:
    """The evaluation report part of a version description (starts with :data:`REPORT_HEADING`), within
    ``max_chars``: the least important sections are dropped first to fit.

    With ``figures_run_id`` (the evaluate step's MLflow run), the evaluation figures are shown inline, served by
    the MLflow server from that run's ``evaluation/`` artifacts (a link relative to the UI, so any host works)."""
    evaluate, compress = results.evaluate, results.compress
    head = _head_section(evaluate, run_id, run_url)
    decision = _decision_section(results.decide, results.train)
    data = _data_section(results.validate, results.drift)
    gates = _gates_section(evaluate)
    budgets = _budgets_section(evaluate)
    slices = ["## Slices", ""]
    slices.append(slice_table(evaluate["gates"].get("slices", {})) or "No slice column in the evaluation set.")
    confusion = ["## Confusion matrix", "", confusion_tables(evaluate["confusion"])]
    footer = [f"Full report: `{evaluate.get('report_uri')}`"]
    figures = figure_section(evaluate.get("figures"), figures_run_id)

    # Most important first; when over the limit, drop from the end of this list, keeping the footer.
    compression = compression_section(compress)
    sections = [sec for sec in (head, gates, figures, decision, budgets, compression, slices, data, confusion) if sec]
    while sections:
        text = "\n\n".join("\n".join(sec) for sec in [*sections, footer]) + "\n"
        if len(text) <= max_chars:
            return text
        sections.pop()
    return ("\n".join(footer) + "\n")[:max_chars]


# --- figures ------------------------------------------------------------------------------------------------
def _pyplot() -> Any:
    import matplotlib  # heavy, and only the figure writers need it

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt  # heavy (matplotlib): imported when used

    return plt


def save_figure(fig: Any, path: Path) -> Path:
    """Write ``fig`` as a PNG at 90 dpi cropped to its content, close it (a long run keeps no figure open) and
    return ``path``; the drift and monitor plots use it."""
    fig.savefig(path, dpi=90, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def confusion_figure(path: Path, labels: Sequence[str], candidate: np.ndarray, champion: np.ndarray | None) -> Path:
    """Confusion matrices (row-normalised colours, counts written) of the candidate and the champion."""
    plt = _pyplot()
    mats = [("candidate", candidate)] + ([("champion", champion)] if champion is not None else [])
    fig, axes = plt.subplots(1, len(mats), figsize=(4.2 * len(mats), 3.8), squeeze=False)
    for ax, (title, mat) in zip(axes[0], mats, strict=True):
        mat = np.asarray(mat)
        norm = mat / np.maximum(mat.sum(axis=1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for i in range(mat.shape[0]):
            for j in range(mat.shape[1]):
                ax.text(j, i, int(mat[i, j]), ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black")
        ax.set_xticks(range(len(labels)), labels, rotation=30)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def per_class_figure(
    path: Path, labels: Sequence[str], precision: Sequence[float], recall: Sequence[float], recall_floor: float
) -> Path:
    """Per-class precision and recall bars, with the recall floor when it is set."""
    plt = _pyplot()
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.bar(x - 0.2, precision, width=0.4, label="precision")
    ax.bar(x + 0.2, recall, width=0.4, label="recall")
    if recall_floor > 0:  # 0: the floor is off
        ax.axhline(recall_floor, color="red", linestyle="--", linewidth=1, label=f"recall floor {recall_floor:.2f}")
    ax.set_xticks(x, labels)
    ax.set_ylim(0, 1)
    ax.set_title("Per-class precision and recall (candidate)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def calibration(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Reliability bins and the expected calibration error of top-class confidences."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    acc, conf, count = [], [], []
    for b in range(bins):
        sel = which == b
        count.append(int(sel.sum()))
        acc.append(float(correct[sel].mean()) if sel.any() else None)
        conf.append(float(confidence[sel].mean()) if sel.any() else None)
    n = max(len(confidence), 1)
    ece = sum(c / n * abs(a - f) for a, f, c in zip(acc, conf, count, strict=True) if c)
    return {"edges": edges.tolist(), "accuracy": acc, "confidence": conf, "count": count, "ece": float(ece)}


def reliability_figure(path: Path, bins: dict[str, Any]) -> Path:
    """Reliability diagram: accuracy against confidence per bin, with the diagonal of perfect calibration."""
    plt = _pyplot()
    edges = np.asarray(bins["edges"])
    centers = (edges[:-1] + edges[1:]) / 2
    acc = np.array([a if a is not None else np.nan for a in bins["accuracy"]])
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect")
    ax.bar(centers, np.nan_to_num(acc), width=edges[1] - edges[0], alpha=0.7, edgecolor="black", label="accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top class)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability (ECE {bins['ece']:.3f})")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def comparison_figure(path: Path, metrics: dict[str, dict[str, float | None]]) -> Path:
    """Grouped bars: each metric (macro-F1, accuracy, recall per class) for each model."""
    plt = _pyplot()
    models = [name for name, values in metrics.items() if any(v is not None for v in values.values())]
    keys = list(next(iter(metrics.values())).keys())
    x = np.arange(len(keys))
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(keys)), 4.2))
    for i, name in enumerate(models):
        values = [metrics[name].get(k) or 0.0 for k in keys]
        ax.bar(x - 0.4 + width * (i + 0.5), values, width=width, label=name)
    ax.set_xticks(x, keys, rotation=20)
    ax.set_ylim(0, 1)
    ax.set_title("Challenger vs champion vs baselines")
    ax.legend(fontsize=8, ncol=len(models), loc="upper center", bbox_to_anchor=(0.5, -0.28))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
