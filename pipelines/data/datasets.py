"""Reading batches and the data sets built from them (accepted history, hold-out, golden set).

Each row is kept out of training forever or never, by a hash of its text, so retraining on all accepted data never
trains on a row that an earlier evaluation used. The share held out depends only on the batch's own row count
(:func:`holdout_share_for`): ``data.holdout_share``, raised on small batches so that at least
``data.min_holdout_rows`` rows are held out (at most ``data.max_holdout_share`` of the batch), because an evaluation
set of a few dozen rows cannot tell a model from the majority class.
"""

from __future__ import annotations

import hashlib
import io
from typing import TYPE_CHECKING

from pipelines.io.storage import get_storage, join

if TYPE_CHECKING:
    import pandas as pd

    from pipelines.config import Settings


def read_table(uri: str, settings: Settings) -> pd.DataFrame:
    """Read a CSV or Parquet batch from storage into a DataFrame."""
    import pandas as pd  # heavy (pandas): imported when used

    data = get_storage(settings).read_bytes(uri)
    if uri.endswith(".parquet"):
        return pd.read_parquet(io.BytesIO(data))
    return pd.read_csv(io.BytesIO(data))


def write_parquet(df: pd.DataFrame, uri: str, settings: Settings) -> str:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return get_storage(settings).write_bytes(uri, buf.getvalue())


def _bucket(text: str) -> float:
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big") / 2**64


def holdout_share_for(rows: int, settings: Settings) -> float:
    """The share of a batch of ``rows`` rows that is held out (see the module docstring)."""
    d = settings.data
    if rows <= 0:
        return d.holdout_share
    return max(d.holdout_share, min(d.max_holdout_share, d.min_holdout_rows / rows))


def split_holdout(
    df: pd.DataFrame, settings: Settings, batch_column: str = "batch_uri"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split rows into (trainable, hold-out) rows.

    Rows are grouped into batches by ``batch_column`` when ``df`` has it (as :func:`load_accepted` gives), else
    ``df`` is one batch; each batch's share comes from its row count as given (before any cleaning), so a row
    lands on the same side every time its batch is read.
    """
    import numpy as np  # heavy (numpy): imported when used

    texts = df[settings.data.text_column].astype(str).tolist()
    if batch_column in df.columns and len(df):
        sizes = df.groupby(batch_column, sort=False, dropna=False)[batch_column].transform("size").to_numpy()
        shares = np.array([holdout_share_for(int(n), settings) for n in sizes])
    else:
        shares = np.full(len(df), holdout_share_for(len(df), settings))
    mask = np.array([_bucket(t) < share for t, share in zip(texts, shares, strict=True)], dtype=bool)
    return df[~mask].reset_index(drop=True), df[mask].reset_index(drop=True)


def accepted_uris(settings: Settings) -> list[str]:
    return [u for u in get_storage(settings).list(settings.uri(settings.paths.accepted)) if u.endswith(".parquet")]


def load_accepted(settings: Settings, exclude: set[str] | None = None) -> pd.DataFrame:
    """All accepted batches (in name order) as one frame with a ``batch_uri`` column."""
    import pandas as pd  # heavy (pandas): imported when used

    frames = []
    for uri in accepted_uris(settings):
        if exclude and uri in exclude:
            continue
        frame = read_table(uri, settings)
        frame["batch_uri"] = uri
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=[settings.data.text_column, settings.data.label_column, "batch_uri"])
    return pd.concat(frames, ignore_index=True)


def accepted_rows(settings: Settings, exclude: set[str] | None = None) -> int:
    """Rows in the accepted batches (Parquet footers only), leaving out ``exclude``."""
    import pyarrow.parquet as pq  # heavy (pyarrow): imported when used

    storage = get_storage(settings)
    return sum(
        pq.ParquetFile(io.BytesIO(storage.read_bytes(uri))).metadata.num_rows
        for uri in accepted_uris(settings)
        if not exclude or uri not in exclude
    )


def golden_uri(settings: Settings) -> str:
    return settings.uri(settings.paths.golden, "golden.parquet")


def ensure_golden(settings: Settings, holdout: pd.DataFrame) -> pd.DataFrame:
    """The fixed golden evaluation set; created from ``holdout`` the first time, then never changed."""
    uri = golden_uri(settings)
    if get_storage(settings).exists(uri):
        return read_table(uri, settings)
    golden = holdout.head(settings.data.golden_max_rows).reset_index(drop=True)
    write_parquet(golden, uri, settings)
    return golden


def label_ids(df: pd.DataFrame, settings: Settings) -> list[int]:
    """Map the label column to class ids in ``settings.data.labels`` order.

    Raises:
        ValueError: a label is not one of the configured labels.
    """
    labels = settings.data.labels
    index = {name: i for i, name in enumerate(labels)}
    values = df[settings.data.label_column].astype(str)
    unknown = sorted(set(values) - set(index))
    if unknown:
        raise ValueError(
            f"column {settings.data.label_column!r} holds labels {unknown[:10]!r} outside data.labels={labels!r}; "
            "fix the batch or set MLOPS_DATA__LABELS"
        )
    return [index[v] for v in values]


def class_weights(ids: list[int], num_labels: int) -> list[float]:
    """Balanced class weights ``n / (k * count_c)``; a class absent from ``ids`` gets 1.0."""
    counts = [0] * num_labels
    for i in ids:
        counts[i] += 1
    n, k = len(ids), sum(1 for c in counts if c)
    return [n / (k * c) if c else 1.0 for c in counts]


def oversample(df: pd.DataFrame, settings: Settings, share: float) -> pd.DataFrame:
    """Each class topped up toward the largest class's count by ``share`` (0: unchanged, 1: balanced).

    Every original row is kept; the extra rows are a seeded draw with replacement from the class's own rows, and the
    result is shuffled (seeded).
    """
    import pandas as pd  # heavy (pandas): imported when used

    if share <= 0 or df.empty:
        return df
    col, seed = settings.data.label_column, settings.train.seed
    largest = int(df[col].value_counts().max())
    parts = [df]
    for _label, group in df.groupby(col, sort=True):
        extra = int(round(share * (largest - len(group))))
        if extra > 0:
            parts.append(group.sample(n=extra, replace=True, random_state=seed))
    return pd.concat(parts, ignore_index=True).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def validation_split(df: pd.DataFrame, settings: Settings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeded split into (train, validation), stratified by label where every class has two rows or more."""
    from sklearn.model_selection import train_test_split  # heavy (sklearn): imported when used

    labels = df[settings.data.label_column].astype(str)
    n_val = max(1, round(len(df) * settings.train.validation_share))
    if len(df) - n_val < 1:
        raise ValueError(
            f"{len(df)} training rows leave none for training after a validation share of "
            f"{settings.train.validation_share}; add data or lower train.validation_share"
        )
    stratify = labels if labels.value_counts().min() >= 2 and n_val >= labels.nunique() else None
    train, val = train_test_split(df, test_size=n_val, random_state=settings.train.seed, stratify=stratify)
    return train.reset_index(drop=True), val.reset_index(drop=True)


def capture_root(settings: Settings) -> str:
    return settings.serving.capture_uri or settings.uri("captures")


def read_captures(settings: Settings, files: list[str]) -> pd.DataFrame:
    """The claimed capture rows as one DataFrame (a row seen twice, by request id and row, counts once)."""
    import pandas as pd  # heavy (pandas): imported when used

    storage, root = get_storage(settings), capture_root(settings)
    frames = [
        pd.read_json(io.BytesIO(storage.read_bytes(join(root, f))), lines=True, dtype=False)
        for f in files
        if storage.exists(join(root, f))
    ]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=["id", "request_id", "row", "ts", "status", "text", "label", "probs"])
    df = pd.concat(frames, ignore_index=True)
    return df.drop_duplicates(subset=["request_id", "row"]).reset_index(drop=True)
