"""Train step: retrain from the base model, or fine-tune the champion, with the transformers Trainer.

``retrain`` starts from ``train.base_model`` with a fresh classification head and learns from every accepted
batch (hold-out rows excluded). ``fine_tune`` starts from the champion's fp32 weights and learns from the new
batch plus a replayed sample of earlier accepted rows (``train.replay_ratio``), with a lower learning rate and
the embeddings and the lower ``train.freeze_layers`` encoder layers frozen. A fine-tune's new rows are every batch
the champion has not learned (:func:`unlearned_batches`): the batch of this run plus any accepted after the
champion was registered, whose own run was skipped or whose challenger was never promoted (held for review,
rejected, superseded), so a held challenger's batch is not lost to the loop.

Both use the same Trainer setup: dynamic padding, length-grouped batches, a class-weighted loss, early stopping
on a seeded, stratified validation split, and bf16 (or fp16) autocast on a GPU, fp32 on a CPU.

Outputs under ``<step_uri>``: ``model/`` (save_pretrained, safetensors, with the tokenizer and ``labels.json``),
``reference/`` (the drift reference of the training rows) and ``eval.parquet`` (the golden set plus the new
batch's hold-out rows).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.data.datasets import (
    accepted_uris,
    class_weights,
    ensure_golden,
    label_ids,
    load_accepted,
    oversample,
    read_table,
    split_holdout,
    validation_split,
    write_parquet,
)
from pipelines.data.reference import save_reference
from pipelines.io.storage import basename
from pipelines.io.tracking import step_run
from pipelines.model.decision import calibrate
from pipelines.model.modeling import load_base, load_classifier

if TYPE_CHECKING:
    import pandas as pd

    from pipelines.config import Settings, TrainSettings
    from pipelines.context import StepContext

log = logging.getLogger(__name__)

#: The model version tag (written by the register step) listing the accepted batches when it was registered.
ACCEPTED_BATCHES_TAG = "data.accepted_batches"

ACTIONS = ("retrain", "fine_tune")

#: Most unseen texts scored to set the decision offsets (a seeded sample beyond it).
MAX_DECISION_TEXTS = 2000


@dataclass
class FitResult:
    """What :func:`fit` hands back: the best model and how training went."""

    model: Any
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    device: str = "cpu"
    precision: str = "fp32"


# --- data ------------------------------------------------------------------------------------------
class TextDataset:
    """Tokenised rows (no padding) as a map-style dataset of dicts, as the Trainer's collator expects."""

    def __init__(self, encodings: dict[str, list[list[int]]], labels: list[int]) -> None:
        self._encodings = encodings
        self._labels = labels

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {k: v[i] for k, v in self._encodings.items()}
        item["labels"] = self._labels[i]
        return item


def encode(
    tokenizer: Any, texts: list[str], labels: list[int], max_length: int, pad_to_max: bool = False
) -> TextDataset:
    """Tokenise ``texts`` (truncated to ``max_length``); padding is left to the collator unless ``pad_to_max``."""
    enc = tokenizer(texts, truncation=True, max_length=max_length, padding="max_length" if pad_to_max else False)
    keep = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    return TextDataset({k: enc[k] for k in keep}, labels)


# --- model -----------------------------------------------------------------------------------------
def device_and_precision() -> tuple[str, str]:
    """(``cuda``|``cpu``, ``bf16``|``fp16``|``fp32``): bf16 autocast where the GPU supports it, else fp16."""
    import torch  # heavy (torch): imported when used

    if torch.cuda.is_available():
        return "cuda", "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "cpu", "fp32"


def freeze_lower_layers(model: Any, n_layers: int) -> list[str]:
    """Freeze the embeddings and the lowest ``n_layers`` encoder layers; return the frozen parameter names.

    Raises:
        ValueError: the model has no ``base_model.encoder.layer`` stack (not a BERT-like encoder).
    """
    base = model.base_model
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if layers is None or not hasattr(base, "embeddings"):
        raise ValueError(
            f"cannot freeze layers of {type(model).__name__}: expected a BERT-like encoder with "
            "embeddings and encoder.layer; set train.freeze_layers=0"
        )
    if n_layers > len(layers):
        log.warning("train.freeze_layers=%d > %d encoder layers; freezing all of them", n_layers, len(layers))
    modules = [base.embeddings, *list(layers)[: min(n_layers, len(layers))]]
    prefix = model.base_model_prefix
    frozen = []
    for module in modules:
        for name, param in module.named_parameters():
            param.requires_grad = False
            frozen.append(name)
    log.info(
        "froze the embeddings and %d encoder layer(s) of %s (%d tensors)",
        min(n_layers, len(layers)),
        prefix,
        len(frozen),
    )
    return frozen


# --- the Trainer setup -----------------------------------------------------------------------------
def _weighted_trainer_class() -> type:
    import torch  # heavy (torch): imported when used
    from transformers import Trainer  # heavy (transformers): imported when used

    class WeightedTrainer(Trainer):
        """A Trainer whose loss is cross-entropy weighted per class (``class_weights``, or unweighted)."""

        def __init__(self, *args: Any, class_weights: list[float] | None = None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._class_weights = class_weights

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            logits = outputs.logits
            weight = None
            if self._class_weights is not None:
                weight = torch.tensor(self._class_weights, dtype=torch.float32, device=logits.device)
            loss = torch.nn.functional.cross_entropy(logits.float(), labels, weight=weight)
            return (loss, outputs) if return_outputs else loss

    return WeightedTrainer


def _progress_callback(history: list[dict[str, float]], counter: dict[str, float]) -> Any:
    from transformers import TrainerCallback  # heavy (transformers): imported when used

    class Progress(TrainerCallback):
        """Logs step, loss and samples/s every ``logging_steps``; times pure training (no eval, no saving)."""

        def on_epoch_begin(self, args, state, control, **kw):  # noqa: ANN001
            counter["training"] = 1
            counter["epoch_started"] = time.perf_counter()

        def on_epoch_end(self, args, state, control, **kw):  # noqa: ANN001
            counter["training"] = 0
            counter["train_s"] += time.perf_counter() - counter["epoch_started"]

        def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
            logs = logs or {}
            elapsed = counter["train_s"] + (
                time.perf_counter() - counter["epoch_started"] if counter["training"] else 0.0
            )
            rate = counter["samples"] / elapsed if elapsed > 0 else 0.0
            row = {"step": state.global_step, "epoch": float(state.epoch or 0)}
            if "loss" in logs:
                row.update(loss=float(logs["loss"]), samples_per_s=rate)
                log.info(
                    "step %d/%d epoch %.2f loss %.4f lr %.2e %.1f samples/s",
                    state.global_step,
                    state.max_steps,
                    row["epoch"],
                    logs["loss"],
                    logs.get("learning_rate", 0.0),
                    rate,
                )
            elif "eval_loss" in logs:
                row.update({k: float(v) for k, v in logs.items() if k.startswith("eval_") and _is_number(v)})
                log.info(
                    "eval at step %d: loss %.4f macro-F1 %.3f accuracy %.3f",
                    state.global_step,
                    logs["eval_loss"],
                    logs.get("eval_macro_f1", float("nan")),
                    logs.get("eval_accuracy", float("nan")),
                )
            else:
                return
            history.append(row)
            _log_mlflow_metrics({k: v for k, v in row.items() if k != "step"}, step=state.global_step)

    return Progress()


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _log_mlflow_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    import mlflow  # heavy (mlflow): imported when used

    if mlflow.active_run() is not None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def _compute_metrics(eval_pred: Any) -> dict[str, float]:
    import numpy as np  # heavy (numpy): imported when used
    from sklearn.metrics import accuracy_score, f1_score  # heavy (sklearn): imported when used

    logits, labels = eval_pred
    pred = np.asarray(logits).argmax(-1)
    return {
        "accuracy": float(accuracy_score(labels, pred)),
        "macro_f1": float(f1_score(labels, pred, average="macro", zero_division=0)),
    }


class _CountingCollator:
    """Dynamic padding that counts the samples it pads while training (for samples/s)."""

    def __init__(self, inner: Any, counter: dict[str, float]) -> None:
        self._inner = inner
        self._counter = counter

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        if self._counter["training"]:
            self._counter["samples"] += len(features)
        return self._inner(features)


def epochs_for(rows: int, settings: Settings, action: str) -> float:
    """Epochs for ``rows`` training rows: about ``target_sample_passes`` rows seen, within [min_epochs, cap]."""
    cfg = settings.train
    if action == "fine_tune":
        target, cap, floor = (
            cfg.fine_tune_sample_passes,
            cfg.fine_tune_epochs,
            min(cfg.min_epochs, cfg.fine_tune_epochs),
        )
    else:
        target, cap, floor = cfg.target_sample_passes, cfg.epochs, cfg.min_epochs
    return float(max(floor, min(cap, math.ceil(target / max(rows, 1)))))


def _training_args(
    settings: Settings, work_dir: str | Path, learning_rate: float, epochs: float, optimized: bool, stop_early: bool
):
    """Trainer arguments; ``stop_early`` keeps a checkpoint per epoch and restores the best one at the end."""
    from transformers import TrainingArguments  # heavy (transformers): imported when used

    cfg = settings.train
    device, precision = device_and_precision()
    return TrainingArguments(
        output_dir=str(work_dir),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size * 2,
        learning_rate=learning_rate,
        num_train_epochs=epochs,
        max_steps=cfg.max_steps,
        weight_decay=cfg.weight_decay,
        warmup_ratio=cfg.warmup_ratio,
        lr_scheduler_type="linear",
        group_by_length=optimized,
        eval_strategy="epoch",
        save_strategy="epoch" if stop_early else "no",
        save_only_model=True,
        save_total_limit=1,
        load_best_model_at_end=stop_early,
        metric_for_best_model="macro_f1",
        greater_is_better=True,
        logging_strategy="steps",
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        report_to="none",
        disable_tqdm=True,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        dataloader_num_workers=0,
        dataloader_pin_memory=device == "cuda",
        remove_unused_columns=False,
    )


def fit(
    settings: Settings,
    model: Any,
    tokenizer: Any,
    train_df: pd.DataFrame,
    val_df: pd.DataFrame,
    *,
    learning_rate: float,
    epochs: float,
    work_dir: str | Path,
    optimized: bool = True,
) -> FitResult:
    """Train ``model`` on ``train_df`` with early stopping on ``val_df``; return the best model and its metrics.

    Validation runs after every epoch; early stopping watches validation macro-F1 (not loss: with imbalanced
    classes the loss can fall while the minority class is lost) and the best epoch's weights are restored. With
    fewer than ``train.early_stopping_min_rows`` validation rows the epochs run in full and the last one is kept:
    a tiny split picks an epoch by noise.

    Args:
        settings: the settings (``train`` section: batch size, length, seed, weighting, patience ...).
        model: a sequence-classification model; frozen parameters stay frozen.
        tokenizer: its tokenizer.
        train_df: rows to learn from (text and label columns).
        val_df: rows for early stopping and the reported validation metrics.
        learning_rate: peak learning rate (linear decay after ``train.warmup_ratio`` warm-up).
        epochs: maximum epochs.
        work_dir: scratch folder for checkpoints.
        optimized: True for the product's setup (dynamic padding, length-grouped batches); False pads every
            row to ``train.max_length`` in random order (the baseline of ``bench/train.py``).

    Returns:
        The best model (by validation macro-F1; the last one without early stopping), final metrics
        (``sample_passes``: training rows actually fed, i.e. rows x epochs run; ``best_epoch``; ``early_stopping``
        1 or 0), the logged history, device and precision.
    """
    import torch  # heavy (torch): imported when used

    stop_early = len(val_df) >= settings.train.early_stopping_min_rows
    args = _training_args(settings, work_dir, learning_rate, epochs, optimized, stop_early)
    run = _make_trainer(settings, model, tokenizer, (train_df, val_df), args, optimized)
    torch.set_grad_enabled(True)  # in case a library switched autograd off process-wide
    initial = run.trainer.evaluate()
    log.info(
        "training %s rows (%d validation) on %s in %s, lr %.1e, %s %s epochs, class weights %s",
        len(run.trainer.train_dataset),
        len(run.trainer.eval_dataset),
        run.device,
        run.precision,
        learning_rate,
        "up to" if stop_early else f"all (fewer than {settings.train.early_stopping_min_rows} validation rows)",
        epochs,
        [round(w, 2) for w in run.weights] if run.weights else "off",
    )
    out = run.trainer.train()
    final = run.trainer.evaluate()
    metrics = _fit_metrics(run, out, initial, final)
    metrics["early_stopping"] = float(stop_early)
    if run.device == "cuda":
        metrics["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return FitResult(
        model=run.trainer.model, metrics=metrics, history=run.history, device=run.device, precision=run.precision
    )


@dataclass
class _TrainerRun:
    """A configured Trainer and what its callbacks fill in while it trains."""

    trainer: Any
    counter: dict[str, float]
    history: list[dict[str, float]]
    weights: list[float] | None
    device: str
    precision: str


def _make_trainer(
    settings: Settings,
    model: Any,
    tokenizer: Any,
    frames: tuple[pd.DataFrame, pd.DataFrame],
    args: Any,
    optimized: bool,
) -> _TrainerRun:
    """The weighted Trainer on (train, validation) ``frames`` with ``args`` (:func:`_training_args`): early
    stopping on validation macro-F1 (when ``args`` restores the best epoch), a sample counter and progress logging."""
    from transformers import (  # heavy (transformers): imported when used
        DataCollatorWithPadding,
        EarlyStoppingCallback,
        PrinterCallback,
        default_data_collator,
        set_seed,
    )

    cfg = settings.train
    train_df, val_df = frames
    text, num_labels = settings.data.text_column, len(settings.data.labels)
    train_ids, val_ids = label_ids(train_df, settings), label_ids(val_df, settings)
    train_ds = encode(tokenizer, train_df[text].astype(str).tolist(), train_ids, cfg.max_length, not optimized)
    val_ds = encode(tokenizer, val_df[text].astype(str).tolist(), val_ids, cfg.max_length, not optimized)
    device, precision = device_and_precision()
    counter: dict[str, float] = {"training": 0, "samples": 0, "train_s": 0.0, "epoch_started": 0.0}
    history: list[dict[str, float]] = []
    inner = DataCollatorWithPadding(tokenizer) if optimized else default_data_collator
    set_seed(cfg.seed)
    weights = class_weights(train_ids, num_labels) if cfg.class_weighted else None
    trainer = _weighted_trainer_class()(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        data_collator=_CountingCollator(inner, counter),
        compute_metrics=_compute_metrics,
        callbacks=[
            *(
                [EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience)]
                if args.load_best_model_at_end
                else []
            ),
            _progress_callback(history, counter),
        ],
        class_weights=weights,
    )
    trainer.remove_callback(PrinterCallback)  # the progress callback logs instead of printing dicts
    return _TrainerRun(trainer, counter, history, weights, device, precision)


def _fit_metrics(run: _TrainerRun, out: Any, initial: dict[str, Any], final: dict[str, Any]) -> dict[str, float]:
    """The fit's figures: validation before and after, throughput, epochs and sample passes actually run."""
    train_s = run.counter["train_s"] or out.metrics.get("train_runtime", 0.0)
    state = run.trainer.state
    return {
        "train_loss": float(out.training_loss),
        "val_loss": float(final["eval_loss"]),
        "val_macro_f1": float(final["eval_macro_f1"]),
        "val_accuracy": float(final["eval_accuracy"]),
        "val_loss_initial": float(initial["eval_loss"]),
        "val_macro_f1_initial": float(initial["eval_macro_f1"]),
        "val_accuracy_initial": float(initial["eval_accuracy"]),
        "samples_per_s": float(run.counter["samples"] / train_s) if train_s else 0.0,
        "train_seconds": float(train_s),
        "train_rows": float(len(run.trainer.train_dataset)),
        "val_rows": float(len(run.trainer.eval_dataset)),
        "epochs_run": float(state.epoch or 0.0),
        "best_epoch": _best_epoch(run.history),
        "steps": float(state.global_step),
        "sample_passes": float(run.counter["samples"]),
    }


def _best_epoch(history: list[dict[str, float]]) -> float:
    """The epoch whose validation macro-F1 was highest (the first of ties, as the Trainer keeps it)."""
    evals = [h for h in history if "eval_macro_f1" in h]
    if not evals:
        return 0.0
    return float(max(evals, key=lambda h: (h["eval_macro_f1"], -h["epoch"]))["epoch"])


def warm_up_head(
    settings: Settings, model: Any, tokenizer: Any, train_df: pd.DataFrame, val_df: pd.DataFrame, work_dir: Path
) -> FitResult | None:
    """Linear probe: train only the classification head on the frozen encoder (``train.head_warmup_epochs``).

    Returns None when the warm-up is off. Parameters frozen before the call stay frozen after it.
    """
    cfg = settings.train
    if cfg.head_warmup_epochs <= 0:
        return None
    prefix = model.base_model_prefix
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    for name, param in model.named_parameters():
        param.requires_grad = not name.startswith(prefix + ".") and name in trainable
    log.info(
        "head warm-up: %d epoch(s) on the frozen encoder at lr %.1e", cfg.head_warmup_epochs, cfg.head_learning_rate
    )
    try:
        result = fit(
            settings,
            model,
            tokenizer,
            train_df,
            val_df,
            learning_rate=cfg.head_learning_rate,
            epochs=cfg.head_warmup_epochs,
            work_dir=work_dir,
        )
    finally:
        for name, param in model.named_parameters():
            param.requires_grad = name in trainable
    return result


def train_model(
    settings: Settings,
    action: str,
    model: Any,
    tokenizer: Any,
    rows: pd.DataFrame,
    work_dir: Path,
    unseen_texts: list[str] | None = None,
) -> FitResult:
    """The product's training recipe on ``rows``: validation split, epochs from the data size, a head warm-up
    before a retrain, the full fit with early stopping, then decision offsets for a class the model never predicts
    (:mod:`pipelines.model.decision`, on the validation texts plus ``unseen_texts``: the hold-out's texts, no labels).
    Used by the train step and by ``bench/stream.py``.

    Returns:
        The fit of the main phase; its ``sample_passes`` and ``train_seconds`` include the warm-up; its metrics
        hold ``decision_offset_<label>`` per class.
    """
    cfg = settings.train
    train_df, val_df = validation_split(rows, settings)
    train_df = oversample(train_df, settings, cfg.oversample)  # before the epochs: the pass budget counts copies
    epochs = epochs_for(len(train_df), settings, action)
    lr = cfg.learning_rate if action == "retrain" else cfg.fine_tune_learning_rate
    warm = (
        warm_up_head(settings, model, tokenizer, train_df, val_df, work_dir / "warmup") if action == "retrain" else None
    )
    if warm is not None:
        model = warm.model
    result = fit(
        settings, model, tokenizer, train_df, val_df, learning_rate=lr, epochs=epochs, work_dir=work_dir / "fit"
    )
    offsets = _decision_offsets(settings, result.model, tokenizer, rows, val_df, unseen_texts or [])
    for label, offset in zip(settings.data.labels, offsets, strict=True):
        result.metrics[f"decision_offset_{label}"] = float(offset)
    result.metrics["epochs_planned"] = epochs
    result.metrics["learning_rate"] = lr
    result.metrics["head_warmup_epochs"] = cfg.head_warmup_epochs if warm is not None else 0.0
    if warm is not None:
        for key in ("sample_passes", "train_seconds"):
            result.metrics[key] += warm.metrics[key]
        result.metrics["val_macro_f1_after_warmup"] = warm.metrics["val_macro_f1"]
        offset = warm.metrics["steps"]
        result.history = warm.history + [{**h, "step": h["step"] + offset} for h in result.history]
    return result


def _decision_offsets(
    settings: Settings, model: Any, tokenizer: Any, rows: pd.DataFrame, val_df: pd.DataFrame, unseen: list[str]
) -> Any:
    """Raise the bias of a class the model never predicts on unseen texts (:func:`pipelines.model.decision.calibrate`)."""
    import numpy as np  # heavy (numpy): imported when used

    cfg, labels = settings.train, settings.data.labels
    prior = np.bincount(label_ids(rows, settings), minlength=len(labels)) / max(len(rows), 1)
    texts = val_df[settings.data.text_column].astype(str).tolist() + list(unseen)
    if len(texts) > MAX_DECISION_TEXTS:
        keep = np.random.default_rng(cfg.seed).choice(len(texts), MAX_DECISION_TEXTS, replace=False)
        texts = [texts[i] for i in sorted(keep)]
    return calibrate(model, tokenizer, texts, prior, cfg.decision_floor, cfg.max_length)


# --- the step --------------------------------------------------------------------------------------
def resolve_action(ctx: StepContext) -> str:
    """The action: param ``action``, else the decide step's result.

    Raises:
        ValueError: no action is known, it is ``skip``, or it is not one of retrain / fine_tune.
    """
    action = ctx.params.get("action")
    if not action:
        decided = ctx.result_of("decide")
        action = decided.get("action") if decided else None
    if not action:
        raise ValueError(
            f"train has no action for run {ctx.run_id!r}: pass --param action='\"retrain\"' or run decide first"
        )
    if action == "skip":
        raise ValueError(f"action 'skip' for run {ctx.run_id!r}: nothing to train")
    if action not in ACTIONS:
        raise ValueError(f"action={action!r} is not one of {', '.join(ACTIONS)} (or skip)")
    return action


def _require_columns(df: pd.DataFrame, settings: Settings) -> None:
    text, label = settings.data.text_column, settings.data.label_column
    missing = [c for c in (text, label) if c not in df.columns]
    if missing:
        raise ValueError(f"training data lacks column(s) {missing!r}; expected {text!r} and {label!r}")


def _clean(df: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    text, label = settings.data.text_column, settings.data.label_column
    _require_columns(df, settings)
    df = df.dropna(subset=[text, label])
    df = df[df[text].astype(str).str.strip() != ""]
    return df.drop_duplicates(subset=[text, label]).reset_index(drop=True)


def select_rows(settings: Settings, action: str, new: pd.DataFrame, earlier: pd.DataFrame) -> dict[str, Any]:
    """The rows to learn from and the hold-out rows, from the new batch and the earlier accepted rows.

    ``retrain``: every trainable (non-hold-out) row so far. ``fine_tune``: the new batch's trainable rows plus a
    seeded sample of ``train.replay_ratio`` earlier rows per new row.
    """
    import pandas as pd  # heavy (pandas): imported when used

    _require_columns(new, settings)
    _require_columns(earlier, settings)
    # Split before cleaning: a batch's hold-out share follows its row count as stored (pipelines.data.datasets).
    new_train, new_holdout = (_clean(part, settings) for part in split_holdout(new, settings))
    earlier_train, earlier_holdout = (_clean(part, settings) for part in split_holdout(earlier, settings))
    if action == "retrain":
        rows = _clean(pd.concat([earlier_train, new_train], ignore_index=True), settings)
        replay = 0
    else:
        n_replay = min(len(earlier_train), round(len(new_train) * settings.train.replay_ratio))
        sample = earlier_train.sample(n=n_replay, random_state=settings.train.seed) if n_replay else earlier_train[:0]
        rows = _clean(pd.concat([new_train, sample], ignore_index=True), settings)
        replay = n_replay
    holdout = pd.concat([earlier_holdout, new_holdout], ignore_index=True)
    return {"rows": rows, "new_holdout": new_holdout, "holdout": holdout, "new_rows": len(new), "replay": replay}


def unlearned_batches(settings: Settings, accepted_uri: str) -> list[str]:
    """Accepted batches other than ``accepted_uri`` that the champion has not learned, in name order.

    Those accepted after the champion was registered: its ``data.accepted_batches`` tag lists the batches accepted
    when it was (its own included). [] without a champion, or when the tag is absent or unreadable (then only the
    run's own batch is new, as before the tag existed).
    """
    from pipelines.champion import champion_version  # pipelines.champion loads mlflow

    version = champion_version(settings)
    raw = (getattr(version, "tags", None) or {}).get(ACCEPTED_BATCHES_TAG) if version is not None else None
    try:
        known = set(json.loads(raw)) if raw else None
    except ValueError:
        known = None
    if not isinstance(known, set) or not known:
        if version is not None:
            log.warning(
                "champion v%s has no readable %s tag: fine-tuning on the new batch only",
                version.version,
                ACCEPTED_BATCHES_TAG,
            )
        return []
    return [u for u in accepted_uris(settings) if u != accepted_uri and basename(u) not in known]


def _training_data(ctx: StepContext, action: str, accepted_uri: str) -> dict[str, Any]:
    """Training rows and hold-out rows for ``action`` (a fine-tune's new rows include :func:`unlearned_batches`)."""
    import pandas as pd  # heavy (pandas): imported when used

    settings = ctx.settings
    catch_up = (
        unlearned_batches(settings, accepted_uri) if action == "fine_tune" and not ctx.get("champion_model_uri") else []
    )
    frames = []
    for uri in [accepted_uri, *catch_up]:
        frame = read_table(uri, settings)
        frame["batch_uri"] = uri
        frames.append(frame)
    new = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    data = select_rows(settings, action, new, load_accepted(settings, exclude={accepted_uri, *catch_up}))
    data["catch_up"] = [basename(u) for u in catch_up]
    if catch_up:
        log.info(
            "fine-tune catches up on %d batch(es) the champion has not learned: %s",
            len(catch_up),
            ", ".join(data["catch_up"]),
        )
    if data["rows"].empty:
        raise ValueError(
            f"no trainable rows for {action}: batch {accepted_uri!r} has {data['new_rows']} rows, all in the hold-out "
            f"(data.holdout_share={settings.data.holdout_share}, data.min_holdout_rows={settings.data.min_holdout_rows})"
        )
    return data


def _start_model(ctx: StepContext, action: str, scratch: Path) -> tuple[Any, Any, str]:
    """The model to train, its tokenizer, and a description of where it came from."""
    settings = ctx.settings
    if action == "retrain":
        model, tokenizer = load_base(settings)
        return model, tokenizer, settings.train.base_model
    uri = ctx.get("champion_model_uri")
    if uri:
        path = ctx.storage.local_dir(uri, scratch)
        base = uri
    else:
        from pipelines.champion import get_champion  # pipelines.champion loads mlflow

        champion = get_champion(settings)
        if champion is None:
            raise ValueError(
                f"fine_tune needs a champion, but model {settings.registry.model_name!r} has no 'champion' alias "
                "(and no input champion_model_uri was given); run with action 'retrain' first"
            )
        path, base = champion.fp32_dir, f"{champion.name} v{champion.version}"
    model, tokenizer = load_classifier(path, settings)
    freeze_lower_layers(model, settings.train.freeze_layers)
    return model, tokenizer, str(base)


def _plot_history(history: list[dict[str, float]], title: str) -> Any:
    import matplotlib  # heavy (matplotlib): imported when used

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy (matplotlib): imported when used

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    train = [h for h in history if "loss" in h]
    evals = [h for h in history if "eval_loss" in h]
    ax1.plot([h["step"] for h in train], [h["loss"] for h in train], label="train loss")
    ax1.plot([h["step"] for h in evals], [h["eval_loss"] for h in evals], "o-", label="validation loss")
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax2.plot([h["step"] for h in evals], [h.get("eval_macro_f1", 0) for h in evals], "o-", label="macro-F1")
    ax2.plot([h["step"] for h in evals], [h.get("eval_accuracy", 0) for h in evals], "s-", label="accuracy")
    ax2.set_xlabel("step")
    ax2.set_ylim(0, 1)
    ax2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _close(fig: Any) -> None:
    import matplotlib.pyplot as plt  # heavy (matplotlib): imported when used

    plt.close(fig)


def _params(cfg: TrainSettings, action: str, base: str, data: dict[str, Any]) -> dict[str, Any]:
    """The run's MLflow parameters: the recipe as this action uses it, and the rows it learns from."""
    return {
        "action": action,
        "base": base,
        "learning_rate": cfg.learning_rate if action == "retrain" else cfg.fine_tune_learning_rate,
        "max_epochs": cfg.epochs if action == "retrain" else cfg.fine_tune_epochs,
        "head_warmup_epochs": cfg.head_warmup_epochs if action == "retrain" else 0,
        "batch_size": cfg.batch_size,
        "max_length": cfg.max_length,
        "class_weighted": cfg.class_weighted,
        "seed": cfg.seed,
        "freeze_layers": cfg.freeze_layers if action == "fine_tune" else 0,
        "replay_rows": data["replay"],
        "rows": len(data["rows"]),
        "catch_up_batches": ",".join(data["catch_up"]) or "none",
    }


def _write_eval_set(settings: Settings, data: dict[str, Any], eval_uri: str) -> int:
    """Write the evaluation set (the golden set plus the new hold-out rows, each text once); its row count."""
    import pandas as pd  # heavy (pandas): imported when used

    golden = ensure_golden(settings, data["holdout"])
    eval_df = pd.concat([golden, data["new_holdout"]], ignore_index=True)
    eval_df = eval_df.drop_duplicates(subset=[settings.data.text_column]).reset_index(drop=True)
    write_parquet(eval_df, eval_uri, settings)
    return len(eval_df)


def run(ctx: StepContext) -> dict[str, Any]:
    """Retrain or fine-tune on the accepted data; save the model, the drift reference and the evaluation set.

    Inputs: ``accepted_uri`` (the new batch); optional ``champion_model_uri`` (fp32 folder to fine-tune).
    Params: ``action`` (else this run's ``decide`` result).

    Returns:
        action, model_uri, reference_uri, eval_uri, base, metrics, device, precision, rows.

    Raises:
        ValueError: the action is skip or unknown, fine_tune has no champion, or there are no trainable rows.
    """
    import mlflow  # heavy (mlflow): imported when used

    settings, cfg = ctx.settings, ctx.settings.train
    action = resolve_action(ctx)
    accepted_uri = ctx.require("accepted_uri")
    data = _training_data(ctx, action, accepted_uri)
    model_uri, reference_uri, eval_uri = ctx.output("model"), ctx.output("reference"), ctx.output("eval.parquet")
    log.info(
        "%s on %d rows (%d new, %d replayed) from %s",
        action,
        len(data["rows"]),
        data["new_rows"],
        data["replay"],
        accepted_uri,
    )
    with tempfile.TemporaryDirectory(prefix="mlops-train-") as tmp, step_run(ctx):
        scratch = Path(tmp)
        model, tokenizer, base = _start_model(ctx, action, scratch)
        mlflow.log_params(_params(cfg, action, base, data))
        unseen = data["holdout"][settings.data.text_column].astype(str).tolist()
        result = train_model(settings, action, model, tokenizer, data["rows"], scratch / "checkpoints", unseen)
        mlflow.log_metrics({f"final_{k}": v for k, v in result.metrics.items()})
        mlflow.set_tags({"device": result.device, "precision": result.precision, "action": action})
        fig = _plot_history(result.history, f"{action} from {Path(base).name or base}")
        mlflow.log_figure(fig, "training_curve.png")
        _close(fig)

        model_dir = scratch / "model"
        result.model.save_pretrained(model_dir, safe_serialization=True)
        tokenizer.save_pretrained(model_dir)
        (model_dir / "labels.json").write_text(json.dumps(list(settings.data.labels)))
        ctx.storage.replace_dir(model_dir, model_uri, root=ctx.step_uri)
        ref_dir = save_reference(
            settings,
            data["rows"],
            scratch / "reference",
            meta={"action": action, "accepted_uri": accepted_uri, "run_id": ctx.run_id},
        )
        ctx.storage.replace_dir(ref_dir, reference_uri, root=ctx.step_uri)

    eval_rows = _write_eval_set(settings, data, eval_uri)
    metrics = {k: round(v, 5) for k, v in result.metrics.items()}
    return {
        "action": action,
        "model_uri": model_uri,
        "reference_uri": reference_uri,
        "eval_uri": eval_uri,
        "eval_rows": eval_rows,
        "base": base,
        "accepted_uri": accepted_uri,
        "new_rows": data["new_rows"],
        "replay_rows": data["replay"],
        "catch_up_batches": data["catch_up"],
        "metrics": metrics,
        "sample_passes": int(result.metrics["sample_passes"]),
        "train_seconds": round(result.metrics["train_seconds"], 2),
        "device": result.device,
        "precision": result.precision,
    }
