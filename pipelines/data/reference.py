"""The drift reference: a capped sample of a model's training texts with their embeddings and labels.

It is written beside the trained model and travels with the registered model version, so a rollback brings
the matching reference back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.model.encoders import embed

if TYPE_CHECKING:
    import pandas as pd

    from pipelines.config import Settings


@dataclass
class Reference:
    embeddings: Any  # float32 (n, dim)
    labels: list[str]
    lengths: Any  # int (n,) characters per text
    encoder: str
    meta: dict[str, Any]


def save_reference(
    settings: Settings, df: pd.DataFrame, out_dir: str | Path, meta: dict[str, Any] | None = None
) -> Path:
    """Embed a capped, seeded sample of ``df`` with the drift encoder and save it in ``out_dir``."""
    import numpy as np  # heavy (numpy): imported when used

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cap = settings.drift.reference_max_rows
    sample = df.sample(n=min(cap, len(df)), random_state=settings.drift.seed) if len(df) > cap else df
    texts = sample[settings.data.text_column].astype(str).tolist()
    emb = embed(
        texts, settings.drift.encoder, batch_size=settings.drift.embed_batch_size, max_length=settings.drift.max_length
    )
    np.savez_compressed(
        out / "reference.npz",
        embeddings=emb,
        labels=np.array(sample[settings.data.label_column].astype(str).tolist()),
        lengths=np.array([len(t) for t in texts]),
    )
    info = {"encoder": settings.drift.encoder, "rows": len(texts), **(meta or {})}
    (out / "reference.json").write_text(json.dumps(info, indent=2, default=str))
    return out


def load_reference(ref_dir: str | Path) -> Reference:
    """Load a reference written by :func:`save_reference`.

    Raises:
        FileNotFoundError: the folder holds no reference.
    """
    import numpy as np  # heavy (numpy): imported when used

    ref_dir = Path(ref_dir)
    npz = ref_dir / "reference.npz"
    if not npz.is_file():
        raise FileNotFoundError(f"no drift reference at {str(npz)!r}")
    data = np.load(npz, allow_pickle=False)
    meta = json.loads((ref_dir / "reference.json").read_text()) if (ref_dir / "reference.json").is_file() else {}
    return Reference(
        embeddings=data["embeddings"],
        labels=[str(x) for x in data["labels"]],
        lengths=data["lengths"],
        encoder=str(meta.get("encoder", "")),
        meta=meta,
    )
