"""The text classifier in PyTorch: loading the base encoder with a fresh head or a trained classifier folder, and
its fp32 logits.

Shared by the train and compress steps (and by distillation and the benchmarks), so that no step imports another.
Importing it is cheap: transformers and torch are imported inside the functions that need them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.model.encoders import resolve_model_path

if TYPE_CHECKING:
    from pipelines.config import Settings


def load_base(settings: Settings) -> tuple[Any, Any]:
    """The base encoder with a fresh classification head, and its tokenizer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed  # heavy: seconds to import

    path = resolve_model_path(settings.train.base_model)
    labels = settings.data.labels
    set_seed(settings.train.seed)  # the fresh head's initial weights
    model = AutoModelForSequenceClassification.from_pretrained(
        path,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    return model, AutoTokenizer.from_pretrained(path)


def load_classifier(path: str | Path, settings: Settings) -> tuple[Any, Any]:
    """A trained classifier folder (save_pretrained) and its tokenizer; its labels must match the settings.

    Raises:
        ValueError: the model's labels differ from ``data.labels``.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer  # heavy: seconds to import

    # safetensors only: a pickled pytorch_model.bin in a downloaded bundle is never loaded
    model = AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True)
    found = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if found != list(settings.data.labels):
        raise ValueError(
            f"model at {str(path)!r} predicts labels {found!r} but data.labels={settings.data.labels!r}; "
            "a label change needs action 'retrain'"
        )
    return model, AutoTokenizer.from_pretrained(path)


def encoded_batches(
    tokenizer: Any, texts: list[str], max_length: int, batch_size: int, tensors: str = "pt"
) -> Iterator[Any]:
    """Encodings of ``texts`` in input order, ``batch_size`` at a time, each padded to its longest."""
    for start in range(0, len(texts), batch_size):
        yield tokenizer(
            texts[start : start + batch_size],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors=tensors,
        )


def torch_logits(model: Any, tokenizer: Any, texts: list[str], max_length: int, batch_size: int) -> Any:
    """fp32 PyTorch logits (numpy), batched in input order with per-batch padding, on the model's device."""
    import numpy as np  # heavy (numpy): imported when used
    import torch  # heavy: seconds to import

    model.eval()
    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for enc in encoded_batches(tokenizer, texts, max_length, batch_size):
            out.append(model(**{k: v.to(device) for k, v in enc.items()}).logits.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.num_labels), dtype=np.float32)
