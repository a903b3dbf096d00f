"""Distillation for the compress step: a smaller student made from the trained model (the teacher) itself.

**The student** is a copy of the teacher that keeps a subset of its encoder layers (``compress.distill_layers``;
by default every other layer, ending with the top one: 1, 3, 5 of a 6-layer MiniLM). Every other layer is how
DistilBERT initialised its student ("taking one layer out of two"): neighbouring layers compute similar functions,
so a student built from evenly spaced layers starts close to the teacher, and halving the depth halves the encoder's
compute. The top layer is kept because the pooler and the classification head were trained on its output; the
embeddings, pooler and head are the teacher's. No download: the student comes from the teacher's own weights.

**Training** (:func:`distill`) minimises ``alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) +
(1 - alpha) * CE(student, label)`` (Hinton et al., 2015; the ``T^2`` keeps the soft term's gradients on the scale of
the hard term's as ``T`` changes). The transfer set is the training rows of every accepted batch (hold-out rows
excluded; labelled: both terms) plus, when there are any, texts captured from served requests (``captures/``,
unlabelled: the soft term only). The golden set and the hold-out rows are left out on purpose: they are the
evaluation set the gates score the served student on and the sample its agreement with the teacher is measured on,
and a student fitted to the teacher on exactly those texts would look better there than it is.

A seeded validation split of the labelled rows picks the best epoch (agreement with the teacher first, then
macro-F1: with a few dozen validation rows agreement is the steadier of the two) and stops after
``compress.distill_patience`` epochs without a better one. Progress is logged every ``train.logging_steps`` steps
and to the step's MLflow run. The cost (student sample passes, and seconds including the teacher's scoring of the
transfer set) is reported so that the compress step can count it.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from pipelines.config import Settings

log = logging.getLogger(__name__)


@dataclass
class DistillResult:
    """The trained student and how its training went."""

    student: Any
    layers: list[int]
    teacher_layers: int
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)


def default_layers(n_layers: int) -> list[int]:
    """Every other layer, ending with the top one: 6 -> [1, 3, 5], 4 -> [1, 3], 2 -> [1], 1 -> [0]."""
    return list(range(n_layers - 1, -1, -2))[::-1]


def student_layers(settings: Settings, n_layers: int) -> list[int]:
    """The teacher layers the student keeps (``compress.distill_layers``, else :func:`default_layers`).

    Raises:
        ValueError: a configured index is outside the teacher, or the student would keep every layer.
    """
    layers = list(settings.compress.distill_layers) or default_layers(n_layers)
    outside = [i for i in layers if i >= n_layers]
    if outside:
        raise ValueError(
            f"compress.distill_layers={list(settings.compress.distill_layers)!r} names layer(s) {outside!r}, but the "
            f"trained model has {n_layers} encoder layers (0-{n_layers - 1})"
        )
    if len(layers) >= n_layers:
        raise ValueError(
            f"compress.distill_layers keeps all {n_layers} encoder layers of the trained model: the student would be "
            "the teacher; name fewer layers or turn compress.distill off"
        )
    return layers


def encoder_layers(model: Any) -> Any:
    """The ``encoder.layer`` ModuleList of a BERT-like model.

    Raises:
        ValueError: the model has no such stack.
    """
    layers = getattr(getattr(model.base_model, "encoder", None), "layer", None)
    if layers is None:
        raise ValueError(
            f"cannot distill {type(model).__name__}: expected a BERT-like encoder with encoder.layer; "
            "turn compress.distill off"
        )
    return layers


def make_student(teacher: Any, layers: list[int]) -> Any:
    """A copy of ``teacher`` with only the encoder ``layers`` (renumbered from 0), embeddings and head kept."""
    import torch

    student = copy.deepcopy(teacher)
    kept = [encoder_layers(student)[i] for i in layers]
    for new_index, layer in enumerate(kept):
        for module in layer.modules():  # attention modules that index a cache by layer number
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    student.base_model.encoder.layer = torch.nn.ModuleList(kept)
    student.config.num_hidden_layers = len(kept)
    student.config.pruned_heads = {}
    return student


def _clean(df: pd.DataFrame, text: str, label: str | None) -> pd.DataFrame:
    keep = [text] if label is None else [text, label]
    df = df.dropna(subset=keep)
    df = df[df[text].astype(str).str.strip() != ""]
    return df.drop_duplicates(subset=[text]).reset_index(drop=True)


def captured_texts(settings: Settings, limit: int, exclude: set[str]) -> list[str]:
    """Up to ``limit`` texts from the newest capture files (served requests that returned a label), without the
    ``exclude`` texts; [] when there are none or captures keep hashes only."""
    from pipelines.monitor import capture_root, read_captures
    from pipelines.storage import basename, get_storage

    if limit <= 0:
        return []
    storage, root = get_storage(settings), capture_root(settings)
    try:
        uris = [u for u in storage.list(root) if basename(u).endswith(".jsonl") and not basename(u).startswith(".")]
    except FileNotFoundError:
        return []
    texts: list[str] = []
    seen = set(exclude)
    for uri in sorted(uris, key=basename, reverse=True):
        df = read_captures(settings, [uri[len(root.rstrip("/")) + 1 :]])
        if "text" not in df.columns:
            continue
        ok = df[(df.get("status") == "ok") & df["text"].notna()] if "status" in df.columns else df[df["text"].notna()]
        for text in ok["text"].astype(str):
            if text.strip() and text not in seen:
                seen.add(text)
                texts.append(text)
                if len(texts) >= limit:
                    return texts
    return texts


def transfer_set(settings: Settings, exclude: set[str]) -> tuple[pd.DataFrame, list[str]]:
    """(labelled training rows of every accepted batch, captured texts), both without the ``exclude`` texts.

    Hold-out rows are never in it: they feed the evaluation set and the agreement sample.
    """
    from pipelines.datasets import load_accepted, split_holdout

    text, label = settings.data.text_column, settings.data.label_column
    trainable = split_holdout(load_accepted(settings), settings)[0]
    if text not in trainable.columns or label not in trainable.columns:
        labelled = trainable[:0]
    else:
        labelled = _clean(trainable, text, label)
        labelled = labelled[~labelled[text].astype(str).isin(exclude)].reset_index(drop=True)
    known = exclude | set(labelled[text].astype(str)) if len(labelled) else set(exclude)
    captured = captured_texts(settings, settings.compress.distill_capture_rows, known)
    return labelled, captured


def epochs_for(rows: int, settings: Settings) -> int:
    """About ``compress.distill_sample_passes`` rows seen, at least one epoch, at most ``distill_epochs``."""
    cfg = settings.compress
    return int(max(1, min(cfg.distill_epochs, math.ceil(cfg.distill_sample_passes / max(rows, 1)))))


def _macro_f1(labels: Any, pred: Any) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(labels, pred, average="macro", zero_division=0))


def distill(
    settings: Settings,
    teacher: Any,
    tokenizer: Any,
    labelled: pd.DataFrame,
    unlabelled: list[str],
) -> DistillResult:
    """Build the student from ``teacher`` and train it on the teacher's soft targets and the hard labels.

    Args:
        settings: ``compress.distill_*`` for the student and its loss; ``train.batch_size``, ``max_length``,
            ``weight_decay``, ``warmup_ratio``, ``class_weighted``, ``validation_share``, ``seed`` and
            ``logging_steps`` as the train step uses them.
        teacher: the trained classifier (left unchanged).
        tokenizer: its tokenizer.
        labelled: rows with the text and label columns (CE + KL); a validation split of them picks the epoch.
        unlabelled: texts without labels (KL only).

    Returns:
        The best student (by validation agreement with the teacher, then macro-F1) and its metrics:
        ``sample_passes`` (student rows fed), ``train_seconds`` (including the teacher's scoring),
        ``teacher_passes``, ``epochs_run``, ``best_epoch``, ``val_agreement``, ``val_macro_f1``,
        ``teacher_val_macro_f1``, the row counts.

    Raises:
        ValueError: too few labelled rows, a bad ``compress.distill_layers``, or not a BERT-like model.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F
    from transformers import get_linear_schedule_with_warmup

    from pipelines.compress import torch_logits
    from pipelines.train import class_weights, label_ids, validation_split

    cfg, tcfg = settings.compress, settings.train
    text = settings.data.text_column
    n_teacher = len(encoder_layers(teacher))
    layers = student_layers(settings, n_teacher)
    if len(labelled) < 2:
        raise ValueError(
            f"distillation needs labelled training rows: found {len(labelled)} outside the hold-out; accept a batch "
            "first or turn compress.distill off"
        )
    started = time.perf_counter()
    torch.manual_seed(tcfg.seed)
    train_df, val_df = validation_split(labelled, settings)
    texts = train_df[text].astype(str).tolist() + list(unlabelled)
    labels = label_ids(train_df, settings) + [-100] * len(unlabelled)
    val_texts, val_labels = val_df[text].astype(str).tolist(), np.asarray(label_ids(val_df, settings))
    teacher.eval()
    soft = torch.from_numpy(torch_logits(teacher, tokenizer, texts, tcfg.max_length, cfg.infer_batch_size))
    teacher_val = torch_logits(teacher, tokenizer, val_texts, tcfg.max_length, cfg.infer_batch_size).argmax(1)
    scoring_s = time.perf_counter() - started
    student = make_student(teacher, layers)
    enc = tokenizer(texts, truncation=True, max_length=tcfg.max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    epochs = epochs_for(len(texts), settings)
    batch = tcfg.batch_size
    steps_per_epoch = math.ceil(len(texts) / batch)
    total = steps_per_epoch * epochs
    n_labels = len(settings.data.labels)
    weight = (
        torch.tensor(class_weights(label_ids(train_df, settings), n_labels), dtype=torch.float32)
        if tcfg.class_weighted
        else None
    )
    trainable = [p for p in student.parameters() if p.requires_grad]
    decay = [p for n, p in student.named_parameters() if p.requires_grad and not _no_decay(n)]
    rest = [p for n, p in student.named_parameters() if p.requires_grad and _no_decay(n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": tcfg.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=cfg.distill_learning_rate,
    )
    schedule = get_linear_schedule_with_warmup(optimizer, int(tcfg.warmup_ratio * total), total)
    T, alpha = cfg.distill_temperature, cfg.distill_alpha
    log.info(
        "distill: student keeps encoder layers %s of %d; %d labelled + %d unlabelled texts (%d validation rows), "
        "%d epoch(s) of %d steps, T=%s, alpha=%s, lr %.1e; the teacher scored them in %.1fs",
        layers,
        n_teacher,
        len(train_df),
        len(unlabelled),
        len(val_df),
        epochs,
        steps_per_epoch,
        T,
        alpha,
        cfg.distill_learning_rate,
        scoring_s,
    )
    generator = torch.Generator().manual_seed(tcfg.seed)
    history: list[dict[str, float]] = []
    best: tuple[float, float] | None = None
    best_state, best_epoch, since_best, step, passes, train_s = None, 0, 0, 0, 0, 0.0
    running = {"loss": 0.0, "kl": 0.0, "ce": 0.0, "n": 0}
    torch.set_grad_enabled(True)
    for epoch in range(1, epochs + 1):
        student.train()
        epoch_started = time.perf_counter()
        for idx in torch.randperm(len(texts), generator=generator).split(batch):
            rows = idx.tolist()
            inputs = tokenizer.pad({k: [enc[k][i] for i in rows] for k in keys}, return_tensors="pt")
            logits = student(**inputs).logits.float()
            target = soft[rows]
            kl = F.kl_div(F.log_softmax(logits / T, -1), F.softmax(target / T, -1), reduction="batchmean") * T * T
            y = torch.tensor([labels[i] for i in rows])
            ce = F.cross_entropy(logits, y, weight=weight, ignore_index=-100) if bool((y >= 0).any()) else kl * 0
            loss = alpha * kl + (1 - alpha) * ce
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            schedule.step()
            step += 1
            passes += len(rows)
            for key, value in (("loss", loss), ("kl", kl), ("ce", ce)):
                running[key] += float(value.detach())
            running["n"] += 1
            if step % tcfg.logging_steps == 0 or step == 1 or step == total:
                elapsed = train_s + time.perf_counter() - epoch_started
                n = running["n"]
                row = {
                    "step": step,
                    "epoch": epoch - 1 + (step - (epoch - 1) * steps_per_epoch) / steps_per_epoch,
                    "loss": running["loss"] / n,
                    "kl": running["kl"] / n,
                    "ce": running["ce"] / n,
                    "samples_per_s": passes / elapsed if elapsed > 0 else 0.0,
                }
                log.info(
                    "distill step %d/%d epoch %.2f loss %.4f (KL %.4f, CE %.4f) lr %.2e %.1f samples/s",
                    step,
                    total,
                    row["epoch"],
                    row["loss"],
                    row["kl"],
                    row["ce"],
                    schedule.get_last_lr()[0],
                    row["samples_per_s"],
                )
                history.append(row)
                _log_metrics({f"distill_{k}": v for k, v in row.items() if k != "step"}, step)
                running = {"loss": 0.0, "kl": 0.0, "ce": 0.0, "n": 0}
        train_s += time.perf_counter() - epoch_started
        val_pred = torch_logits(student, tokenizer, val_texts, tcfg.max_length, cfg.infer_batch_size).argmax(1)
        agreement = float(np.mean(val_pred == teacher_val)) if len(val_texts) else 1.0
        f1 = _macro_f1(val_labels, val_pred)
        history.append({"step": step, "epoch": float(epoch), "val_agreement": agreement, "val_macro_f1": f1})
        _log_metrics({"distill_val_agreement": agreement, "distill_val_macro_f1": f1}, step)
        better = best is None or (agreement, f1) > best
        log.info(
            "distill epoch %d/%d: validation agreement with the teacher %.3f, macro-F1 %.3f%s",
            epoch,
            epochs,
            agreement,
            f1,
            " (best so far)" if better else "",
        )
        if better:
            best, best_epoch, since_best = (agreement, f1), epoch, 0
            best_state = {k: v.detach().clone() for k, v in student.state_dict().items()}
        else:
            since_best += 1
            if since_best >= cfg.distill_patience:
                log.info("distill: no better epoch in %d, stopping after epoch %d", since_best, epoch)
                break
    if best_state is not None:
        student.load_state_dict(best_state)
    student.eval()
    assert best is not None
    metrics = {
        "sample_passes": float(passes),
        "teacher_passes": float(len(texts) + len(val_texts)),
        "train_seconds": float(train_s + scoring_s),
        "teacher_scoring_seconds": float(scoring_s),
        "samples_per_s": float(passes / train_s) if train_s else 0.0,
        "epochs_planned": float(epochs),
        "epochs_run": float(epoch),
        "best_epoch": float(best_epoch),
        "steps": float(step),
        "val_agreement": best[0],
        "val_macro_f1": best[1],
        "teacher_val_macro_f1": _macro_f1(val_labels, teacher_val),
        "labelled_rows": float(len(train_df)),
        "unlabelled_rows": float(len(unlabelled)),
        "val_rows": float(len(val_df)),
    }
    log.info(
        "distill: done in %.1fs (%d sample passes); best epoch %d: validation agreement %.3f, macro-F1 %.3f "
        "(teacher %.3f)",
        metrics["train_seconds"],
        passes,
        best_epoch,
        best[0],
        best[1],
        metrics["teacher_val_macro_f1"],
    )
    return DistillResult(student, layers, n_teacher, metrics, history)


def _no_decay(name: str) -> bool:
    return name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name


def _log_metrics(metrics: dict[str, float], step: int) -> None:
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)
