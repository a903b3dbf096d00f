"""Benchmark the train step's Trainer setup against a plain Trainer, on the same model and data, in one process.

Both runs start from the same base model with a fresh head (same seed) and train ``--steps`` optimiser steps
on the ``train`` split of ``../shared/data/drug_reviews.csv`` (falling back to the demo reference batch when
the data is absent) through :func:`pipelines.steps.train.fit`:

- the train step's setup: dynamic padding (``DataCollatorWithPadding``) and length-grouped batches;
- the plain setup: every row padded to ``train.max_length``, batches in random order.

samples/s counts only the training steps (evaluation and checkpoint saving excluded), as the step reports it.

Usage: ``python bench/train.py [--model minilm] [--steps 20] [--max-length 256]``.
Last line, one JSON object: ``{"samples_per_s": x, "baseline_samples_per_s": y, "ratio": r}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "drug_reviews.csv"
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    import pandas as pd

    from pipelines.config import get_settings
    from pipelines.data.datasets import validation_split
    from pipelines.model.modeling import load_base
    from pipelines.steps.train import device_and_precision, fit

    if DATA.is_file():
        df = pd.read_csv(DATA)
        df, source = df[df["split"] == "train"].reset_index(drop=True), "drug reviews (train split)"
    else:
        from pipelines.data import demo

        df, source = pd.DataFrame(demo.generate(demo.BATCHES[0])), "demo reference batch (shared data absent)"
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        settings = get_settings(
            paths__artifact_root=str(Path(tmp) / "var"),
            train__base_model=args.model,
            train__max_length=args.max_length,
            train__max_steps=args.steps,
            train__logging_steps=5,
        )
        train_df, val_df = validation_split(df, settings)
        for name, optimized in [("train step setup", True), ("plain Trainer", False)]:
            model, tokenizer = load_base(settings)
            out = fit(
                settings,
                model,
                tokenizer,
                train_df,
                val_df,
                learning_rate=settings.train.learning_rate,
                epochs=settings.train.epochs,
                work_dir=Path(tmp) / name.replace(" ", "_"),
                optimized=optimized,
            )
            results[name] = out.metrics
            print(f"  measured {name}: {out.metrics['samples_per_s']:.1f} samples/s", flush=True)
    device, precision = device_and_precision()
    fast, plain = results["train step setup"], results["plain Trainer"]
    print(
        f"\n{args.model} on {source}: {args.steps} steps of batch {settings.train.batch_size}, "
        f"max_length {args.max_length}, {device} {precision}"
    )
    print(f"{'setup':<20}{'samples/s':>10}{'train s':>9}")
    for name, m in results.items():
        print(f"{name:<20}{m['samples_per_s']:>10.1f}{m['train_seconds']:>9.1f}")
    summary = {
        "samples_per_s": round(fast["samples_per_s"], 2),
        "baseline_samples_per_s": round(plain["samples_per_s"], 2),
        "ratio": round(fast["samples_per_s"] / plain["samples_per_s"], 2),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
