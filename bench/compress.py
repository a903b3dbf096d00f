"""Benchmark the served artifact against the fp32 PyTorch model, on the real MiniLM and real reviews.

MiniLM (the packaged ``minilm``) gets a fresh classification head and a short fine-tune on the ``train`` split
of ``../shared/data/drug_reviews.csv`` with the train step's own :func:`pipelines.train.fit`. Then, on the
``test`` split (379 reviews) at batch 32 and ``--max-length`` tokens, it measures throughput and macro-F1 of:

1. fp32 PyTorch, batches in input order (the baseline);
2. ONNX fp32, plain export;
3. + int8 dynamic quantization (on the plain export);
4. + onnxruntime transformer graph fusions before quantizing;
5. + length-sorted batching at inference;
6. the served configuration, built by the same functions the compress step uses: int8, graph fusions only if
   ``compress.optimize_graph``, length-sorted batches, and attention-head pruning (``compress.prune_heads_share``,
   with the compress step's back-off).

Each throughput is the median of ``--repeats`` passes over the test split after a warm-up, the variants
timed in turn within each repeat. The machine is
shared, so absolute numbers move; the ratios, measured side by side in one process, are what to read.

Usage: ``python bench/compress.py [--epochs N] [--lr X] [--max-length 256]`` (default: the train settings). Skips cleanly (exit 0) without the data.
Last line, one JSON object: ``{"speedup", "size_ratio", "f1_fp32", "f1_served", "f1_drop_points"}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "drug_reviews.csv"
sys.path.insert(0, str(REPO))


def _settings(root: Path, args: argparse.Namespace):
    from pipelines.config import get_settings

    train = {"train__epochs": args.epochs, "train__learning_rate": args.lr}
    return get_settings(
        paths__artifact_root=str(root / "var"),
        mlflow__tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        train__base_model=args.model,
        train__max_length=args.max_length,
        **{k: v for k, v in train.items() if v is not None},
        compress__max_length=args.max_length,
        compress__infer_batch_size=32,
        compress__parity_sample_rows=379,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--epochs", type=float, default=None, help="default: train.epochs")
    parser.add_argument("--lr", type=float, default=None, help="default: train.learning_rate")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger().setLevel(logging.WARNING)  # onnxruntime's tools log through the root logger
    logging.getLogger("pipelines").setLevel(logging.INFO)
    if not DATA.is_file():
        print(f"skipped: {DATA} is absent (../shared/data is not beside this checkout)")
        return 0

    import numpy as np
    import pandas as pd
    import torch
    from sklearn.metrics import f1_score

    from pipelines import compress
    from pipelines.serving import OnnxPredictor
    from pipelines.train import fit, load_base, validation_split

    torch.manual_seed(0)
    df = pd.read_csv(DATA)
    train_rows, test = df[df["split"] == "train"], df[df["split"] == "test"].reset_index(drop=True)
    texts, gold = test["text"].astype(str).tolist(), test["label"].tolist()
    with tempfile.TemporaryDirectory(prefix="bench-compress-") as tmp:
        root = Path(tmp)
        settings = _settings(root, args)
        labels = settings.data.labels
        model, tokenizer = load_base(settings)
        train_df, val_df = validation_split(train_rows.reset_index(drop=True), settings)
        started = time.perf_counter()
        trained = fit(
            settings,
            model,
            tokenizer,
            train_df,
            val_df,
            learning_rate=settings.train.learning_rate,
            epochs=settings.train.epochs,
            work_dir=root / "checkpoints",
        )
        train_s = time.perf_counter() - started
        model = trained.model.eval()
        fp32_dir = root / "fp32"
        model.save_pretrained(fp32_dir)
        tokenizer.save_pretrained(fp32_dir)
        (root / "reference").mkdir()

        def f1(pred) -> float:
            return 100 * f1_score(gold, [labels[i] for i in pred], average="macro", labels=labels, zero_division=0)

        L, B = args.max_length, 32
        plain = root / "plain.onnx"
        compress.export_onnx(model, tokenizer, texts, plain, settings.compress.opset, L)
        plain_int8, opt, opt_int8 = root / "plain_int8.onnx", root / "opt.onnx", root / "opt_int8.onnx"
        compress.quantize(plain, plain_int8)
        compress.optimize_graph(plain, opt, model.config.model_type)
        compress.quantize(opt, opt_int8)
        bundle = compress.build_bundle(root / "bundle", opt_int8, tokenizer, fp32_dir, root / "reference", settings)
        # The served configuration: head pruning (with back-off) on top, as the compress step builds it.
        fp32_pred = compress.torch_logits(model, tokenizer, texts, L, B).argmax(1)
        pruned, info = compress.prune(model, tokenizer, texts, fp32_pred, settings)
        served_plain, served_opt, served = root / "s.onnx", root / "s_opt.onnx", root / "s_int8.onnx"
        compress.export_onnx(pruned, tokenizer, texts, served_plain, settings.compress.opset, L)
        if settings.compress.optimize_graph:
            compress.optimize_graph(served_plain, served_opt, model.config.model_type)
        compress.quantize(served_opt if settings.compress.optimize_graph else served_plain, served)

        pt_mb = sum(p.stat().st_size for p in fp32_dir.glob("*.safetensors")) / 1e6
        variants = [("fp32 PyTorch", lambda: compress.torch_logits(model, tokenizer, texts, L, B), pt_mb)]
        for name, graph, sort in [
            ("ONNX fp32", plain, False),
            ("+ int8", plain_int8, False),
            ("+ graph optimisation", opt_int8, False),
            ("+ length-sorted batches", opt_int8, True),
            (f"served (heads pruned: {info.get('heads_pruned', 0)})", served, True),
        ]:
            (bundle / graph.name).write_bytes(graph.read_bytes())
            predictor = OnnxPredictor(bundle, model_file=graph.name, sort_by_length=sort)
            variants.append((name, predictor.predict_proba, graph.stat().st_size / 1e6))
        # Round-robin repeats, so that a change in the machine's load hits every variant alike.
        preds = {name: fn(texts) if name != "fp32 PyTorch" else fn() for name, fn, _ in variants}
        times: dict[str, list[float]] = {name: [] for name, _, _ in variants}
        for _ in range(args.repeats):
            for name, fn, _ in variants:
                started = time.perf_counter()
                fn() if name == "fp32 PyTorch" else fn(texts)
                times[name].append(time.perf_counter() - started)
        rows = []
        for name, _, size_mb in variants:
            seconds = statistics.median(times[name])
            pred = preds[name].argmax(1)
            rows.append(
                {"variant": name, "samples_per_s": len(texts) / seconds, "macro_f1": f1(pred), "size_mb": size_mb}
            )
        served_agreement = float(np.mean(preds[variants[-1][0]].argmax(1) == fp32_pred))

    base = rows[0]
    print(
        f"\nMiniLM on drug reviews: trained {train_s:.0f}s on {len(train_df)} rows ({trained.precision}, "
        f"{trained.metrics['samples_per_s']:.1f} samples/s), test {len(texts)} rows, batch {B}, max_length {L}"
    )
    print(f"prune: {json.dumps(info)}")
    print(f"{'variant':<34}{'samples/s':>10}{'speedup':>9}{'size MB':>9}{'macro-F1':>10}")
    prev = base["samples_per_s"]
    for row in rows:
        share = row["samples_per_s"] / prev
        prev = row["samples_per_s"]
        print(
            f"{row['variant']:<34}{row['samples_per_s']:>10.1f}{row['samples_per_s'] / base['samples_per_s']:>8.2f}x"
            f"{row['size_mb']:>9.1f}{row['macro_f1']:>10.1f}   (step x{share:.2f})"
        )
    final = rows[-1]
    print(f"served vs fp32 prediction agreement on the test split: {served_agreement:.3f}")
    summary = {
        "speedup": round(final["samples_per_s"] / base["samples_per_s"], 2),
        "size_ratio": round(base["size_mb"] / final["size_mb"], 2),
        "f1_fp32": round(base["macro_f1"], 2),
        "f1_served": round(final["macro_f1"], 2),
        "f1_drop_points": round(base["macro_f1"] - final["macro_f1"], 2),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
