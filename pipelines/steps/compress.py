"""Compress step: turn the trained fp32 model into the artifact that will be served.

The step tries compression levels from the strongest to the mildest (``compress.levels``) and ships the first
whose served graph agrees with the trained fp32 model on at least ``compress.min_agreement`` of a sample:

1. ``prune+int8``: pruning (attention heads by a gradient-free importance score, or global weight magnitude),
   then int8 (weight-only for the linear layers by default, dynamic for the rest; see :func:`quantize`);
2. ``int8``: the same int8 without pruning;
3. ``int8_sensitive_fp32``: int8 with the most sensitive encoder layers kept fp32 (each layer is quantized alone
   and the ones that move the logits most stay fp32; ``compress.sensitive_layers_share``);
4. ``fp32``: the fp32 ONNX graph.

Levels that the settings turn off are skipped (``prune: none`` starts at int8, ``quantize: false`` is fp32
directly). Every graph is exported to ONNX (with onnxruntime's transformer fusions when
``compress.optimize_graph``) and must reproduce its PyTorch model's logits within ``compress.parity_atol``. The
step fails with :class:`~pipelines.errors.ModelRejected` only when the unpruned fp32 ONNX graph does not (an
export bug), or when no configured level agrees (possible only without ``fp32`` in ``compress.levels``).

Pruning without retraining costs accuracy, so the requested pruning share is backed off (halved, then
quartered, then dropped) until the pruned PyTorch model agrees with the original on at least half-way between
``min_agreement`` and 1; what was applied is reported.

Agreement is measured on up to ``compress.parity_sample_rows`` texts the model did not learn from (the held-out
evaluation set, then captured request texts; training rows overstate it, see ``compress.agreement_train_rows``);
the summary gives the counts and a Wilson 95 % interval, and a sample under 200 texts is logged as a warning.

The served artifact is an MLflow pyfunc model folder (``<step_uri>/served``) whose ``artifacts/bundle`` holds
the layout documented in :mod:`pipelines.champion`; :class:`pipelines.serving.OnnxTextClassifier` serves it.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.data.datasets import load_accepted, read_table, split_holdout
from pipelines.errors import ModelRejected
from pipelines.io.tracking import step_run
from pipelines.model import distill
from pipelines.model.modeling import encoded_batches, load_classifier, torch_logits

if TYPE_CHECKING:
    from pipelines.config import CompressSettings, Settings
    from pipelines.context import StepContext

log = logging.getLogger(__name__)

_MB = 1e6
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_LATENCY_SINGLE_CALLS = 50
_LATENCY_BATCH_CALLS = 8
_FEW_AGREEMENT_ROWS = 200  # fewer agreement texts than this: a warning
_SENSITIVITY_ROWS = 256  # texts for measuring each layer's sensitivity to int8


# --- PyTorch side ----------------------------------------------------------------------------------
def head_importance(model: Any, tokenizer: Any, texts: list[str], max_length: int, batch_size: int) -> Any:
    """Importance of every attention head, shape (layers, heads): mean over tokens of the norm of the head's
    contribution to the attention output, i.e. ``||context_h|| * ||W_o[:, h]||`` (no gradients needed).
    """
    import numpy as np  # heavy (numpy): imported when used
    import torch  # heavy (torch): imported when used

    layers = model.base_model.encoder.layer
    n_heads = model.config.num_attention_heads
    head_dim = model.config.hidden_size // n_heads
    scores = np.zeros((len(layers), n_heads))
    state: dict[str, Any] = {}

    def hook(index: int) -> Any:
        def _record(module: Any, args: tuple[Any, ...]) -> None:
            context = args[0]  # (batch, tokens, heads * head_dim), the input of the output projection
            b, t, _ = context.shape
            per_head = context.reshape(b, t, n_heads, head_dim).norm(dim=-1)  # (b, t, heads)
            mask = state["mask"].unsqueeze(-1).to(per_head.dtype)
            w = module.weight.reshape(module.weight.shape[0], n_heads, head_dim).norm(dim=(0, 2))
            scores[index] += ((per_head * mask).sum(dim=(0, 1)) / mask.sum().clamp(min=1) * w).numpy()

        return _record

    handles = [layer.attention.output.dense.register_forward_pre_hook(hook(i)) for i, layer in enumerate(layers)]
    try:
        with torch.inference_mode():
            for enc in encoded_batches(tokenizer, texts, max_length, batch_size):
                state["mask"] = enc["attention_mask"]
                model(**enc)
    finally:
        for handle in handles:
            handle.remove()
    return scores


def heads_to_prune(scores: Any, share: float) -> dict[int, list[int]]:
    """The lowest-scoring ``share`` of all heads, keeping at least one head per layer."""
    import numpy as np  # heavy (numpy): imported when used

    n_layers, n_heads = scores.shape
    budget = int(share * n_layers * n_heads)
    chosen: dict[int, list[int]] = {}
    for flat in np.argsort(scores, axis=None, kind="stable"):
        if budget <= 0:
            break
        layer, head = divmod(int(flat), n_heads)
        if len(chosen.get(layer, [])) < n_heads - 1:
            chosen.setdefault(layer, []).append(head)
            budget -= 1
    return {k: sorted(v) for k, v in chosen.items()}


def prune_magnitude(model: Any, sparsity: float) -> int:
    """Zero the globally smallest ``sparsity`` share of the encoder's Linear weights; return how many."""
    import torch  # heavy (torch): imported when used
    from torch.nn.utils import prune  # heavy (torch): imported when used

    linears = [(m, "weight") for m in model.base_model.encoder.modules() if isinstance(m, torch.nn.Linear)]
    prune.global_unstructured(linears, pruning_method=prune.L1Unstructured, amount=sparsity)
    zeroed = 0
    for module, name in linears:
        prune.remove(module, name)
        zeroed += int((module.weight == 0).sum())
    return zeroed


def _agreement(a: Any, b: Any) -> float:
    import numpy as np  # heavy (numpy): imported when used

    return float(np.mean(np.asarray(a) == np.asarray(b))) if len(a) else 1.0


def prune(
    model: Any, tokenizer: Any, texts: list[str], reference_pred: Any, settings: Settings
) -> tuple[Any, dict[str, Any]]:
    """Apply ``compress.prune`` with back-off; return the (possibly) pruned copy and what was done."""
    cfg = settings.compress
    info: dict[str, Any] = {"method": cfg.prune, "applied_share": 0.0}
    if cfg.prune == "none":
        return model, info
    requested = cfg.prune_heads_share if cfg.prune == "heads" else cfg.magnitude_sparsity
    info["requested_share"] = requested
    if requested <= 0:
        return model, info
    floor = (1 + cfg.min_agreement) / 2
    scores = None
    if cfg.prune == "heads":
        scores = head_importance(model, tokenizer, texts, cfg.max_length, cfg.infer_batch_size)
    for share in (requested, requested / 2, requested / 4):
        candidate = copy.deepcopy(model)
        if cfg.prune == "heads":
            plan = heads_to_prune(scores, share)
            if not plan:
                continue
            candidate.prune_heads(plan)
            detail = {"heads_pruned": sum(len(v) for v in plan.values()), "heads": {str(k): v for k, v in plan.items()}}
        else:
            detail = {"weights_zeroed": prune_magnitude(candidate, share)}
        pred = torch_logits(candidate, tokenizer, texts, cfg.max_length, cfg.infer_batch_size).argmax(1)
        agreement = _agreement(pred, reference_pred)
        log.info(
            "prune %s share %.3f: agreement with the unpruned model %.3f (need %.3f)",
            cfg.prune,
            share,
            agreement,
            floor,
        )
        if agreement >= floor:
            info.update(detail, applied_share=share, agreement=agreement)
            return candidate, info
    log.warning(
        "prune %s: no share down to %.3f kept agreement >= %.3f (or too few heads to prune); serving unpruned",
        cfg.prune,
        requested / 4,
        floor,
    )
    return model, info


# --- ONNX side -------------------------------------------------------------------------------------
def export_onnx(model: Any, tokenizer: Any, texts: list[str], path: Path, opset: int, max_length: int) -> list[str]:
    """Export with dynamic batch and sequence axes (TorchScript-based exporter); return the input names."""
    import torch  # heavy (torch): imported when used

    enc = tokenizer(texts[:2] or ["a", "b"], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    names = [k for k in _INPUTS if k in enc]
    axes = {k: {0: "batch", 1: "sequence"} for k in names}
    axes["logits"] = {0: "batch"}
    model.eval()
    with torch.inference_mode():
        torch.onnx.export(
            model,
            tuple(enc[k] for k in names),
            str(path),
            dynamo=False,
            input_names=names,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
        )
    return names


def optimize_graph(src: Path, dst: Path, model_type: str) -> dict[str, int]:
    """onnxruntime's transformer fusions (attention, layer norm, GELU); return the fused-op counts."""
    from onnxruntime.transformers.optimizer import (  # heavy (onnxruntime): imported when used
        MODEL_TYPES,
        optimize_model,
    )

    kind = model_type if model_type in MODEL_TYPES else "bert"
    optimized = optimize_model(str(src), model_type=kind, num_heads=0, hidden_size=0)
    optimized.save_model_to_file(str(dst))
    return {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}


def quantize(
    src: Path,
    dst: Path,
    per_channel: bool = True,
    reduce_range: bool = False,
    exclude: Sequence[str] = (),
    weight_only: Sequence[str] = (),
    block_size: int = 128,
) -> dict[str, list[str]]:
    """int8 quantization with onnxruntime's tools: weight-only where asked, dynamic for the rest.

    Dynamic quantization (``MatMulInteger``) rounds a MatMul's *input* to uint8 with one scale for the whole
    batch. A transformer's hidden states have a few outlier dimensions, so one scale leaves few levels for the
    bulk of the values: that rounding is what flips predictions, and since the scale comes from the whole batch,
    a row's label can change with its batch-mates. Weight-only int8 (``MatMulNBits`` with 8 bits, symmetric, one
    scale per ``block_size`` weights) stores the same 1 byte per weight; at onnxruntime's accuracy level 4 it
    quantizes each row's input block by block, each block with its own scale. On MiniLM (``bench/compress.py``)
    that was closer to fp32, and batch 1 and batch 32 gave every test row the same label.

    ``Gemm`` nodes stay fp32 (in a BERT export, the pooler and classifier: under 1 MB).

    Args:
        src: the fp32 ONNX graph.
        dst: where the quantized graph goes.
        per_channel: dynamic int8: one weight scale per output channel instead of one per tensor.
        reduce_range: dynamic int8: 7-bit weights (only for CPUs without VNNI, where 8-bit products saturate).
        exclude: nodes whose name contains one of these strings stay fp32.
        weight_only: regular expressions; MatMuls with a constant weight whose name matches one become
            weight-only int8. The other MatMuls and the embedding ``Gather`` nodes get dynamic int8.
        block_size: weights per scale in weight-only int8 (a power of two, at least 16).

    Returns:
        ``{"fp32": [...], "weight_only": [...]}``: the nodes kept fp32 and those made weight-only int8.
    """
    # heavy (onnx, onnxruntime): imported when used
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    model = onnx.load(str(src))
    nodes, constants = model.graph.node, {init.name for init in model.graph.initializer}
    names = [n.name for n in nodes]
    kept = [name for name in names if any(p in name for p in exclude)]
    for pattern in exclude:
        if not any(pattern in name for name in names):
            # Not an error: one setting serves models of different depths (a 2-layer test model has no layer.5).
            log.warning("compress.quantize_exclude %r matches no node of %s", pattern, src.name)
    matmuls = [n.name for n in nodes if n.op_type == "MatMul" and n.name not in kept and n.input[1] in constants]
    light = [name for name in matmuls if any(re.search(p, name) for p in weight_only)]
    for pattern in weight_only:
        if not any(re.search(pattern, name) for name in matmuls):
            log.warning("compress.quantize_weight_only %r matches no MatMul of %s", pattern, src.name)
    if light:
        config = DefaultWeightOnlyQuantConfig(
            block_size=block_size, is_symmetric=True, accuracy_level=4, bits=8, op_types_to_quantize=("MatMul",)
        )
        quantizer = MatMulNBitsQuantizer(
            model,
            bits=8,
            block_size=block_size,
            is_symmetric=True,
            accuracy_level=4,
            nodes_to_exclude=[n.name for n in nodes if n.op_type == "MatMul" and n.name not in light],
            algo_config=config,
        )
        quantizer.process()
        model = quantizer.model.model
    # Shape inference cannot type the outputs of fused contrib ops (Attention, SkipLayerNormalization).
    quantize_dynamic(
        model,
        str(dst),
        weight_type=QuantType.QInt8,
        per_channel=per_channel,
        reduce_range=reduce_range,
        op_types_to_quantize=["MatMul", "Gather"],
        nodes_to_exclude=kept,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return {"fp32": kept, "weight_only": light}


def onnx_logits(path: Path, tokenizer: Any, texts: list[str], max_length: int, batch_size: int) -> Any:
    """Logits of an ONNX graph on the same batches as :func:`torch_logits`."""
    import numpy as np  # heavy (numpy): imported when used
    import onnxruntime as ort  # heavy (onnxruntime): imported when used

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    out = []
    for enc in encoded_batches(tokenizer, texts, max_length, batch_size, tensors="np"):
        out.append(session.run(["logits"], {k: enc[k].astype(np.int64) for k in names})[0])
    return np.concatenate(out)


def latency(predictor: Any, texts: list[str]) -> dict[str, float]:
    """p50/p95 milliseconds per call at batch 1 and batch 32, and samples/s at batch 32."""
    import numpy as np  # heavy (numpy): imported when used

    def pct(times: list[float], q: float) -> float:
        return round(float(np.percentile(times, q)) * 1000, 2)

    pool = (texts * (1 + 32 * _LATENCY_BATCH_CALLS // max(len(texts), 1)))[: 32 * _LATENCY_BATCH_CALLS]
    predictor.predict_proba(pool[:32])  # warm-up
    single = []
    for text in pool[:_LATENCY_SINGLE_CALLS]:
        t = time.perf_counter()
        predictor.predict_proba([text])
        single.append(time.perf_counter() - t)
    batch = []
    for start in range(0, len(pool), 32):
        t = time.perf_counter()
        predictor.predict_proba(pool[start : start + 32])
        batch.append(time.perf_counter() - t)
    return {
        "p50_ms_batch1": pct(single, 50),
        "p95_ms_batch1": pct(single, 95),
        "p50_ms_batch32": pct(batch, 50),
        "p95_ms_batch32": pct(batch, 95),
        "samples_per_s_batch32": round(32 * len(batch) / sum(batch), 1),
    }


# --- the served model ------------------------------------------------------------------------------
def _serving_package(dst: Path) -> Path:
    """A minimal ``pipelines`` package holding only ``serving.py``, shipped as the model's code path."""
    from pipelines import serving  # pipelines.serving loads mlflow

    pkg = dst / "pipelines"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text('"""Only the serving module, shipped with a served model."""\n')
    shutil.copy2(serving.__file__, pkg / "serving.py")
    return pkg


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("mlflow", "onnxruntime", "tokenizers", "numpy", "pandas")]


def build_bundle(
    bundle: Path, served_onnx: Path, tokenizer: Any, fp32_dir: Path, reference_dir: Path, settings: Settings
) -> Path:
    """Lay out the bundle folder (see :mod:`pipelines.champion`)."""
    _serving_files(bundle, tokenizer, fp32_dir, settings)
    shutil.copy2(served_onnx, bundle / "model.onnx")
    shutil.copytree(fp32_dir, bundle / "fp32", dirs_exist_ok=True)
    shutil.copytree(reference_dir, bundle / "reference", dirs_exist_ok=True)
    return bundle


def _serving_files(bundle: Path, tokenizer: Any, fp32_dir: Path, settings: Settings) -> Path:
    """The tokenizer, labels and serving config of a bundle: what :class:`OnnxPredictor` needs beside a graph."""
    bundle.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(bundle / "tokenizer")
    if not (bundle / "tokenizer" / "tokenizer.json").is_file():
        raise ValueError(f"the tokenizer of {str(fp32_dir)!r} is not a fast tokenizer (no tokenizer.json)")
    (bundle / "labels.json").write_text(json.dumps(list(settings.data.labels)))
    (bundle / "serving.json").write_text(
        json.dumps(
            {
                "max_length": settings.compress.max_length,
                "batch_size": settings.compress.infer_batch_size,
                "pad_id": tokenizer.pad_token_id or 0,
                "text_column": settings.data.text_column,
            }
        )
    )
    return bundle


def save_served_model(path: Path, bundle: Path, example_texts: list[str], scratch: Path) -> None:
    """Save the pyfunc model folder (signature, input example, the serving code) at ``path``."""
    import mlflow  # heavy (mlflow): imported when used
    import pandas as pd  # heavy (pandas): imported when used
    from mlflow.models import ModelSignature  # heavy (mlflow): imported when used
    from mlflow.types import ParamSchema, ParamSpec  # heavy (mlflow): imported when used
    from mlflow.types.utils import _infer_schema  # heavy (mlflow): imported when used

    from pipelines.serving import OnnxPredictor, OnnxTextClassifier  # pipelines.serving loads mlflow

    example = pd.DataFrame({"text": example_texts[:3]})
    # No input schema: MLflow would keep only the first column of an unnamed schema (an ``id`` column for the label
    # join would never arrive), and a named one rejects a plain ``{"inputs": [...]}`` list. The model parses its
    # input itself (serving.texts_from_input). The param ``capture`` (default true) leaves a request out of capture.
    signature = ModelSignature(
        inputs=None,
        outputs=_infer_schema(OnnxPredictor(bundle).predict(example["text"].tolist())),
        params=ParamSchema([ParamSpec("capture", "boolean", True)]),
    )
    if path.exists():
        shutil.rmtree(path)
    mlflow.pyfunc.save_model(
        path=str(path),
        python_model=OnnxTextClassifier(),
        artifacts={"bundle": str(bundle)},
        signature=signature,
        input_example=example,
        code_paths=[str(_serving_package(scratch / "code"))],
        pip_requirements=_requirements(),
    )


# --- the agreement sample -------------------------------------------------------------------------
def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval (95 % by default) of the proportion ``successes / n``; (0, 1) when ``n`` is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (0.0 if successes <= 0 else max(0.0, centre - half)), (1.0 if successes >= n else min(1.0, centre + half))


def sample_texts(ctx: StepContext) -> tuple[list[str], dict[str, int]]:
    """The seeded sample for the parity and agreement checks, and how many texts came from where.

    Held-out texts (the evaluation set, else accepted hold-out rows), up to ``compress.parity_sample_rows``; when
    they are fewer, texts of served requests captured by the champion (``captures/``, none that is a training row),
    newest first; then, only with ``compress.agreement_train_rows`` (off by default), accepted training rows.
    """
    settings = ctx.settings
    cfg, text, seed = settings.compress, settings.data.text_column, settings.train.seed
    eval_uri = ctx.get("eval_uri")
    accepted = None
    if eval_uri and ctx.storage.exists(eval_uri):
        held_out = read_table(eval_uri, settings)
    else:
        accepted = split_holdout(load_accepted(settings), settings)
        held_out = accepted[1]
    held_out = held_out.dropna(subset=[text]) if text in held_out.columns else held_out[:0]
    if held_out.empty:
        raise ValueError(
            "compress needs held-out texts for its parity checks: give input eval_uri (the train step's "
            "eval.parquet) or accept a batch first"
        )
    n = min(cfg.parity_sample_rows, len(held_out))
    texts = held_out.sample(n=n, random_state=seed)[text].astype(str).tolist()
    counts = {"held_out": len(texts), "captured": 0, "train": 0}
    missing = cfg.parity_sample_rows - len(texts)
    # Served requests are the traffic the compressed model will see. The training rows are read only when there are
    # captured texts to check against them (a request since labelled and trained on is not unseen) or to top up with.
    from pipelines.model.distill import captured_texts

    captured = captured_texts(settings, missing, set(texts)) if missing > 0 else []
    trained_on = None
    if captured or (missing > 0 and cfg.agreement_train_rows):
        trainable = (accepted or split_holdout(load_accepted(settings), settings))[0]
        if text in trainable.columns:
            trained_on = trainable[text].dropna().astype(str)
    if captured:
        seen = set(trained_on) if trained_on is not None else set()
        captured = [t for t in captured if t not in seen]
        texts += captured
        counts["captured"] = len(captured)
    missing = cfg.parity_sample_rows - len(texts)
    if missing > 0 and cfg.agreement_train_rows and trained_on is not None:
        pool = trained_on.drop_duplicates()
        pool = pool[~pool.isin(set(texts))]
        extra = pool.sample(n=min(missing, len(pool)), random_state=seed).tolist()
        texts += extra
        counts["train"] = len(extra)
    if len(texts) < _FEW_AGREEMENT_ROWS:
        log.warning(
            "compress: agreement measured on only %d texts (%d held-out, %d captured requests, %d training rows); "
            "under %d its 95 %% interval is too wide to tell 0.95 from 0.90",
            len(texts),
            counts["held_out"],
            counts["captured"],
            counts["train"],
            _FEW_AGREEMENT_ROWS,
        )
    return texts, counts


def _size_mb(path: Path) -> float:
    return round(path.stat().st_size / _MB, 3)


# --- the compression levels ------------------------------------------------------------------------
@dataclass
class Graph:
    """An fp32 ONNX graph that reproduced its PyTorch model."""

    path: Path
    parity_max_abs_diff: float
    fused: dict[str, int]


@dataclass
class Candidate:
    """The graph a level would serve, the fp32 graph it comes from and what was kept fp32 / made weight-only."""

    served: Path
    source: Graph
    kept: dict[str, list[str]] = field(default_factory=lambda: {"fp32": [], "weight_only": []})
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Attempt:
    """One level tried: its agreement with the trained fp32 model and whether it is good enough to ship."""

    level: str
    accepted: bool
    agreement: float | None = None
    agreement_ci: list[float] | None = None
    size_mb: float | None = None
    p50_ms_batch32: float | None = None
    note: str | None = None
    candidate: Candidate | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {
            "level": self.level,
            "agreement": None if self.agreement is None else round(self.agreement, 5),
            "agreement_ci": self.agreement_ci,
            "size_mb": self.size_mb,
            "p50_ms_batch32": self.p50_ms_batch32,
            "accepted": self.accepted,
        }
        return out if self.note is None else {**out, "note": self.note}


class _Skip(Exception):
    """A level that does not apply (turned off by the settings, or identical to the next one)."""


@dataclass
class Job:
    """What the parts of :func:`run` share: the loaded model, the sample and its reference labels, the graphs."""

    settings: Settings
    scratch: Path
    model_uri: str
    fp32_dir: Path
    reference_dir: Path
    model: Any
    tokenizer: Any
    texts: list[str]
    sample_counts: dict[str, int]
    reference_logits: Any
    reference_pred: Any
    probe: Path  # tokenizer, labels and serving config, to run a candidate graph as the served model would
    prune_info: dict[str, Any] = field(default_factory=dict)
    pruned: Any = None
    graphs: dict[str, Graph] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    # The teacher's own levels: agreement with reference_pred on compress.min_agreement. A distilled student's:
    # reference_logits / reference_pred are the student's (parity, pruning, layer sensitivity), target_pred the
    # teacher's labels its served graph must agree with on compress.distill_min_agreement.
    role: str = "teacher"
    target_pred: Any = None
    min_agreement: float | None = None

    @property
    def agreement_target(self) -> Any:
        return self.reference_pred if self.target_pred is None else self.target_pred

    @property
    def agreement_floor(self) -> float:
        return self.settings.compress.min_agreement if self.min_agreement is None else self.min_agreement


def _slug(level: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", level)


def load(ctx: StepContext, scratch: Path) -> Job:
    """Download the trained model and the drift reference, draw the sample and its fp32 PyTorch labels."""
    settings, cfg = ctx.settings, ctx.settings.compress
    model_uri = ctx.require("model_uri")
    texts, counts = sample_texts(ctx)
    fp32_dir = ctx.storage.local_dir(model_uri, scratch)
    reference_dir = ctx.storage.local_dir(ctx.require("reference_uri"), scratch)
    model, tokenizer = load_classifier(fp32_dir, settings)
    model.eval()
    logits = torch_logits(model, tokenizer, texts, cfg.max_length, cfg.infer_batch_size)
    return Job(
        settings=settings,
        scratch=scratch,
        model_uri=model_uri,
        fp32_dir=Path(fp32_dir),
        reference_dir=Path(reference_dir),
        model=model,
        tokenizer=tokenizer,
        texts=texts,
        sample_counts=counts,
        reference_logits=logits,
        reference_pred=logits.argmax(1),
        probe=_serving_files(scratch / "probe", tokenizer, fp32_dir, settings),
        prune_info={"method": cfg.prune, "applied_share": 0.0},
    )


def prune_model(job: Job) -> Any:
    """The pruned model (pruning with back-off, once), or :class:`_Skip` when pruning does not apply."""
    cfg = job.settings.compress
    if cfg.prune == "none":
        raise _Skip("compress.prune is none")
    if job.pruned is None:
        job.pruned, job.prune_info = prune(job.model, job.tokenizer, job.texts, job.reference_pred, job.settings)
    if not job.prune_info.get("applied_share"):
        raise _Skip("pruning backed off to nothing (or nothing to prune): the same graph as int8")
    return job.pruned


class _ParityError(Exception):
    """An fp32 ONNX graph that does not reproduce its PyTorch model within ``compress.parity_atol``."""


def export_checked(job: Job, name: str, model: Any, reference_logits: Any) -> Graph:
    """Export ``model`` to ONNX (fused when ``compress.optimize_graph``), once per ``name``; the graph must
    reproduce ``reference_logits`` within ``compress.parity_atol`` (else :class:`_ParityError`)."""
    if name in job.graphs:
        return job.graphs[name]
    cfg = job.settings.compress
    exported = job.scratch / f"model_{name}_fp32.onnx"
    export_onnx(model, job.tokenizer, job.texts, exported, cfg.opset, cfg.max_length)
    graph, fused = exported, {}
    if cfg.optimize_graph:
        graph = job.scratch / f"model_{name}_fp32_opt.onnx"
        fused = optimize_graph(exported, graph, job.model.config.model_type)
    logits = onnx_logits(graph, job.tokenizer, job.texts, cfg.max_length, cfg.infer_batch_size)
    diff = float(abs(logits - reference_logits).max())
    if diff > cfg.parity_atol:
        raise _ParityError(
            f"fp32 ONNX export of {job.model_uri!r}{' (pruned)' if name == 'pruned' else ''} does not reproduce "
            f"PyTorch: max |logit diff| {diff:.2e} > compress.parity_atol={cfg.parity_atol}"
        )
    job.graphs[name] = Graph(graph, diff, fused)
    return job.graphs[name]


def plain_graph(job: Job) -> Graph:
    """The unpruned fp32 ONNX graph; :class:`ModelRejected` when it does not reproduce PyTorch (an export bug)."""
    try:
        return export_checked(job, "plain", job.model, job.reference_logits)
    except _ParityError as exc:
        cfg = job.settings.compress
        raise ModelRejected(
            str(exc),
            failures=[f"parity on {len(job.texts)} sample texts, graph optimisation {cfg.optimize_graph}"],
        ) from None


def _quantized(job: Job, source: Graph, name: str, exclude: Sequence[str] = ()) -> Candidate:
    """int8 of ``source`` with the configured quantization (plus ``exclude`` kept fp32)."""
    cfg = job.settings.compress
    served = job.scratch / f"model_{name}.onnx"
    kept = quantize(
        source.path,
        served,
        cfg.quantize_per_channel,
        cfg.quantize_reduce_range,
        [*cfg.quantize_exclude, *exclude],
        cfg.quantize_weight_only,
        cfg.quantize_block_size,
    )
    return Candidate(served, source, kept)


def build_prune_int8(job: Job) -> Candidate:
    if not job.settings.compress.quantize:
        raise _Skip("compress.quantize is false")
    pruned = prune_model(job)
    cfg = job.settings.compress
    pruned_logits = torch_logits(pruned, job.tokenizer, job.texts, cfg.max_length, cfg.infer_batch_size)
    return _quantized(job, export_checked(job, "pruned", pruned, pruned_logits), "prune_int8")


def build_int8(job: Job) -> Candidate:
    if not job.settings.compress.quantize:
        raise _Skip("compress.quantize is false")
    return _quantized(job, plain_graph(job), "int8")


_LAYER = re.compile(r"^(.*?/layer\.\d+/)")


def layer_sensitivity(job: Job, graph: Graph) -> list[dict[str, Any]]:
    """Quantize one encoder layer at a time (everything else fp32) and measure how far each moves the logits on
    the sample (at most ``_SENSITIVITY_ROWS`` texts); most sensitive first (labels flipped, then mean |logit diff|).
    """
    import numpy as np  # heavy (numpy): imported when used
    import onnx  # heavy (onnx): imported when used

    cfg = job.settings.compress
    nodes = onnx.load(str(graph.path), load_external_data=False).graph.node
    names = [n.name for n in nodes]
    candidates = [n.name for n in nodes if n.op_type in ("MatMul", "Gather")]
    layers = list(dict.fromkeys(m.group(1) for n in nodes if n.op_type == "MatMul" and (m := _LAYER.match(n.name))))
    texts = job.texts[:_SENSITIVITY_ROWS]
    reference_logits, reference_pred = job.reference_logits[: len(texts)], job.reference_pred[: len(texts)]
    user_exclude = [p for p in cfg.quantize_exclude if any(p in name for name in names)]
    scores = []
    for index, prefix in enumerate(layers):
        inside = [name for name in candidates if name.startswith(prefix)]
        # Exclude every other quantizable node by name (a name that is part of one inside the layer stays in).
        others = [n for n in candidates if not n.startswith(prefix) and not any(n in i for i in inside)]
        matmuls = [name for name in inside if not any(p in name for p in user_exclude)]
        weight_only = [p for p in cfg.quantize_weight_only if any(re.search(p, name) for name in matmuls)]
        path = job.scratch / f"sensitivity_{index}.onnx"
        quantize(
            graph.path,
            path,
            cfg.quantize_per_channel,
            cfg.quantize_reduce_range,
            [*user_exclude, *others],
            weight_only,
            cfg.quantize_block_size,
        )
        logits = onnx_logits(path, job.tokenizer, texts, cfg.max_length, cfg.infer_batch_size)
        path.unlink()
        scores.append(
            {
                "layer": prefix,
                "flipped": int((logits.argmax(1) != reference_pred).sum()),
                "mean_abs_logit_diff": round(float(np.abs(logits - reference_logits).mean()), 6),
            }
        )
    return sorted(scores, key=lambda s: (-s["flipped"], -s["mean_abs_logit_diff"], s["layer"]))


def build_sensitive(job: Job) -> Candidate:
    cfg = job.settings.compress
    if not cfg.quantize:
        raise _Skip("compress.quantize is false")
    source = plain_graph(job)
    scores = layer_sensitivity(job, source)
    if not scores:
        raise _Skip("no encoder layer (…/layer.N/…) found among the graph's MatMuls")
    keep = min(len(scores), max(1, math.ceil(cfg.sensitive_layers_share * len(scores))))
    fp32_layers = [s["layer"] for s in scores[:keep]]
    log.info("compress: most sensitive layers kept fp32: %s (of %s)", fp32_layers, scores)
    candidate = _quantized(job, source, "int8_sensitive_fp32", exclude=fp32_layers)
    rows = min(len(job.texts), _SENSITIVITY_ROWS)
    candidate.details = {"fp32_layers": fp32_layers, "layer_sensitivity": scores, "sensitivity_rows": rows}
    return candidate


def build_fp32(job: Job) -> Candidate:
    source = plain_graph(job)
    return Candidate(source.path, source)


_BUILDERS = {
    "prune+int8": build_prune_int8,
    "int8": build_int8,
    "int8_sensitive_fp32": build_sensitive,
    "fp32": build_fp32,
}
LEVELS = tuple(_BUILDERS)


def _run_candidate(level: str, probe: Path, graph: Path, texts: list[str]) -> tuple[Any, float]:
    """Labels of ``graph`` served as the pyfunc model serves it, and its median ms per call at batch 32."""
    import numpy as np  # heavy (numpy): imported when used

    from pipelines.serving import OnnxPredictor  # pipelines.serving loads mlflow

    predictor = OnnxPredictor(probe, model_file=str(graph.resolve()))
    labels = predictor.predict_proba(texts).argmax(1)
    batch = (texts * (1 + 32 // max(len(texts), 1)))[:32]
    times = []
    for _ in range(3):
        started = time.perf_counter()
        predictor.predict_proba(batch)
        times.append(time.perf_counter() - started)
    return labels, round(float(np.median(times)) * 1000, 2)


def try_level(job: Job, level: str) -> Attempt | None:
    """Build ``level``'s graph and measure its agreement; None when the level does not apply."""
    try:
        candidate = _BUILDERS[level](job)
    except _Skip as skip:
        log.info("compress: level %s skipped: %s", level, skip)
        job.skipped[level] = str(skip)
        return None
    except _ParityError as exc:  # only a pruned graph: the unpruned one raises ModelRejected
        log.warning("compress: level %s not served: %s", level, exc)
        return Attempt(level, accepted=False, note=str(exc))
    labels, p50 = _run_candidate(level, job.probe, candidate.served, job.texts)
    n = len(job.texts)
    agreed = int((labels == job.agreement_target).sum())
    agreement = agreed / n if n else 1.0
    low, high = wilson_interval(agreed, n)
    attempt = Attempt(
        level,
        accepted=agreement >= job.agreement_floor,
        agreement=agreement,
        agreement_ci=[round(low, 4), round(high, 4)],
        size_mb=_size_mb(candidate.served),
        p50_ms_batch32=p50,
        candidate=candidate,
    )
    log.log(
        logging.INFO if attempt.accepted else logging.WARNING,
        "compress: %s level %s agrees with the trained fp32 model on %.3f of %d texts (95 %% CI %.3f-%.3f), %s "
        "compress.%s=%s; %.2f MB, %.1f ms per batch of 32",
        job.role,
        level,
        agreement,
        n,
        low,
        high,
        "meets" if attempt.accepted else "below",
        "min_agreement" if job.min_agreement is None else "distill_min_agreement",
        job.agreement_floor,
        attempt.size_mb,
        p50,
    )
    return attempt


def choose_level(job: Job) -> tuple[Attempt, list[Attempt]]:
    """Try ``compress.levels`` in order; the first that agrees is shipped. Returns it and every level tried."""
    cfg = job.settings.compress
    tried: list[Attempt] = []
    for level in cfg.levels:
        attempt = try_level(job, level)
        if attempt is None:
            continue
        tried.append(attempt)
        if attempt.accepted:
            return attempt, tried
    floor = "min_agreement" if job.min_agreement is None else "distill_min_agreement"
    raise ModelRejected(
        f"no compression level of {job.model_uri!r}{' (distilled student)' if job.role == 'student' else ''} agrees "
        f"with the trained fp32 model on at least compress.{floor}={job.agreement_floor} of {len(job.texts)} texts "
        f"(compress.levels {list(cfg.levels)})",
        failures=[
            *(
                f"{a.level}: agreement {a.agreement}, CI {a.agreement_ci}{'; ' + a.note if a.note else ''}"
                for a in tried
            ),
            *(f"{level}: skipped, {why}" for level, why in job.skipped.items()),
            f"prune {job.prune_info}",
        ],
    )


# --- distillation ----------------------------------------------------------------------------------
def _eval_frame(ctx: StepContext) -> Any:
    """The labelled evaluation set (the train step's ``eval.parquet``), or None when there is none."""
    settings = ctx.settings
    eval_uri = ctx.get("eval_uri")
    if not eval_uri or not ctx.storage.exists(eval_uri):
        return None
    df = read_table(eval_uri, settings)
    text, label = settings.data.text_column, settings.data.label_column
    if text not in df.columns or label not in df.columns:
        return None
    df = df.dropna(subset=[text, label])
    return df[df[label].astype(str).isin(settings.data.labels)].reset_index(drop=True)


@dataclass
class Distilled:
    """What distillation produced for the step: the student's job (None when it was skipped) and its facts."""

    job: Job | None
    info: dict[str, Any]
    eval_df: Any = None


def prepare_student(ctx: StepContext, job: Job) -> Distilled:
    """Distill a student from ``job.model`` (see :mod:`pipelines.model.distill`) and set up its levels' job: parity and
    pruning against the student's own logits, agreement against the teacher on ``compress.distill_min_agreement``.

    Skipped (the teacher is then served as without distillation) only when there are no labelled training rows.
    """
    import numpy as np  # heavy (numpy): imported when used

    settings, cfg = ctx.settings, ctx.settings.compress
    text = settings.data.text_column
    eval_df = _eval_frame(ctx)
    # Never distill on what the student is scored on: the evaluation set and the agreement sample.
    exclude = set(job.texts) | (set(eval_df[text].astype(str)) if eval_df is not None else set())
    labelled, captured = distill.transfer_set(settings, exclude)
    info: dict[str, Any] = {"enabled": True, "teacher_layers": len(distill.encoder_layers(job.model))}
    if len(labelled) < 2:
        reason = f"{len(labelled)} labelled training rows outside the evaluation set and the agreement sample"
        log.warning("compress: distillation skipped (%s); the teacher's levels are tried", reason)
        return Distilled(None, {**info, "skipped": reason}, eval_df)
    result = distill.distill(settings, job.model, job.tokenizer, labelled, captured)
    logits = torch_logits(result.student, job.tokenizer, job.texts, cfg.max_length, cfg.infer_batch_size)
    pred = logits.argmax(1)
    agreement_fp32 = float(np.mean(pred == job.reference_pred)) if len(pred) else 1.0
    log.info(
        "compress: the fp32 student (layers %s of %d) agrees with the teacher on %.3f of %d texts",
        result.layers,
        result.teacher_layers,
        agreement_fp32,
        len(job.texts),
    )
    scratch = job.scratch / "student"
    scratch.mkdir(parents=True, exist_ok=True)
    student_dir = scratch / "fp32"
    result.student.save_pretrained(student_dir, safe_serialization=True)
    student_job = Job(
        settings=settings,
        scratch=scratch,
        model_uri=job.model_uri,
        fp32_dir=job.fp32_dir,  # the bundle's fp32/ stays the teacher: the next fine-tune starts from it
        reference_dir=job.reference_dir,
        model=result.student,
        tokenizer=job.tokenizer,
        texts=job.texts,
        sample_counts=job.sample_counts,
        reference_logits=logits,
        reference_pred=pred,
        probe=job.probe,
        prune_info={"method": cfg.prune, "applied_share": 0.0},
        role="student",
        target_pred=job.reference_pred,
        min_agreement=cfg.distill_min_agreement,
    )
    info.update(
        layers=result.layers,
        student_layers=len(result.layers),
        temperature=cfg.distill_temperature,
        alpha=cfg.distill_alpha,
        student_pytorch_fp32_mb=round(sum(p.stat().st_size for p in student_dir.glob("*.safetensors")) / _MB, 3),
        fp32_agreement_with_teacher=round(agreement_fp32, 5),
        metrics={k: round(v, 5) for k, v in result.metrics.items()},
    )
    return Distilled(student_job, info, eval_df)


def choose_served(job: Job, distilled: Distilled | None) -> tuple[Job, Attempt, list[Attempt]]:
    """The student's levels first (when distilled), then, if none agrees with the teacher, the teacher's own.

    Returns:
        The job of the model served (teacher or student), the level shipped and the levels tried for it.
    """
    if distilled is not None and distilled.job is not None:
        try:
            chosen, tried = choose_level(distilled.job)
            return distilled.job, chosen, tried
        except ModelRejected as exc:
            log.warning("compress: no student level is served (%s); trying the teacher's levels", exc)
            distilled.info["backed_off"] = str(exc)
            distilled.info["student_failures"] = list(exc.failures)
    chosen, tried = choose_level(job)
    return job, chosen, tried


def _teacher_ms_batch32(job: Job) -> float:
    """Median ms of the fp32 PyTorch teacher on one batch of 32 sample texts (3 calls after a warm-up)."""
    import numpy as np  # heavy (numpy): imported when used

    cfg = job.settings.compress
    batch = (job.texts * (1 + 32 // max(len(job.texts), 1)))[:32]
    torch_logits(job.model, job.tokenizer, batch, cfg.max_length, 32)
    times = []
    for _ in range(3):
        started = time.perf_counter()
        torch_logits(job.model, job.tokenizer, batch, cfg.max_length, 32)
        times.append(time.perf_counter() - started)
    return round(float(np.median(times)) * 1000, 2)


def distill_summary(
    job: Job, served: Job, chosen: Attempt, distilled: Distilled, sizes: dict[str, float]
) -> dict[str, Any]:
    """What was served (teacher or student), its layers, size, speed and agreement with the teacher, and the
    teacher's and the served model's macro-F1 on the labelled evaluation set."""
    import numpy as np  # heavy (numpy): imported when used
    from sklearn.metrics import f1_score  # heavy (sklearn): imported when used

    from pipelines.serving import OnnxPredictor  # pipelines.serving loads mlflow

    cfg = job.settings.compress
    info = dict(distilled.info)
    info["served"] = served.role
    info["served_layers"] = len(served.model.base_model.encoder.layer)
    info["served_mb"] = sizes["served_mb"]
    info["served_p50_ms_batch32"] = chosen.p50_ms_batch32
    info["teacher_fp32_p50_ms_batch32"] = _teacher_ms_batch32(job)
    if chosen.p50_ms_batch32:
        info["speedup_vs_teacher_fp32"] = round(info["teacher_fp32_p50_ms_batch32"] / chosen.p50_ms_batch32, 2)
    info["size_ratio_vs_teacher_fp32"] = round(sizes["pytorch_fp32_mb"] / sizes["served_mb"], 2)
    info["agreement_with_teacher"] = round(chosen.agreement or 0.0, 5)
    eval_df = distilled.eval_df
    if eval_df is not None and len(eval_df):
        labels = list(job.settings.data.labels)
        texts = eval_df[job.settings.data.text_column].astype(str).tolist()
        gold = eval_df[job.settings.data.label_column].astype(str).tolist()
        teacher = torch_logits(job.model, job.tokenizer, texts, cfg.max_length, cfg.infer_batch_size).argmax(1)
        assert chosen.candidate is not None
        predictor = OnnxPredictor(job.probe, model_file=str(chosen.candidate.served.resolve()))
        served_pred = predictor.predict_proba(texts).argmax(1)

        def f1(pred: Any) -> float:
            names = [labels[i] for i in pred]
            return round(float(f1_score(gold, names, labels=labels, average="macro", zero_division=0)), 5)

        info["eval_rows"] = len(texts)
        info["teacher_macro_f1"] = f1(teacher)
        info["served_macro_f1"] = f1(served_pred)
        info["eval_agreement_with_teacher"] = round(float(np.mean(served_pred == teacher)), 5)
    return info


# --- saving and logging ----------------------------------------------------------------------------
def save(job: Job, chosen: Attempt, served_uri: str, storage: Any) -> tuple[dict[str, float], dict[str, float]]:
    """Build the bundle around the chosen graph, time it, save the pyfunc model and upload it to ``served_uri``.

    Returns:
        (latency, sizes).
    """
    from pipelines.serving import OnnxPredictor  # pipelines.serving loads mlflow

    candidate = chosen.candidate
    assert candidate is not None
    bundle = build_bundle(
        job.scratch / "bundle", candidate.served, job.tokenizer, job.fp32_dir, job.reference_dir, job.settings
    )
    timings = latency(OnnxPredictor(bundle), job.texts)
    sizes = {
        "pytorch_fp32_mb": round(sum(p.stat().st_size for p in job.fp32_dir.glob("*.safetensors")) / _MB, 3),
        "onnx_fp32_mb": _size_mb(candidate.source.path),
        "served_mb": _size_mb(bundle / "model.onnx"),
    }
    local_served = job.scratch / "served"
    save_served_model(local_served, bundle, job.texts, job.scratch)
    storage.replace_dir(local_served, served_uri, root=job.settings.uri(job.settings.paths.runs))
    return timings, sizes


def summarize(
    job: Job, chosen: Attempt, tried: list[Attempt], timings: dict[str, float], sizes: dict[str, float]
) -> dict[str, Any]:
    """The step summary (without the URIs)."""
    cfg = job.settings.compress
    candidate = chosen.candidate
    assert candidate is not None
    prune_info: dict[str, Any] = dict(job.prune_info)
    if chosen.level != "prune+int8" and prune_info.get("applied_share"):
        # Pruning was tried, but the served model is not pruned.
        prune_info = {"method": cfg.prune, "applied_share": 0.0, "tried": job.prune_info}
    return {
        "level": chosen.level,
        "agreement": round(chosen.agreement or 0.0, 5),
        "agreement_rows": len(job.texts),
        "agreement_ci": chosen.agreement_ci,
        "agreement_sample": dict(job.sample_counts),
        "min_agreement": cfg.min_agreement,
        "levels_tried": [a.as_dict() for a in tried],
        "levels_skipped": dict(job.skipped),
        "size_mb": sizes["served_mb"],
        "sizes": sizes,
        "latency": timings,
        "parity_max_abs_diff": candidate.source.parity_max_abs_diff,
        "parity_rows": len(job.texts),
        "prune": prune_info,
        "fused_ops": candidate.source.fused,
        "quantized": chosen.level != "fp32",
        "kept_fp32": candidate.kept["fp32"],
        "weight_only_int8": candidate.kept["weight_only"],
        "sensitive_layers": candidate.details,
    }


def log_to_mlflow(job: Job, summary: dict[str, Any]) -> None:
    """Parameters, metrics (the shipped level's and each tried level's) and ``compress.json`` on the step's run."""
    import mlflow  # heavy (mlflow): imported when used

    cfg = job.settings.compress
    mlflow.log_params(
        {
            "level": summary["level"],
            "levels": ",".join(cfg.levels),
            "min_agreement": cfg.min_agreement,
            "prune": cfg.prune,
            "prune_applied_share": summary["prune"].get("applied_share", 0.0),
            "quantize": cfg.quantize,
            "quantize_per_channel": cfg.quantize_per_channel,
            "quantize_reduce_range": cfg.quantize_reduce_range,
            "quantize_exclude": ",".join(cfg.quantize_exclude),
            "quantize_weight_only": ",".join(cfg.quantize_weight_only),
            "quantize_block_size": cfg.quantize_block_size,
            "sensitive_layers_share": cfg.sensitive_layers_share,
            "optimize_graph": cfg.optimize_graph,
            "opset": cfg.opset,
            "parity_rows": summary["parity_rows"],
            "agreement_rows": summary["agreement_rows"],
        }
    )
    mlflow.set_tag("compress.level", summary["level"])
    mlflow.set_tag("compress.served_model", summary.get("served_model", "teacher"))
    _log_distill(cfg, summary)
    low, high = summary["agreement_ci"]
    metrics = {
        "agreement": summary["agreement"],
        "agreement_ci_low": low,
        "agreement_ci_high": high,
        "agreement_rows": summary["agreement_rows"],
        "parity_max_abs_diff": summary["parity_max_abs_diff"],
        "size_mb": summary["size_mb"],
        **summary["latency"],
        **summary["sizes"],
    }
    for tried in summary["levels_tried"]:
        for key in ("agreement", "size_mb", "p50_ms_batch32"):
            if tried[key] is not None:
                metrics[f"level_{_slug(tried['level'])}_{key}"] = tried[key]
    mlflow.log_metrics(metrics)
    keys = (
        "level",
        "agreement",
        "agreement_rows",
        "agreement_ci",
        "agreement_sample",
        "levels_tried",
        "levels_skipped",
        "prune",
        "fused_ops",
        "sizes",
        "sensitive_layers",
        "served_model",
        "distill",
    )
    mlflow.log_dict(
        {
            **{k: summary[k] for k in keys},
            "kept_fp32": summary["kept_fp32"],
            "weight_only_int8": summary["weight_only_int8"],
        },
        "compress.json",
    )


def _log_distill(cfg: CompressSettings, summary: dict[str, Any]) -> None:
    """The distillation's parameters and figures, when ``compress.distill`` was on."""
    import mlflow  # heavy (mlflow): imported when used

    distill = summary.get("distill") or {}
    if distill.get("enabled"):
        mlflow.log_params(
            {
                "distill_layers": ",".join(str(i) for i in distill.get("layers") or []) or "skipped",
                "distill_temperature": cfg.distill_temperature,
                "distill_alpha": cfg.distill_alpha,
                "distill_learning_rate": cfg.distill_learning_rate,
                "distill_min_agreement": cfg.distill_min_agreement,
            }
        )
        for key in ("sample_passes", "train_seconds"):
            mlflow.log_metric(f"distill_{key}", float(summary.get(key) or 0))
        for key in (
            "served_layers",
            "teacher_layers",
            "agreement_with_teacher",
            "speedup_vs_teacher_fp32",
            "size_ratio_vs_teacher_fp32",
            "teacher_macro_f1",
            "served_macro_f1",
            "teacher_fp32_p50_ms_batch32",
        ):
            if isinstance(distill.get(key), int | float):
                mlflow.log_metric(f"distill_{key}", float(distill[key]))


def run(ctx: StepContext) -> dict[str, Any]:
    """Ship the strongest compression level that agrees with the trained model, as a pyfunc model.

    Inputs: ``model_uri`` (fp32 save_pretrained folder), ``reference_uri`` (drift reference folder); optional
    ``eval_uri`` (held-out texts for the checks; default: the train step's evaluation set).

    Returns:
        served_uri, level (the shipped level), agreement, agreement_rows, agreement_ci (Wilson 95 %),
        levels_tried (level, agreement, agreement_ci, size_mb, p50_ms_batch32, accepted), levels_skipped,
        size_mb, latency (p50/p95 ms at batch 1 and 32), parity_max_abs_diff, prune, fused ops, sizes.

    Raises:
        ModelRejected: the fp32 ONNX graph does not reproduce PyTorch, or no configured level agrees.
        ValueError: an input is missing or the model's labels differ from the settings.
    """
    served_uri = ctx.output("served")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mlops-compress-") as tmp, step_run(ctx):
        job = load(ctx, Path(tmp))
        distilled = prepare_student(ctx, job) if ctx.settings.compress.distill else None
        served, chosen, tried = choose_served(job, distilled)
        timings, sizes = save(served, chosen, served_uri, ctx.storage)
        summary = summarize(served, chosen, tried, timings, sizes)
        metrics = (distilled.info.get("metrics") or {}) if distilled else {}
        summary["served_model"] = served.role
        summary["sample_passes"] = int(metrics.get("sample_passes", 0))
        summary["train_seconds"] = round(float(metrics.get("train_seconds", 0.0)), 2)
        summary["distill"] = distill_summary(job, served, chosen, distilled, sizes) if distilled else {"enabled": False}
        summary["step_seconds"] = round(time.perf_counter() - started, 2)
        log_to_mlflow(served, summary)
    log.info(
        "served model at %s: %s, level %s, %.1f MB, agreement %.3f on %d texts, %s",
        served_uri,
        summary["served_model"],
        summary["level"],
        summary["size_mb"],
        summary["agreement"],
        summary["agreement_rows"],
        timings,
    )
    return {
        "served_uri": served_uri,
        "model_uri": job.model_uri,
        "reference_uri": ctx.require("reference_uri"),
        **summary,
    }
