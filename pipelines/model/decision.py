"""Decision offsets: a class the trained model never predicts gets its decision bias raised.

On a few hundred imbalanced rows a minority class can be learned too weakly to ever win the argmax, even with a
class-weighted loss: on the first drug-review batch (11 neutral rows of 152) the model predicted neutral for 0-1 %
of unseen reviews against 7-11 % neutral, so neutral recall was 0 on every later batch (TF-IDF with balanced
weights too). A classifier that never says "neutral" is wrong on every neutral review, whatever its other
figures; a practitioner moves the decision threshold. The rule here:

- Measure the predicted share of each class on texts the model did not learn from (the validation split and the
  hold-out, **texts only**: no label is read, so the evaluation stays label-blind).
- A *rare* class (a training share below 1 / number of classes) predicted on fewer than ``train.decision_floor``
  x its share of the training labels is *collapsed*. Common classes are never raised: on the public stream the
  driverless fine-tune under-predicted neutral, 74 % of its training rows (0.25 of unseen texts), and raising it
  (+3.18) made the model answer neutral to every coachella tweet, 13.2 macro-F1 against 31.2 without the offset.
  That is matching the training prior, which a shifting label mix punishes; a rare class the model never predicts
  is the failure this repairs.
  Raise its bias by the smallest amount that makes it predicted on its training share of those texts (a quantile
  of its decision margin), then look again (raising one class takes rows from the others); at most one round per
  class.
- Classes that are not collapsed are left alone; ``train.decision_floor: 0`` turns the rule off.

The offsets are added to the bias of the classification layer, so the saved model, its ONNX export and every
server apply them; they are reported in the train step's metrics (``decision_offset_<label>``) and in MLflow.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from pipelines.model.modeling import torch_logits

log = logging.getLogger(__name__)


def predicted_shares(logits: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The share of rows whose argmax of ``logits + offsets`` is each class."""
    k = logits.shape[1]
    return np.bincount((logits + offsets).argmax(1), minlength=k) / max(len(logits), 1)


def collapsed_class_offsets(logits: np.ndarray, prior: np.ndarray, floor: float) -> np.ndarray:
    """Per-class offsets that bring every collapsed class up to its prior share of ``logits``' rows.

    Args:
        logits: (rows, classes) scores on texts the model did not learn from.
        prior: each class's share of the training labels (0 for a class absent from them: never raised).
        floor: a rare class (``prior`` below 1 / classes) predicted on fewer than ``floor * prior`` of the rows is
            raised; 0 turns the rule off.

    Returns:
        Offsets to add to the logits (zeros when nothing is collapsed).
    """
    k = logits.shape[1]
    offsets = np.zeros(k, dtype=np.float64)
    if floor <= 0 or len(logits) == 0:
        return offsets
    logits = logits.astype(np.float64)
    raised: set[int] = set()
    for _ in range(k):
        shares = predicted_shares(logits, offsets)
        ratio = np.full(k, np.inf)
        for c in range(k):
            if 0 < prior[c] < 1 / k and c not in raised:
                ratio[c] = shares[c] / prior[c]
        c = int(ratio.argmin())
        if ratio[c] >= floor:
            break
        shifted = logits + offsets
        rival = np.delete(shifted, c, axis=1).max(1)
        margin = np.sort(rival - shifted[:, c])  # how much class c must rise to win each row
        need = min(len(margin), max(1, math.ceil(prior[c] * len(margin))))
        # the threshold halfway between the last row the class must win and the first it need not
        lo = float(margin[need - 1])
        hi = float(margin[need]) if need < len(margin) else lo + 1.0
        offsets[c] += max(0.0, (lo + hi) / 2 if hi > lo else lo + 1e-6)
        raised.add(c)
    return offsets


def output_layer(model: Any) -> Any:
    """The classification layer: the last linear layer with one output per label and a bias."""
    import torch  # heavy: seconds to import

    num_labels = model.config.num_labels
    layers = [
        m
        for m in model.modules()
        if isinstance(m, torch.nn.Linear) and m.out_features == num_labels and m.bias is not None
    ]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no linear output layer with {num_labels} outputs and a bias")
    return layers[-1]


def calibrate(
    model: Any, tokenizer: Any, texts: list[str], prior: np.ndarray, floor: float, max_length: int
) -> np.ndarray:
    """Raise the bias of ``model``'s collapsed classes in place (see the module docstring); return the offsets."""
    import torch  # heavy: seconds to import

    if floor <= 0 or not texts:
        return np.zeros(len(prior))
    layer = output_layer(model)
    logits = torch_logits(model, tokenizer, texts, max_length, 32)
    offsets = collapsed_class_offsets(logits, prior, floor)
    if offsets.any():
        with torch.no_grad():
            layer.bias.add_(torch.as_tensor(offsets, dtype=layer.bias.dtype, device=layer.bias.device))
        log.info(
            "decision offsets %s on %d unseen texts: predicted shares %s -> %s (training shares %s)",
            np.round(offsets, 3).tolist(),
            len(texts),
            np.round(predicted_shares(logits, np.zeros_like(offsets)), 3).tolist(),
            np.round(predicted_shares(logits, offsets), 3).tolist(),
            np.round(prior, 3).tolist(),
        )
    return offsets
