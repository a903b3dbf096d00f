"""The drift reference: a capped, seeded sample of training texts, embedded with the drift encoder, saved and loaded
back without pickle."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipelines.data.reference import load_reference, save_reference


@pytest.fixture
def frame():
    texts = [f"review number {i} says the dose was {'fine' if i % 2 else 'too strong'}" for i in range(30)]
    return pd.DataFrame({"text": texts, "label": ["positive" if i % 2 else "negative" for i in range(30)]})


def test_save_then_load_keeps_every_row_label_and_length(make_settings, frame, tmp_path):
    settings = make_settings()
    out = save_reference(settings, frame, tmp_path / "ref", meta={"batch": "b1"})
    ref = load_reference(out)
    assert ref.embeddings.shape == (30, 64) and ref.embeddings.dtype == np.float32
    assert ref.labels == frame["label"].tolist()
    assert ref.lengths.tolist() == [len(t) for t in frame["text"]]
    assert ref.encoder == settings.drift.encoder
    assert ref.meta == {"encoder": settings.drift.encoder, "rows": 30, "batch": "b1"}


def test_save_caps_the_sample_with_the_seed(make_settings, frame, tmp_path):
    settings = make_settings(drift__reference_max_rows=8, drift__seed=3)
    first = load_reference(save_reference(settings, frame, tmp_path / "a"))
    again = load_reference(save_reference(settings, frame, tmp_path / "b"))
    assert len(first.labels) == 8 and first.meta["rows"] == 8
    np.testing.assert_array_equal(first.embeddings, again.embeddings)  # same seed, same sample
    assert first.labels == again.labels
    other = load_reference(
        save_reference(make_settings(drift__reference_max_rows=8, drift__seed=4), frame, tmp_path / "c")
    )
    assert not np.array_equal(other.embeddings, first.embeddings)  # another seed, another sample
    # every sampled row is a real row of the frame: its length and label belong together
    pairs = set(zip(frame["text"].str.len(), frame["label"], strict=True))
    assert set(zip(first.lengths.tolist(), first.labels, strict=True)) <= pairs


def test_load_reference_of_an_empty_folder_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no drift reference at '.*/empty/reference.npz'"):
        load_reference(tmp_path / "empty")


def test_load_reference_without_its_json_has_no_encoder(make_settings, frame, tmp_path):
    out = save_reference(make_settings(), frame, tmp_path / "ref")
    (out / "reference.json").unlink()
    ref = load_reference(out)
    assert ref.encoder == "" and ref.meta == {} and len(ref.labels) == 30


def test_load_reference_refuses_a_pickled_array(tmp_path):
    """A reference travels with a model version; loading one must never unpickle what it holds."""
    folder = tmp_path / "planted"
    folder.mkdir()
    np.savez(
        folder / "reference.npz",
        embeddings=np.zeros((1, 4), dtype=np.float32),
        labels=np.array([{"not": "a label"}], dtype=object),
        lengths=np.array([1]),
    )
    (folder / "reference.json").write_text(json.dumps({"encoder": "x"}))
    with pytest.raises(ValueError, match="allow_pickle=False"):
        load_reference(folder)
