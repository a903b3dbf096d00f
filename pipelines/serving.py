"""Inference on the served bundle: onnxruntime + the fast tokenizer, in length-sorted batches.

This module is copied into every served MLflow model (as ``code/pipelines/serving.py``), so that
``mlflow models predict`` / ``serve`` can load the model without this repository. It therefore imports only
the standard library, numpy, pandas, onnxruntime, tokenizers and mlflow, never other ``pipelines`` modules.

A bundle folder holds ``model.onnx``, ``tokenizer/`` (with ``tokenizer.json``), ``labels.json`` and
``serving.json`` (max length, batch size, the padding token); see :mod:`pipelines.champion` for the rest.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

try:  # mlflow is present wherever a served model is loaded; the plain predictor works without it
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover - only in an environment without mlflow
    PythonModel = object  # type: ignore[assignment,misc]

SERVING_CONFIG = "serving.json"


class OnnxPredictor:
    """Class probabilities from a bundle's ONNX graph.

    Texts are tokenised once, sorted by token count and cut into batches of ``batch_size``, so each batch is
    padded only to its own longest row; results come back in input order.

    Args:
        bundle_dir: the bundle folder.
        model_file: the ONNX file inside it (``model.onnx``, the served graph, by default).
        threads: onnxruntime intra-op threads; 0 lets onnxruntime choose.
        sort_by_length: False batches in input order (for measuring what the sorting brings).
    """

    def __init__(
        self, bundle_dir: str | Path, model_file: str = "model.onnx", threads: int = 0, sort_by_length: bool = True
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        bundle = Path(bundle_dir)
        config = json.loads((bundle / SERVING_CONFIG).read_text())
        self.labels: list[str] = json.loads((bundle / "labels.json").read_text())
        self.max_length = int(config["max_length"])
        self.batch_size = int(config["batch_size"])
        self.sort_by_length = sort_by_length
        self.tokenizer = Tokenizer.from_file(str(bundle / "tokenizer" / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.max_length)
        self.pad_id = int(config["pad_id"])
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(bundle / model_file), options, providers=["CPUExecutionProvider"])
        self.input_names = {i.name for i in self.session.get_inputs()}

    def predict_proba(self, texts: Sequence[str]) -> Any:
        """Softmax probabilities, float32 array of shape (len(texts), n_labels), in input order."""
        import numpy as np

        texts = [str(t) for t in texts]
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        if not texts:
            return out
        encodings = self.tokenizer.encode_batch(texts)
        lengths = np.array([len(e.ids) for e in encodings])
        order = np.argsort(lengths, kind="stable") if self.sort_by_length else np.arange(len(texts))
        for start in range(0, len(texts), self.batch_size):
            idx = order[start : start + self.batch_size]
            width = int(lengths[idx].max())
            ids = np.full((len(idx), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            types = np.zeros((len(idx), width), dtype=np.int64)
            for row, i in enumerate(idx):
                n = lengths[i]
                ids[row, :n] = encodings[i].ids
                mask[row, :n] = 1
                types[row, :n] = encodings[i].type_ids
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            logits = self.session.run(["logits"], {k: v for k, v in feed.items() if k in self.input_names})[0]
            logits = logits - logits.max(axis=1, keepdims=True)
            probs = np.exp(logits)
            out[idx] = probs / probs.sum(axis=1, keepdims=True)
        return out

    def predict(self, texts: Any) -> Any:
        """A DataFrame with ``label`` and one ``prob_<label>`` column per class, in input order.

        ``texts``: whatever the served pyfunc model takes (a list of str, a DataFrame with a ``text`` column ...),
        so this predictor stands in for it wherever the pipeline scores a served model without unpickling it.
        """
        import pandas as pd

        probs = self.predict_proba(texts_from_input(texts))
        frame = pd.DataFrame({"label": [self.labels[i] for i in probs.argmax(axis=1)] if len(probs) else []})
        for j, name in enumerate(self.labels):
            frame[f"prob_{name}"] = probs[:, j].astype(float)
        return frame


def texts_from_input(model_input: Any, text_column: str = "text") -> list[str]:
    """Raw texts from a DataFrame (column ``text``, or its only column), a Series, a list or a single string.

    Raises:
        ValueError: a DataFrame has no ``text`` column and more than one column.
    """
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        if text_column in model_input.columns:
            return model_input[text_column].astype(str).tolist()
        if model_input.shape[1] == 1:
            return model_input.iloc[:, 0].astype(str).tolist()
        raise ValueError(
            f"input has columns {list(model_input.columns)!r}; expected a column {text_column!r} with raw text"
        )
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, dict) and text_column in model_input:
        value = model_input[text_column]
        return [value] if isinstance(value, str) else [str(t) for t in value]
    return [str(t) for t in model_input]


class OnnxTextClassifier(PythonModel):
    """The served MLflow pyfunc model: raw text in, ``label`` and ``prob_<label>`` columns out."""

    def load_context(self, context: Any) -> None:
        self._predictor = OnnxPredictor(context.artifacts["bundle"])

    # No type hints here: MLflow would read them as a schema; the saved signature is the schema.
    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        """Predict ``label`` and ``prob_<label>`` for a DataFrame with a ``text`` column or a list of str."""
        return self._predictor.predict(texts_from_input(model_input))
