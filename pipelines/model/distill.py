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

from pipelines.data.datasets import (
    capture_root,
    class_weights,
    label_ids,
    load_accepted,
    read_captures,
    split_holdout,
    validation_split,
)
from pipelines.io.storage import basename, get_storage
from pipelines.model.modeling import torch_logits

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
    import torch  # heavy (torch): imported when used

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
    from sklearn.metrics import f1_score  # heavy (sklearn): imported when used

    return float(f1_score(labels, pred, average="macro", zero_division=0))


@dataclass
class _Transfer:
    """The transfer set, tokenised, with the teacher's logits: what every epoch reads."""

    texts: list[str]
    labels: list[int]  # -100 for unlabelled texts (KL term only)
    enc: Any
    keys: list[str]
    soft: Any  # teacher logits, one row per text
    val_texts: list[str]
    val_labels: Any
    teacher_val: Any  # the teacher's validation predictions
    train_rows: int
    val_rows: int
    unlabelled_rows: int
    scoring_s: float


@dataclass
class _Progress:
    """Counters and the best epoch so far (by validation agreement with the teacher, then macro-F1)."""

    step: int = 0
    passes: int = 0
    train_s: float = 0.0
    epochs_run: int = 0
    best: tuple[float, float] | None = None
    best_state: dict[str, Any] | None = None
    best_epoch: int = 0
    since_best: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    running: dict[str, float] = field(default_factory=lambda: {"loss": 0.0, "kl": 0.0, "ce": 0.0, "n": 0})


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
    import torch  # heavy (torch): imported when used

    cfg = settings.compress
    n_teacher = len(encoder_layers(teacher))
    layers = student_layers(settings, n_teacher)
    if len(labelled) < 2:
        raise ValueError(
            f"distillation needs labelled training rows: found {len(labelled)} outside the hold-out; accept a batch "
            "first or turn compress.distill off"
        )
    torch.manual_seed(settings.train.seed)
    data = _prepare(settings, teacher, tokenizer, labelled, unlabelled)
    student = make_student(teacher, layers)
    epochs = epochs_for(len(data.texts), settings)
    steps_per_epoch = math.ceil(len(data.texts) / settings.train.batch_size)
    log.info(
        "distill: student keeps encoder layers %s of %d; %d labelled + %d unlabelled texts (%d validation rows), "
        "%d epoch(s) of %d steps, T=%s, alpha=%s, lr %.1e; the teacher scored them in %.1fs",
        layers,
        n_teacher,
        data.train_rows,
        data.unlabelled_rows,
        data.val_rows,
        epochs,
        steps_per_epoch,
        cfg.distill_temperature,
        cfg.distill_alpha,
        cfg.distill_learning_rate,
        data.scoring_s,
    )
    progress = _fit(settings, student, tokenizer, data, epochs, steps_per_epoch * epochs)
    metrics = _metrics(data, progress, epochs)
    log.info(
        "distill: done in %.1fs (%d sample passes); best epoch %d: validation agreement %.3f, macro-F1 %.3f "
        "(teacher %.3f)",
        metrics["train_seconds"],
        progress.passes,
        progress.best_epoch,
        metrics["val_agreement"],
        metrics["val_macro_f1"],
        metrics["teacher_val_macro_f1"],
    )
    return DistillResult(student, layers, n_teacher, metrics, progress.history)


def _fit(settings: Settings, student: Any, tokenizer: Any, data: _Transfer, epochs: int, total_steps: int) -> _Progress:
    """Train ``student`` for up to ``epochs`` epochs (``total_steps`` optimizer steps; early stopping in
    :func:`_end_of_epoch`), then load the best epoch's weights into it and switch it to eval mode."""
    import torch  # heavy: loaded only when a student is trained

    optimizer, schedule = _optimizer(settings, student, total_steps)
    weight = _loss_weights(settings, data)
    generator = torch.Generator().manual_seed(settings.train.seed)
    progress = _Progress()
    torch.set_grad_enabled(True)
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        _train_epoch(
            settings, student, tokenizer, data, optimizer, schedule, weight, generator, progress, epoch, epochs
        )
        progress.train_s += time.perf_counter() - started
        progress.epochs_run = epoch
        if _end_of_epoch(settings, student, tokenizer, data, progress, epoch, epochs):
            break
    if progress.best_state is not None:
        student.load_state_dict(progress.best_state)
    student.eval()
    return progress


def _prepare(
    settings: Settings, teacher: Any, tokenizer: Any, labelled: pd.DataFrame, unlabelled: list[str]
) -> _Transfer:
    """Split off the validation rows, tokenise the transfer set and score it (and the validation rows) by the teacher."""
    import numpy as np  # heavy (numpy): imported when used
    import torch  # heavy (torch): imported when used

    cfg, tcfg = settings.compress, settings.train
    text = settings.data.text_column
    started = time.perf_counter()
    train_df, val_df = validation_split(labelled, settings)
    texts = train_df[text].astype(str).tolist() + list(unlabelled)
    labels = label_ids(train_df, settings) + [-100] * len(unlabelled)
    val_texts, val_labels = val_df[text].astype(str).tolist(), np.asarray(label_ids(val_df, settings))
    teacher.eval()
    soft = torch.from_numpy(torch_logits(teacher, tokenizer, texts, tcfg.max_length, cfg.infer_batch_size))
    teacher_val = torch_logits(teacher, tokenizer, val_texts, tcfg.max_length, cfg.infer_batch_size).argmax(1)
    scoring_s = time.perf_counter() - started
    enc = tokenizer(texts, truncation=True, max_length=tcfg.max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    return _Transfer(
        texts=texts,
        labels=labels,
        enc=enc,
        keys=keys,
        soft=soft,
        val_texts=val_texts,
        val_labels=val_labels,
        teacher_val=teacher_val,
        train_rows=len(train_df),
        val_rows=len(val_df),
        unlabelled_rows=len(unlabelled),
        scoring_s=scoring_s,
    )


def _optimizer(settings: Settings, student: Any, total_steps: int) -> tuple[Any, Any]:
    """AdamW (no decay on biases and norms) with a linear schedule and the train step's warm-up share."""
    import torch  # heavy (torch): imported when used
    from transformers import get_linear_schedule_with_warmup  # heavy (transformers): imported when used

    tcfg = settings.train
    decay = [p for n, p in student.named_parameters() if p.requires_grad and not _no_decay(n)]
    rest = [p for n, p in student.named_parameters() if p.requires_grad and _no_decay(n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": tcfg.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=settings.compress.distill_learning_rate,
    )
    return optimizer, get_linear_schedule_with_warmup(optimizer, int(tcfg.warmup_ratio * total_steps), total_steps)


def _loss_weights(settings: Settings, data: _Transfer) -> Any:
    """The train step's balanced class weights over the labelled training rows, or None when turned off."""
    import torch  # heavy (torch): imported when used

    if not settings.train.class_weighted:
        return None
    ids = [y for y in data.labels if y >= 0]
    return torch.tensor(class_weights(ids, len(settings.data.labels)), dtype=torch.float32)


def _train_epoch(
    settings: Settings,
    student: Any,
    tokenizer: Any,
    data: _Transfer,
    optimizer: Any,
    schedule: Any,
    weight: Any,
    generator: Any,
    progress: _Progress,
    epoch: int,
    epochs: int,
) -> None:
    """One pass over the transfer set in seeded random order: ``alpha * T^2 * KL + (1 - alpha) * CE`` per batch."""
    import torch  # heavy (torch): imported when used
    import torch.nn.functional as F  # heavy (torch): imported when used

    cfg, tcfg = settings.compress, settings.train
    T, alpha = cfg.distill_temperature, cfg.distill_alpha
    trainable = [p for p in student.parameters() if p.requires_grad]
    steps_per_epoch = math.ceil(len(data.texts) / tcfg.batch_size)
    total = steps_per_epoch * epochs
    started = time.perf_counter()
    student.train()
    for idx in torch.randperm(len(data.texts), generator=generator).split(tcfg.batch_size):
        rows = idx.tolist()
        inputs = tokenizer.pad({k: [data.enc[k][i] for i in rows] for k in data.keys}, return_tensors="pt")
        logits = student(**inputs).logits.float()
        target = data.soft[rows]
        kl = F.kl_div(F.log_softmax(logits / T, -1), F.softmax(target / T, -1), reduction="batchmean") * T * T
        y = torch.tensor([data.labels[i] for i in rows])
        ce = F.cross_entropy(logits, y, weight=weight, ignore_index=-100) if bool((y >= 0).any()) else kl * 0
        loss = alpha * kl + (1 - alpha) * ce
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        schedule.step()
        progress.step += 1
        progress.passes += len(rows)
        for key, value in (("loss", loss), ("kl", kl), ("ce", ce)):
            progress.running[key] += float(value.detach())
        progress.running["n"] += 1
        if progress.step % tcfg.logging_steps == 0 or progress.step == 1 or progress.step == total:
            _log_progress(progress, schedule, epoch, steps_per_epoch, total, time.perf_counter() - started)


def _log_progress(
    progress: _Progress, schedule: Any, epoch: int, steps_per_epoch: int, total: int, epoch_s: float
) -> None:
    """A progress line (running means since the last one) to the log, the history and the MLflow run."""
    elapsed = progress.train_s + epoch_s
    n = progress.running["n"]
    row = {
        "step": progress.step,
        "epoch": epoch - 1 + (progress.step - (epoch - 1) * steps_per_epoch) / steps_per_epoch,
        "loss": progress.running["loss"] / n,
        "kl": progress.running["kl"] / n,
        "ce": progress.running["ce"] / n,
        "samples_per_s": progress.passes / elapsed if elapsed > 0 else 0.0,
    }
    log.info(
        "distill step %d/%d epoch %.2f loss %.4f (KL %.4f, CE %.4f) lr %.2e %.1f samples/s",
        progress.step,
        total,
        row["epoch"],
        row["loss"],
        row["kl"],
        row["ce"],
        schedule.get_last_lr()[0],
        row["samples_per_s"],
    )
    progress.history.append(row)
    _log_metrics({f"distill_{k}": v for k, v in row.items() if k != "step"}, progress.step)
    progress.running = {"loss": 0.0, "kl": 0.0, "ce": 0.0, "n": 0}


def _end_of_epoch(
    settings: Settings, student: Any, tokenizer: Any, data: _Transfer, progress: _Progress, epoch: int, epochs: int
) -> bool:
    """Score the validation rows, keep the best epoch's weights; True when patience has run out."""
    import numpy as np  # heavy (numpy): imported when used

    cfg, tcfg = settings.compress, settings.train
    val_pred = torch_logits(student, tokenizer, data.val_texts, tcfg.max_length, cfg.infer_batch_size).argmax(1)
    agreement = float(np.mean(val_pred == data.teacher_val)) if len(data.val_texts) else 1.0
    f1 = _macro_f1(data.val_labels, val_pred)
    progress.history.append(
        {"step": progress.step, "epoch": float(epoch), "val_agreement": agreement, "val_macro_f1": f1}
    )
    _log_metrics({"distill_val_agreement": agreement, "distill_val_macro_f1": f1}, progress.step)
    better = progress.best is None or (agreement, f1) > progress.best
    log.info(
        "distill epoch %d/%d: validation agreement with the teacher %.3f, macro-F1 %.3f%s",
        epoch,
        epochs,
        agreement,
        f1,
        " (best so far)" if better else "",
    )
    if better:
        progress.best, progress.best_epoch, progress.since_best = (agreement, f1), epoch, 0
        progress.best_state = {k: v.detach().clone() for k, v in student.state_dict().items()}
        return False
    progress.since_best += 1
    if progress.since_best >= cfg.distill_patience:
        log.info("distill: no better epoch in %d, stopping after epoch %d", progress.since_best, epoch)
        return True
    return False


def _metrics(data: _Transfer, progress: _Progress, epochs: int) -> dict[str, float]:
    assert progress.best is not None
    return {
        "sample_passes": float(progress.passes),
        "teacher_passes": float(len(data.texts) + len(data.val_texts)),
        "train_seconds": float(progress.train_s + data.scoring_s),
        "teacher_scoring_seconds": float(data.scoring_s),
        "samples_per_s": float(progress.passes / progress.train_s) if progress.train_s else 0.0,
        "epochs_planned": float(epochs),
        "epochs_run": float(progress.epochs_run),
        "best_epoch": float(progress.best_epoch),
        "steps": float(progress.step),
        "val_agreement": progress.best[0],
        "val_macro_f1": progress.best[1],
        "teacher_val_macro_f1": _macro_f1(data.val_labels, data.teacher_val),
        "labelled_rows": float(data.train_rows),
        "unlabelled_rows": float(data.unlabelled_rows),
        "val_rows": float(data.val_rows),
    }


def _no_decay(name: str) -> bool:
    return name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name


def _log_metrics(metrics: dict[str, float], step: int) -> None:
    import mlflow  # heavy (mlflow): imported when used

    if mlflow.active_run() is not None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)
