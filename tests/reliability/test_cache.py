"""The champion cache: verified by content hash before every use, re-fetched when corrupt, never unpickled.

A real MLflow registry (SQLite) holds a served model folder whose bundle is loadable: a two-node ONNX graph, a
word-level tokenizer, labels and serving config, all built here in milliseconds. Each test names the fault it
injects and asserts the outcome and the state afterwards.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pipelines"))  # registry_doubles
from registry_doubles import onnx_bundle  # noqa: E402

from pipelines.champion import MANIFEST, TAG_BUNDLE_DIGEST, get_champion, tree_digest, verify_entry
from pipelines.config import get_settings
from pipelines.errors import EXIT_PERMANENT, CorruptArtifact, exit_code

LABELS = ["negative", "neutral", "positive"]


class _Served:  # the served pyfunc's class is irrelevant here: the pipeline must never load it
    pass


def _register(settings, tmp: Path, tag_digest: bool = False) -> str:
    """Register a served folder (pyfunc + bundle) as a version with the champion alias; return the version."""
    import mlflow
    from mlflow.pyfunc import PythonModel

    from pipelines.io.tracking import configure, experiment_id

    class Model(PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input

    client = configure(settings)
    bundle = onnx_bundle(tmp / "src" / "bundle", [-1.0, 0.0, 1.0])  # every text is 'positive'
    # The settings' experiment puts its artifacts under the test's folder (a new named experiment would use ./mlruns).
    with mlflow.start_run(experiment_id=experiment_id(settings)):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=Model(),
            artifacts={"bundle": str(bundle)},
            registered_model_name=settings.registry.model_name,
            pip_requirements=["mlflow"],
        )
    version = str(info.registered_model_version)
    client.set_registered_model_alias(settings.registry.model_name, "champion", version)
    if tag_digest:
        client.set_model_version_tag(settings.registry.model_name, version, TAG_BUNDLE_DIGEST, tree_digest(bundle))
    return version


@pytest.fixture
def cache_env(tmp_path, monkeypatch):
    """Settings on a temporary SQLite registry, the cache under a temporary XDG_CACHE_HOME."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    settings = get_settings(
        paths__artifact_root=str(tmp_path / "var"),
        mlflow__tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        mlflow__artifact_location=str(tmp_path / "mlruns"),
    )
    return settings, tmp_path


def _malicious_pickle(marker: Path) -> bytes:
    """A pickle whose loading creates ``marker`` (as a planted python_model.pkl would run its code)."""

    class Plant:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return pickle.dumps(Plant())


def _pkl(entry: Path) -> Path:
    found = list(entry.rglob("python_model.pkl"))
    assert found, f"no python_model.pkl under {entry}"
    return found[0]


def test_cache_entry_is_private_and_carries_a_manifest(cache_env):
    settings, tmp = cache_env
    _register(settings, tmp)
    champion = get_champion(settings)
    root = tmp / "cache" / "mlops-models"
    assert champion.model_dir.is_relative_to(root)
    assert (root.stat().st_mode & 0o777) == 0o700
    manifest = json.loads((champion.model_dir / MANIFEST).read_text())
    assert manifest["source"] == f"models:/{settings.registry.model_name}/{champion.version}"
    assert any(rel.endswith("bundle/model.onnx") for rel in manifest["files"])
    assert verify_entry(champion.model_dir) is None


def test_corrupt_cache_entry_is_fetched_again(cache_env):
    settings, tmp = cache_env
    _register(settings, tmp)
    entry = get_champion(settings).model_dir
    onnx_file = next(entry.rglob("bundle/model.onnx"))
    good = onnx_file.read_bytes()
    onnx_file.write_bytes(b"garbage" + good[7:])  # same size, other content
    assert "content changed" in verify_entry(entry)
    champion = get_champion(settings)
    assert champion.model_dir == entry
    assert onnx_file.read_bytes() == good
    assert verify_entry(entry) is None
    assert champion.predictor().predict(["good bad fine"])["label"].tolist() == ["positive"]


def test_truncated_cache_entry_without_manifest_is_fetched_again(cache_env):
    settings, tmp = cache_env
    _register(settings, tmp)
    entry = get_champion(settings).model_dir
    (entry / MANIFEST).unlink()
    next(entry.rglob("bundle/labels.json")).unlink()
    champion = get_champion(settings)
    assert verify_entry(champion.model_dir) is None
    assert json.loads(next(entry.rglob("bundle/labels.json")).read_text()) == LABELS


def test_planted_python_model_pkl_is_replaced_and_never_executed(cache_env):
    settings, tmp = cache_env
    _register(settings, tmp)
    entry = get_champion(settings).model_dir
    marker = tmp / "planted-code-ran"
    registry_pkl = _pkl(entry).read_bytes()
    _pkl(entry).write_bytes(_malicious_pickle(marker))
    champion = get_champion(settings)
    assert _pkl(champion.model_dir).read_bytes() == registry_pkl, "the planted file was not replaced"
    champion.predictor().predict(["good"])
    assert not marker.exists()


def test_planted_pickle_with_forged_manifest_is_still_never_unpickled(cache_env):
    """An attacker who can also rewrite the manifest gets a verified entry, but the pipeline never unpickles."""
    import pandas as pd

    from pipelines.champion import file_manifest
    from pipelines.steps.drift import _quality

    settings, tmp = cache_env
    version = _register(settings, tmp)
    from pipelines.io.tracking import configure

    configure(settings).set_model_version_tag(settings.registry.model_name, version, "eval.macro_f1", "0.9")
    entry = get_champion(settings).model_dir
    marker = tmp / "planted-code-ran"
    _pkl(entry).write_bytes(_malicious_pickle(marker))
    manifest = json.loads((entry / MANIFEST).read_text())
    manifest["files"] = file_manifest(entry)
    (entry / MANIFEST).write_text(json.dumps(manifest))
    champion = get_champion(settings)
    sample = pd.DataFrame({"text": ["good", "good bad fine ok"], "label": ["positive", "positive"]})
    quality = _quality(champion, sample, settings)
    assert quality["batch_macro_f1"] == 1.0
    assert not marker.exists()


def test_extra_file_in_cache_entry_is_fetched_again(cache_env):
    settings, tmp = cache_env
    _register(settings, tmp)
    entry = get_champion(settings).model_dir
    planted = next(entry.rglob("bundle")) / "fp32" / "pytorch_model.bin"
    planted.write_bytes(b"not a checkpoint")
    assert "files added" in verify_entry(entry)
    get_champion(settings)
    assert not planted.exists()


def test_symlink_in_cache_entry_is_fetched_again(cache_env):
    settings, tmp = cache_env
    _register(settings, tmp)
    entry = get_champion(settings).model_dir
    labels = next(entry.rglob("bundle/labels.json"))
    outside = tmp / "elsewhere.json"
    outside.write_text(json.dumps(["a", "b", "c"]))
    labels.unlink()
    labels.symlink_to(outside)
    get_champion(settings)
    assert not labels.is_symlink() and json.loads(labels.read_text()) == LABELS


def test_registry_digest_tag_is_checked_on_every_use(cache_env):
    settings, tmp = cache_env
    _register(settings, tmp, tag_digest=True)
    champion = get_champion(settings)
    assert verify_entry(champion.model_dir, champion.tags[TAG_BUNDLE_DIGEST]) is None
    assert verify_entry(champion.model_dir, "0" * 64) == f"bundle does not match the version's tag {TAG_BUNDLE_DIGEST}"


def test_corrupt_registered_artifact_is_a_permanent_error(cache_env):
    """The registry's own copy does not match its digest tag: re-fetching cannot help, so no retry (exit 2)."""
    from pipelines.io.tracking import configure

    settings, tmp = cache_env
    version = _register(settings, tmp, tag_digest=True)
    configure(settings).set_model_version_tag(settings.registry.model_name, version, TAG_BUNDLE_DIGEST, "f" * 64)
    with pytest.raises(CorruptArtifact, match="does not match the version's tag") as exc:
        get_champion(settings)
    assert exit_code(exc.value) == EXIT_PERMANENT
    store = tmp / "cache" / "mlops-models"
    assert not [p for p in store.rglob("*") if p.is_dir() and p.name.startswith(".")], "a partial download was left"
    assert not list(store.rglob(MANIFEST)), "a corrupt download became a cache entry"


def test_champion_bundle_that_does_not_load_is_a_permanent_error_and_dropped(cache_env):
    settings, tmp = cache_env
    _register(settings, tmp)
    champion = get_champion(settings)
    # Corrupt in the registry and the cache alike (the manifest is rewritten, as at download).
    from pipelines.champion import write_manifest

    next(champion.model_dir.rglob("bundle/model.onnx")).write_bytes(b"not onnx")
    write_manifest(champion.model_dir, "test", None)
    with pytest.raises(CorruptArtifact, match="does not load") as exc:
        champion.predictor()
    assert exit_code(exc.value) == EXIT_PERMANENT
    assert not champion.model_dir.exists(), "the corrupt entry stays and would be used again"


def test_an_entry_from_another_run_is_fetched_again(cache_env):
    """A store made anew at the same URI (rm -rf var/) numbers its versions from 1 again: the cached "version 1"
    of the old store, whole and valid, must not be served for the new one."""
    from pipelines.champion import write_manifest

    settings, tmp = cache_env
    _register(settings, tmp)
    first = get_champion(settings)
    write_manifest(first.model_dir, "models:/old/1", None, run_id="0" * 32)  # as the old store's download left it
    assert "the store was made anew" in verify_entry(first.model_dir, run_id=first.run_id)
    champion = get_champion(settings)  # fetched again
    assert json.loads((champion.model_dir / MANIFEST).read_text())["run_id"] == champion.run_id == first.run_id
    assert verify_entry(champion.model_dir, run_id=champion.run_id) is None
