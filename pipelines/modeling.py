"""Loading the text classifier: the base encoder with a fresh head, or a trained classifier folder.

Shared by the train and compress steps (and by distillation and the benchmarks), so that no step imports another.
Importing this module imports transformers (and torch): the steps import it where they load a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

from pipelines.encoders import resolve_model_path

if TYPE_CHECKING:
    from pipelines.config import Settings


def load_base(settings: Settings) -> tuple[Any, Any]:
    """The base encoder with a fresh classification head, and its tokenizer."""
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
    # safetensors only: a pickled pytorch_model.bin in a downloaded bundle is never loaded
    model = AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True)
    found = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if found != list(settings.data.labels):
        raise ValueError(
            f"model at {str(path)!r} predicts labels {found!r} but data.labels={settings.data.labels!r}; "
            "a label change needs action 'retrain'"
        )
    return model, AutoTokenizer.from_pretrained(path)
