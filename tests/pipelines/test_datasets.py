"""The hold-out rule: stable per row, with a row floor on small batches."""

from __future__ import annotations

import pandas as pd
import pytest

from pipelines.config import get_settings
from pipelines.data.datasets import holdout_share_for, split_holdout


def _batch(n: int, tag: str) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"{tag} review number {i}" for i in range(n)], "label": ["positive"] * n})


@pytest.mark.parametrize(
    ("rows", "share"),
    [(2000, 0.2), (500, 0.2), (250, 0.4), (200, 0.4), (300, 1 / 3), (0, 0.2)],
)
def test_small_batches_hold_out_at_least_min_rows_within_the_cap(rows, share):
    settings = get_settings()  # holdout_share 0.2, min_holdout_rows 100, max_holdout_share 0.4
    assert holdout_share_for(rows, settings) == pytest.approx(share)


def test_floor_off_gives_the_plain_share():
    settings = get_settings(data__min_holdout_rows=0)
    assert holdout_share_for(100, settings) == pytest.approx(0.2)


def test_each_batch_keeps_its_own_share_when_read_together():
    settings = get_settings()
    small, large = _batch(250, "small"), _batch(2000, "large")
    alone = {len(split_holdout(b, settings)[1]) for b in (small, large)}
    together = pd.concat([small.assign(batch_uri="a"), large.assign(batch_uri="b")], ignore_index=True)
    held = split_holdout(together, settings)[1]
    # the same rows are held out whether a batch is read alone or with the history
    assert set(held["text"]) == set(split_holdout(small, settings)[1]["text"]) | set(
        split_holdout(large, settings)[1]["text"]
    )
    assert len(held) == sum(alone)
    small_held = held[held["batch_uri"] == "a"]
    assert 80 <= len(small_held) <= 120  # about 40 % of 250, by a hash of the text
    assert 320 <= len(held) - len(small_held) <= 480  # about 20 % of 2000


def test_oversample_tops_minority_classes_up_toward_the_largest(settings):
    import pandas as pd

    from pipelines.data.datasets import oversample

    df = pd.DataFrame(
        {"text": [f"t{i}" for i in range(14)], "label": ["positive"] * 10 + ["neutral"] * 2 + ["negative"] * 2}
    )
    assert oversample(df, settings, 0.0) is df
    full = oversample(df, settings, 1.0)
    assert full["label"].value_counts().to_dict() == {"positive": 10, "neutral": 10, "negative": 10}
    assert set(df["text"]) <= set(full["text"])  # every original row is kept
    assert set(full.loc[full["label"] == "neutral", "text"]) == {"t10", "t11"}  # copies of the class's own rows
    half = oversample(df, settings, 0.5)
    assert half["label"].value_counts().to_dict() == {"positive": 10, "neutral": 6, "negative": 6}
    pd.testing.assert_frame_equal(oversample(df, settings, 0.5), half)  # seeded
