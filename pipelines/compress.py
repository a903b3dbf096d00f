"""Compress step: turn the trained fp32 model into the artifact that will be served.

In order: optional pruning (attention heads by a gradient-free importance score, or global weight magnitude),
ONNX export, optional onnxruntime transformer graph fusions, int8 quantization (weight-only for the linear
layers by default, dynamic for the rest; see :func:`quantize`). Two parity checks fail the
step with :class:`~pipelines.errors.ModelRejected`: the fp32 ONNX graph must reproduce the (pruned) PyTorch
logits within ``compress.parity_atol``, and the served graph's predictions must agree with the trained fp32
model's on at least ``compress.min_agreement`` of a held-out sample.

Pruning without retraining costs accuracy, so the requested pruning share is backed off (halved, then
quartered, then dropped) until the pruned PyTorch model agrees with the original on at least half-way between
``min_agreement`` and 1; what was applied is reported.

The served artifact is an MLflow pyfunc model folder (``<step_uri>/served``) whose ``artifacts/bundle`` holds
the layout documented in :mod:`pipelines.champion`; :class:`pipelines.serving.OnnxTextClassifier` serves it.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.errors import ModelRejected
from pipelines.storage import is_s3

if TYPE_CHECKING:
    from pipelines.config import Settings
    from pipelines.context import StepContext

log = logging.getLogger(__name__)

_MB = 1e6
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_LATENCY_SINGLE_CALLS = 50
_LATENCY_BATCH_CALLS = 8


# --- PyTorch side ----------------------------------------------------------------------------------
def _batches(tokenizer: Any, texts: list[str], max_length: int, batch_size: int, tensors: str = "pt") -> Iterator[Any]:
    """Encodings of ``texts`` in input order, ``batch_size`` at a time, each padded to its longest."""
    for start in range(0, len(texts), batch_size):
        yield tokenizer(
            texts[start : start + batch_size],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors=tensors,
        )


def torch_logits(model: Any, tokenizer: Any, texts: list[str], max_length: int, batch_size: int) -> Any:
    """fp32 PyTorch logits (numpy), batched in input order with per-batch padding."""
    import numpy as np
    import torch

    model.eval()
    out = []
    with torch.inference_mode():
        for enc in _batches(tokenizer, texts, max_length, batch_size):
            out.append(model(**enc).logits.float().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.num_labels), dtype=np.float32)


def head_importance(model: Any, tokenizer: Any, texts: list[str], max_length: int, batch_size: int) -> Any:
    """Importance of every attention head, shape (layers, heads): mean over tokens of the norm of the head's
    contribution to the attention output, i.e. ``||context_h|| * ||W_o[:, h]||`` (no gradients needed).
    """
    import numpy as np
    import torch

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
            for enc in _batches(tokenizer, texts, max_length, batch_size):
                state["mask"] = enc["attention_mask"]
                model(**enc)
    finally:
        for handle in handles:
            handle.remove()
    return scores


def heads_to_prune(scores: Any, share: float) -> dict[int, list[int]]:
    """The lowest-scoring ``share`` of all heads, keeping at least one head per layer."""
    import numpy as np

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
    import torch
    from torch.nn.utils import prune

    linears = [(m, "weight") for m in model.base_model.encoder.modules() if isinstance(m, torch.nn.Linear)]
    prune.global_unstructured(linears, pruning_method=prune.L1Unstructured, amount=sparsity)
    zeroed = 0
    for module, name in linears:
        prune.remove(module, name)
        zeroed += int((module.weight == 0).sum())
    return zeroed


def _agreement(a: Any, b: Any) -> float:
    import numpy as np

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
    import torch

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
    from onnxruntime.transformers.optimizer import MODEL_TYPES, optimize_model

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
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    out = []
    for enc in _batches(tokenizer, texts, max_length, batch_size, tensors="np"):
        out.append(session.run(["logits"], {k: enc[k].astype(np.int64) for k in names})[0])
    return np.concatenate(out)


def latency(predictor: Any, texts: list[str]) -> dict[str, float]:
    """p50/p95 milliseconds per call at batch 1 and batch 32, and samples/s at batch 32."""
    import numpy as np

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
    from pipelines import serving

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
    bundle.mkdir(parents=True, exist_ok=True)
    shutil.copy2(served_onnx, bundle / "model.onnx")
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
    shutil.copytree(fp32_dir, bundle / "fp32", dirs_exist_ok=True)
    shutil.copytree(reference_dir, bundle / "reference", dirs_exist_ok=True)
    return bundle


def save_served_model(path: Path, bundle: Path, example_texts: list[str], scratch: Path) -> None:
    """Save the pyfunc model folder (signature, input example, the serving code) at ``path``."""
    import mlflow
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema
    from mlflow.types.utils import _infer_schema

    from pipelines.serving import OnnxPredictor, OnnxTextClassifier

    example = pd.DataFrame({"text": example_texts[:3]})
    # One unnamed string column: a DataFrame with a ``text`` column and a plain list of str both pass MLflow's
    # schema enforcement (a named column would turn a list into a frame with column 0 and reject it).
    signature = ModelSignature(
        inputs=Schema([ColSpec("string")]),
        outputs=_infer_schema(OnnxPredictor(bundle).predict(example["text"].tolist())),
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


def _sample_texts(ctx: StepContext) -> list[str]:
    """A seeded held-out sample for the parity checks: the evaluation set, else accepted hold-out rows."""
    from pipelines.datasets import load_accepted, read_table, split_holdout

    settings = ctx.settings
    text = settings.data.text_column
    eval_uri = ctx.inputs.get("eval_uri") or (ctx.result_of("train") or {}).get("eval_uri")
    if eval_uri and ctx.storage.exists(eval_uri):
        frame = read_table(eval_uri, settings)
    else:
        frame = split_holdout(load_accepted(settings), settings)[1]
    frame = frame.dropna(subset=[text]) if text in frame.columns else frame[:0]
    if frame.empty:
        raise ValueError(
            "compress needs held-out texts for its parity checks: give input eval_uri (the train step's "
            "eval.parquet) or accept a batch first"
        )
    n = min(settings.compress.parity_sample_rows, len(frame))
    return frame.sample(n=n, random_state=settings.train.seed)[text].astype(str).tolist()


def _size_mb(path: Path) -> float:
    return round(path.stat().st_size / _MB, 3)


def run(ctx: StepContext) -> dict[str, Any]:
    """Prune, export, optimise and quantise the trained model; check parity; save the served pyfunc model.

    Inputs: ``model_uri`` (fp32 save_pretrained folder), ``reference_uri`` (drift reference folder); optional
    ``eval_uri`` (held-out texts for the checks; default: the train step's evaluation set).

    Returns:
        served_uri, size_mb, latency (p50/p95 ms at batch 1 and 32), agreement, parity_max_abs_diff, prune,
        fused ops, sizes of each stage.

    Raises:
        ModelRejected: the fp32 ONNX graph does not reproduce PyTorch, or the served graph agrees too little.
        ValueError: an input is missing or the model's labels differ from the settings.
    """
    import mlflow

    from pipelines.serving import OnnxPredictor
    from pipelines.tracking import step_run
    from pipelines.train import load_classifier

    settings, cfg = ctx.settings, ctx.settings.compress
    model_uri, reference_uri = ctx.require("model_uri"), ctx.require("reference_uri")
    served_uri = ctx.output("served")
    texts = _sample_texts(ctx)
    with tempfile.TemporaryDirectory(prefix="mlops-compress-") as tmp, step_run(ctx):
        scratch = Path(tmp)
        fp32_dir = ctx.storage.download_dir(model_uri, scratch / "fp32")
        reference_dir = ctx.storage.download_dir(reference_uri, scratch / "reference")
        model, tokenizer = load_classifier(fp32_dir, settings)
        model.eval()
        reference = torch_logits(model, tokenizer, texts, cfg.max_length, cfg.infer_batch_size)
        reference_pred = reference.argmax(1)

        pruned, prune_info = prune(model, tokenizer, texts, reference_pred, settings)
        exported = scratch / "model_fp32.onnx"
        export_onnx(pruned, tokenizer, texts, exported, cfg.opset, cfg.max_length)
        fused: dict[str, int] = {}
        graph = exported
        if cfg.optimize_graph:
            graph = scratch / "model_fp32_opt.onnx"
            fused = optimize_graph(exported, graph, model.config.model_type)

        pruned_logits = torch_logits(pruned, tokenizer, texts, cfg.max_length, cfg.infer_batch_size)
        diff = float(
            abs(onnx_logits(graph, tokenizer, texts, cfg.max_length, cfg.infer_batch_size) - pruned_logits).max()
        )
        if diff > cfg.parity_atol:
            raise ModelRejected(
                f"fp32 ONNX export of {model_uri!r} does not reproduce PyTorch: max |logit diff| {diff:.2e} > "
                f"compress.parity_atol={cfg.parity_atol}",
                failures=[f"parity on {len(texts)} held-out texts, graph optimisation {cfg.optimize_graph}"],
            )

        served, kept = graph, {"fp32": [], "weight_only": []}
        if cfg.quantize:
            served = scratch / "model_int8.onnx"
            kept = quantize(
                graph,
                served,
                cfg.quantize_per_channel,
                cfg.quantize_reduce_range,
                cfg.quantize_exclude,
                cfg.quantize_weight_only,
                cfg.quantize_block_size,
            )
        bundle = build_bundle(scratch / "bundle", served, tokenizer, fp32_dir, reference_dir, settings)
        predictor = OnnxPredictor(bundle)
        served_pred = predictor.predict_proba(texts).argmax(1)
        agreement = _agreement(served_pred, reference_pred)
        if agreement < cfg.min_agreement:
            raise ModelRejected(
                f"served model agrees with the trained fp32 model on {agreement:.3f} of {len(texts)} held-out texts, "
                f"below compress.min_agreement={cfg.min_agreement}",
                failures=[
                    f"prune {prune_info}",
                    f"quantize {cfg.quantize} (per_channel {cfg.quantize_per_channel}, reduce_range "
                    f"{cfg.quantize_reduce_range}, {len(kept['fp32'])} nodes kept fp32, {len(kept['weight_only'])} "
                    f"weight-only), optimize_graph {cfg.optimize_graph}",
                ],
            )
        timings = latency(predictor, texts)
        sizes = {
            "pytorch_fp32_mb": round(sum(p.stat().st_size for p in Path(fp32_dir).glob("*.safetensors")) / _MB, 3),
            "onnx_fp32_mb": _size_mb(graph),
            "served_mb": _size_mb(bundle / "model.onnx"),
        }
        local_served = scratch / "served"
        save_served_model(local_served, bundle, texts, scratch)
        if not is_s3(served_uri) and Path(served_uri).exists():
            shutil.rmtree(served_uri)  # a rerun replaces the folder instead of mixing files
        ctx.storage.upload_dir(local_served, served_uri)

        metrics = {"agreement": agreement, "parity_max_abs_diff": diff, "size_mb": sizes["served_mb"], **timings}
        mlflow.log_params(
            {
                "prune": cfg.prune,
                "prune_applied_share": prune_info.get("applied_share", 0.0),
                "quantize": cfg.quantize,
                "quantize_per_channel": cfg.quantize_per_channel,
                "quantize_reduce_range": cfg.quantize_reduce_range,
                "quantize_exclude": ",".join(cfg.quantize_exclude),
                "quantize_weight_only": ",".join(cfg.quantize_weight_only),
                "quantize_block_size": cfg.quantize_block_size,
                "optimize_graph": cfg.optimize_graph,
                "opset": cfg.opset,
                "parity_rows": len(texts),
            }
        )
        mlflow.log_metrics({**metrics, **sizes})
        mlflow.log_dict(
            {
                "prune": prune_info,
                "fused_ops": fused,
                "sizes": sizes,
                "kept_fp32": kept["fp32"],
                "weight_only_int8": kept["weight_only"],
            },
            "compress.json",
        )
    log.info("served model at %s: %.1f MB, agreement %.3f, %s", served_uri, sizes["served_mb"], agreement, timings)
    return {
        "served_uri": served_uri,
        "model_uri": model_uri,
        "reference_uri": reference_uri,
        "size_mb": sizes["served_mb"],
        "sizes": sizes,
        "latency": timings,
        "agreement": round(agreement, 5),
        "parity_max_abs_diff": diff,
        "parity_rows": len(texts),
        "prune": prune_info,
        "fused_ops": fused,
        "quantized": cfg.quantize,
        "kept_fp32": kept["fp32"],
        "weight_only_int8": kept["weight_only"],
    }
