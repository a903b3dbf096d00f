"""Paired statistics for comparing two classifiers on the same examples.

The non-inferiority gate asks "is the candidate worse than the champion by more than a margin?" on one evaluation
set. Both models predict the same rows, so the comparison is paired: a bootstrap resamples rows (not models) and
recomputes the macro-F1 of both on each resample, which gives a confidence interval of the difference that accounts
for the correlation between the two models' errors. McNemar's exact test on the discordant rows is reported beside
it as a check on accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


def _encode(labels: Sequence[str], *columns: Sequence[Any]) -> list[np.ndarray]:
    index = {label: i for i, label in enumerate(labels)}
    out = []
    for column in columns:
        values = [str(v) for v in column]
        unknown = sorted({v for v in values if v not in index})
        if unknown:
            raise ValueError(f"labels {unknown[:5]!r} are not among the known labels {list(labels)!r}")
        out.append(np.fromiter((index[v] for v in values), dtype=np.int64, count=len(values)))
    return out


def _macro_f1_from_counts(counts: np.ndarray) -> np.ndarray:
    """Macro-F1 of confusion matrices shaped (..., K, K) with rows = truth; 0 for a class with no support."""
    tp = np.diagonal(counts, axis1=-2, axis2=-1).astype(float)
    fp = counts.sum(axis=-2) - tp
    fn = counts.sum(axis=-1) - tp
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return f1.mean(axis=-1)


def macro_f1(y_true: Sequence[Any], y_pred: Sequence[Any], labels: Sequence[str]) -> float:
    """Macro-F1 over ``labels`` (a class with no true and no predicted row scores 0, as sklearn's zero_division=0).

    Args:
        y_true: true labels.
        y_pred: predicted labels, same length.
        labels: the classes to average over.

    Returns:
        The macro-averaged F1 in [0, 1].
    """
    t, p = _encode(labels, y_true, y_pred)
    k = len(labels)
    counts = np.bincount(t * k + p, minlength=k * k).reshape(k, k)
    return float(_macro_f1_from_counts(counts))


@dataclass(frozen=True)
class BootstrapResult:
    """Paired bootstrap of ``macro_f1(candidate) - macro_f1(reference)``."""

    diff: float  # on the full set
    ci_low: float
    ci_high: float
    level: float  # confidence level of the interval, e.g. 0.95
    samples: int
    candidate: float
    reference: float

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in asdict(self).items()}


def paired_bootstrap(
    y_true: Sequence[Any],
    candidate: Sequence[Any],
    reference: Sequence[Any],
    labels: Sequence[str],
    samples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> BootstrapResult:
    """Percentile confidence interval of the macro-F1 difference, resampling rows with replacement.

    Args:
        y_true: true labels.
        candidate: the candidate's predictions on the same rows.
        reference: the reference's (champion's) predictions on the same rows.
        labels: the classes.
        samples: number of bootstrap resamples.
        alpha: 1 - confidence level of the two-sided interval.
        seed: seed of the resampling, so that a rerun gives the same interval.

    Returns:
        The difference on the full set and its interval.

    Raises:
        ValueError: the inputs are empty or of different lengths, or hold unknown labels.
    """
    n = len(y_true)
    if n == 0 or len(candidate) != n or len(reference) != n:
        raise ValueError(
            f"paired_bootstrap needs equally long, non-empty inputs; got y_true={n}, "
            f"candidate={len(candidate)}, reference={len(reference)}"
        )
    t, a, b = _encode(labels, y_true, candidate, reference)
    k = len(labels)
    rng = np.random.default_rng(seed)
    diffs = np.empty(samples)
    # Chunks keep memory flat for large sets: each chunk is (rows, n) indices.
    chunk = max(1, min(samples, 2_000_000 // max(n, 1)))
    offsets_cache: dict[int, np.ndarray] = {}
    for start in range(0, samples, chunk):
        rows = min(chunk, samples - start)
        idx = rng.integers(0, n, size=(rows, n))
        if rows not in offsets_cache:
            offsets_cache[rows] = (np.arange(rows) * k * k)[:, None]
        offsets = offsets_cache[rows]
        ta = (t[idx] * k + a[idx] + offsets).ravel()
        tb = (t[idx] * k + b[idx] + offsets).ravel()
        ca = np.bincount(ta, minlength=rows * k * k).reshape(rows, k, k)
        cb = np.bincount(tb, minlength=rows * k * k).reshape(rows, k, k)
        diffs[start : start + rows] = _macro_f1_from_counts(ca) - _macro_f1_from_counts(cb)
    full_a = macro_f1(y_true, candidate, labels)
    full_b = macro_f1(y_true, reference, labels)
    low, high = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    return BootstrapResult(
        diff=full_a - full_b,
        ci_low=float(low),
        ci_high=float(high),
        level=1 - alpha,
        samples=samples,
        candidate=full_a,
        reference=full_b,
    )


@dataclass(frozen=True)
class McNemarResult:
    """McNemar's exact test on the rows where exactly one of the two models is right."""

    candidate_only: int  # rows the candidate gets right and the reference wrong
    reference_only: int  # rows the reference gets right and the candidate wrong
    p_value: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def mcnemar_exact(y_true: Sequence[Any], candidate: Sequence[Any], reference: Sequence[Any]) -> McNemarResult:
    """Two-sided exact McNemar test (a binomial test on the discordant pairs).

    Args:
        y_true: true labels.
        candidate: the candidate's predictions.
        reference: the reference's predictions.

    Returns:
        The discordant counts and the p-value (1.0 when no row is discordant).
    """
    from scipy.stats import binomtest  # heavy (scipy): imported when used

    t = np.asarray([str(v) for v in y_true])
    ok_a = np.asarray([str(v) for v in candidate]) == t
    ok_b = np.asarray([str(v) for v in reference]) == t
    b = int(np.sum(ok_a & ~ok_b))
    c = int(np.sum(~ok_a & ok_b))
    p = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5, alternative="two-sided").pvalue)
    return McNemarResult(candidate_only=b, reference_only=c, p_value=p)


#: The three outcomes of the non-inferiority check.
NI_PASS, NI_FAIL, NI_INCONCLUSIVE = "pass", "fail", "inconclusive"


@dataclass(frozen=True)
class NonInferiority:
    """The verdict of the non-inferiority check, with its evidence.

    ``outcome`` is ``pass``, ``fail`` or ``inconclusive``; ``verdict`` refines it (``better`` or ``non_inferior``
    for a pass, ``worse`` for a fail, ``inconclusive``). ``n`` is the size of the evaluation set.
    """

    outcome: str  # pass | fail | inconclusive
    verdict: str  # better | non_inferior | inconclusive | worse
    margin: float
    n: int
    bootstrap: BootstrapResult
    mcnemar: McNemarResult
    reason: str

    @property
    def passed(self) -> bool:
        """True only when non-inferiority is shown (an inconclusive result has not shown it)."""
        return self.outcome == NI_PASS

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "passed": self.passed,
            "verdict": self.verdict,
            "margin": self.margin,
            "n": self.n,
            "reason": self.reason,
            "bootstrap": self.bootstrap.as_dict(),
            "mcnemar": self.mcnemar.as_dict(),
        }


def non_inferiority(
    y_true: Sequence[Any],
    candidate: Sequence[Any],
    reference: Sequence[Any],
    labels: Sequence[str],
    margin: float,
    alpha: float = 0.05,
    samples: int = 1000,
    seed: int = 0,
) -> NonInferiority:
    """Is the candidate not worse than the reference by more than ``margin`` macro-F1?

    The rule, on the paired bootstrap interval ``[low, high]`` of ``candidate - reference`` and its point ``diff``:

    - ``low >= -margin``: **pass**, non-inferiority shown at the confidence level (verdict *better* when
      ``low > 0``, else *non_inferior*);
    - ``high < -margin`` (the whole interval below the margin) or ``diff < -margin`` (the point estimate already
      loses more than the margin): **fail**, verdict *worse*; so a clearly worse candidate fails even on a small set;
    - otherwise **inconclusive**: the interval straddles ``-margin``, i.e. the evaluation set is too small to tell
      whether the candidate is within the margin. The caller decides what that means (the evaluate step sends it to
      a human).

    Args:
        y_true: true labels.
        candidate: the candidate's predictions.
        reference: the reference's (champion's) predictions.
        labels: the classes.
        margin: the tolerated macro-F1 loss (absolute, e.g. 0.02).
        alpha: 1 - confidence level of the interval.
        samples: bootstrap resamples.
        seed: bootstrap seed.

    Returns:
        The outcome with both tests' numbers and the evaluation set size.
    """
    boot = paired_bootstrap(y_true, candidate, reference, labels, samples=samples, alpha=alpha, seed=seed)
    mc = mcnemar_exact(y_true, candidate, reference)
    n = len(y_true)
    ci = f"[{boot.ci_low:+.3f}, {boot.ci_high:+.3f}]"
    level = f"{boot.level:.0%}"
    evidence = f"macro-F1 diff {boot.diff:+.3f}, {level} CI {ci} on {n} rows"
    if boot.ci_low >= -margin:
        outcome = NI_PASS
        if boot.ci_low > 0:
            verdict, reason = "better", f"candidate better: {evidence}, above 0"
        else:
            verdict, reason = "non_inferior", f"non-inferior: {evidence}, lower end at or above -{margin:.3f}"
    elif boot.ci_high < -margin or boot.diff < -margin:
        outcome, verdict = NI_FAIL, "worse"
        why = f"whole interval below -{margin:.3f}" if boot.ci_high < -margin else f"diff below -{margin:.3f}"
        reason = f"candidate worse than champion: {evidence} ({why})"
    else:
        outcome, verdict = NI_INCONCLUSIVE, "inconclusive"
        reason = (
            f"inconclusive: {evidence} straddles -{margin:.3f}; the evaluation set ({n} rows) is too small to show "
            f"non-inferiority at a margin of {margin:.3f}"
        )
    return NonInferiority(
        outcome=outcome, verdict=verdict, margin=margin, n=n, bootstrap=boot, mcnemar=mc, reason=reason
    )
