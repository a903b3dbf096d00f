"""Test doubles of the served artifact: MLflow pyfunc models with a ``bundle/`` whose answers are known.

``save_served`` writes a pyfunc model folder (``mlflow.pyfunc.save_model``) that predicts from a text -> label
table, falling back to a TF-IDF + logistic regression pipeline (when given) or a default label, and returns
``label`` plus ``prob_<label>`` columns as the compress step's model does. Its bundle holds a ``model.onnx`` of a
chosen size (any bytes: only its size is gated), ``fp32/``, ``reference/`` and the table (``table.json``).

The pipeline scores a served model from its bundle's ONNX graph (:func:`pipelines.champion.load_predictor`), never
through the pickled pyfunc, and a double's ``model.onnx`` is no graph. Tests that run evaluate on doubles therefore
enter :func:`table_doubles`: while it is active, ``load_predictor`` answers a bundle that holds ``table.json`` with
:class:`TablePredictor` (the same table, read as JSON, no pickle but the test's own optional fallback) and hands
every other bundle to the real loader. ``save_onnx_served`` writes a served folder with a real, tiny ONNX bundle
for the tests that prove the real path.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest

LABELS = ["negative", "neutral", "positive"]


class TablePredictor:
    """A double's bundle as a predictor: ``table[text]``, else the sklearn fallback, else ``default``.

    Its ``predict`` takes what :class:`pipelines.serving.OnnxPredictor`'s does (a DataFrame with ``text``, a list)
    and returns the same columns.
    """

    def __init__(self, bundle: str | Path) -> None:
        bundle = Path(bundle)
        spec = json.loads((bundle / "table.json").read_text())
        self.labels = spec["labels"]
        self.table = spec["table"]
        self.default = spec["default"]
        fallback = bundle / "fallback.pkl"  # the test's own sklearn pipeline, written by save_served
        self.fallback = pickle.loads(fallback.read_bytes()) if fallback.is_file() else None

    def predict(self, model_input: Any) -> pd.DataFrame:
        texts = model_input["text"].astype(str).tolist() if isinstance(model_input, pd.DataFrame) else list(model_input)
        missing = [t for t in texts if t not in self.table]
        guessed = {}
        if missing and self.fallback is not None:
            guessed = dict(zip(missing, self.fallback.predict(missing), strict=True))
        labels = [self.table.get(t) or guessed.get(t) or self.default for t in texts]
        out = pd.DataFrame({"label": labels})
        for lab in self.labels:
            out[f"prob_{lab}"] = np.where(out["label"] == lab, 0.8, 0.2 / (len(self.labels) - 1))
        return out


class TableModel(mlflow.pyfunc.PythonModel):
    """The served pyfunc of a double (for tests that load it as ``mlflow models serve`` would): a TablePredictor."""

    def load_context(self, context):
        self.predictor = TablePredictor(context.artifacts["bundle"])

    def predict(self, context, model_input, params=None):
        return self.predictor.predict(model_input)


@contextlib.contextmanager
def table_doubles() -> Iterator[None]:
    """While active, ``pipelines.champion.load_predictor`` loads a double's bundle (one with ``table.json``) as a
    :class:`TablePredictor`; any other bundle goes to the real loader, so a real ONNX bundle is still scored as in
    production (and a corrupt one still fails)."""
    import pipelines.champion as champion_mod

    real = champion_mod.load_predictor

    def load(model_dir: str | Path, what: str = "the served model") -> Any:
        try:
            bundle = champion_mod.find_bundle(model_dir)
        except FileNotFoundError:
            bundle = None
        if bundle is not None and (bundle / "table.json").is_file():
            return TablePredictor(bundle)
        return real(model_dir, what)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(champion_mod, "load_predictor", load)
        yield


def save_served(
    path: Path,
    table: dict[str, str] | None = None,
    default: str = "positive",
    onnx_bytes: int = 1024,
    fallback: Any = None,
    labels: list[str] = LABELS,
) -> Path:
    """Write a served pyfunc model folder at ``path`` and return it."""
    bundle = path.parent / f"{path.name}-src" / "bundle"  # MLflow keeps the folder name under artifacts/
    (bundle / "fp32").mkdir(parents=True)
    (bundle / "reference").mkdir()
    (bundle / "fp32" / "config.json").write_text("{}")
    (bundle / "reference" / "reference.json").write_text("{}")
    (bundle / "model.onnx").write_bytes(b"\0" * onnx_bytes)
    (bundle / "labels.json").write_text(json.dumps(labels))
    (bundle / "table.json").write_text(json.dumps({"labels": labels, "table": table or {}, "default": default}))
    if fallback is not None:
        (bundle / "fallback.pkl").write_bytes(pickle.dumps(fallback))
    mlflow.pyfunc.save_model(
        str(path), python_model=TableModel(), artifacts={"bundle": str(bundle)}, pip_requirements=["mlflow"]
    )
    return path


def onnx_bundle(bundle: Path, weights: Sequence[float], labels: list[str] = LABELS) -> Path:
    """A real, loadable bundle at ``bundle``: logits = (number of tokens) x ``weights``, so every text gets the label
    of the largest weight. A word-level tokenizer (every word is [UNK]), a three-node ONNX graph, labels, serving
    config, ``fp32/`` and ``reference/``; built in milliseconds."""
    import onnx
    from onnx import TensorProto, helper
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    (bundle / "tokenizer").mkdir(parents=True)
    (bundle / "fp32").mkdir()
    (bundle / "reference").mkdir()
    (bundle / "fp32" / "config.json").write_text("{}")
    (bundle / "reference" / "reference.json").write_text("{}")
    tok = Tokenizer(WordLevel({"[PAD]": 0, "[UNK]": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    tok.save(str(bundle / "tokenizer" / "tokenizer.json"))
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
            helper.make_node("ReduceSum", ["mask_f", "axes"], ["count"], keepdims=1),
            helper.make_node("MatMul", ["count", "w"], ["logits"]),
        ],
        "token_count",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["n", "l"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["n", "l"]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", len(labels)])],
        initializer=[
            helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
            helper.make_tensor("w", TensorProto.FLOAT, [1, len(labels)], [float(w) for w in weights]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(bundle / "model.onnx"))
    (bundle / "labels.json").write_text(json.dumps(labels))
    (bundle / "serving.json").write_text(json.dumps({"max_length": 32, "batch_size": 16, "pad_id": 0}))
    return bundle


def bow_bundle(
    bundle: Path,
    texts: Sequence[str],
    labels: Sequence[str],
    vocab_size: int = 3000,
    max_length: int = 256,
    C: float = 20.0,  # noqa: N803 - sklearn's name
) -> Path:
    """A real bag-of-words classifier as a served bundle at ``bundle``, fitted on ``texts`` / ``labels`` in a second.

    A lower-cased word-level tokenizer over the ``vocab_size`` most frequent words of ``texts`` (others are [UNK]),
    and an ONNX graph of a logistic regression (sklearn, fitted here) on the mean one-hot vector of the tokens:
    logits = mean of the rows of W picked by the tokens + b. Text from another domain is mostly [UNK], so the model's
    predictions there lean on the [UNK] weights, and its macro-F1 falls, as a real model's does. Classes are weighted
    (``class_weight="balanced"``), so that all three are predicted. Labels must be :data:`LABELS`."""
    from collections import Counter

    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from sklearn.linear_model import LogisticRegression
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.normalizers import Lowercase
    from tokenizers.pre_tokenizers import Whitespace

    pre = Whitespace()
    counts = Counter(w for t in texts for w, _ in pre.pre_tokenize_str(str(t).lower()))
    vocab = {"[PAD]": 0, "[UNK]": 1}
    for word, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:vocab_size]:
        vocab[word] = len(vocab)
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = Lowercase()
    tok.pre_tokenizer = Whitespace()
    tok.enable_truncation(max_length=max_length)
    features = np.zeros((len(texts), len(vocab)), dtype=np.float32)
    for i, enc in enumerate(tok.encode_batch([str(t) for t in texts])):
        for j in enc.ids:
            features[i, j] += 1.0 / max(len(enc.ids), 1)
    clf = LogisticRegression(max_iter=3000, C=C, class_weight="balanced").fit(features, list(labels))
    assert list(clf.classes_) == LABELS, clf.classes_
    tok.no_truncation()
    (bundle / "tokenizer").mkdir(parents=True)
    (bundle / "fp32").mkdir()
    (bundle / "fp32" / "config.json").write_text("{}")
    tok.save(str(bundle / "tokenizer" / "tokenizer.json"))
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["w", "input_ids"], ["rows"]),  # (n, l, classes)
            helper.make_node("Cast", ["attention_mask"], ["mask"], to=f),
            helper.make_node("Unsqueeze", ["mask", "axis2"], ["mask3"]),
            helper.make_node("Mul", ["rows", "mask3"], ["kept"]),
            helper.make_node("ReduceSum", ["kept", "axis1"], ["total"], keepdims=0),
            helper.make_node("ReduceSum", ["mask", "axis1"], ["count"], keepdims=1),
            helper.make_node("Max", ["count", "one"], ["count1"]),
            helper.make_node("Div", ["total", "count1"], ["mean"]),
            helper.make_node("Add", ["mean", "b"], ["logits"]),
        ],
        "bag_of_words",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["n", "l"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["n", "l"]),
        ],
        [helper.make_tensor_value_info("logits", f, ["n", len(LABELS)])],
        initializer=[
            numpy_helper.from_array(clf.coef_.T.astype(np.float32), "w"),
            numpy_helper.from_array(clf.intercept_.astype(np.float32), "b"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
            numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
            numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(bundle / "model.onnx"))
    (bundle / "labels.json").write_text(json.dumps(LABELS))
    (bundle / "serving.json").write_text(json.dumps({"max_length": max_length, "batch_size": 32, "pad_id": 0}))
    return bundle


def marker_pickle(marker: Path) -> bytes:
    """A pickle whose loading creates ``marker``: what a planted ``python_model.pkl`` could run."""

    class Plant:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return pickle.dumps(Plant())


class _NeverLoaded(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        raise AssertionError("the pickled pyfunc was loaded instead of the bundle")


def save_onnx_served(path: Path, weights: Sequence[float], marker: Path) -> Path:
    """A served pyfunc folder at ``path`` whose bundle is a real :func:`onnx_bundle` and whose ``python_model.pkl``
    is :func:`marker_pickle` (``marker`` appears if anything unpickles it); returns ``path``."""
    bundle = onnx_bundle(path.parent / f"{path.name}-src" / "bundle", weights)
    mlflow.pyfunc.save_model(
        str(path), python_model=_NeverLoaded(), artifacts={"bundle": str(bundle)}, pip_requirements=["mlflow"]
    )
    pkl = path / "python_model.pkl"
    assert pkl.is_file(), f"no python_model.pkl in {path}: has MLflow's pyfunc layout changed?"
    pkl.write_bytes(marker_pickle(marker))
    return path


def corrupt(labels: np.ndarray, rate: float, seed: int, mask: np.ndarray | None = None) -> np.ndarray:
    """A copy of ``labels`` where a ``rate`` share of the rows (within ``mask``) gets another label."""
    rng = np.random.default_rng(seed)
    out = np.asarray(labels, dtype=object).copy()
    pick = rng.random(len(out)) < rate
    if mask is not None:
        pick &= mask
    for i in np.flatnonzero(pick):
        out[i] = LABELS[(LABELS.index(out[i]) + 1 + int(rng.integers(0, 2))) % len(LABELS)]
    return out


def register_champion(settings, served_dir: Path, run_name: str = "champion") -> str:
    """Register ``served_dir`` directly with the MLflow client and give it the champion alias; returns the version.

    Independent of ``pipelines.steps.register``, so the evaluate tests do not depend on it.
    """
    from pipelines.io.tracking import configure, experiment_id

    client = configure(settings)
    exp = experiment_id(settings)
    run = client.create_run(exp, tags={"mlflow.runName": run_name})
    client.log_artifacts(run.info.run_id, str(served_dir), "model")
    client.set_terminated(run.info.run_id)
    name = settings.registry.model_name
    try:
        client.create_registered_model(name)
    except mlflow.exceptions.MlflowException:
        pass
    mv = client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    client.set_registered_model_alias(name, "champion", mv.version)
    return str(mv.version)


def make_registry_settings(tmp_path: Path, **overrides):
    """Settings on a temporary artifact root and SQLite MLflow store, as conftest's ``make_settings`` builds them,
    without the tiny BERT (these tests need no encoder, and building it costs seconds)."""
    from pipelines.config import get_settings

    base = {
        "paths__artifact_root": str(tmp_path / "var"),
        "mlflow__tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    base.update(overrides)
    return get_settings(**base)


def add_version(settings, served_dir: Path, alias: str | None = None) -> str:
    """Register ``served_dir`` as a new version with the MLflow client (optionally with an alias and the matching
    stage); returns the version. For tests of the champion moves, which do not need the register step."""
    import warnings

    from pipelines.io.tracking import configure, experiment_id

    client = configure(settings)
    run = client.create_run(experiment_id(settings))
    client.log_artifacts(run.info.run_id, str(served_dir), "model")
    client.set_terminated(run.info.run_id)
    name = settings.registry.model_name
    try:
        client.create_registered_model(name)
    except mlflow.exceptions.MlflowException:
        pass
    mv = client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    if alias:
        client.set_registered_model_alias(name, alias, mv.version)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            stage = {"champion": "Production", "challenger": "Staging"}[alias]
            client.transition_model_version_stage(name, mv.version, stage)
    return str(mv.version)


def registry_state(settings) -> dict[str, Any]:
    """Aliases and stages of every version: ``{"champion": v, "challenger": v, "stages": {v: stage}}``."""
    from pipelines.io.tracking import configure

    client = configure(settings)
    name = settings.registry.model_name
    versions = client.search_model_versions(f"name='{name}'")
    state: dict[str, Any] = {"stages": {str(mv.version): mv.current_stage for mv in versions}}
    for alias in ("champion", "challenger"):
        # search_model_versions leaves aliases out on the SQL store; get_model_version lists them.
        holders = [v for v in state["stages"] if alias in client.get_model_version(name, v).aliases]
        assert len(holders) <= 1, f"alias {alias} on {holders}"
        state[alias] = holders[0] if holders else None
    production = [v for v, stage in state["stages"].items() if stage == "Production"]
    assert production == ([state["champion"]] if state["champion"] else []), (production, state)
    return state
