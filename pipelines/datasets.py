"""Reading batches and the data sets built from them (accepted history, hold-out, golden set).

Each row is kept out of training forever or never, by a hash of its text (``holdout_share``), so retraining on
all accepted data never trains on a row that an earlier evaluation used.
"""

from __future__ import annotations

import hashlib
import io
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from pipelines.config import Settings


def read_table(uri: str, settings: Settings) -> pd.DataFrame:
    """Read a CSV or Parquet batch from storage into a DataFrame."""
    import pandas as pd

    from pipelines.storage import get_storage

    data = get_storage(settings).read_bytes(uri)
    if uri.endswith(".parquet"):
        return pd.read_parquet(io.BytesIO(data))
    return pd.read_csv(io.BytesIO(data))


def write_parquet(df: pd.DataFrame, uri: str, settings: Settings) -> str:
    from pipelines.storage import get_storage

    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return get_storage(settings).write_bytes(uri, buf.getvalue())


def _bucket(text: str) -> float:
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big") / 2**64


def is_holdout(texts: Any, share: float) -> Any:
    """Boolean mask: which rows belong to the hold-out, by a hash of their text."""
    import numpy as np

    return np.array([_bucket(str(t)) < share for t in texts], dtype=bool)


def split_holdout(df: pd.DataFrame, settings: Settings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a batch into (trainable, hold-out) rows."""
    mask = is_holdout(df[settings.data.text_column], settings.data.holdout_share)
    return df[~mask].reset_index(drop=True), df[mask].reset_index(drop=True)


def accepted_uris(settings: Settings) -> list[str]:
    from pipelines.storage import get_storage

    return [u for u in get_storage(settings).list(settings.uri(settings.paths.accepted)) if u.endswith(".parquet")]


def load_accepted(settings: Settings, exclude: set[str] | None = None) -> pd.DataFrame:
    """All accepted batches (in name order) as one frame with a ``batch_uri`` column."""
    import pandas as pd

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


def golden_uri(settings: Settings) -> str:
    return settings.uri(settings.paths.golden, "golden.parquet")


def ensure_golden(settings: Settings, holdout: pd.DataFrame) -> pd.DataFrame:
    """The fixed golden evaluation set; created from ``holdout`` the first time, then never changed."""
    from pipelines.storage import get_storage

    uri = golden_uri(settings)
    if get_storage(settings).exists(uri):
        return read_table(uri, settings)
    golden = holdout.head(settings.data.golden_max_rows).reset_index(drop=True)
    write_parquet(golden, uri, settings)
    return golden
