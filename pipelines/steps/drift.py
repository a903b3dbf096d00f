"""Step ``drift``: compare an accepted batch with the champion's reference (alibi-detect).

Tests (every threshold is in ``settings.drift``):

| test | what | library | fires when |
| --- | --- | --- | --- |
| ``mmd`` | sentence embeddings, multivariate | alibi-detect ``MMDDrift`` (pytorch, permutation test) | p < ``p_threshold`` |
| ``ks_embedding`` | each embedding dimension, Bonferroni or FDR corrected | alibi-detect ``KSDrift`` | any dimension drifts |
| ``label`` | label mix | alibi-detect ``ChiSquareDrift`` | p < ``label_p_threshold`` |
| ``length`` | text length in characters | alibi-detect ``KSDrift`` | p < ``length_p_threshold`` |
| ``quality`` | the champion's macro-F1 on the (labelled) batch vs its tag ``eval.macro_f1`` | its ONNX bundle | drop >= ``quality_drop_moderate`` |

Severity: ``severe`` when the MMD fires with distance >= ``mmd_severe_distance``, or the share of drifted
embedding dimensions >= ``ks_severe_share``, or the quality drop >= ``quality_drop_severe``; ``moderate`` when any
test fires; else ``none``. The summary carries the rule and the conditions that fired (``reasons``).

Cost stays bounded as data grows: at most ``batch_max_rows`` rows of the batch are embedded (a seeded sample;
labels and lengths use every row), the reference holds at most ``reference_max_rows`` rows, and the MMD
permutation test runs on at most ``mmd_max_rows`` rows of each side.

Thresholds were calibrated on the demo batches and on ``../shared/data`` with both the packaged MiniLM and the
tiny test encoder (MMD distance: in-domain ~0, moderate demo 0.005-0.014, drug reviews 2008-14 vs 2015-17
0.006-0.008, severe demo and drug reviews vs tweets 0.16-0.23; drifted KS dimensions: moderate <= 0.13,
severe >= 0.73).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines import detectors, report
from pipelines.data.datasets import read_table
from pipelines.data.reference import load_reference
from pipelines.io.tracking import step_run
from pipelines.model.encoders import embed
from pipelines.registry import QUALITY_TAG

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from pipelines.champion import Champion
    from pipelines.config import DriftSettings, Settings
    from pipelines.context import StepContext
    from pipelines.data.reference import Reference

log = logging.getLogger(__name__)

REPORT_NAME = "drift_report.json"
#: Champion version tag counting fine-tunes since the last retrain (read by ``decide``); set by ``register``.
FINE_TUNES_TAG = "fine_tunes_since_retrain"


def severity_rule(cfg: DriftSettings) -> str:
    """The severity rule, with its thresholds, as text."""
    return (
        f"severe if MMD p < {cfg.p_threshold} and MMD distance >= {cfg.mmd_severe_distance}, "
        f"or drifted embedding dimensions share >= {cfg.ks_severe_share}, "
        f"or champion macro-F1 drop >= {cfg.quality_drop_severe}; "
        f"moderate if any test fires (MMD p < {cfg.p_threshold}, any embedding dimension drifts under "
        f"{cfg.ks_correction}-corrected KS at {cfg.p_threshold}, label chi-square p < {cfg.label_p_threshold}, "
        f"length KS p < {cfg.length_p_threshold}, macro-F1 drop >= {cfg.quality_drop_moderate}); else none"
    )


def run(ctx: StepContext) -> dict[str, Any]:
    """Run the drift tests on the accepted batch against the reference and rate the drift.

    Args:
        ctx: the step context; input ``accepted_uri`` (a Parquet batch), optional input ``reference_uri``
            (a folder written by :func:`pipelines.data.reference.save_reference`; default: the champion's).

    Returns:
        ``severity`` (none|moderate|severe), ``has_reference``, ``champion_version``, ``tests`` (each with
        ``statistic``, ``p_value``, ``threshold``, ``drifted`` ...), ``rule``, ``reasons``, ``rows``,
        ``rows_embedded``, ``report_uri``, ``plots``.

    Raises:
        ValueError: a missing input, or a reference embedded with an encoder that is not available here.
        FileNotFoundError: the batch or the reference does not exist.
    """
    from pipelines.champion import get_champion  # not at the top: pipelines.champion loads mlflow

    settings, cfg = ctx.settings, ctx.settings.drift
    accepted_uri = ctx.require("accepted_uri")
    df = read_table(accepted_uri, settings)
    champion = get_champion(settings)
    base: dict[str, Any] = {
        "accepted_uri": accepted_uri,
        "rows": int(len(df)),
        "champion_version": champion.version if champion else None,
        "fine_tunes_since_retrain": _int_tag(champion, FINE_TUNES_TAG),
        "rule": severity_rule(cfg),
        "report_uri": ctx.output(REPORT_NAME),
    }
    with tempfile.TemporaryDirectory(prefix="mlops-drift-") as tmp:
        ref_dir = _reference_dir(ctx, champion, Path(tmp) / "reference")
        if ref_dir is None:
            summary = {
                **base,
                "severity": "none",
                "has_reference": False,
                "reference_uri": None,
                "tests": {},
                "reasons": ["no champion and no reference_uri: nothing to compare with (decide bootstraps)"],
                "rows_embedded": 0,
                "plots": {},
            }
            ctx.storage.write_text(summary["report_uri"], json.dumps(summary, indent=2, default=str))
            log.info("drift: no reference; severity none, has_reference false")
            return summary
        summary = _compare(ctx, df, champion, ref_dir, base, Path(tmp))
    return summary


def _compare(
    ctx: StepContext, df: pd.DataFrame, champion: Champion | None, ref_dir: Path, base: dict[str, Any], tmp: Path
) -> dict[str, Any]:
    import numpy as np  # heavy (numpy): imported when used

    settings, cfg = ctx.settings, ctx.settings.drift
    text_col, label_col = settings.data.text_column, settings.data.label_column
    ref = detectors.capped_reference(load_reference(ref_dir), cfg.reference_max_rows, cfg.seed)
    encoder = detectors.encoder_for(ref, settings)

    sample = df.sample(n=cfg.batch_max_rows, random_state=cfg.seed) if len(df) > cfg.batch_max_rows else df
    texts = sample[text_col].astype(str).tolist()
    log.info(
        "drift: embedding %d of %d rows with %s (reference: %d rows)", len(texts), len(df), encoder, len(ref.labels)
    )
    emb = embed(texts, encoder, batch_size=cfg.embed_batch_size, max_length=cfg.max_length)
    if emb.shape[1] != ref.embeddings.shape[1]:
        raise ValueError(
            f"batch embeddings have {emb.shape[1]} dimensions but the reference at {str(ref_dir)!r} has "
            f"{ref.embeddings.shape[1]}; rebuild the reference with drift.encoder={encoder!r}"
        )

    tests: dict[str, dict[str, Any]] = {
        "mmd": detectors.mmd(ref.embeddings, emb, cfg),
        "ks_embedding": detectors.ks_embedding(ref.embeddings, emb, cfg),
        "label": detectors.label_mix(ref.labels, df[label_col].astype(str).tolist(), cfg),
        "length": detectors.length(np.asarray(ref.lengths), df[text_col].astype(str).str.len().to_numpy(), cfg),
        "quality": _quality(champion, sample, settings),
    }
    severity, reasons = detectors.rate(tests, cfg)
    log.info("drift: severity %s (%s)", severity, "; ".join(reasons) or "no test fired")

    plot_dir = tmp / "plots"
    plots = _plots(
        ref, emb, df[label_col].astype(str).tolist(), df[text_col].astype(str).str.len().to_numpy(), settings, plot_dir
    )
    plot_uris = {name: ctx.output(path.name) for name, path in plots.items()}
    for name, path in plots.items():
        ctx.storage.upload_file(path, plot_uris[name])
    summary = {
        **base,
        "severity": severity,
        "has_reference": True,
        "reference_uri": ctx.get("reference_uri") or str(ref_dir),
        "reference_rows": len(ref.labels),
        "encoder": encoder,
        "rows_embedded": len(texts),
        "tests": tests,
        "reasons": reasons,
        "plots": plot_uris,
    }
    ctx.storage.write_text(summary["report_uri"], json.dumps(summary, indent=2, default=str))
    _log_mlflow(ctx, summary, plot_dir)
    return summary


def _int_tag(champion: Champion | None, key: str) -> int | None:
    if champion is None or champion.tags.get(key) in (None, ""):
        return None
    try:
        return int(float(champion.tags[key]))
    except ValueError:
        return None


def _reference_dir(ctx: StepContext, champion: Champion | None, tmp: Path) -> Path | None:
    uri = ctx.get("reference_uri")
    if uri:
        return ctx.storage.local_dir(uri, tmp, what="drift reference")
    if champion is None:
        return None
    ref_dir = champion.reference_dir
    if not (ref_dir / "reference.npz").is_file():
        raise FileNotFoundError(
            f"champion version {champion.version} has no drift reference at {str(ref_dir)!r}; "
            "pass --input reference_uri=... or re-register the champion with bundle/reference/"
        )
    return ref_dir


def _quality(champion: Champion | None, sample: pd.DataFrame, settings: Settings) -> dict[str, Any]:
    """The champion's macro-F1 on the labelled batch sample against its recorded ``eval.macro_f1``."""
    cfg = settings.drift
    base = {
        "statistic": None,
        "p_value": None,
        "threshold": cfg.quality_drop_moderate,
        "severe_threshold": cfg.quality_drop_severe,
        "drifted": False,
        "description": "champion macro-F1 at evaluation minus its macro-F1 on the batch",
    }
    if champion is None:
        return {**base, "skipped": "no champion"}
    recorded = champion.metric(QUALITY_TAG)
    if recorded is None:
        return {**base, "skipped": f"champion version {champion.version} has no tag {QUALITY_TAG!r}"}
    from sklearn.metrics import f1_score  # heavy (sklearn): imported when used

    text_col, label_col = settings.data.text_column, settings.data.label_column
    # The bundle's ONNX graph, tokenizer and labels: never the pickled pyfunc (see pipelines.champion).
    predicted = champion.predictor().predict(sample[text_col].astype(str).tolist())
    y_pred = predicted["label"].astype(str).tolist()
    y_true = sample[label_col].astype(str).tolist()
    # Macro over the classes present in the batch: a class the batch lacks says nothing about the model.
    batch_f1 = float(f1_score(y_true, y_pred, labels=sorted(set(y_true)), average="macro", zero_division=0))
    drop = recorded - batch_f1
    return {
        **base,
        "statistic": drop,
        "drifted": drop >= cfg.quality_drop_moderate,
        "batch_macro_f1": batch_f1,
        "champion_macro_f1": recorded,
        "rows": len(y_true),
    }


def _plots(
    ref: Reference, emb: np.ndarray, labels: list[str], lengths: np.ndarray, settings: Settings, out: Path
) -> dict[str, Path]:
    """PCA projection of reference vs batch embeddings, label shares, text lengths; PNG files in ``out``."""
    import matplotlib  # heavy (matplotlib): imported when used

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy (matplotlib): imported when used
    import numpy as np  # heavy (numpy): imported when used
    from sklearn.decomposition import PCA  # heavy (sklearn): imported when used

    out.mkdir(parents=True, exist_ok=True)
    seed = settings.drift.seed
    ref_emb, batch_emb = detectors.subsample(ref.embeddings, 1000, seed), detectors.subsample(emb, 1000, seed + 1)
    pca = PCA(n_components=2, random_state=seed).fit(np.vstack([ref_emb, batch_emb]))
    paths: dict[str, Path] = {}

    fig, ax = plt.subplots(figsize=(6, 5))
    for data, name, color in ((ref_emb, "reference", "tab:blue"), (batch_emb, "batch", "tab:orange")):
        xy = pca.transform(data)
        ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.4, label=f"{name} ({len(data)})", color=color)
    ax.set_title("Sentence embeddings, PCA projection")
    ax.set_xlabel(f"PC1 ({pca.explained_variance_ratio_[0]:.0%})")
    ax.set_ylabel(f"PC2 ({pca.explained_variance_ratio_[1]:.0%})")
    ax.legend()
    paths["embedding_pca"] = report.save_figure(fig, out / "embedding_pca.png")

    classes = sorted(set(ref.labels) | set(labels) | set(settings.data.labels))
    ref_share = [ref.labels.count(c) / max(len(ref.labels), 1) for c in classes]
    batch_share = [labels.count(c) / max(len(labels), 1) for c in classes]
    fig, ax = plt.subplots(figsize=(6, 4))
    pos = np.arange(len(classes))
    ax.bar(pos - 0.2, ref_share, width=0.4, label="reference")
    ax.bar(pos + 0.2, batch_share, width=0.4, label="batch")
    ax.set_xticks(pos, classes)
    ax.set_ylabel("share of rows")
    ax.set_title("Label mix")
    ax.legend()
    paths["labels"] = report.save_figure(fig, out / "label_histogram.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.histogram_bin_edges(np.concatenate([np.asarray(ref.lengths), lengths]), bins=40)
    ax.hist(ref.lengths, bins=bins, alpha=0.5, density=True, label="reference")
    ax.hist(lengths, bins=bins, alpha=0.5, density=True, label="batch")
    ax.set_xlabel("characters")
    ax.set_title("Text length")
    ax.legend()
    paths["lengths"] = report.save_figure(fig, out / "length_histogram.png")
    return paths


def _log_mlflow(ctx: StepContext, summary: dict[str, Any], plot_dir: Path) -> None:
    import mlflow  # heavy (mlflow): imported when used

    metrics = {}
    for name, test in summary["tests"].items():
        for key in ("statistic", "p_value"):
            if isinstance(test.get(key), (int, float)):
                metrics[f"drift.{name}.{key}"] = float(test[key])
    with step_run(ctx):
        mlflow.log_metrics(metrics)
        mlflow.set_tags(
            {
                "drift.severity": summary["severity"],
                "drift.rows": str(summary["rows"]),
                "drift.champion_version": str(summary["champion_version"]),
            }
        )
        mlflow.log_artifacts(str(plot_dir), artifact_path="drift")
        mlflow.log_dict(summary, "drift/" + REPORT_NAME)
