"""The drift detectors shared by the drift step (a labelled batch against the champion's reference) and the
monitor step (served traffic against it): alibi-detect tests on embeddings, labels and lengths, and the severity
rule that rates them. Each test returns a dict with its statistic, p-value, threshold and whether it fired.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pipelines.model.encoders import resolve_model_path

if TYPE_CHECKING:
    import numpy as np

    from pipelines.config import DriftSettings, Settings
    from pipelines.data.reference import Reference

log = logging.getLogger(__name__)


def rate(tests: dict[str, dict[str, Any]], cfg: DriftSettings) -> tuple[str, list[str]]:
    """Apply the severity rule to test results.

    Args:
        tests: results as produced by this module (``mmd``, ``ks_embedding``, ``label``, ``length``, ``quality``).
        cfg: the drift settings holding the thresholds.

    Returns:
        (severity, reasons): severity in none|moderate|severe, and one human-readable line per condition that fired.
    """
    severe: list[str] = []
    moderate: list[str] = []
    mmd, ks, quality = tests.get("mmd", {}), tests.get("ks_embedding", {}), tests.get("quality", {})
    if mmd.get("drifted"):
        line = f"embedding MMD p={mmd['p_value']:.3g} < {mmd['threshold']} (distance {mmd['statistic']:.4f})"
        if mmd["statistic"] >= cfg.mmd_severe_distance:
            severe.append(f"{line}, distance >= {cfg.mmd_severe_distance}")
        else:
            moderate.append(line)
    if ks.get("drifted"):
        line = (
            f"embedding KS: {ks['drifted_dims']} of {ks['dims']} dimensions drifted "
            f"(share {ks['statistic']:.3f}, {ks['correction']} p < {ks['threshold']:.3g})"
        )
        (severe if ks["statistic"] >= cfg.ks_severe_share else moderate).append(
            line + (f" >= {cfg.ks_severe_share}" if ks["statistic"] >= cfg.ks_severe_share else "")
        )
    for name, what in (("label", "label drift"), ("length", "text length drift")):
        test = tests.get(name, {})
        if test.get("drifted"):
            moderate.append(f"{what} p={test['p_value']:.3g} < {test['threshold']} (statistic {test['statistic']:.3g})")
    if quality.get("drifted"):
        line = (
            f"champion macro-F1 on the batch {quality['batch_macro_f1']:.3f} vs {quality['champion_macro_f1']:.3f} "
            f"at evaluation (drop {quality['statistic']:.3f}"
        )
        if quality["statistic"] >= cfg.quality_drop_severe:
            severe.append(f"{line} >= {cfg.quality_drop_severe})")
        else:
            moderate.append(f"{line} >= {cfg.quality_drop_moderate})")
    return worst_level([("severe", severe), ("moderate", moderate)], calm="none")


def worst_level(levels: list[tuple[str, list[str]]], *, calm: str) -> tuple[str, list[str]]:
    """The most serious level that has reasons (``levels`` are listed most serious first) and the reasons of it and
    every level below it; ``(calm, [])`` when none has any. The drift and monitor ratings both end with it."""
    for at, (level, reasons) in enumerate(levels):
        if reasons:
            return level, [reason for _, below in levels[at:] for reason in below]
    return calm, []


def capped_reference(ref: Reference, cap: int, seed: int) -> Reference:
    import numpy as np  # heavy (numpy): imported when used

    n = len(ref.labels)
    if n <= cap:
        return ref
    idx = np.sort(np.random.default_rng(seed).choice(n, size=cap, replace=False))
    ref.embeddings = ref.embeddings[idx]
    ref.labels = [ref.labels[i] for i in idx]
    ref.lengths = np.asarray(ref.lengths)[idx]
    return ref


def encoder_for(ref: Reference, settings: Settings) -> str:
    """The encoder to embed the batch with: the one that built the reference (same embedding space)."""
    configured = settings.drift.encoder
    if not ref.encoder or ref.encoder == configured:
        return configured
    try:
        resolve_model_path(ref.encoder)
    except FileNotFoundError:
        raise ValueError(
            f"the reference was embedded with encoder {ref.encoder!r}, which is not available here, and "
            f"drift.encoder={configured!r} would embed the batch in another space; install that encoder or "
            "rebuild the reference with the configured one"
        ) from None
    log.warning("drift: reference built with encoder %r; using it instead of drift.encoder=%r", ref.encoder, configured)
    return ref.encoder


def subsample(x: np.ndarray, cap: int, seed: int) -> np.ndarray:
    import numpy as np  # heavy (numpy): imported when used

    if len(x) <= cap:
        return x
    return x[np.sort(np.random.default_rng(seed).choice(len(x), size=cap, replace=False))]


def mmd(ref: np.ndarray, emb: np.ndarray, cfg: DriftSettings) -> dict[str, Any]:
    import numpy as np  # heavy (numpy): imported when used
    import torch  # heavy (torch): imported when used
    from alibi_detect.cd import MMDDrift  # heavy (alibi_detect): imported when used

    x_ref = subsample(ref.astype(np.float32), cfg.mmd_max_rows, cfg.seed)
    x = subsample(emb.astype(np.float32), cfg.mmd_max_rows, cfg.seed + 1)
    detector = MMDDrift(
        x_ref, backend="pytorch", p_val=cfg.p_threshold, n_permutations=cfg.mmd_permutations, device="cpu"
    )
    torch.manual_seed(cfg.seed)  # the permutations are drawn from torch's generator
    data = detector.predict(x)["data"]
    return {
        "statistic": float(data["distance"]),
        "p_value": float(data["p_val"]),
        "threshold": cfg.p_threshold,
        "drifted": bool(data["is_drift"]),
        "distance_threshold": float(data["distance_threshold"]),
        "severe_distance": cfg.mmd_severe_distance,
        "reference_rows": int(len(x_ref)),
        "batch_rows": int(len(x)),
        "permutations": cfg.mmd_permutations,
        "description": "squared MMD (Gaussian kernel, median-heuristic bandwidth) between sentence embeddings",
    }


def ks_embedding(ref: np.ndarray, emb: np.ndarray, cfg: DriftSettings) -> dict[str, Any]:
    import numpy as np  # heavy (numpy): imported when used
    from alibi_detect.cd import KSDrift  # heavy (alibi_detect): imported when used

    data = KSDrift(ref, p_val=cfg.p_threshold, correction=cfg.ks_correction).predict(emb, drift_type="feature")["data"]
    p_values = np.asarray(data["p_val"], dtype=np.float64)
    if cfg.ks_correction == "bonferroni":
        threshold = cfg.p_threshold / len(p_values)
        drifted_mask = p_values < threshold
    else:  # fdr: Benjamini-Hochberg over the dimensions
        from alibi_detect.utils.statstest import fdr  # heavy (alibi_detect): imported when used

        any_drift, thresholds = fdr(p_values, q_val=cfg.p_threshold)
        # With discoveries fdr returns the cut-off; without, the per-rank line, whose smallest value is q / n.
        threshold = float(np.min(thresholds))
        drifted_mask = p_values <= threshold if any_drift else np.zeros(len(p_values), dtype=bool)
    share = float(drifted_mask.mean())
    return {
        "statistic": share,
        "p_value": float(p_values.min()),
        "threshold": float(threshold),
        "drifted": bool(drifted_mask.any()),
        "drifted_dims": int(drifted_mask.sum()),
        "dims": int(len(p_values)),
        "correction": cfg.ks_correction,
        "severe_share": cfg.ks_severe_share,
        "max_ks_distance": float(np.max(data["distance"])),
        "description": "share of embedding dimensions whose two-sample KS test drifts after correction",
    }


def label_mix(ref_labels: list[str], labels: list[str], cfg: DriftSettings) -> dict[str, Any]:
    import numpy as np  # heavy (numpy): imported when used
    from alibi_detect.cd import ChiSquareDrift  # heavy (alibi_detect): imported when used

    categories = sorted(set(ref_labels) | set(labels))
    ref_counts = {c: ref_labels.count(c) for c in categories}
    batch_counts = {c: labels.count(c) for c in categories}
    base = {
        "threshold": cfg.label_p_threshold,
        "reference_counts": ref_counts,
        "batch_counts": batch_counts,
        "description": "chi-square test of the label mix",
    }
    if len(categories) < 2:
        return {**base, "statistic": 0.0, "p_value": 1.0, "drifted": False}
    code = {c: i for i, c in enumerate(categories)}
    x_ref = np.array([code[c] for c in ref_labels], dtype=np.int64).reshape(-1, 1)
    x = np.array([code[c] for c in labels], dtype=np.int64).reshape(-1, 1)
    data = ChiSquareDrift(x_ref, p_val=cfg.label_p_threshold, categories_per_feature={0: len(categories)}).predict(x)[
        "data"
    ]
    p_value = float(np.asarray(data["p_val"]).ravel()[0])
    return {
        **base,
        "statistic": float(np.asarray(data["distance"]).ravel()[0]),
        "p_value": p_value,
        "drifted": p_value < cfg.label_p_threshold,
    }


def length(ref_lengths: np.ndarray, lengths: np.ndarray, cfg: DriftSettings) -> dict[str, Any]:
    import numpy as np  # heavy (numpy): imported when used
    from alibi_detect.cd import KSDrift  # heavy (alibi_detect): imported when used

    x_ref = ref_lengths.astype(np.float32).reshape(-1, 1)
    data = KSDrift(x_ref, p_val=cfg.length_p_threshold).predict(lengths.astype(np.float32).reshape(-1, 1))["data"]
    p_value = float(np.asarray(data["p_val"]).ravel()[0])
    return {
        "statistic": float(np.asarray(data["distance"]).ravel()[0]),
        "p_value": p_value,
        "threshold": cfg.length_p_threshold,
        "drifted": p_value < cfg.length_p_threshold,
        "reference_median": float(np.median(ref_lengths)),
        "batch_median": float(np.median(lengths)),
        "description": "two-sample KS test of text length in characters",
    }
