"""Evaluate the served artifact against the majority class, a TF-IDF baseline, the champion, slices and budgets.

The candidate is the compressed model that would be served (``served_uri``), not the fp32 weights. The
champion's served model predicts the same evaluation set, so the comparison is paired. Both are scored from their
``bundle/`` (ONNX graph, tokenizer, labels: :func:`pipelines.champion.load_predictor`), the inference the served
pyfunc runs; the step never unpickles a model (``python_model.pkl`` is only for ``mlflow models serve``). A TF-IDF
+ class-balanced logistic regression trained on the accepted data (hold-out rows excluded) and the majority class
are scored beside them, so a transformer that loses to a linear baseline is visible at a glance.

Every gate is a :class:`Gate` built by one function (thresholds from ``settings.gates``) and has one of three
outcomes: ``pass``, ``fail`` (the run fails, nothing is registered) or ``review`` (registered and staged as the
challenger, but a human decides, even under the ``auto`` promotion policy):

- ``majority`` (:func:`gate_majority`): macro-F1(candidate) - macro-F1(majority class) must be at least
  ``min_gain_over_majority`` with its paired bootstrap interval above 0, else fail;
- ``baseline`` (:func:`gate_baseline`): a candidate below the TF-IDF baseline by more than ``baseline_tolerance``
  goes to review; skipped with no baseline;
- ``non_inferiority`` (:func:`gate_non_inferiority`): paired bootstrap against the champion (see
  :func:`pipelines.stats.non_inferiority`): pass, fail, or review when inconclusive; skipped with no champion;
- ``slices`` (:func:`gate_slices`): no slice of ``data.slice_column`` with at least ``min_slice_size`` rows loses
  more than ``slice_tolerance`` macro-F1 against the champion; skipped with no champion;
- ``macro_f1_floor`` and ``class_recall_floor``: absolute floors, off (skipped) at their default 0;
- ``latency_p95_ms`` (:func:`gate_latency`): p95 of batch-1 calls of the candidate's bundle predictor;
- ``size_mb`` (:func:`gate_size`): size of ``bundle/model.onnx`` in MiB.

The summary's ``passed`` is true when no gate failed; ``needs_review`` and ``review_reasons`` list the gates whose
outcome is review. A failed gate returns ``passed: false`` with the reasons (it does not raise); the champion is
untouched.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from pipelines import report
from pipelines.data.datasets import load_accepted, read_table, split_holdout, write_parquet
from pipelines.io.tracking import step_run
from pipelines.stats import NI_FAIL, NI_PASS, macro_f1, non_inferiority, paired_bootstrap

if TYPE_CHECKING:
    import pandas as pd

    from pipelines.config import GateSettings, Settings
    from pipelines.context import StepContext
    from pipelines.stats import BootstrapResult

log = logging.getLogger(__name__)

_MB = 1024 * 1024

Outcome = Literal["pass", "fail", "review"]
PASS: Outcome = "pass"
FAIL: Outcome = "fail"
REVIEW: Outcome = "review"


@dataclass(frozen=True)
class Gate:
    """One gate's answer: its number against its threshold, the outcome, and why.

    ``outcome`` is ``pass``, ``fail`` or ``review`` (a human decides; not promoted automatically). ``reasons`` are
    the lines that go into the summary's ``failures`` (outcome fail) or ``review_reasons`` (outcome review).
    ``details`` holds the gate's own evidence (intervals, slice rows, ...) and is merged into :meth:`as_dict`.
    """

    name: str
    value: float | None
    threshold: float | None
    comparator: str
    outcome: Outcome = PASS
    note: str = ""
    skipped: bool = False
    reasons: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Did not fail: a gate held for review does not fail the run."""
        return self.outcome != FAIL

    def as_dict(self) -> dict[str, Any]:
        """The JSON form in the evaluate summary (``passed`` = not failed, ``outcome`` says which)."""
        return {
            **self.details,
            "passed": self.passed,
            "outcome": self.outcome,
            "value": self.value,
            "threshold": self.threshold,
            "comparator": self.comparator,
            "note": self.note,
            "skipped": self.skipped,
        }


@dataclass(frozen=True)
class Predictions:
    """Everything predicted on the evaluation set: truth, candidate, champion, TF-IDF baseline, majority class."""

    y: np.ndarray
    candidate: np.ndarray
    candidate_probs: np.ndarray | None
    champion: np.ndarray | None
    champion_version: str | None
    baseline: np.ndarray | None
    baseline_train_rows: int
    majority: np.ndarray
    majority_label: str

    @property
    def n(self) -> int:
        """Rows in the evaluation set."""
        return len(self.y)


def predict(model: Any, texts: list[str], labels: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels and class probabilities (columns in ``labels`` order, or None) of a served model.

    ``model``: anything whose ``predict`` takes a DataFrame with a ``text`` column and returns the served pyfunc's
    columns (``label``, ``prob_<label>``), e.g. an :class:`~pipelines.serving.OnnxPredictor`.

    Raises:
        ValueError: the output lacks a ``label`` column, has the wrong length, or holds unknown labels.
    """
    import pandas as pd  # heavy (pandas): imported when used

    out = model.predict(pd.DataFrame({"text": texts}))
    if not isinstance(out, pd.DataFrame) or "label" not in out.columns:
        raise ValueError("the served model must return a DataFrame with a 'label' column and prob_<label> columns")
    if len(out) != len(texts):
        raise ValueError(f"the served model returned {len(out)} rows for {len(texts)} texts")
    pred = out["label"].astype(str).to_numpy()
    unknown = sorted(set(pred) - set(labels))
    if unknown:
        raise ValueError(f"the served model predicts labels {unknown!r} outside data.labels={labels!r}")
    cols = [f"prob_{label}" for label in labels]
    probs = out[cols].to_numpy(dtype=float) if all(c in out.columns for c in cols) else None
    return pred, probs


def _per_class(y: np.ndarray, pred: np.ndarray, labels: list[str]) -> dict[str, dict[str, float]]:
    from sklearn.metrics import precision_recall_fscore_support  # heavy (sklearn): imported when used

    p, r, f, s = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    return {
        lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, lab in enumerate(labels)
    }


def _confusion(y: np.ndarray, pred: np.ndarray, labels: list[str]) -> np.ndarray:
    from sklearn.metrics import confusion_matrix  # heavy (sklearn): imported when used

    return confusion_matrix(y, pred, labels=labels)


def _baselines(settings: Settings, eval_df: pd.DataFrame) -> dict[str, Any]:
    """TF-IDF + class-balanced logistic regression and the majority class, trained on accepted non-hold-out rows."""
    from sklearn.feature_extraction.text import TfidfVectorizer  # heavy (sklearn): imported when used
    from sklearn.linear_model import LogisticRegression  # heavy (sklearn): imported when used
    from sklearn.pipeline import make_pipeline  # heavy (sklearn): imported when used

    text, label = settings.data.text_column, settings.data.label_column
    accepted = load_accepted(settings)
    train = split_holdout(accepted, settings)[0] if len(accepted) else accepted
    if len(train):
        train = train[~train[text].astype(str).isin(set(eval_df[text].astype(str)))]
        train = train[train[label].astype(str).isin(settings.data.labels)]
    out: dict[str, Any] = {"train_rows": int(len(train)), "baseline": None, "majority_label": None}
    source = train if len(train) else eval_df
    out["majority_label"] = str(source[label].astype(str).value_counts().idxmax())
    if len(train) >= 10 and train[label].nunique() >= 2:
        model = make_pipeline(
            TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
            LogisticRegression(class_weight="balanced", max_iter=2000),
        )
        model.fit(train[text].astype(str), train[label].astype(str))
        out["baseline"] = model.predict(eval_df[text].astype(str)).astype(str)
    else:
        log.warning("evaluate: %d accepted training rows; no TF-IDF baseline", len(train))
    return out


def _latency(model: Any, texts: list[str], settings: Settings) -> dict[str, Any]:
    import pandas as pd  # heavy (pandas): imported when used

    g = settings.gates
    sample = (texts * (g.latency_sample_rows // max(len(texts), 1) + 1))[: g.latency_sample_rows]
    for t in sample[: g.latency_warmup]:
        model.predict(pd.DataFrame({"text": [t]}))
    times = []
    for t in sample:
        started = time.perf_counter()
        model.predict(pd.DataFrame({"text": [t]}))
        times.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95)), "samples": len(times)}


# --- gates: one function each ------------------------------------------------------------------------------------
def _bootstrap(y: np.ndarray, a: np.ndarray, b: np.ndarray, labels: list[str], g: GateSettings) -> BootstrapResult:
    return paired_bootstrap(y, a, b, labels, samples=g.bootstrap_samples, alpha=g.alpha, seed=g.seed)


def _ci(b: BootstrapResult) -> str:
    return f"{b.level:.0%} CI [{b.ci_low:+.3f}, {b.ci_high:+.3f}]"


def _interval(b: BootstrapResult, n: int) -> dict[str, Any]:
    return {
        "diff": b.diff,
        "ci_low": b.ci_low,
        "ci_high": b.ci_high,
        "level": b.level,
        "samples": b.samples,
        "n": n,
    }


def gate_macro_f1_floor(macro_f1: float, g: GateSettings) -> Gate:
    """Absolute macro-F1 floor ``gates.min_macro_f1``; skipped (passes) when it is 0, the default."""
    if g.min_macro_f1 <= 0:
        return Gate(
            "macro_f1_floor",
            macro_f1,
            0.0,
            "≥",
            skipped=True,
            note="off (gates.min_macro_f1 = 0): the majority, baseline and champion gates decide",
        )
    ok = macro_f1 >= g.min_macro_f1
    reason = f"macro-F1 {macro_f1:.3f} < floor gates.min_macro_f1={g.min_macro_f1}"
    return Gate(
        "macro_f1_floor",
        macro_f1,
        g.min_macro_f1,
        "≥",
        outcome=PASS if ok else FAIL,
        note="" if ok else reason,
        reasons=() if ok else (reason,),
    )


def gate_class_recall_floor(recall: dict[str, float], g: GateSettings) -> Gate:
    """Every class's recall at least ``gates.min_class_recall``; skipped (passes) when it is 0, the default."""
    lowest = min(recall.values())
    if g.min_class_recall <= 0:
        note = "off (gates.min_class_recall = 0): the majority, baseline and champion gates decide"
        return Gate("class_recall_floor", lowest, 0.0, "≥", skipped=True, note=note, details={"below": []})
    low = {lab: r for lab, r in sorted(recall.items()) if r < g.min_class_recall}
    listed = ", ".join(f"{k} {v:.3f}" for k, v in low.items())
    return Gate(
        "class_recall_floor",
        lowest,
        g.min_class_recall,
        "≥",
        outcome=FAIL if low else PASS,
        note=f"below: {listed}" if low else "",
        reasons=(f"recall below gates.min_class_recall={g.min_class_recall}: {listed}",) if low else (),
        details={"below": sorted(low)},
    )


def gate_majority(p: Predictions, labels: list[str], g: GateSettings) -> Gate:
    """The candidate beats the majority class by a margin that is both worth having and significant: the gain in
    macro-F1 over the majority-class predictor is at least ``gates.min_gain_over_majority`` and the lower end of its
    paired bootstrap interval is above 0, else fail."""
    b = _bootstrap(p.y, p.candidate, p.majority, labels, g)
    worth, significant = b.diff >= g.min_gain_over_majority, b.ci_low > 0
    evidence = (
        f"candidate {b.candidate:.3f} vs majority class {p.majority_label!r} {b.reference:.3f}: gain {b.diff:+.3f}, "
        f"{_ci(b)} on {p.n} rows"
    )
    missing = [] if worth else [f"the gain must be >= gates.min_gain_over_majority={g.min_gain_over_majority}"]
    missing += [] if significant else ["the interval's lower end must be above 0"]
    reason = f"no significant gain over the majority class: {evidence}; " + " and ".join(missing)
    ok = worth and significant
    return Gate(
        "majority",
        b.diff,
        g.min_gain_over_majority,
        "gain >= (CI low > 0)",
        outcome=PASS if ok else FAIL,
        note=evidence,
        reasons=() if ok else (reason,),
        details={**_interval(b, p.n), "majority_label": p.majority_label, "majority_macro_f1": b.reference},
    )


def gate_baseline(p: Predictions, labels: list[str], g: GateSettings) -> Gate:
    """The candidate against the TF-IDF + class-balanced logistic regression baseline trained on the same rows.

    Review (a human decides, not promoted automatically) when the candidate's macro-F1 is below the baseline's by
    more than ``gates.baseline_tolerance``; the paired bootstrap interval of the difference is in the details.
    Skipped (passes) when no baseline could be trained.
    """
    threshold = -g.baseline_tolerance or 0.0  # not -0.0 in the report
    if p.baseline is None:
        note = f"no TF-IDF baseline: {p.baseline_train_rows} accepted training rows (needs 10, with 2 classes)"
        return Gate("baseline", None, threshold, "Δ ≥", skipped=True, note=note, details={"n": p.n})
    b = _bootstrap(p.y, p.candidate, p.baseline, labels, g)
    below = b.diff < -g.baseline_tolerance
    evidence = (
        f"candidate {b.candidate:.3f} vs TF-IDF baseline {b.reference:.3f}: Δ {b.diff:+.3f}, {_ci(b)} on {p.n} rows"
    )
    reason = (
        f"candidate macro-F1 {b.candidate:.3f} below the TF-IDF + logistic-regression baseline {b.reference:.3f} "
        f"(Δ {b.diff:+.3f}, {_ci(b)}, {p.n} rows; gates.baseline_tolerance={g.baseline_tolerance})"
    )
    return Gate(
        "baseline",
        b.diff,
        threshold,
        "Δ ≥",
        outcome=REVIEW if below else PASS,
        note=f"{evidence}; below the baseline: a human decides" if below else evidence,
        reasons=(reason,) if below else (),
        details={**_interval(b, p.n), "baseline_macro_f1": b.reference, "below_baseline": below},
    )


def gate_non_inferiority(p: Predictions, labels: list[str], g: GateSettings) -> Gate:
    """Non-inferiority against the champion (:func:`pipelines.stats.non_inferiority`): pass, fail, or review when
    the interval straddles the margin (the evaluation set is too small to tell). Skipped with no champion."""
    threshold, comparator = -g.noninferiority_margin or 0.0, "CI low ≥"
    if p.champion is None:
        note = "no champion (bootstrap): nothing to compare against"
        return Gate("non_inferiority", None, threshold, comparator, skipped=True, note=note, details={"n": p.n})
    ni = non_inferiority(
        p.y,
        p.candidate,
        p.champion,
        labels,
        margin=g.noninferiority_margin,
        alpha=g.alpha,
        samples=g.bootstrap_samples,
        seed=g.seed,
    )
    outcome = {NI_PASS: PASS, NI_FAIL: FAIL}.get(ni.outcome, REVIEW)
    reason = f"non-inferiority against champion v{p.champion_version}: {ni.reason}"
    return Gate(
        "non_inferiority",
        ni.bootstrap.ci_low,
        threshold,
        comparator,
        outcome=outcome,
        note=ni.reason,
        reasons=() if outcome == PASS else (reason,),
        details={
            **_interval(ni.bootstrap, ni.n),
            "verdict": ni.verdict,
            "ni_outcome": ni.outcome,
            "margin": ni.margin,
            "mcnemar": ni.mcnemar.as_dict(),
            "champion_version": p.champion_version,
        },
    )


def gate_slices(eval_df: pd.DataFrame, p: Predictions, settings: Settings) -> Gate:
    """No slice (``data.slice_column``) of at least ``min_slice_size`` rows loses more than ``slice_tolerance``
    macro-F1 against the champion. Skipped with no champion (slices still listed) or no slice column.

    Per slice, a paired bootstrap of the macro-F1 difference: ``fail`` when the whole interval lies below
    ``-slice_tolerance`` (a regression on that slice beyond doubt), ``review`` when only the point estimate does
    (a human looks at it; the slice is too small to tell), else ``pass``.
    """
    g, column = settings.gates, settings.data.slice_column
    name, threshold, comparator = "slices", -g.slice_tolerance, "Δ ≥"
    base = {"min_slice_size": g.min_slice_size, "n": p.n}
    if column not in eval_df.columns:
        note = f"no slice column {column!r} in the evaluation set"
        return Gate(name, None, threshold, comparator, skipped=True, note=note, details={**base, "slices": []})
    y, cand, champ = p.y, p.candidate, p.champion
    rows, worst, failed, doubtful = [], None, [], []
    values = eval_df[column].fillna("<missing>").astype(str).to_numpy()
    for value in sorted(set(values)):
        sel = values == value
        present = [lab for lab in settings.data.labels if lab in set(y[sel])]
        row: dict[str, Any] = {"slice": value, "n": int(sel.sum()), "candidate": macro_f1(y[sel], cand[sel], present)}
        row["checked"] = champ is not None and row["n"] >= g.min_slice_size
        if champ is not None:
            row["champion"] = macro_f1(y[sel], champ[sel], present)
            row["delta"] = row["candidate"] - row["champion"]
        row["passed"] = True
        if row["checked"]:
            boot = paired_bootstrap(
                y[sel], cand[sel], champ[sel], present, samples=g.bootstrap_samples, alpha=g.alpha, seed=g.seed
            )
            row["ci_low"], row["ci_high"] = boot.ci_low, boot.ci_high
            worst = row["delta"] if worst is None else min(worst, row["delta"])
            line = (
                f"{column}={value!r} ({row['n']} rows): macro-F1 {row['candidate']:.3f} vs champion "
                f"{row['champion']:.3f} (Δ {row['delta']:+.3f}, {boot.level:.0%} CI [{boot.ci_low:+.3f}, "
                f"{boot.ci_high:+.3f}]; tolerance -{g.slice_tolerance:.3f})"
            )
            if boot.ci_high < -g.slice_tolerance:
                row["passed"] = False
                failed.append(line)
            elif row["delta"] < -g.slice_tolerance:
                row["review"] = True
                doubtful.append(line)
        rows.append(row)
    if champ is None:
        note = "no champion (bootstrap): slices shown, not compared"
    else:
        small = sum(1 for r in rows if not r["checked"])
        note = f"{len(rows) - small} slice(s) of {column!r} compared" + (
            f", {small} below {g.min_slice_size} rows not gated" if small else ""
        )
    outcome = FAIL if failed else (REVIEW if doubtful else PASS)
    return Gate(
        name,
        worst,
        threshold,
        comparator,
        outcome=outcome,
        note=note,
        skipped=champ is None,
        reasons=tuple(f"slice {f}" for f in failed or doubtful),
        details={**base, "slices": rows, "column": column, "failures": failed, "doubtful": doubtful},
    )


def gate_latency(latency: dict[str, Any], g: GateSettings) -> Gate:
    """p95 of batch-1 calls of the candidate's bundle predictor within ``gates.max_latency_p95_ms``."""
    p95 = latency["p95_ms"]
    ok = p95 <= g.max_latency_p95_ms
    reason = f"latency p95 {p95:.1f} ms > gates.max_latency_p95_ms={g.max_latency_p95_ms}"
    return Gate(
        "latency_p95_ms",
        p95,
        g.max_latency_p95_ms,
        "≤",
        outcome=PASS if ok else FAIL,
        note=f"batch 1, {latency['samples']} calls",
        reasons=() if ok else (reason,),
        details=dict(latency),
    )


def gate_size(size_mb: float, g: GateSettings) -> Gate:
    """Size of the served ``bundle/model.onnx`` within ``gates.max_size_mb``."""
    ok = size_mb <= g.max_size_mb
    reason = f"served model {size_mb:.2f} MB > gates.max_size_mb={g.max_size_mb}"
    return Gate(
        "size_mb",
        size_mb,
        g.max_size_mb,
        "≤",
        outcome=PASS if ok else FAIL,
        note="bundle/model.onnx, MiB",
        reasons=() if ok else (reason,),
    )


def check_gates(
    eval_df: pd.DataFrame,
    p: Predictions,
    metrics: dict[str, Any],
    latency: dict[str, Any],
    size_mb: float,
    settings: Settings,
) -> dict[str, Gate]:
    """Every gate, in the order the report lists them."""
    g, labels = settings.gates, list(settings.data.labels)
    gates = [
        gate_majority(p, labels, g),
        gate_baseline(p, labels, g),
        gate_non_inferiority(p, labels, g),
        gate_slices(eval_df, p, settings),
        gate_macro_f1_floor(metrics["macro_f1"], g),
        gate_class_recall_floor(metrics["recall"], g),
        gate_latency(latency, g),
        gate_size(size_mb, g),
    ]
    return {gate.name: gate for gate in gates}


def run(ctx: StepContext) -> dict[str, Any]:
    """Evaluate the served candidate on the evaluation set and check every gate.

    Inputs: ``served_uri`` (the served model folder, with its ``bundle/``), ``eval_uri`` (evaluation Parquet/CSV
    with text, label and optionally the slice column).

    Returns:
        ``passed`` (no gate failed), ``needs_review`` and ``review_reasons`` (gates whose outcome is review),
        ``gates`` {name: {passed, outcome, value, threshold, comparator, note, skipped, ...}}, ``metrics``,
        ``report_uri``, ``failures``, ``confusion``, ``champion_version``, ``eval_rows``, ``figures``.

    Raises:
        ValueError: an input is missing, the evaluation set lacks a column or holds unknown labels.
        FileNotFoundError: the served folder or its bundle is missing.
        CorruptArtifact: the candidate's or the champion's bundle does not load.
    """
    s = ctx.settings
    labels = list(s.data.labels)
    ctx.require("served_uri")  # fail on a missing input before reading anything
    eval_uri = ctx.require("eval_uri")
    text_col, label_col = s.data.text_column, s.data.label_column

    eval_df = read_table(eval_uri, s)
    missing = [c for c in (text_col, label_col) if c not in eval_df.columns]
    if missing:
        raise ValueError(f"evaluation set {eval_uri!r} lacks column(s) {missing!r}; has {list(eval_df.columns)!r}")
    if eval_df.empty:
        raise ValueError(f"evaluation set {eval_uri!r} is empty")
    unknown = sorted(set(eval_df[label_col].astype(str)) - set(labels))
    if unknown:
        raise ValueError(f"evaluation set {eval_uri!r} holds labels {unknown!r} outside data.labels={labels!r}")

    with tempfile.TemporaryDirectory(prefix="mlops-evaluate-") as tmp:
        return _evaluate(ctx, eval_df, Path(tmp))


def _evaluate(ctx: StepContext, eval_df: pd.DataFrame, work: Path) -> dict[str, Any]:
    """Predict, score, gate, report and log: the parts below, top-down."""
    from pipelines.champion import find_bundle  # pipelines.champion loads mlflow

    s = ctx.settings
    texts = eval_df[s.data.text_column].astype(str).tolist()
    served_dir = ctx.storage.local_dir(
        ctx.require("served_uri"), work, what="served model folder", hint="run the compress step first"
    )
    bundle = find_bundle(served_dir)

    candidate_model, preds = _predict_all(ctx, served_dir, eval_df, work)
    metrics, calib = _metrics(preds, list(s.data.labels))
    latency = _latency(candidate_model, texts, s)
    size_mb = (bundle / "model.onnx").stat().st_size / _MB
    gates = check_gates(eval_df, preds, metrics, latency, size_mb, s)

    figures = _figures(work / "figures", preds, metrics, calib, s)
    summary = _summary(ctx, preds, metrics, gates, figures)
    _write_outputs(ctx, summary, preds, texts, work / "figures")
    _log_to_mlflow(ctx, summary, figures, work / "figures" / "report.md")
    log.info(
        "evaluate: %s%s; macro-F1 %.3f; failures: %s; review: %s",
        "passed" if summary["passed"] else "FAILED",
        " (needs review)" if summary["needs_review"] else "",
        metrics["macro_f1"],
        summary["failures"] or "none",
        summary["review_reasons"] or "none",
    )
    return summary


# --- predict: candidate, champion, baselines -----------------------------------------------------------------
def _predict_all(ctx: StepContext, served_dir: Path, eval_df: pd.DataFrame, work: Path) -> tuple[Any, Predictions]:
    """The candidate's predictor (kept for the latency gate) and every model's predictions on the evaluation set.

    Both served models are loaded from their bundle (no pickle); one that does not load is a
    :class:`~pipelines.errors.CorruptArtifact`.
    """
    from pipelines.champion import get_champion, load_predictor  # pipelines.champion loads mlflow

    s = ctx.settings
    labels = list(s.data.labels)
    texts = eval_df[s.data.text_column].astype(str).tolist()
    y = eval_df[s.data.label_column].astype(str).to_numpy()
    served_uri = ctx.require("served_uri")
    log.info("evaluate: %d rows from %s; candidate %s", len(y), ctx.require("eval_uri"), served_uri)
    candidate_model = load_predictor(
        served_dir, "the candidate" if str(served_dir) == served_uri else f"the candidate from {served_uri!r}"
    )
    cand, cand_probs = predict(candidate_model, texts, labels)

    # A fresh folder per evaluation: the champion's version number alone does not identify it across stores.
    champion = get_champion(s, dst=work / "champion")
    champ = None
    if champion is not None:
        log.info("evaluate: champion is version %s", champion.version)
        champ, _ = predict(champion.predictor(), texts, labels)

    base = _baselines(s, eval_df)
    return candidate_model, Predictions(
        y=y,
        candidate=cand,
        candidate_probs=cand_probs,
        champion=champ,
        champion_version=str(champion.version) if champion is not None else None,
        baseline=base["baseline"],
        baseline_train_rows=base["train_rows"],
        majority=np.full(len(y), base["majority_label"]),
        majority_label=base["majority_label"],
    )


# --- metrics -------------------------------------------------------------------------------------------------
def _metrics(p: Predictions, labels: list[str]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Scores of the candidate, champion, TF-IDF baseline and majority class, and the candidate's calibration."""
    y, cand, champ, baseline = p.y, p.candidate, p.champion, p.baseline
    per_class = _per_class(y, cand, labels)
    champ_per_class = _per_class(y, champ, labels) if champ is not None else None
    for lab in labels:
        per_class[lab]["champion_recall"] = champ_per_class[lab]["recall"] if champ_per_class else None
    metrics: dict[str, Any] = {
        "macro_f1": macro_f1(y, cand, labels),
        "accuracy": float(np.mean(cand == y)),
        "recall": {lab: v["recall"] for lab, v in per_class.items()},
        "champion_macro_f1": macro_f1(y, champ, labels) if champ is not None else None,
        "champion_accuracy": float(np.mean(champ == y)) if champ is not None else None,
        "baseline_macro_f1": macro_f1(y, baseline, labels) if baseline is not None else None,
        "baseline_accuracy": float(np.mean(baseline == y)) if baseline is not None else None,
        "baseline_train_rows": p.baseline_train_rows,
        "majority_macro_f1": macro_f1(y, p.majority, labels),
        "majority_accuracy": float(np.mean(p.majority == y)),
        "per_class": per_class,
    }
    calib = None
    if p.candidate_probs is not None:
        calib = report.calibration(p.candidate_probs.max(axis=1), cand == y)
        metrics["ece"] = calib["ece"]
    return metrics, calib


# --- summary, figures, report --------------------------------------------------------------------------------
def _summary(
    ctx: StepContext,
    p: Predictions,
    metrics: dict[str, Any],
    gates: dict[str, Gate],
    figures: dict[str, Path],
) -> dict[str, Any]:
    """The step's result: ``passed`` (no gate failed), ``needs_review`` and the reasons, gates, metrics, ..."""
    labels = list(ctx.settings.data.labels)
    failures = [r for gate in gates.values() if gate.outcome == FAIL for r in gate.reasons]
    review_reasons = [r for gate in gates.values() if gate.outcome == REVIEW for r in gate.reasons]
    figure_uris = {name: ctx.storage.upload_file(path, ctx.output(path.name)) for name, path in figures.items()}
    cm_champ = _confusion(p.y, p.champion, labels) if p.champion is not None else None
    summary: dict[str, Any] = {
        "passed": not any(gate.outcome == FAIL for gate in gates.values()),
        "needs_review": any(gate.outcome == REVIEW for gate in gates.values()),
        "review_reasons": review_reasons,
        "gates": {name: gate.as_dict() for name, gate in gates.items()},
        "metrics": metrics,
        "failures": failures,
        "champion_version": p.champion_version,
        "confusion": {
            "labels": labels,
            "candidate": _confusion(p.y, p.candidate, labels).tolist(),
            "champion": cm_champ.tolist() if cm_champ is not None else None,
        },
        "served_uri": ctx.require("served_uri"),
        "eval_uri": ctx.require("eval_uri"),
        "eval_rows": p.n,
        "figures": figure_uris,
        "report_uri": ctx.output("report.md"),
    }
    return _json_safe(summary)


def _figures(
    folder: Path, p: Predictions, metrics: dict[str, Any], calib: dict[str, Any] | None, settings: Settings
) -> dict[str, Path]:
    """Confusion matrices, per-class bars, reliability diagram and the comparison with champion and baselines."""
    labels, y, per_class = list(settings.data.labels), p.y, metrics["per_class"]
    folder.mkdir()
    cm_champ = _confusion(y, p.champion, labels) if p.champion is not None else None
    figures = {
        "confusion_matrix": report.confusion_figure(
            folder / "confusion_matrix.png", labels, _confusion(y, p.candidate, labels), cm_champ
        ),
        "per_class": report.per_class_figure(
            folder / "per_class.png",
            labels,
            [per_class[lab]["precision"] for lab in labels],
            [per_class[lab]["recall"] for lab in labels],
            settings.gates.min_class_recall,
        ),
    }
    if calib is not None:
        figures["reliability"] = report.reliability_figure(folder / "reliability.png", calib)
    compared = {
        "candidate": {"macro-F1": metrics["macro_f1"], "accuracy": metrics["accuracy"]},
        "champion": {"macro-F1": metrics["champion_macro_f1"], "accuracy": metrics["champion_accuracy"]},
        "TF-IDF baseline": {"macro-F1": metrics["baseline_macro_f1"], "accuracy": metrics["baseline_accuracy"]},
        "majority": {"macro-F1": metrics["majority_macro_f1"], "accuracy": metrics["majority_accuracy"]},
    }
    for lab in labels:
        compared["candidate"][f"recall {lab}"] = per_class[lab]["recall"]
        compared["champion"][f"recall {lab}"] = per_class[lab]["champion_recall"]
        compared["TF-IDF baseline"][f"recall {lab}"] = (
            float(np.mean(p.baseline[y == lab] == lab)) if p.baseline is not None and (y == lab).any() else None
        )
        compared["majority"][f"recall {lab}"] = float(lab == p.majority_label)
    figures["champion_vs_challenger"] = report.comparison_figure(folder / "champion_vs_challenger.png", compared)
    return figures


def _write_outputs(ctx: StepContext, summary: dict[str, Any], p: Predictions, texts: list[str], folder: Path) -> None:
    """The Markdown report (in storage and in ``folder`` for MLflow) and every model's predictions as Parquet."""
    import pandas as pd  # heavy (pandas): imported when used

    markdown = report.render_evaluation_report(summary)
    ctx.storage.write_text(summary["report_uri"], markdown)
    (folder / "report.md").write_text(markdown)
    predictions = pd.DataFrame({"text": texts, "label": p.y, "candidate": p.candidate})
    if p.champion is not None:
        predictions["champion"] = p.champion
    if p.baseline is not None:
        predictions["baseline"] = p.baseline
    write_parquet(predictions, ctx.output("predictions.parquet"), ctx.settings)


# --- MLflow ----------------------------------------------------------------------------------------------------
def _log_to_mlflow(ctx: StepContext, summary: dict[str, Any], figures: dict[str, Path], report_md: Path) -> None:
    """Metrics, params, tags and the figures and report of the evaluate run (nested under the pipeline run)."""
    import mlflow  # heavy (mlflow): imported when used

    metrics, gates = summary["metrics"], summary["gates"]
    with step_run(ctx):
        flat = {
            "eval.macro_f1": metrics["macro_f1"],
            "eval.accuracy": metrics["accuracy"],
            "eval.majority_macro_f1": metrics["majority_macro_f1"],
            "eval.latency_p95_ms": gates["latency_p95_ms"]["value"],
            "eval.size_mb": gates["size_mb"]["value"],
            "eval.passed": float(summary["passed"]),
            "eval.needs_review": float(summary["needs_review"]),
            "eval.rows": float(summary["eval_rows"]),
        }
        flat.update({f"eval.recall_{lab}": r for lab, r in metrics["recall"].items()})
        for key in ("champion_macro_f1", "baseline_macro_f1", "ece"):
            if metrics.get(key) is not None:
                flat[f"eval.{key}"] = metrics[key]
        for gate, key in (("non_inferiority", "f1_diff_ci_low"), ("majority", "majority_gain_ci_low")):
            if not gates[gate]["skipped"]:
                flat[f"eval.{key}"] = gates[gate]["ci_low"]
        mlflow.log_metrics(flat)
        mlflow.log_params(
            {
                "eval_uri": summary["eval_uri"],
                "served_uri": summary["served_uri"],
                "champion_version": summary["champion_version"] or "none",
            }
        )
        mlflow.set_tags(
            {
                "eval.passed": str(summary["passed"]).lower(),
                "eval.needs_review": str(summary["needs_review"]).lower(),
                "eval.report_uri": summary["report_uri"],
            }
        )
        for path in figures.values():
            mlflow.log_artifact(str(path), artifact_path="evaluation")
        mlflow.log_artifact(str(report_md), artifact_path="evaluation")


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return round(float(value), 6)
    if isinstance(value, Path):
        return str(value)
    return value
