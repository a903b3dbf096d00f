"""Benchmark the served artifact against the fp32 PyTorch model, on the real MiniLM and real reviews.

MiniLM (the packaged ``minilm``) gets a fresh classification head and is fine-tuned on the ``train`` split of
``../shared/data/drug_reviews.csv`` with the train step's own :func:`pipelines.steps.train.fit`, for up to 10 epochs
(early stopping keeps the best). The train step's default of 4 epochs, tuned on the demo batches, stops this
harder task at validation macro-F1 0.47 with most reviews near a decision boundary, where any rounding flips
labels; at 10 it reaches 0.62. Then, on the ``test`` split (379 reviews) at batch 32 and ``--max-length``
tokens, it measures throughput, size and macro-F1 of:

1. fp32 PyTorch, batches in input order (the baseline);
2. ONNX fp32, plain export;
3. + int8 dynamic quantization of every MatMul and Gather (on the plain export);
4. + the MatMuls named by ``compress.quantize_weight_only`` (default: every linear layer) made weight-only
   int8 instead (see :func:`pipelines.steps.compress.quantize`);
5. + the nodes named by ``compress.quantize_exclude`` kept fp32 (row left out when that list is empty);
6. + length-sorted batching at inference;
7. asides, not served by default: full dynamic int8 with sorted batches (what weight-only costs in speed and
   buys in agreement); + onnxruntime transformer graph fusions before quantizing;
8. the served configuration ("served int8 teacher"), built by the same functions the compress step uses: the
   compress settings, graph fusions only if ``compress.optimize_graph``, length-sorted batches, and attention-head
   pruning (``compress.prune_heads_share``, with the compress step's back-off);
9. the served distilled student ("served int8 student", ``compress.distill``): a student keeping every other
   encoder layer of the teacher (``--student-layers`` to choose), trained by :func:`pipelines.model.distill.distill` on the
   teacher's soft targets and the labels of the same training rows (its validation split is the teacher's), then
   the same pruning back-off (against its own fp32 labels), export and int8; and, aside, the same student with
   dynamic int8 everywhere (faster, but its labels depend on the batch, which the served configuration avoids).

Besides macro-F1, each row shows its prediction agreement with fp32 PyTorch on the test split and on
``--wide-rows`` tweets from ``tweets_sentiment.csv`` (a seeded sample). On 379 reviews two flipped predictions
can move macro-F1 by a point (the ``neutral`` class has 30-odd rows), so agreement, above all on the larger
sample, is the steadier measure of what a step costs. A paired bootstrap interval of the served model's
macro-F1 drop says how much the test split can resolve. Dynamic quantization scales activations per batch, so
even the batch order moves int8 predictions a little; the share of test rows that the served model labels the
same at batch 1 as at batch 32 is printed too.

Each throughput is the median of ``--repeats`` passes over the test split after a warm-up, the variants
timed in turn within each repeat. The machine is shared, so absolute numbers move; the ratios, measured side
by side in one process, are what to read.

Usage: ``python bench/compress.py [--epochs 10] [--lr X] [--max-length 256] [--save-trained DIR | --trained DIR]
[--student-layers 1,3,5]`` (training is seeded, so a saved model is the one a rerun would train). Skips cleanly
(exit 0) without the data. Last line, one JSON object: ``{"speedup", "size_ratio", "f1_fp32", "f1_served",
"f1_drop_points", "student_speedup", "student_size_ratio", "f1_student", "student_f1_drop_points", ...}``: the
served teacher's and the served student's figures, each against the fp32 PyTorch teacher at batch 32.
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
TWEETS = DATA.parent / "tweets_sentiment.csv"
sys.path.insert(0, str(REPO))
STUDENT_DYNAMIC = "  aside: student, all int8 dynamic, sorted"


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
        compress__distill_layers=args.student_layers,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--epochs", type=float, default=10, help="early stopping keeps the best epoch")
    parser.add_argument("--lr", type=float, default=None, help="default: train.learning_rate")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--wide-rows", type=int, default=2000, help="tweets for the wide agreement column")
    parser.add_argument("--save-trained", type=Path, help="also save the fine-tuned fp32 classifier here")
    parser.add_argument("--trained", type=Path, help="skip training: a classifier saved by --save-trained")
    parser.add_argument(
        "--student-layers",
        type=lambda v: [int(i) for i in v.split(",") if i.strip()],
        default=[],
        help="teacher layers the student keeps, e.g. 1,3,5 (default: compress.distill_layers' default)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger().setLevel(logging.WARNING)  # onnxruntime's tools log through the root logger
    logging.getLogger("pipelines").setLevel(logging.INFO)
    if not (DATA.is_file() and TWEETS.is_file()):
        print(f"skipped: {DATA} or {TWEETS.name} is absent (../shared/data is not beside this checkout)")
        return 0

    import numpy as np
    import pandas as pd
    import torch
    from sklearn.metrics import f1_score

    from pipelines.data.datasets import validation_split
    from pipelines.model import distill, modeling
    from pipelines.model.modeling import load_base, load_classifier
    from pipelines.serving import OnnxPredictor
    from pipelines.steps import compress
    from pipelines.steps.train import fit

    torch.manual_seed(0)
    df = pd.read_csv(DATA)
    train_rows, test = df[df["split"] == "train"], df[df["split"] == "test"].reset_index(drop=True)
    texts, gold = test["text"].astype(str).tolist(), test["label"].tolist()
    tweets = pd.read_csv(TWEETS)["text"].astype(str).sample(args.wide_rows, random_state=0).tolist()
    with tempfile.TemporaryDirectory(prefix="bench-compress-") as tmp:
        root = Path(tmp)
        settings = _settings(root, args)
        labels = settings.data.labels
        train_df, val_df = validation_split(train_rows.reset_index(drop=True), settings)
        fp32_dir = root / "fp32"
        if args.trained:
            # A classifier this script's recipe already fine-tuned: skips the slowest part on a busy machine.
            model, tokenizer = load_classifier(args.trained, settings)
            trained_note = f"reused {args.trained}"
        else:
            model, tokenizer = load_base(settings)
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
            model = trained.model
            trained_note = (
                f"trained {time.perf_counter() - started:.0f}s on {len(train_df)} rows ({trained.precision}, "
                f"{trained.metrics['samples_per_s']:.1f} samples/s)"
            )
            if args.save_trained:
                model.save_pretrained(args.save_trained)
                tokenizer.save_pretrained(args.save_trained)
        model.eval()
        model.save_pretrained(fp32_dir)
        tokenizer.save_pretrained(fp32_dir)
        (root / "reference").mkdir()

        def f1_pair(gold_part, pred) -> float:
            return 100 * f1_score(gold_part, [labels[i] for i in pred], average="macro", labels=labels, zero_division=0)

        def f1(pred) -> float:
            return 100 * f1_score(gold, [labels[i] for i in pred], average="macro", labels=labels, zero_division=0)

        L, B, cfg = args.max_length, 32, settings.compress
        qargs = (cfg.quantize_per_channel, cfg.quantize_reduce_range)
        plain = root / "plain.onnx"
        compress.export_onnx(model, tokenizer, texts, plain, cfg.opset, L)
        plain_int8, light_int8, kept_int8 = root / "plain_int8.onnx", root / "light_int8.onnx", root / "kept_int8.onnx"
        opt, opt_int8 = root / "opt.onnx", root / "opt_int8.onnx"
        compress.quantize(plain, plain_int8, *qargs)
        wo = (cfg.quantize_weight_only, cfg.quantize_block_size)
        light = compress.quantize(plain, light_int8, *qargs, (), *wo)["weight_only"]
        kept = compress.quantize(plain, kept_int8, *qargs, cfg.quantize_exclude, *wo)["fp32"]
        compress.optimize_graph(plain, opt, model.config.model_type)
        compress.quantize(opt, opt_int8, *qargs, cfg.quantize_exclude, *wo)
        bundle = compress.build_bundle(root / "bundle", kept_int8, tokenizer, fp32_dir, root / "reference", settings)
        # The served configuration: head pruning (with back-off) on top, as the compress step builds it.
        fp32_pred = modeling.torch_logits(model, tokenizer, texts, L, B).argmax(1)
        pruned, info = compress.prune(model, tokenizer, texts, fp32_pred, settings)
        served_plain, served_opt, served = root / "s.onnx", root / "s_opt.onnx", root / "s_int8.onnx"
        compress.export_onnx(pruned, tokenizer, texts, served_plain, cfg.opset, L)
        if cfg.optimize_graph:
            compress.optimize_graph(served_plain, served_opt, model.config.model_type)
        compress.quantize(
            served_opt if cfg.optimize_graph else served_plain,
            served,
            *qargs,
            cfg.quantize_exclude,
            *wo,
        )

        # The distilled student: the teacher's layers, its soft targets and the same training rows and validation
        # split; then the served configuration's path (pruning back-off against its own fp32 labels, export, int8).
        started = time.perf_counter()
        student_run = distill.distill(settings, model, tokenizer, train_rows.reset_index(drop=True), [])
        distill_s = time.perf_counter() - started
        student = student_run.student
        student_fp32_pred = modeling.torch_logits(student, tokenizer, texts, L, B).argmax(1)
        s_pruned, s_info = compress.prune(student, tokenizer, texts, student_fp32_pred, settings)
        st_plain, st_opt, st_served = root / "st.onnx", root / "st_opt.onnx", root / "st_int8.onnx"
        compress.export_onnx(s_pruned, tokenizer, texts, st_plain, cfg.opset, L)
        if cfg.optimize_graph:
            compress.optimize_graph(st_plain, st_opt, model.config.model_type)
        compress.quantize(st_opt if cfg.optimize_graph else st_plain, st_served, *qargs, cfg.quantize_exclude, *wo)
        # Aside: the student with dynamic int8 everywhere (faster; labels then depend on the batch a row is in).
        st_dynamic = root / "st_int8_dynamic.onnx"
        compress.quantize(st_plain, st_dynamic, *qargs, cfg.quantize_exclude, [], cfg.quantize_block_size)
        student_name = (
            f"served int8 student ({len(student_run.layers)} of {student_run.teacher_layers} layers, heads pruned: "
            f"{s_info.get('heads_pruned', 0)})"
        )
        served_name = f"served int8 teacher (heads pruned: {info.get('heads_pruned', 0)})"

        pt_mb = sum(p.stat().st_size for p in fp32_dir.glob("*.safetensors")) / 1e6
        variants = [("fp32 PyTorch teacher", lambda t: modeling.torch_logits(model, tokenizer, t, L, B), pt_mb, True)]
        graphs = [
            ("ONNX fp32", plain, False, True),
            ("+ int8 dynamic (MatMul, Gather)", plain_int8, False, True),
            (f"+ {len(light)} MatMuls weight-only int8", light_int8, False, bool(light)),
            (f"+ {len(kept)} nodes kept fp32", kept_int8, False, bool(kept)),
            ("+ length-sorted batches", kept_int8, True, True),
            ("  aside: all int8 dynamic, sorted", plain_int8, True, False),
            ("  aside: + graph fusions", opt_int8, True, False),
            (served_name, served, True, True),
            (student_name, st_served, True, False),
            (STUDENT_DYNAMIC, st_dynamic, True, False),
        ]
        for name, graph, sort, chain in graphs:
            if name.startswith(("+ 0 nodes", "+ 0 MatMuls")):
                continue
            (bundle / graph.name).write_bytes(graph.read_bytes())
            predictor = OnnxPredictor(bundle, model_file=graph.name, sort_by_length=sort)
            variants.append((name, predictor.predict_proba, graph.stat().st_size / 1e6, chain))
        # Round-robin repeats, so that a change in the machine's load hits every variant alike.
        preds = {name: fn(texts) for name, fn, _, _ in variants}
        # Fidelity on a larger, unrelated sample: every variant's predictions against fp32 PyTorch's.
        wide = {name: fn(tweets).argmax(1) for name, fn, _, _ in variants}
        # Dynamic int8 scales activations per batch, so a row's label can depend on its batch-mates.
        served_fn = next(fn for name, fn, _, _ in variants if name == served_name)
        alone = np.concatenate([served_fn([text]) for text in texts]).argmax(1)
        batch_consistency = float(np.mean(alone == preds[served_name].argmax(1)))
        times: dict[str, list[float]] = {name: [] for name, _, _, _ in variants}
        for _ in range(args.repeats):
            for name, fn, _, _ in variants:
                started = time.perf_counter()
                fn(texts)
                times[name].append(time.perf_counter() - started)
        rows = []
        for name, _, size_mb, chain in variants:
            seconds = statistics.median(times[name])
            pred = preds[name].argmax(1)
            rows.append(
                {
                    "variant": name,
                    "samples_per_s": len(texts) / seconds,
                    "macro_f1": f1(pred),
                    "agreement": float(np.mean(pred == fp32_pred)),
                    "agreement_wide": float(np.mean(wide[name] == wide["fp32 PyTorch teacher"])),
                    "size_mb": size_mb,
                    "chain": chain,
                }
            )

    # Paired bootstrap of the served model's macro-F1 drop: how much of it 379 rows can resolve.
    rng = np.random.default_rng(0)
    served_pred, student_pred = preds[served_name].argmax(1), preds[student_name].argmax(1)
    gold_arr, drops, student_drops = np.asarray(gold), [], []
    for _ in range(1000):
        i = rng.integers(0, len(gold_arr), len(gold_arr))
        teacher_f1 = f1_pair(gold_arr[i], fp32_pred[i])
        drops.append(teacher_f1 - f1_pair(gold_arr[i], served_pred[i]))
        student_drops.append(teacher_f1 - f1_pair(gold_arr[i], student_pred[i]))
    drop_interval = np.percentile(drops, [2.5, 97.5])
    student_interval = np.percentile(student_drops, [2.5, 97.5])
    base = rows[0]
    print(f"\nMiniLM on drug reviews: {trained_note}, test {len(texts)} rows, batch {B}, max_length {L}")
    print(f"prune: {json.dumps(info)}")
    m = student_run.metrics
    print(
        f"student: layers {student_run.layers} of {student_run.teacher_layers}, distilled in {distill_s:.0f}s "
        f"({m['sample_passes']:.0f} sample passes, best epoch {m['best_epoch']:.0f} of {m['epochs_run']:.0f}, "
        f"validation agreement with the teacher {m['val_agreement']:.3f}, macro-F1 {m['val_macro_f1']:.3f} vs the "
        f"teacher's {m['teacher_val_macro_f1']:.3f}); T {cfg.distill_temperature}, alpha {cfg.distill_alpha}; "
        f"prune: {json.dumps(s_info)}"
    )
    print(
        f"int8: per_channel {cfg.quantize_per_channel}, reduce_range {cfg.quantize_reduce_range}, "
        f"weight-only {cfg.quantize_weight_only} (block {cfg.quantize_block_size}), kept fp32: {kept}"
    )
    print(
        f"{'variant':<58}{'samples/s':>10}{'speedup':>9}{'size MB':>9}{'macro-F1':>10}{'agree':>7}"
        f"{'agree ' + str(len(tweets)) + ' tweets':>19}"
    )
    prev = base["samples_per_s"]
    for row in rows:
        # A step's share is against the previous row of the served chain; an aside is measured against it too.
        share = row["samples_per_s"] / prev
        prev = row["samples_per_s"] if row["chain"] else prev
        print(
            f"{row['variant']:<58}{row['samples_per_s']:>10.1f}{row['samples_per_s'] / base['samples_per_s']:>8.2f}x"
            f"{row['size_mb']:>9.1f}{row['macro_f1']:>10.1f}{row['agreement']:>7.3f}{row['agreement_wide']:>19.3f}"
            f"   (step x{share:.2f})"
        )
    final = next(row for row in rows if row["variant"] == served_name)
    pupil = next(row for row in rows if row["variant"] == student_name)
    print(
        f"served vs fp32 prediction agreement: {final['agreement']:.3f} on the test split, "
        f"{final['agreement_wide']:.3f} on {len(tweets)} tweets"
    )
    print(f"served: the same label at batch 1 as at batch {B} for {batch_consistency:.3f} of the test split")
    low, high = drop_interval
    print(f"macro-F1 drop, paired bootstrap 95% interval over test rows: [{low:.2f}, {high:.2f}] points")
    print(
        f"student vs fp32 teacher prediction agreement: {pupil['agreement']:.3f} on the test split, "
        f"{pupil['agreement_wide']:.3f} on {len(tweets)} tweets; macro-F1 drop 95% interval "
        f"[{student_interval[0]:.2f}, {student_interval[1]:.2f}] points"
    )
    dynamic = next(r for r in rows if r["variant"] == STUDENT_DYNAMIC)
    summary = {
        "speedup": round(final["samples_per_s"] / base["samples_per_s"], 2),
        "size_ratio": round(base["size_mb"] / final["size_mb"], 2),
        "f1_fp32": round(base["macro_f1"], 2),
        "f1_served": round(final["macro_f1"], 2),
        "f1_drop_points": round(base["macro_f1"] - final["macro_f1"], 2),
        "student_layers": len(student_run.layers),
        "student_speedup": round(pupil["samples_per_s"] / base["samples_per_s"], 2),
        "student_size_ratio": round(base["size_mb"] / pupil["size_mb"], 2),
        "f1_student": round(pupil["macro_f1"], 2),
        "student_f1_drop_points": round(base["macro_f1"] - pupil["macro_f1"], 2),
        "student_agreement": round(pupil["agreement"], 3),
        "student_agreement_wide": round(pupil["agreement_wide"], 3),
        "distill_seconds": round(distill_s, 1),
        "student_dynamic_int8_speedup": round(dynamic["samples_per_s"] / base["samples_per_s"], 2),
        "student_dynamic_int8_f1_drop_points": round(base["macro_f1"] - dynamic["macro_f1"], 2),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
