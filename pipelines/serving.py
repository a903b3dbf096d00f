"""Inference on the served bundle: onnxruntime + the fast tokenizer, in length-sorted batches.

This module is copied into every served MLflow model (as ``code/pipelines/serving.py``), so that
``mlflow models predict`` / ``serve`` can load the model without this repository. It therefore imports only
the standard library, numpy, pandas, onnxruntime, tokenizers and mlflow, never other ``pipelines`` modules.

A bundle folder holds ``model.onnx``, ``tokenizer/`` (with ``tokenizer.json``), ``labels.json`` and
``serving.json`` (max length, batch size, the padding token); see :mod:`pipelines.champion` for the rest.

Prediction capture (:class:`CaptureWriter`) lives here too, inside the served model, so it works under any pyfunc
server. It is configured by environment variables (this module cannot read ``pipelines.config``), named as the
settings they mirror: ``MLOPS_SERVING__CAPTURE_URI`` (a folder or ``s3://`` prefix; capture is off without it),
``MLOPS_SERVING__CAPTURE_SHARE``, ``MLOPS_SERVING__CAPTURE_TEXTS``, ``MLOPS_SERVING__CAPTURE_QUEUE_SIZE``,
``MLOPS_SERVING__CAPTURE_FLUSH_ROWS``, ``MLOPS_SERVING__CAPTURE_FLUSH_SECONDS``, plus
``MLOPS_STORAGE__S3_ENDPOINT_URL`` / ``MLOPS_STORAGE__S3_REGION`` for S3 and ``MLOPS_SERVED_MODEL_VERSION`` (the
registry version, stamped on every record). ``make serve`` (:mod:`pipelines.serve`) sets them from the settings.

A prediction never waits for the sink and never fails because of it: the request thread only puts one small
item on a bounded queue (``put_nowait``; a full queue drops the request's rows and counts them); a background
thread builds the records and writes JSONL files of at most ``capture_flush_rows`` rows, at least every
``capture_flush_seconds``. A failing write drops that file's rows, counted, and the writer carries on.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import queue
import random
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

try:  # mlflow is present wherever a served model is loaded; the plain predictor works without it
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover - only in an environment without mlflow
    PythonModel = object  # type: ignore[assignment,misc]

SERVING_CONFIG = "serving.json"
log = logging.getLogger(__name__)


class OnnxPredictor:
    """Class probabilities from a bundle's ONNX graph.

    Texts are tokenised once, sorted by token count and cut into batches of ``batch_size``, so each batch is
    padded only to its own longest row; results come back in input order.

    Args:
        bundle_dir: the bundle folder.
        model_file: the ONNX file inside it (``model.onnx``, the served graph, by default).
        threads: onnxruntime intra-op threads; 0 lets onnxruntime choose.
        sort_by_length: False batches in input order (for measuring what the sorting brings).
    """

    def __init__(
        self, bundle_dir: str | Path, model_file: str = "model.onnx", threads: int = 0, sort_by_length: bool = True
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        bundle = Path(bundle_dir)
        config = json.loads((bundle / SERVING_CONFIG).read_text())
        self.labels: list[str] = json.loads((bundle / "labels.json").read_text())
        self.max_length = int(config["max_length"])
        self.batch_size = int(config["batch_size"])
        self.sort_by_length = sort_by_length
        self.tokenizer = Tokenizer.from_file(str(bundle / "tokenizer" / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.max_length)
        self.pad_id = int(config["pad_id"])
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(bundle / model_file), options, providers=["CPUExecutionProvider"])
        self.input_names = {i.name for i in self.session.get_inputs()}

    def predict_proba(self, texts: Sequence[str]) -> Any:
        """Softmax probabilities, float32 array of shape (len(texts), n_labels), in input order."""
        import numpy as np

        texts = [str(t) for t in texts]
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        if not texts:
            return out
        encodings = self.tokenizer.encode_batch(texts)
        lengths = np.array([len(e.ids) for e in encodings])
        order = np.argsort(lengths, kind="stable") if self.sort_by_length else np.arange(len(texts))
        for start in range(0, len(texts), self.batch_size):
            idx = order[start : start + self.batch_size]
            width = int(lengths[idx].max())
            ids = np.full((len(idx), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            types = np.zeros((len(idx), width), dtype=np.int64)
            for row, i in enumerate(idx):
                n = lengths[i]
                ids[row, :n] = encodings[i].ids
                mask[row, :n] = 1
                types[row, :n] = encodings[i].type_ids
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            logits = self.session.run(["logits"], {k: v for k, v in feed.items() if k in self.input_names})[0]
            logits = logits - logits.max(axis=1, keepdims=True)
            probs = np.exp(logits)
            out[idx] = probs / probs.sum(axis=1, keepdims=True)
        return out

    def predict(self, texts: Any) -> Any:
        """A DataFrame with ``label`` and one ``prob_<label>`` column per class, in input order.

        ``texts``: whatever the served pyfunc model takes (a list of str, a DataFrame with a ``text`` column ...),
        so this predictor stands in for it wherever the pipeline scores a served model without unpickling it.
        """
        import pandas as pd

        probs = self.predict_proba(texts_from_input(texts))
        frame = pd.DataFrame({"label": [self.labels[i] for i in probs.argmax(axis=1)] if len(probs) else []})
        for j, name in enumerate(self.labels):
            frame[f"prob_{name}"] = probs[:, j].astype(float)
        return frame


def texts_from_input(model_input: Any, text_column: str = "text") -> list[str]:
    """Raw texts from a DataFrame (column ``text``, or its only column), a Series, a list or a single string.

    Raises:
        ValueError: a DataFrame has no ``text`` column and more than one column.
    """
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        if text_column in model_input.columns:
            return model_input[text_column].astype(str).tolist()
        if model_input.shape[1] == 1:
            return model_input.iloc[:, 0].astype(str).tolist()
        raise ValueError(
            f"input has columns {list(model_input.columns)!r}; expected a column {text_column!r} with raw text"
        )
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, dict) and text_column in model_input:
        value = model_input[text_column]
        return [value] if isinstance(value, str) else [str(t) for t in value]
    return [str(t) for t in model_input]


def ids_from_input(model_input: Any, id_column: str = "id") -> list[str] | None:
    """Caller-supplied row ids (a DataFrame or dict ``id`` column), to join labels that land later; else None."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame) and id_column in model_input.columns:
        return model_input[id_column].astype(str).tolist()
    if isinstance(model_input, dict) and id_column in model_input:
        value = model_input[id_column]
        return [str(value)] if isinstance(value, (str, int)) else [str(v) for v in value]
    return None


# --- prediction capture -------------------------------------------------------------------------------
ENV_PREFIX = "MLOPS_SERVING__"
ENV_MODEL_VERSION = "MLOPS_SERVED_MODEL_VERSION"
CAPTURE_SUFFIX = ".jsonl"


def _env_bool(value: str | None, default: bool) -> bool:
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


class CaptureConfig:
    """Capture options; :meth:`from_env` reads the ``MLOPS_SERVING__CAPTURE_*`` variables (see the module doc)."""

    def __init__(
        self,
        uri: str,
        share: float = 1.0,
        keep_texts: bool = True,
        queue_size: int = 1000,
        flush_rows: int = 500,
        flush_seconds: float = 10.0,
        model_version: str | None = None,
        s3_endpoint_url: str | None = None,
        s3_region: str = "us-east-1",
    ) -> None:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"capture share {share!r} must lie in [0, 1]")
        self.uri = uri.rstrip("/")
        self.share = float(share)
        self.keep_texts = keep_texts
        self.queue_size = max(int(queue_size), 1)
        self.flush_rows = max(int(flush_rows), 1)
        self.flush_seconds = max(float(flush_seconds), 0.01)
        self.model_version = model_version
        self.s3_endpoint_url = s3_endpoint_url
        self.s3_region = s3_region

    @classmethod
    def from_env(cls, environ: Any = None) -> CaptureConfig | None:
        """The configuration in the environment, or None when capture is off (no URI, or a share of 0)."""
        env = os.environ if environ is None else environ
        uri = (env.get(ENV_PREFIX + "CAPTURE_URI") or "").strip()
        share = float(env.get(ENV_PREFIX + "CAPTURE_SHARE") or 1.0)
        if not uri or share <= 0:
            return None
        return cls(
            uri=uri,
            share=share,
            keep_texts=_env_bool(env.get(ENV_PREFIX + "CAPTURE_TEXTS"), True),
            queue_size=int(env.get(ENV_PREFIX + "CAPTURE_QUEUE_SIZE") or 1000),
            flush_rows=int(env.get(ENV_PREFIX + "CAPTURE_FLUSH_ROWS") or 500),
            flush_seconds=float(env.get(ENV_PREFIX + "CAPTURE_FLUSH_SECONDS") or 10.0),
            model_version=(env.get(ENV_MODEL_VERSION) or "").strip() or None,
            s3_endpoint_url=(env.get("MLOPS_STORAGE__S3_ENDPOINT_URL") or "").strip() or None,
            s3_region=(env.get("MLOPS_STORAGE__S3_REGION") or "").strip() or "us-east-1",
        )


class LocalSink:
    """Writes each capture file into a local folder: a temporary sibling renamed into place (atomic)."""

    def __init__(self, root: str) -> None:
        self.root = root

    def write(self, relpath: str, data: bytes) -> str:
        path = os.path.join(self.root, relpath)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
        return path


class S3Sink:
    """Writes each capture file as one S3 object (a single PUT: visible only once complete)."""

    def __init__(self, uri: str, endpoint_url: str | None = None, region: str = "us-east-1") -> None:
        import boto3
        from botocore.config import Config

        bucket, _, prefix = uri[len("s3://") :].partition("/")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            config=Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 2}),
        )

    def write(self, relpath: str, data: bytes) -> str:
        key = f"{self.prefix}/{relpath}" if self.prefix else relpath
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)
        return f"s3://{self.bucket}/{key}"


def make_sink(config: CaptureConfig) -> Any:
    if config.uri.startswith("s3://"):
        return S3Sink(config.uri, config.s3_endpoint_url, config.s3_region)
    return LocalSink(config.uri)


def capture_file_name(when: datetime, writer: str, seq: int) -> str:
    """``date=YYYY-MM-DD/<UTC stamp>-<writer>-<seq>.jsonl``: names sort by the time the file was written."""
    return f"date={when:%Y-%m-%d}/{when:%Y%m%dT%H%M%S%fZ}-{writer}-{seq:06d}{CAPTURE_SUFFIX}"


class CaptureWriter:
    """A bounded queue and one daemon thread that turns captured requests into JSONL files.

    Counters (``stats()``): ``requests_seen``, ``requests_sampled``, ``rows_captured`` (queued), ``rows_dropped``
    (queue full or a failed write), ``rows_written``, ``files_written``, ``write_errors``, ``capture_errors``.
    """

    def __init__(self, config: CaptureConfig, sink: Any = None) -> None:
        self.config = config
        self.sink = sink if sink is not None else make_sink(config)
        self.writer_id = f"{socket.gethostname()[:32]}-{os.getpid()}-{uuid.uuid4().hex[:6]}".replace("/", "_")
        self._queue: queue.Queue = queue.Queue(maxsize=config.queue_size)
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(
            (
                "requests_seen",
                "requests_sampled",
                "rows_captured",
                "rows_dropped",
                "rows_written",
                "files_written",
                "write_errors",
                "capture_errors",
            ),
            0,
        )
        self._seq = 0
        self._random = random.Random()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="prediction-capture", daemon=True)
        self._thread.start()
        atexit.register(self.close, 2.0)  # a server stopping cleanly writes what is queued (bounded wait)

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def sampled(self) -> bool:
        """Whether this request is captured (counted as seen either way)."""
        self._count("requests_seen")
        if self.config.share >= 1.0 or self._random.random() < self.config.share:
            self._count("requests_sampled")
            return True
        return False

    def submit(self, item: dict[str, Any]) -> bool:
        """Queue one request's capture without waiting; False (rows counted as dropped) when the queue is full."""
        rows = len(item.get("texts") or ()) or 1
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._count("rows_dropped", rows)
            return False
        self._count("rows_captured", rows)
        return True

    def capture(
        self,
        texts: list[str],
        ids: list[str] | None,
        labels: list[str] | None,
        probs: Any,
        class_names: list[str],
        latency_ms: float,
        error: str | None = None,
    ) -> None:
        """Capture one request (called after the prediction, on the request thread): never raises, never waits."""
        try:
            if not self.sampled():
                return
            self.submit(
                {
                    "texts": texts,
                    "ids": ids,
                    "labels": labels,
                    "probs": probs,
                    "classes": class_names,
                    "latency_ms": float(latency_ms),
                    "ts": time.time(),
                    "error": error,
                }
            )
        except Exception:  # capture must never fail a prediction
            self._count("capture_errors")

    def records(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        """The JSONL records of one captured request (built on the writer thread)."""
        ts = datetime.fromtimestamp(item["ts"], tz=UTC).isoformat(timespec="microseconds")
        request_id = uuid.uuid4().hex
        texts, ids, labels, probs = item["texts"] or [], item["ids"], item["labels"], item["probs"]
        out = []
        for i, text in enumerate(texts or [""]):
            text = str(text)
            digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
            record: dict[str, Any] = {
                "id": ids[i] if ids and i < len(ids) else digest,
                "request_id": request_id,
                "row": i,
                "ts": ts,
                "model_version": self.config.model_version,
                "latency_ms": round(item["latency_ms"], 3),
                "status": "error" if item["error"] else "ok",
                "error": item["error"],
                "text": text if self.config.keep_texts and texts else None,
                "text_sha256": digest if texts else None,
                "text_length": len(text) if texts else None,
                "label": None,
                "confidence": None,
                "probs": None,
            }
            if labels is not None and probs is not None and i < len(labels):
                row = [float(p) for p in probs[i]]
                record["label"] = str(labels[i])
                record["probs"] = dict(zip(item["classes"], row, strict=False))
                record["confidence"] = max(row) if row else None
            out.append(record)
        return out

    def _write(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        with self._lock:
            self._seq += 1
            seq = self._seq
        name = capture_file_name(datetime.now(UTC), self.writer_id, seq)
        data = "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in rows).encode()
        try:
            self.sink.write(name, data)
        except Exception as exc:
            self._count("write_errors")
            self._count("rows_dropped", len(rows))
            log.warning(
                "prediction capture: writing %d rows failed (%s: %s); dropped", len(rows), type(exc).__name__, exc
            )
            return
        self._count("files_written")
        self._count("rows_written", len(rows))

    def _loop(self) -> None:
        rows: list[dict[str, Any]] = []
        first = 0.0
        while True:
            timeout = self.config.flush_seconds - (time.monotonic() - first) if rows else self.config.flush_seconds
            try:
                item = self._queue.get(timeout=max(timeout, 0.001))
            except queue.Empty:
                item = None
            if item is not None and item is not _STOP:
                try:
                    if not rows:
                        first = time.monotonic()
                    rows.extend(self.records(item))
                except Exception:
                    self._count("capture_errors")
            while len(rows) >= self.config.flush_rows:  # full files first; the rest waits for more rows
                self._write(rows[: self.config.flush_rows])
                rows = rows[self.config.flush_rows :]
                first = time.monotonic()
            if rows and (item is _STOP or time.monotonic() - first >= self.config.flush_seconds):
                self._write(rows)
                rows = []
            if item is _STOP:
                self._queue.task_done()
                return
            if item is not None:
                self._queue.task_done()

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued and stop the thread (waits at most ``timeout`` seconds)."""
        if not self._thread.is_alive():
            return
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)


_STOP = object()


class OnnxTextClassifier(PythonModel):
    """The served MLflow pyfunc model: raw text in, ``label`` and ``prob_<label>`` columns out.

    With ``MLOPS_SERVING__CAPTURE_URI`` set, a sampled share of requests is captured (see the module doc).
    """

    def load_context(self, context: Any) -> None:
        self._predictor = OnnxPredictor(context.artifacts["bundle"])
        self._capture: CaptureWriter | None = None
        try:
            config = CaptureConfig.from_env()
            if config is not None:
                self._capture = CaptureWriter(config)
                log.info("prediction capture on: %.0f%% of requests to %s", 100 * config.share, config.uri)
        except Exception as exc:  # a bad capture setting must not keep the model from serving
            log.error("prediction capture off: %s: %s", type(exc).__name__, exc)

    # No type hints here: MLflow would read them as a schema; the saved signature is the schema.
    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        """Predict ``label`` and ``prob_<label>`` for a DataFrame with a ``text`` column or a list of str."""
        capture = getattr(self, "_capture", None)
        if capture is None:
            return self._predictor.predict(texts_from_input(model_input))
        started = time.perf_counter()
        texts: list[str] = []
        try:
            texts = texts_from_input(model_input)
            out = self._predictor.predict(texts)
        except Exception as exc:
            capture.capture(texts, None, None, None, [], (time.perf_counter() - started) * 1000, type(exc).__name__)
            raise
        latency_ms = (time.perf_counter() - started) * 1000
        try:
            probs = out[[f"prob_{c}" for c in self._predictor.labels]].to_numpy(copy=True)
            ids = ids_from_input(model_input)
            capture.capture(texts, ids, out["label"].tolist(), probs, list(self._predictor.labels), latency_ms)
        except Exception:
            capture._count("capture_errors")
        return out
