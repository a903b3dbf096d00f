"""The champion and challenger read from a real MLflow registry (SQLite): which version holds an alias, its download
with a manifest, its bundle and predictor (never the pickle), and the hashes that vouch for a downloaded folder.

The cache's fault cases (corrupt, planted, foreign entries) are in tests/reliability/test_cache.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from registry_doubles import add_version, make_registry_settings, onnx_bundle, save_onnx_served

from pipelines.champion import (
    MANIFEST,
    file_manifest,
    find_bundle,
    get_champion,
    load_predictor,
    tree_digest,
    verify_entry,
    write_manifest,
)
from pipelines.errors import CorruptArtifact


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A store whose version 1 (champion) labels every text 'positive' and version 2 (challenger) 'negative'."""
    root = tmp_path_factory.mktemp("champion")
    settings = make_registry_settings(root, registry__model_name="clf")
    marker = root / "unpickled"
    v1 = add_version(settings, save_onnx_served(root / "v1", [-1.0, 0.0, 1.0], marker), alias="champion")
    v2 = add_version(settings, save_onnx_served(root / "v2", [1.0, 0.0, -1.0], marker), alias="challenger")
    return settings, v1, v2, marker


def test_get_champion_downloads_the_alias_holder_and_scores_from_its_bundle(registry, tmp_path):
    settings, v1, _, marker = registry
    champ = get_champion(settings, dst=tmp_path / "entry")
    assert (champ.name, champ.version, champ.model_uri) == ("clf", v1, f"models:/clf/{v1}")
    assert champ.model_dir == tmp_path / "entry" and champ.bundle == find_bundle(champ.model_dir)
    assert champ.fp32_dir == champ.bundle / "fp32" and champ.reference_dir.is_dir()
    out = champ.predictor().predict(["good", "bad and worse"])
    assert out["label"].tolist() == ["positive", "positive"]
    assert not marker.exists(), "the pickled pyfunc was loaded"
    assert verify_entry(champ.model_dir, run_id=champ.run_id) is None


def test_get_champion_with_another_alias_gets_that_version(registry, tmp_path):
    settings, _, v2, _ = registry
    challenger = get_champion(settings, alias="challenger", dst=tmp_path / "c")
    assert challenger.version == v2
    assert challenger.predictor().predict(["x"])["label"].tolist() == ["negative"]


def test_get_champion_of_a_model_never_registered_is_none_and_downloads_nothing(registry, tmp_path, monkeypatch):
    settings = registry[0].with_overrides({"registry.model_name": "never-registered"})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert get_champion(settings) is None
    assert not (tmp_path / "xdg").exists()


def test_get_champion_of_a_model_without_the_alias_is_none(registry):
    settings, *_ = registry
    assert get_champion(settings, alias="no-such-alias") is None


def test_get_champion_caches_under_the_user_cache_folder_and_reuses_it(registry, tmp_path, monkeypatch):
    settings, v1, _, _ = registry
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    first = get_champion(settings)
    assert first.model_dir.is_relative_to(tmp_path / "xdg" / "mlops-models")
    assert first.model_dir.parts[-2:] == ("clf", v1)
    stamp = (first.model_dir / MANIFEST).stat().st_mtime_ns
    again = get_champion(settings)
    assert again.model_dir == first.model_dir
    assert (again.model_dir / MANIFEST).stat().st_mtime_ns == stamp  # verified, not downloaded again


def test_champion_metric_reads_numeric_tags():
    from pipelines.champion import Champion

    champ = Champion("m", "3", None, Path("/x"), tags={"eval.macro_f1": "0.61", "empty": ""})
    assert champ.metric("eval.macro_f1") == pytest.approx(0.61)
    assert champ.metric("empty") is None and champ.metric("absent") is None


def test_find_bundle_in_a_pyfunc_folder_and_its_refusal(tmp_path):
    bundle = onnx_bundle(tmp_path / "served" / "artifacts" / "bundle", [0.0, 1.0, 0.0])
    assert find_bundle(tmp_path / "served") == bundle
    (tmp_path / "plain" / "bundle").mkdir(parents=True)  # a bundle folder without its graph
    with pytest.raises(FileNotFoundError, match=r"no bundle/model.onnx under '.*plain'; is it a served model folder"):
        find_bundle(tmp_path / "plain")


def test_load_predictor_broken_bundle_is_corrupt_and_a_cache_entry_is_dropped(tmp_path):
    for name in ("kept", "cached"):
        bundle = onnx_bundle(tmp_path / name / "bundle", [0.0, 1.0, 0.0])
        (bundle / "labels.json").write_text("not json")
    (tmp_path / "cached" / MANIFEST).write_text("{}")
    with pytest.raises(CorruptArtifact, match=r"version 7 at '.*kept' does not load: JSONDecodeError"):
        load_predictor(tmp_path / "kept", "version 7")
    assert (tmp_path / "kept").is_dir()  # not a cache entry: never deleted
    with pytest.raises(CorruptArtifact, match="does not load"):
        load_predictor(tmp_path / "cached")
    assert not (tmp_path / "cached").exists()  # a cache entry: dropped, so the next use downloads it again


def test_tree_digest_follows_content_and_names_only(tmp_path):
    a = onnx_bundle(tmp_path / "a" / "bundle", [0.0, 1.0, 0.0])
    b = onnx_bundle(tmp_path / "b" / "bundle", [0.0, 1.0, 0.0])
    assert tree_digest(a) == tree_digest(b)
    (b / "labels.json").write_text(json.dumps(["x", "y", "z"]))
    assert tree_digest(a) != tree_digest(b)
    (a / "labels.json").rename(a / "labels2.json")
    assert tree_digest(a) != tree_digest(onnx_bundle(tmp_path / "c" / "bundle", [0.0, 1.0, 0.0]))


def test_file_manifest_refuses_a_symlink(tmp_path):
    root = tmp_path / "entry"
    root.mkdir()
    (root / "f.txt").write_text("hello")
    assert file_manifest(root) == {
        "f.txt": {"sha256": "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824", "size": 5}
    }
    os.symlink(tmp_path / "elsewhere", root / "link")
    with pytest.raises(CorruptArtifact, match="'link' in .* is not a plain file"):
        file_manifest(root)


def test_write_manifest_then_verify_entry_finds_each_change(tmp_path):
    entry = tmp_path / "entry"
    bundle = onnx_bundle(entry / "bundle", [0.0, 1.0, 0.0])
    manifest = write_manifest(entry, "models:/m/1", tree_digest(bundle), run_id="run-a")
    assert manifest["bundle"] == "bundle" and manifest["bundle_sha256"] == tree_digest(bundle)
    assert verify_entry(entry, tree_digest(bundle), "run-a") is None
    assert "not run-b" in verify_entry(entry, run_id="run-b")
    assert "does not match the version's tag" in verify_entry(entry, expected_bundle="0" * 64)
    (bundle / "labels.json").write_text("[]")
    assert verify_entry(entry).startswith("content changed: ['bundle/labels.json']")
    (entry / "python_model.pkl").write_bytes(b"x")
    assert verify_entry(entry).startswith("files added ['python_model.pkl']")
    (entry / MANIFEST).unlink()
    assert verify_entry(entry).startswith("no readable manifest")


def test_write_manifest_refuses_a_bundle_that_does_not_match_the_tag(tmp_path):
    entry = tmp_path / "entry"
    onnx_bundle(entry / "bundle", [0.0, 1.0, 0.0])
    with pytest.raises(CorruptArtifact, match=r"models:/m/2: the downloaded bundle's SHA-256 .* does not match"):
        write_manifest(entry, "models:/m/2", "f" * 64)
    assert not (entry / MANIFEST).exists()
    with pytest.raises(CorruptArtifact, match="models:/m/3: no bundle/model.onnx"):
        write_manifest(entry / "bundle" / "tokenizer", "models:/m/3", None)
