"""Test doubles of the served artifact: real MLflow pyfunc models with a ``bundle/`` whose answers are known.

``save_served`` writes a pyfunc model folder (``mlflow.pyfunc.save_model``) that predicts from a text -> label
table, falling back to a TF-IDF + logistic regression pipeline (when given) or a default label, and returns
``label`` plus ``prob_<label>`` columns as the compress step's model does. Its bundle holds a ``model.onnx`` of a
chosen size (any bytes: only its size is gated), ``fp32/`` and ``reference/``.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

LABELS = ["negative", "neutral", "positive"]


class TableModel(mlflow.pyfunc.PythonModel):
    """Predicts ``table[text]``, else the sklearn fallback, else ``default``."""

    def load_context(self, context):
        bundle = Path(context.artifacts["bundle"])
        spec = json.loads((bundle / "table.json").read_text())
        self.labels = spec["labels"]
        self.table = spec["table"]
        self.default = spec["default"]
        fallback = bundle / "fallback.pkl"
        self.fallback = pickle.loads(fallback.read_bytes()) if fallback.is_file() else None

    def predict(self, context, model_input, params=None):
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

    Independent of ``pipelines.register``, so the evaluate tests do not depend on it.
    """
    from pipelines.tracking import configure, experiment_id

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

    from pipelines.tracking import configure, experiment_id

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
    from pipelines.tracking import configure

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
