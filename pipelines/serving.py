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
registry version, stamped on every record). ``make serve`` (:mod:`pipelines.model.serve`) sets them from the settings.

A prediction never waits for the sink and never fails because of it: the request thread only appends one tuple of
references to a bounded buffer (a full buffer drops the request's rows and counts them); a background thread takes
them every 0.25 s, builds the records (label, hash, id, JSON) and writes JSONL files of at most
``capture_flush_rows`` rows, at least every ``capture_flush_seconds``. A failing write drops that file's rows,
counted, and the writer carries on. At a clean exit (SIGTERM to the scoring server) the buffer is written.
A request with ``params={"capture": false}`` is not captured (the supervisor's warm-up).
"""

from __future__ import annotations

import atexit
import collections
import hashlib
import json
import logging
import os
import random
import signal
import socket
import threading
import time
import uuid
import weakref
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
        import onnxruntime as ort  # heavy (onnxruntime): imported when used
        from tokenizers import Tokenizer  # heavy (tokenizers): imported when used

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
        import numpy as np  # heavy (numpy): imported when used

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
        return self.frame(self.predict_proba(texts_from_input(texts)))

    def frame(self, probs: Any) -> Any:
        """The output DataFrame of :meth:`predict` from :meth:`predict_proba`'s array."""
        import pandas as pd  # heavy (pandas): imported when used

        columns: dict[str, Any] = {"label": [self.labels[i] for i in probs.argmax(axis=1)] if len(probs) else []}
        for j, name in enumerate(self.labels):
            columns[f"prob_{name}"] = probs[:, j].astype(float)
        return pd.DataFrame(columns)


def texts_from_input(model_input: Any, text_column: str = "text") -> list[str]:
    """Raw texts from a DataFrame or dict (column ``text``, or its only column), a Series, a 1-D array or list
    (what the scoring server makes of ``{"inputs": [...]}``), or a single string.

    Raises:
        ValueError: no ``text`` column among several, or an array of more than one column.
    """
    import numpy as np  # heavy (numpy): imported when used
    import pandas as pd  # heavy (pandas): imported when used

    if isinstance(model_input, (pd.DataFrame, dict)):
        columns = list(model_input.columns if isinstance(model_input, pd.DataFrame) else model_input.keys())
        if text_column in columns:
            value = model_input[text_column]
        elif len(columns) == 1:
            value = model_input[columns[0]]
        else:
            raise ValueError(f"input has columns {columns!r}; expected a column {text_column!r} with raw text")
        return [value] if isinstance(value, str) else [str(t) for t in value]
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, np.ndarray) and model_input.ndim > 1:
        if model_input.ndim != 2 or model_input.shape[1] != 1:
            raise ValueError(f"input is an array of shape {model_input.shape}; expected one text per row")
        model_input = model_input[:, 0]
    return [str(t) for t in model_input]


def ids_from_input(model_input: Any, id_column: str = "id") -> list[str | None] | None:
    """Caller-supplied row ids (a DataFrame or dict ``id`` column), to join labels that land later; else None.

    A missing id (None, NaN, empty) is None: that row's capture falls back to its text's SHA-256.
    """
    import pandas as pd  # heavy (pandas): imported when used

    if isinstance(model_input, pd.DataFrame) and id_column in model_input.columns:
        values = model_input[id_column].tolist()
    elif isinstance(model_input, dict) and id_column in model_input:
        value = model_input[id_column]
        values = [value] if isinstance(value, (str, int)) else list(value)
    else:
        return None
    return [None if v is None or (isinstance(v, float) and v != v) or str(v) == "" else str(v) for v in values]


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
        import boto3  # heavy (boto3): imported when used
        from botocore.config import Config  # heavy (botocore): imported when used

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
        # A deque, not a queue.Queue: appending wakes no thread (a Queue's put hands the GIL to the waiting writer
        # on every request); the writer drains it every _DRAIN_SECONDS. Bounded by the check in submit().
        self._queue: collections.deque = collections.deque()
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
        self._wake = threading.Event()
        self._final = False  # after SIGTERM: write at once, each request waits (bounded) for its rows
        self._written = threading.Condition(self._lock)
        self._submitted = 0  # requests queued so far
        self._taken = 0  # requests the writer has taken
        self._done = 0  # requests whose rows are written (or dropped by a failed write)
        self._thread = threading.Thread(target=self._loop, name="prediction-capture", daemon=True)
        self._thread.start()
        atexit.register(self.close, 2.0)  # a process exiting normally writes what is queued (bounded wait)
        _LIVE_WRITERS.add(self)

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def sampled(self) -> bool:
        """Whether this request is captured (counted as seen either way)."""
        take = self.config.share >= 1.0 or self._random.random() < self.config.share
        with self._lock:
            self._counts["requests_seen"] += 1
            if take:
                self._counts["requests_sampled"] += 1
        return take

    def submit(self, item: tuple, rows: int) -> int:
        """Queue one request's capture without waiting: its number, or 0 (rows counted as dropped) when the queue is
        full or the writer is closed."""
        with self._lock:
            if len(self._queue) >= self.config.queue_size or self._stop.is_set():
                self._counts["rows_dropped"] += rows
                return 0
            self._queue.append(item)
            self._counts["rows_captured"] += rows
            self._submitted += 1
            return self._submitted

    def wait_written(self, number: int, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until the rows of request ``number`` and those before it are written."""
        self._wake.set()
        deadline = time.monotonic() + timeout
        # A timed acquire: a signal handler may run while its own thread holds the lock.
        if not self._lock.acquire(timeout=timeout):
            return False
        try:
            return self._written.wait_for(lambda: self._done >= number, max(deadline - time.monotonic(), 0.0))
        finally:
            self._lock.release()

    def begin_shutdown(self, timeout: float = 2.0) -> bool:
        """The process is stopping (SIGTERM): write what is queued now, and from here on each captured request
        waits for its own rows (at most 1 s), so that nothing is left in memory when the process ends."""
        self._final = True
        return self.wait_written(self._submitted, timeout)

    def capture(
        self,
        texts: list[str],
        ids: list[str | None] | None,
        probs: Any,
        class_names: list[str],
        latency_ms: float,
        error: str | None = None,
    ) -> None:
        """Capture one sampled request (on the request thread, after the prediction): never raises, never waits.

        Only references are queued; labels, hashes, ids and JSON are made on the writer thread.
        """
        try:
            number = self.submit((time.time(), latency_ms, texts, ids, probs, class_names, error), len(texts) or 1)
            if self._final and number:
                self.wait_written(number, _FINAL_WAIT_SECONDS)
        except Exception:  # capture must never fail a prediction
            self._count("capture_errors")

    def records(self, item: tuple) -> list[dict[str, Any]]:
        """The JSONL records of one captured request (built on the writer thread)."""
        stamp, latency_ms, texts, ids, probs, classes, error = item
        ts = datetime.fromtimestamp(stamp, tz=UTC).isoformat(timespec="microseconds")
        request_id = uuid.uuid4().hex
        rows = probs.tolist() if probs is not None else None
        out = []
        for i, text in enumerate(texts or [""]):
            text = str(text)
            digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
            given = ids[i] if ids and i < len(ids) else None
            record: dict[str, Any] = {
                "id": given if given is not None else digest,
                "request_id": request_id,
                "row": i,
                "ts": ts,
                "model_version": self.config.model_version,
                "latency_ms": round(float(latency_ms), 3),
                "status": "error" if error else "ok",
                "error": error,
                "text": text if self.config.keep_texts and texts else None,
                "text_sha256": digest if texts else None,
                "text_length": len(text) if texts else None,
                "label": None,
                "confidence": None,
                "probs": None,
            }
            if rows is not None and i < len(rows):
                row = rows[i]
                best = max(range(len(row)), key=row.__getitem__) if row else None
                record["label"] = classes[best] if best is not None else None
                record["probs"] = dict(zip(classes, row, strict=False))
                record["confidence"] = row[best] if best is not None else None
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
            self._wake.wait(min(self.config.flush_seconds, _DRAIN_SECONDS))
            self._wake.clear()
            stopping = self._stop.is_set()
            final = stopping or self._final
            taken = 0
            while self._queue:
                item = self._queue.popleft()
                taken += 1
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
            if rows and (final or time.monotonic() - first >= self.config.flush_seconds):
                self._write(rows)
                rows = []
            with self._written:
                self._taken += taken
                if not rows:
                    self._done = self._taken
                    self._written.notify_all()
            if stopping and not self._queue:
                return

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued and stop the thread (waits at most ``timeout`` seconds); later captures drop."""
        self._stop.set()
        self._wake.set()
        _LIVE_WRITERS.discard(self)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)


#: How often the writer thread takes what the request threads queued.
_DRAIN_SECONDS = 0.25
#: After SIGTERM, the longest a captured request waits for its rows to be written.
_FINAL_WAIT_SECONDS = 1.0
_LIVE_WRITERS: weakref.WeakSet = weakref.WeakSet()
_previous_sigterm: Any = None


def _on_sigterm(signum: int, frame: Any) -> None:
    """Write every live writer's queue, then hand the signal on (uvicorn's graceful shutdown, or the default)."""
    for writer in list(_LIVE_WRITERS):
        writer.begin_shutdown()
    previous = _previous_sigterm
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)


def flush_on_sigterm() -> bool:
    """Install :func:`_on_sigterm` before the current SIGTERM handler (main thread only; once per handler).

    Uvicorn (under ``mlflow models serve``) stops on SIGTERM by re-raising it with the default action once its
    graceful shutdown is done, so neither atexit nor a daemon thread would get to write the last captures.
    """
    global _previous_sigterm
    if threading.current_thread() is not threading.main_thread():
        return False
    current = signal.getsignal(signal.SIGTERM)
    if current is _on_sigterm:
        return True
    _previous_sigterm = current
    signal.signal(signal.SIGTERM, _on_sigterm)
    return True


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
                flush_on_sigterm()
                log.info("prediction capture on: %.0f%% of requests to %s", 100 * config.share, config.uri)
        except Exception as exc:  # a bad capture setting must not keep the model from serving
            log.error("prediction capture off: %s: %s", type(exc).__name__, exc)

    # No type hints here: MLflow would read them as a schema; the saved signature is the schema.
    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        """Predict ``label`` and ``prob_<label>`` for a DataFrame with a ``text`` column or a list of str.

        ``params={"capture": false}`` leaves the request out of capture (warm-ups, health checks, benchmarks).
        """
        capture = getattr(self, "_capture", None)
        if capture is None or (params or {}).get("capture") is False or not capture.sampled():
            return self._predictor.predict(model_input)
        started = time.perf_counter()
        texts: list[str] = []
        try:
            texts = texts_from_input(model_input)
            probs = self._predictor.predict_proba(texts)
        except Exception as exc:
            capture.capture(texts, None, None, [], (time.perf_counter() - started) * 1000, type(exc).__name__)
            raise
        latency_ms = (time.perf_counter() - started) * 1000
        try:
            ids = ids_from_input(model_input)
        except Exception:  # an odd id column never fails a prediction: the rows fall back to their text hash
            ids = None
        capture.capture(texts, ids, probs, self._predictor.labels, latency_ms)
        return self._predictor.frame(probs)
