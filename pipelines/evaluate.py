"""Evaluate the served artifact against floors, the champion, slices and budgets.

The candidate is the compressed pyfunc model that would be served (``served_uri``), not the fp32 weights. The
champion's served model predicts the same evaluation set, so the comparison is paired. A TF-IDF + class-balanced
logistic regression trained on the accepted data (hold-out rows excluded) and the majority class are scored beside
them, so a transformer that loses to a linear baseline is visible at a glance.

Gates (every threshold from ``settings.gates``):

- ``macro_f1_floor`` and ``class_recall_floor``: absolute floors;
- ``non_inferiority``: paired bootstrap interval of the macro-F1 difference against a margin (see
  :func:`pipelines.stats.non_inferiority`); skipped with no champion (bootstrap);
- ``slices``: no slice of ``data.slice_column`` with at least ``min_slice_size`` rows loses more than
  ``slice_tolerance`` macro-F1 against the champion; skipped with no champion;
- ``latency_p95_ms``: p95 of batch-1 calls of the candidate pyfunc;
- ``size_mb``: size of ``bundle/model.onnx`` in MiB.

A failed gate returns ``passed: false`` with the reasons (it does not raise); the champion is untouched.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from pipelines.config import Settings
    from pipelines.context import StepContext

log = logging.getLogger(__name__)

_MB = 1024 * 1024


def _local_dir(ctx: StepContext, uri: str, dst: Path) -> Path:
    """A local folder with the contents of ``uri`` (downloaded when it is on S3)."""
    from pipelines.storage import is_s3

    if is_s3(uri):
        return ctx.storage.download_dir(uri, dst)
    path = Path(uri)
    if not path.is_dir():
        raise FileNotFoundError(f"served model folder {uri!r} does not exist; run the compress step first")
    return path


def predict(model: Any, texts: list[str], labels: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels and class probabilities (columns in ``labels`` order, or None) of a served pyfunc model.

    Raises:
        ValueError: the output lacks a ``label`` column, has the wrong length, or holds unknown labels.
    """
    import pandas as pd

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
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, s = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    return {
        lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, lab in enumerate(labels)
    }


def _confusion(y: np.ndarray, pred: np.ndarray, labels: list[str]) -> np.ndarray:
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(y, pred, labels=labels)


def _baselines(settings: Settings, eval_df: pd.DataFrame) -> dict[str, Any]:
    """TF-IDF + class-balanced logistic regression and the majority class, trained on accepted non-hold-out rows."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from pipelines.datasets import load_accepted, split_holdout

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
    import pandas as pd

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


def _slices(
    eval_df: pd.DataFrame, y: np.ndarray, cand: np.ndarray, champ: np.ndarray | None, settings: Settings
) -> dict[str, Any]:
    from pipelines.stats import macro_f1

    g, column = settings.gates, settings.data.slice_column
    gate: dict[str, Any] = {"threshold": -g.slice_tolerance, "comparator": "Δ ≥", "min_slice_size": g.min_slice_size}
    if column not in eval_df.columns:
        return {
            **gate,
            "passed": True,
            "skipped": True,
            "value": None,
            "slices": [],
            "note": f"no slice column {column!r} in the evaluation set",
        }
    rows, worst, failed = [], None, []
    values = eval_df[column].fillna("<missing>").astype(str).to_numpy()
    for name in sorted(set(values)):
        sel = values == name
        present = [lab for lab in settings.data.labels if lab in set(y[sel])]
        row: dict[str, Any] = {"slice": name, "n": int(sel.sum()), "candidate": macro_f1(y[sel], cand[sel], present)}
        row["checked"] = champ is not None and row["n"] >= g.min_slice_size
        if champ is not None:
            row["champion"] = macro_f1(y[sel], champ[sel], present)
            row["delta"] = row["candidate"] - row["champion"]
        row["passed"] = not row["checked"] or row["delta"] >= -g.slice_tolerance
        if row["checked"]:
            worst = row["delta"] if worst is None else min(worst, row["delta"])
            if not row["passed"]:
                failed.append(
                    f"{column}={name!r} ({row['n']} rows): macro-F1 {row['candidate']:.3f} vs champion "
                    f"{row['champion']:.3f} (Δ {row['delta']:+.3f} < -{g.slice_tolerance:.3f})"
                )
        rows.append(row)
    if champ is None:
        note = "no champion (bootstrap): slices shown, not compared"
    else:
        small = sum(1 for r in rows if not r["checked"])
        note = f"{len(rows) - small} slice(s) of {column!r} compared" + (
            f", {small} below {g.min_slice_size} rows not gated" if small else ""
        )
    return {
        **gate,
        "passed": not failed,
        "skipped": champ is None,
        "value": worst,
        "slices": rows,
        "column": column,
        "failures": failed,
        "note": note,
    }


def run(ctx: StepContext) -> dict[str, Any]:
    """Evaluate the served candidate on the evaluation set and check every gate.

    Inputs: ``served_uri`` (the served pyfunc model folder), ``eval_uri`` (evaluation Parquet/CSV with text,
    label and optionally the slice column).

    Returns:
        ``passed``, ``gates`` {name: {passed, value, threshold, ...}}, ``metrics``, ``report_uri``, ``failures``,
        ``confusion``, ``champion_version``, ``figures``.

    Raises:
        ValueError: an input is missing, the evaluation set lacks a column or holds unknown labels.
        FileNotFoundError: the served folder or its bundle is missing.
    """
    from pipelines.datasets import read_table

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
    import mlflow
    import pandas as pd

    from pipelines import report
    from pipelines.champion import find_bundle, get_champion
    from pipelines.datasets import write_parquet
    from pipelines.stats import macro_f1, non_inferiority
    from pipelines.tracking import step_run

    s = ctx.settings
    g, labels = s.gates, list(s.data.labels)
    served_uri, eval_uri = ctx.require("served_uri"), ctx.require("eval_uri")
    texts = eval_df[s.data.text_column].astype(str).tolist()
    y = eval_df[s.data.label_column].astype(str).to_numpy()
    served_dir = _local_dir(ctx, served_uri, work / "candidate")
    bundle = find_bundle(served_dir)
    log.info("evaluate: %d rows from %s; candidate %s", len(y), eval_uri, served_uri)
    candidate_model = mlflow.pyfunc.load_model(str(served_dir))
    cand, cand_probs = predict(candidate_model, texts, labels)

    # A fresh folder per evaluation: the champion's version number alone does not identify it across stores.
    champion = get_champion(s, dst=work / "champion")
    champ = None
    if champion is not None:
        log.info("evaluate: champion is version %s", champion.version)
        champ, _ = predict(mlflow.pyfunc.load_model(str(champion.model_dir)), texts, labels)

    base = _baselines(s, eval_df)
    majority = np.full(len(y), base["majority_label"])

    # --- metrics -------------------------------------------------------------------------------------------
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
        "baseline_macro_f1": macro_f1(y, base["baseline"], labels) if base["baseline"] is not None else None,
        "baseline_accuracy": float(np.mean(base["baseline"] == y)) if base["baseline"] is not None else None,
        "baseline_train_rows": base["train_rows"],
        "majority_macro_f1": macro_f1(y, majority, labels),
        "majority_accuracy": float(np.mean(majority == y)),
        "per_class": per_class,
    }
    calib = None
    if cand_probs is not None:
        calib = report.calibration(cand_probs.max(axis=1), cand == y)
        metrics["ece"] = calib["ece"]

    # --- gates ---------------------------------------------------------------------------------------------
    gates: dict[str, dict[str, Any]] = {}
    failures: list[str] = []
    gates["macro_f1_floor"] = {
        "passed": metrics["macro_f1"] >= g.min_macro_f1,
        "value": metrics["macro_f1"],
        "threshold": g.min_macro_f1,
        "comparator": "≥",
    }
    if not gates["macro_f1_floor"]["passed"]:
        failures.append(f"macro-F1 {metrics['macro_f1']:.3f} < floor gates.min_macro_f1={g.min_macro_f1}")
    low = {lab: r for lab, r in metrics["recall"].items() if r < g.min_class_recall}
    gates["class_recall_floor"] = {
        "passed": not low,
        "value": min(metrics["recall"].values()),
        "threshold": g.min_class_recall,
        "comparator": "≥",
        "below": sorted(low),
    }
    if low:
        gates["class_recall_floor"]["note"] = "below: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(low.items()))
        failures.append(
            f"recall below gates.min_class_recall={g.min_class_recall}: "
            + ", ".join(f"{k} {v:.3f}" for k, v in sorted(low.items()))
        )

    if champ is None:
        gates["non_inferiority"] = {
            "passed": True,
            "skipped": True,
            "value": None,
            "threshold": -g.noninferiority_margin,
            "comparator": "CI low ≥",
            "note": "no champion (bootstrap): nothing to compare against",
        }
    else:
        ni = non_inferiority(
            y,
            cand,
            champ,
            labels,
            margin=g.noninferiority_margin,
            alpha=g.alpha,
            samples=g.bootstrap_samples,
            seed=g.seed,
        )
        b = ni.bootstrap
        gates["non_inferiority"] = {
            "passed": ni.passed,
            "skipped": False,
            "value": b.diff,
            "threshold": -g.noninferiority_margin,
            "comparator": "CI low ≥",
            "verdict": ni.verdict,
            "ci_low": b.ci_low,
            "ci_high": b.ci_high,
            "level": b.level,
            "samples": b.samples,
            "mcnemar": ni.mcnemar.as_dict(),
            "champion_version": champion.version,
            "note": ni.reason,
        }
        if not ni.passed:
            failures.append(f"non-inferiority against champion v{champion.version}: {ni.reason}")

    gates["slices"] = _slices(eval_df, y, cand, champ, s)
    failures += [f"slice {f}" for f in gates["slices"].get("failures", [])]

    lat = _latency(candidate_model, texts, s)
    gates["latency_p95_ms"] = {
        "passed": lat["p95_ms"] <= g.max_latency_p95_ms,
        "value": lat["p95_ms"],
        "threshold": g.max_latency_p95_ms,
        "comparator": "≤",
        **lat,
    }
    if not gates["latency_p95_ms"]["passed"]:
        failures.append(f"latency p95 {lat['p95_ms']:.1f} ms > gates.max_latency_p95_ms={g.max_latency_p95_ms}")
    size_mb = (bundle / "model.onnx").stat().st_size / _MB
    gates["size_mb"] = {
        "passed": size_mb <= g.max_size_mb,
        "value": size_mb,
        "threshold": g.max_size_mb,
        "comparator": "≤",
        "note": "bundle/model.onnx, MiB",
    }
    if not gates["size_mb"]["passed"]:
        failures.append(f"served model {size_mb:.2f} MB > gates.max_size_mb={g.max_size_mb}")
    passed = all(gate["passed"] for gate in gates.values())

    # --- report, figures, MLflow ---------------------------------------------------------------------------
    figures_dir = work / "figures"
    figures_dir.mkdir()
    cm_cand = _confusion(y, cand, labels)
    cm_champ = _confusion(y, champ, labels) if champ is not None else None
    figures = {
        "confusion_matrix": report.confusion_figure(figures_dir / "confusion_matrix.png", labels, cm_cand, cm_champ),
        "per_class": report.per_class_figure(
            figures_dir / "per_class.png",
            labels,
            [per_class[lab]["precision"] for lab in labels],
            [per_class[lab]["recall"] for lab in labels],
            g.min_class_recall,
        ),
    }
    if calib is not None:
        figures["reliability"] = report.reliability_figure(figures_dir / "reliability.png", calib)
    compared = {
        "candidate": {"macro-F1": metrics["macro_f1"], "accuracy": metrics["accuracy"]},
        "champion": {"macro-F1": metrics["champion_macro_f1"], "accuracy": metrics["champion_accuracy"]},
        "TF-IDF baseline": {"macro-F1": metrics["baseline_macro_f1"], "accuracy": metrics["baseline_accuracy"]},
        "majority": {"macro-F1": metrics["majority_macro_f1"], "accuracy": metrics["majority_accuracy"]},
    }
    for lab in labels:
        compared["candidate"][f"recall {lab}"] = per_class[lab]["recall"]
        compared["champion"][f"recall {lab}"] = champ_per_class[lab]["recall"] if champ_per_class else None
        compared["TF-IDF baseline"][f"recall {lab}"] = (
            float(np.mean(base["baseline"][y == lab] == lab))
            if base["baseline"] is not None and (y == lab).any()
            else None
        )
        compared["majority"][f"recall {lab}"] = float(lab == base["majority_label"])
    figures["champion_vs_challenger"] = report.comparison_figure(figures_dir / "champion_vs_challenger.png", compared)

    figure_uris = {name: ctx.storage.upload_file(path, ctx.output(path.name)) for name, path in figures.items()}
    summary: dict[str, Any] = {
        "passed": passed,
        "gates": gates,
        "metrics": metrics,
        "failures": failures,
        "champion_version": champion.version if champion else None,
        "confusion": {
            "labels": labels,
            "candidate": cm_cand.tolist(),
            "champion": cm_champ.tolist() if cm_champ is not None else None,
        },
        "served_uri": served_uri,
        "eval_uri": eval_uri,
        "eval_rows": int(len(y)),
        "figures": figure_uris,
        "report_uri": ctx.output("report.md"),
    }
    summary = _json_safe(summary)
    markdown = report.render_evaluation_report(summary)
    ctx.storage.write_text(summary["report_uri"], markdown)
    (figures_dir / "report.md").write_text(markdown)

    predictions = pd.DataFrame({"text": texts, "label": y, "candidate": cand})
    if champ is not None:
        predictions["champion"] = champ
    if base["baseline"] is not None:
        predictions["baseline"] = base["baseline"]
    write_parquet(predictions, ctx.output("predictions.parquet"), s)

    with step_run(ctx):
        flat = {
            "eval.macro_f1": metrics["macro_f1"],
            "eval.accuracy": metrics["accuracy"],
            "eval.majority_macro_f1": metrics["majority_macro_f1"],
            "eval.latency_p95_ms": lat["p95_ms"],
            "eval.size_mb": size_mb,
            "eval.passed": float(passed),
        }
        flat.update({f"eval.recall_{lab}": r for lab, r in metrics["recall"].items()})
        for key in ("champion_macro_f1", "baseline_macro_f1", "ece"):
            if metrics.get(key) is not None:
                flat[f"eval.{key}"] = metrics[key]
        if not gates["non_inferiority"]["skipped"]:
            flat["eval.f1_diff_ci_low"] = gates["non_inferiority"]["ci_low"]
        mlflow.log_metrics(flat)
        mlflow.log_params(
            {"eval_uri": eval_uri, "served_uri": served_uri, "champion_version": summary["champion_version"] or "none"}
        )
        mlflow.set_tags({"eval.passed": str(passed).lower(), "eval.report_uri": summary["report_uri"]})
        for path in figures.values():
            mlflow.log_artifact(str(path), artifact_path="evaluation")
        mlflow.log_artifact(str(figures_dir / "report.md"), artifact_path="evaluation")

    log.info(
        "evaluate: %s; macro-F1 %.3f; failures: %s",
        "passed" if passed else "FAILED",
        metrics["macro_f1"],
        failures or "none",
    )
    return summary


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
