"""Step ``monitor``: what the served champion was asked and answered in one window, without labels.

Input: the param ``window_end`` (ISO time; the DAG passes its data interval end). Reads the capture files
(:mod:`pipelines.serving`) under ``serving.capture_uri`` (default ``<artifact_root>/captures``).

**Exactly once.** A window claims every capture file named after the watermark and stamped before
``window_end - monitoring.settle_seconds`` (a file's name starts with the UTC time it was written, so names sort by
time). The claim is written first (``monitoring/windows/<window>.json``: the list of files), then the watermark
(``monitoring/watermark.json``: the last file claimed). A rerun of the same window reads its claim back, so it
sees the same files and gives the same result; the next window starts after the watermark, so no capture is
counted twice. Assumption: a capture write completes within ``settle_seconds`` of its name's stamp (a file written
later than that, with an older stamp, would be skipped). Windows are claimed one at a time (the DAG runs one at a
time: ``max_active_runs=1``).

**Tests** (against the champion's reference, ``bundle/reference``, with the drift step's own alibi-detect functions):

| test | what | fires when |
| --- | --- | --- |
| ``mmd``, ``ks_embedding`` | sentence embeddings of the captured texts vs the reference | as in ``drift`` |
| ``length`` | text length (characters) | KS p < ``drift.length_p_threshold`` |
| ``prediction`` | predicted-label mix vs the reference's label mix | chi-square p < ``monitoring.prediction_p_threshold`` |
| ``confidence`` | top-class probability vs the champion's on its own evaluation set | KS p < ``monitoring.confidence_p_threshold`` |

Texts captured as hashes only (``serving.capture_texts: false``) leave out the embedding tests.

**Estimated macro-F1 without labels (CBPE, as NannyML's).** For each captured row with class probabilities
``p`` and predicted class ``k``, the expected confusion counts are: TP_k += p_k, FP_k += 1 - p_k, and for every
other class j, FN_j += p_j. The estimated per-class F1 is 2TP / (2TP + FP + FN), macro-averaged. The probabilities
are first calibrated by temperature scaling fitted on the champion's evaluation set (its tag ``train.eval_uri``;
T = 1 when it cannot be read). **Assumption: the calibration holds under the shift**, i.e. P(y | p) is the same in
production as on the evaluation set (covariate shift only, no concept shift). Concept drift, where the same input
deserves another label, is invisible to the estimate; so realised scores are joined whenever labels land: rows of
accepted labelled batches whose ``id`` column or text SHA-256 matches a capture give the realised macro-F1 beside
the estimate.

**Status.** ``act`` when the estimated macro-F1 fell at least ``monitoring.act_f1_drop`` below the champion's
evaluated macro-F1 (tag ``eval.macro_f1``; else the estimate on its evaluation set), or input drift is severe
(``monitoring.act_on_severe_drift``); ``warn`` at ``monitoring.warn_f1_drop``, on any other test that fires, or
when errors or latency p95 exceed their ceilings; else ``ok``. A window with fewer than ``monitoring.min_rows``
rows is ``ok`` with that reason. With ``act``, ``labels_waiting`` says whether labelled batches wait in landing (the
DAG then starts ``continuous_training`` with this summary as evidence, or fails asking for labels).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines import detectors, report
from pipelines.data.datasets import capture_root, read_captures, read_table
from pipelines.data.reference import load_reference
from pipelines.io.storage import basename, get_storage, join, waiting_batches
from pipelines.io.tracking import step_run
from pipelines.model.encoders import embed
from pipelines.registry import QUALITY_TAG

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from pipelines.champion import Champion
    from pipelines.config import Settings
    from pipelines.context import StepContext

log = logging.getLogger(__name__)

REPORT_NAME = "monitor_report.json"
SUMMARY_NAME = "summary.md"
_STAMP = re.compile(r"^(\d{8}T\d{12})Z-")


# --- where things live ---------------------------------------------------------------------------------
def monitoring_root(settings: Settings) -> str:
    return settings.uri("monitoring")


def window_id(window_end: datetime) -> str:
    return window_end.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def parse_time(value: str) -> datetime:
    """An ISO time (``Z`` or an offset; naive means UTC).

    Raises:
        ValueError: naming the value.
    """
    try:
        when = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"param window_end={value!r} is not an ISO time (e.g. 2026-01-01T10:00:00+00:00)") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _stamp(name: str) -> str | None:
    m = _STAMP.match(name)
    return m.group(1) if m else None


# --- exactly-once claims -------------------------------------------------------------------------------
def claim(settings: Settings, window_end: datetime) -> dict[str, Any]:
    """The capture files of the window ending at ``window_end``: claimed now, or read back from an earlier claim.

    Returns:
        ``window_id``, ``window_end``, ``cutoff``, ``after`` (the watermark it started from), ``files``, ``rerun``.
    """
    storage = get_storage(settings)
    wid = window_id(window_end)
    claim_uri = join(monitoring_root(settings), "windows", f"{wid}.json")
    watermark_uri = join(monitoring_root(settings), "watermark.json")
    watermark = json.loads(storage.read_text(watermark_uri)) if storage.exists(watermark_uri) else {}
    if storage.exists(claim_uri):
        record = json.loads(storage.read_text(claim_uri))
        _advance(storage, watermark_uri, watermark, record)  # a crash between claim and watermark is repaired
        return {**record, "rerun": True}
    after = watermark.get("last_file") or ""
    cutoff = (window_end - timedelta(seconds=settings.monitoring.settle_seconds)).astimezone(UTC)
    cutoff_stamp = cutoff.strftime("%Y%m%dT%H%M%S%f")
    root = capture_root(settings)
    files = []
    for uri in storage.list(root):
        name = basename(uri)
        stamp = _stamp(name)
        if not name.endswith(".jsonl") or name.startswith(".") or stamp is None:
            continue
        if name > after and stamp < cutoff_stamp:
            files.append(uri[len(root.rstrip("/")) + 1 :])
    files.sort(key=basename)
    record = {
        "window_id": wid,
        "window_end": window_end.isoformat(),
        "cutoff": cutoff.isoformat(),
        "after": after,
        "files": files,
    }
    storage.write_text(claim_uri, json.dumps(record, indent=1))
    _advance(storage, watermark_uri, watermark, record)
    return {**record, "rerun": False}


def _advance(storage: Any, uri: str, watermark: dict[str, Any], record: dict[str, Any]) -> None:
    last = max((basename(f) for f in record["files"]), default="")
    if last and last > (watermark.get("last_file") or ""):
        storage.write_text(uri, json.dumps({"last_file": last, "window_id": record["window_id"]}, indent=1))


# --- the estimate --------------------------------------------------------------------------------------
def expected_macro_f1(probs: np.ndarray, classes: list[str] | None = None) -> dict[str, Any]:
    """CBPE: macro-F1 expected from (calibrated) class probabilities, rows x classes; see the module doc."""
    import numpy as np  # heavy (numpy): imported when used

    probs = np.asarray(probs, dtype=np.float64)
    n, k = probs.shape
    pred = probs.argmax(axis=1)
    onehot = np.eye(k)[pred]
    tp = (probs * onehot).sum(axis=0)
    fp = ((1 - probs) * onehot).sum(axis=0)
    fn = (probs * (1 - onehot)).sum(axis=0)
    denom = 2 * tp + fp + fn
    f1 = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), 0.0)
    names = classes or [str(i) for i in range(k)]
    return {
        "macro_f1": float(f1.mean()) if n else None,
        "per_class": dict(zip(names, f1.round(4).tolist(), strict=True)),
    }


def temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """Temperature T minimising the NLL of softmax(log p / T) on labelled rows (temperature scaling)."""
    import numpy as np  # heavy (numpy): imported when used
    from scipy.optimize import minimize_scalar  # heavy (scipy): imported when used

    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0))

    def nll(t: float) -> float:
        z = logp / t
        z = z - z.max(axis=1, keepdims=True)
        logsm = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-logsm[np.arange(len(y)), y].mean())

    return float(minimize_scalar(nll, bounds=(0.05, 20.0), method="bounded").x)


def calibrate(probs: np.ndarray, t: float) -> np.ndarray:
    import numpy as np  # heavy (numpy): imported when used

    z = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0)) / t
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def realised_macro_f1(y_true: list[str], y_pred: list[str]) -> float:
    """Macro-F1 over the classes present in the labels (as the drift step's quality test)."""
    from sklearn.metrics import f1_score  # heavy (sklearn): imported when used

    return float(f1_score(y_true, y_pred, labels=sorted(set(y_true)), average="macro", zero_division=0))


# --- the step ------------------------------------------------------------------------------------------
def run(ctx: StepContext) -> dict[str, Any]:
    """Claim the window's captures, run the tests, estimate macro-F1, rate the window, log it all.

    Returns:
        ``status`` (ok|warn|act), ``reasons``, ``window_id``, ``rows``, ``files``, ``tests``, ``estimate``,
        ``realised``, ``system``, ``labels_waiting``, ``report_uri``, ``summary_uri``.

    Raises:
        ValueError: ``window_end`` is missing or not an ISO time.
    """
    from pipelines.champion import get_champion  # not at the top: pipelines.champion loads mlflow

    settings, mon = ctx.settings, ctx.settings.monitoring
    raw_end = ctx.params.get("window_end")
    if not raw_end:
        raise ValueError("step 'monitor' needs param window_end (ISO time; the DAG passes its data interval end)")
    window = claim(settings, parse_time(raw_end))
    df = read_captures(settings, window["files"])
    champion = get_champion(settings)
    summary: dict[str, Any] = {
        "window_id": window["window_id"],
        "window_end": window["window_end"],
        "cutoff": window["cutoff"],
        "rerun": window["rerun"],
        "files": len(window["files"]),
        "rows": int(len(df)),
        "champion_version": champion.version if champion else None,
        "system": system_figures(df),
        "report_uri": ctx.output(REPORT_NAME),
        "summary_uri": ctx.output(SUMMARY_NAME),
    }
    ok = df[df["status"] == "ok"] if len(df) else df
    tests: dict[str, Any] = {}
    estimate: dict[str, Any] = {}
    realised: dict[str, Any] = {}
    if champion is None:
        status, reasons = "ok", ["no champion: nothing to compare with"]
    elif len(ok) < mon.min_rows:
        status, reasons = "ok", [f"too few captured rows ({len(ok)} < monitoring.min_rows={mon.min_rows})"]
    else:
        with tempfile.TemporaryDirectory(prefix="mlops-monitor-") as tmp:
            tests, estimate = compare(settings, champion, ok, Path(tmp))
        realised = join_labels(settings, ok)
        status, reasons = rate(tests, estimate, summary["system"], settings)
    summary.update(
        {
            "status": status,
            "reasons": reasons,
            "tests": tests,
            "estimate": estimate,
            "realised": realised,
            "labels_waiting": len(waiting_batches(settings)),
        }
    )
    ctx.storage.write_text(summary["report_uri"], json.dumps(summary, indent=2, default=str))
    ctx.storage.write_text(
        join(monitoring_root(settings), "windows", f"{window['window_id']}.result.json"),
        json.dumps(_history_row(summary), default=str),
    )
    markdown = render_markdown(summary)
    ctx.storage.write_text(summary["summary_uri"], markdown)
    _log_mlflow(ctx, summary, markdown)
    log.info("monitor: window %s, %d rows: %s (%s)", window["window_id"], len(df), status, "; ".join(reasons))
    return summary


def system_figures(df: pd.DataFrame) -> dict[str, Any]:
    import numpy as np  # heavy (numpy): imported when used

    if not len(df):
        return {
            "requests": 0,
            "rows": 0,
            "errors": 0,
            "error_rate": 0.0,
            "latency_p50_ms": None,
            "latency_p95_ms": None,
        }
    per_request = df.drop_duplicates("request_id")
    errors = int((per_request["status"] == "error").sum())
    latency = per_request["latency_ms"].astype(float).to_numpy()
    return {
        "requests": int(len(per_request)),
        "rows": int(len(df)),
        "errors": errors,
        "error_rate": errors / max(len(per_request), 1),
        "latency_p50_ms": float(np.percentile(latency, 50)),
        "latency_p95_ms": float(np.percentile(latency, 95)),
        "model_versions": sorted({str(v) for v in df["model_version"].dropna()}) if "model_version" in df else [],
    }


def _eval_reference(settings: Settings, champion: Champion) -> dict[str, Any] | None:
    """The champion on its own evaluation set: probabilities, labels (for calibration and the confidence test)."""
    import numpy as np  # heavy (numpy): imported when used

    uri = champion.tags.get("train.eval_uri")
    if not uri:
        return None
    try:
        eval_df = read_table(uri, settings)
    except Exception as exc:  # an evaluation set that is gone: the tests that need it are skipped with the reason
        log.warning("monitor: the champion's evaluation set %s cannot be read (%s)", uri, exc)
        return None
    predictor = champion.predictor()
    probs = predictor.predict_proba(eval_df[settings.data.text_column].astype(str).tolist())
    index = {c: i for i, c in enumerate(predictor.labels)}
    labels = eval_df[settings.data.label_column].astype(str)
    keep = labels.isin(index).to_numpy()
    return {
        "uri": uri,
        "probs": probs[keep],
        "y": np.array([index[v] for v in labels[keep]]),
        "classes": list(predictor.labels),
    }


def compare(settings: Settings, champion: Champion, ok: pd.DataFrame, tmp: Path) -> tuple[dict, dict]:
    """The drift tests and the macro-F1 estimate for the window's successful rows."""
    import numpy as np  # heavy (numpy): imported when used

    cfg, mon = settings.drift, settings.monitoring
    ref_dir = champion.reference_dir
    ref = detectors.capped_reference(load_reference(ref_dir), cfg.reference_max_rows, cfg.seed)
    sample = ok.sample(n=mon.max_rows, random_state=cfg.seed) if len(ok) > mon.max_rows else ok
    tests: dict[str, Any] = {}
    texts = sample["text"].dropna().astype(str).tolist() if "text" in sample else []
    if len(texts) >= mon.min_rows:
        encoder = detectors.encoder_for(ref, settings)
        emb = embed(texts, encoder, batch_size=cfg.embed_batch_size, max_length=cfg.max_length)
        tests["mmd"] = detectors.mmd(ref.embeddings, emb, cfg)
        tests["ks_embedding"] = detectors.ks_embedding(ref.embeddings, emb, cfg)
    else:
        tests["embedding"] = {"skipped": "texts are not captured (serving.capture_texts: false)", "drifted": False}
    lengths = ok["text_length"].dropna().astype(float).to_numpy()
    tests["length"] = detectors.length(np.asarray(ref.lengths), lengths, cfg)
    pred_cfg = cfg.model_copy(update={"label_p_threshold": mon.prediction_p_threshold})
    tests["prediction"] = detectors.label_mix(ref.labels, ok["label"].astype(str).tolist(), pred_cfg)
    tests["prediction"]["description"] = "chi-square test of the predicted-label mix against the reference labels"

    evalref = _eval_reference(settings, champion)
    classes = evalref["classes"] if evalref else sorted(set().union(*[set(p) for p in ok["probs"]]))
    probs = np.array([[float(p.get(c, 0.0)) for c in classes] for p in ok["probs"]])
    confidence = probs.max(axis=1)
    if evalref is not None:
        tests["confidence"] = _confidence(evalref["probs"].max(axis=1), confidence, mon.confidence_p_threshold)
        t = temperature(evalref["probs"], evalref["y"])
        ref_estimate = expected_macro_f1(calibrate(evalref["probs"], t), classes)["macro_f1"]
        ref_realised = realised_macro_f1(
            [classes[i] for i in evalref["y"]], [classes[i] for i in evalref["probs"].argmax(axis=1)]
        )
    else:
        tests["confidence"] = {"skipped": "the champion has no readable evaluation set (tag train.eval_uri)"}
        t, ref_estimate, ref_realised = 1.0, None, None
    est = expected_macro_f1(calibrate(probs, t), classes)
    baseline = champion.metric(QUALITY_TAG)
    baseline_source = f"tag {QUALITY_TAG}"
    if baseline is None:
        baseline, baseline_source = ref_estimate, "the estimate on the champion's evaluation set"
    estimate = {
        "method": "CBPE: expected confusion matrix from temperature-calibrated probabilities",
        "assumption": "calibration fitted on the champion's evaluation set holds under the shift (no concept shift)",
        "macro_f1": est["macro_f1"],
        "per_class": est["per_class"],
        "temperature": round(t, 4),
        "baseline_macro_f1": baseline,
        "baseline_source": baseline_source,
        "drop": (baseline - est["macro_f1"]) if baseline is not None else None,
        "eval_estimate": ref_estimate,
        "eval_realised": ref_realised,
        "mean_confidence": float(confidence.mean()),
        "rows": int(len(probs)),
    }
    return tests, estimate


def _confidence(ref_conf: np.ndarray, conf: np.ndarray, p_threshold: float) -> dict[str, Any]:
    import numpy as np  # heavy (numpy): imported when used
    from alibi_detect.cd import KSDrift  # heavy (alibi_detect): imported when used

    data = KSDrift(ref_conf.astype(np.float32).reshape(-1, 1), p_val=p_threshold).predict(
        conf.astype(np.float32).reshape(-1, 1)
    )["data"]
    p_value = float(np.asarray(data["p_val"]).ravel()[0])
    return {
        "statistic": float(np.asarray(data["distance"]).ravel()[0]),
        "p_value": p_value,
        "threshold": p_threshold,
        "drifted": p_value < p_threshold,
        "reference_mean": float(ref_conf.mean()),
        "window_mean": float(conf.mean()),
        "description": "two-sample KS test of the top-class probability vs the champion on its evaluation set",
    }


def join_labels(settings: Settings, ok: pd.DataFrame) -> dict[str, Any]:
    """Realised macro-F1 of the captured rows whose labels landed since (accepted batches matched by id or text)."""
    import pandas as pd  # heavy (pandas): imported when used

    text_col, label_col = settings.data.text_column, settings.data.label_column
    labelled: dict[str, str] = {}
    for uri in get_storage(settings).list(settings.uri(settings.paths.accepted)):
        if not uri.endswith((".parquet", ".csv")):
            continue
        batch = read_table(uri, settings)
        if label_col not in batch:
            continue
        labels = batch[label_col].astype(str)
        if "id" in batch:
            labelled.update(zip(batch["id"].astype(str), labels, strict=False))
        if text_col in batch:
            digests = [hashlib.sha256(str(t).encode("utf-8")).hexdigest() for t in batch[text_col]]
            labelled.update(zip(digests, labels, strict=False))
    if not labelled:
        return {"rows": 0}
    keys = [
        i if i in labelled else h for i, h in zip(ok["id"].astype(str), ok["text_sha256"].astype(str), strict=False)
    ]
    matched = pd.Series([labelled.get(k) for k in keys], index=ok.index).dropna()
    if matched.empty:
        return {"rows": 0}
    y_pred = ok.loc[matched.index, "label"].astype(str).tolist()
    return {"rows": int(len(matched)), "macro_f1": realised_macro_f1(matched.tolist(), y_pred)}


def rate(tests: dict[str, Any], estimate: dict[str, Any], system: dict[str, Any], settings: Settings):
    """ok / warn / act and the reasons (see the module doc)."""
    mon = settings.monitoring
    act: list[str] = []
    warn: list[str] = []
    severity, drift_reasons = detectors.rate(
        {k: v for k, v in tests.items() if k in ("mmd", "ks_embedding", "length")}, settings.drift
    )
    if severity == "severe":
        (act if mon.act_on_severe_drift else warn).extend(f"input drift (severe): {r}" for r in drift_reasons)
    elif severity == "moderate":
        warn.extend(f"input drift (moderate): {r}" for r in drift_reasons)
    for name, what in (("prediction", "predicted-label mix"), ("confidence", "confidence")):
        test = tests.get(name) or {}
        if test.get("drifted"):
            warn.append(f"{what} drift p={test['p_value']:.3g} < {test['threshold']}")
    drop = estimate.get("drop")
    if drop is not None:
        line = (
            f"estimated macro-F1 {estimate['macro_f1']:.3f} vs {estimate['baseline_macro_f1']:.3f} "
            f"({estimate['baseline_source']}): drop {drop:.3f}"
        )
        if drop >= mon.act_f1_drop:
            act.append(f"{line} >= monitoring.act_f1_drop={mon.act_f1_drop}")
        elif drop >= mon.warn_f1_drop:
            warn.append(f"{line} >= monitoring.warn_f1_drop={mon.warn_f1_drop}")
    if system["error_rate"] > mon.max_error_rate:
        warn.append(f"error rate {system['error_rate']:.3f} > monitoring.max_error_rate={mon.max_error_rate}")
    p95 = system.get("latency_p95_ms")
    if p95 is not None and p95 > mon.max_latency_p95_ms:
        warn.append(f"latency p95 {p95:.1f} ms > monitoring.max_latency_p95_ms={mon.max_latency_p95_ms}")
    return detectors.worst_level([("act", act), ("warn", warn)], calm="ok")


# --- reporting -----------------------------------------------------------------------------------------
def _history_row(summary: dict[str, Any]) -> dict[str, Any]:
    tests, est = summary.get("tests") or {}, summary.get("estimate") or {}
    labels = (tests.get("prediction") or {}).get("batch_counts") or {}
    return {
        "window_id": summary["window_id"],
        "window_end": summary["window_end"],
        "status": summary["status"],
        "rows": summary["rows"],
        "mmd": (tests.get("mmd") or {}).get("statistic"),
        "estimated_f1": est.get("macro_f1"),
        "baseline_f1": est.get("baseline_macro_f1"),
        "realised_f1": (summary.get("realised") or {}).get("macro_f1"),
        "label_counts": labels,
    }


def history(settings: Settings) -> list[dict[str, Any]]:
    """Every window's figures so far, oldest first."""
    storage = get_storage(settings)
    rows = [
        json.loads(storage.read_text(uri))
        for uri in storage.list(join(monitoring_root(settings), "windows"))
        if uri.endswith(".result.json")
    ]
    return sorted(rows, key=lambda r: r["window_end"])


def render_markdown(summary: dict[str, Any]) -> str:
    est, sysf, real = summary.get("estimate") or {}, summary["system"], summary.get("realised") or {}

    def f(x: Any, fmt: str = ".3f") -> str:
        return format(x, fmt) if isinstance(x, (int, float)) and not (isinstance(x, float) and math.isnan(x)) else "-"

    lines = [
        f"# Monitoring window {summary['window_id']}: **{summary['status'].upper()}**",
        "",
        f"Champion version {summary['champion_version']}; {summary['rows']} captured rows in {summary['files']} "
        f"files (captures stamped before {summary['cutoff']}).",
        "",
        *(f"- {r}" for r in summary["reasons"] or ["nothing fired"]),
        "",
        "| test | statistic | p-value | threshold | drifted |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, t in (summary.get("tests") or {}).items():
        if "skipped" in t:
            lines.append(f"| {name} | skipped: {t['skipped']} | | | |")
        else:
            lines.append(
                f"| {name} | {f(t.get('statistic'), '.4f')} | {f(t.get('p_value'), '.3g')} | "
                f"{f(t.get('threshold'), '.3g')} | {t.get('drifted')} |"
            )
    lines += [
        "",
        "| macro-F1 | value |",
        "| --- | --- |",
        f"| estimated (CBPE, T={f(est.get('temperature'), '.2f')}) | {f(est.get('macro_f1'))} |",
        f"| baseline ({est.get('baseline_source', '-')}) | {f(est.get('baseline_macro_f1'))} |",
        f"| realised on {real.get('rows', 0)} rows whose labels landed | {f(real.get('macro_f1'))} |",
        "",
        f"Assumption: {est.get('assumption', '-')}.",
        "",
        f"System: {sysf['requests']} requests, {sysf['errors']} errors, latency p50 {f(sysf['latency_p50_ms'], '.1f')}"
        f" ms, p95 {f(sysf['latency_p95_ms'], '.1f')} ms.",
    ]
    return "\n".join(lines) + "\n"


def _plots(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    import matplotlib  # heavy (matplotlib): imported when used

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy (matplotlib): imported when used

    out.mkdir(parents=True, exist_ok=True)
    x = [r["window_end"][:16] for r in rows]
    paths = []
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(x, [r.get("mmd") for r in rows], marker="o")
    ax.set_title("Input drift over time (squared MMD of embeddings)")
    ax.tick_params(axis="x", rotation=45)
    paths.append(report.save_figure(fig, out / "drift_over_time.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    for key, name in (("estimated_f1", "estimated"), ("realised_f1", "realised"), ("baseline_f1", "baseline")):
        ax.plot(x, [r.get(key) for r in rows], marker="o", label=name)
    ax.set_title("Macro-F1: estimated (CBPE) vs realised")
    ax.legend()
    ax.tick_params(axis="x", rotation=45)
    paths.append(report.save_figure(fig, out / "f1_estimated_vs_realised.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    classes = sorted({c for r in rows for c in (r.get("label_counts") or {})})
    bottom = [0.0] * len(rows)
    for c in classes:
        shares = [
            (r.get("label_counts") or {}).get(c, 0) / max(sum((r.get("label_counts") or {}).values()), 1) for r in rows
        ]
        ax.bar(x, shares, bottom=bottom, label=c)
        bottom = [b + s for b, s in zip(bottom, shares, strict=False)]
    ax.set_title("Predicted-label mix over time")
    ax.legend()
    ax.tick_params(axis="x", rotation=45)
    paths.append(report.save_figure(fig, out / "label_mix_over_time.png"))
    return paths


def _log_mlflow(ctx: StepContext, summary: dict[str, Any], markdown: str) -> None:
    import mlflow  # heavy (mlflow): imported when used

    metrics = {"monitor.rows": summary["rows"], "monitor.requests": summary["system"]["requests"]}
    metrics["monitor.errors"] = summary["system"]["errors"]
    if summary["system"].get("latency_p95_ms") is not None:
        metrics["monitor.latency_p95_ms"] = summary["system"]["latency_p95_ms"]
    for name, test in (summary.get("tests") or {}).items():
        for key in ("statistic", "p_value"):
            if isinstance(test.get(key), (int, float)):
                metrics[f"monitor.{name}.{key}"] = float(test[key])
    for key in ("macro_f1", "drop", "temperature", "mean_confidence"):
        value = (summary.get("estimate") or {}).get(key)
        if isinstance(value, (int, float)):
            metrics[f"monitor.estimated_{key}" if key != "macro_f1" else "monitor.estimated_macro_f1"] = float(value)
    if (summary.get("realised") or {}).get("macro_f1") is not None:
        metrics["monitor.realised_macro_f1"] = summary["realised"]["macro_f1"]
    with tempfile.TemporaryDirectory(prefix="mlops-monitor-plots-") as tmp, step_run(ctx):
        mlflow.log_metrics(metrics)
        mlflow.set_tags({"monitor.status": summary["status"], "monitor.window_id": summary["window_id"]})
        for path in _plots(history(ctx.settings), Path(tmp)):
            mlflow.log_artifact(str(path), artifact_path="monitor")
        mlflow.log_text(markdown, "monitor/" + SUMMARY_NAME)
        mlflow.log_dict(summary, "monitor/" + REPORT_NAME)
