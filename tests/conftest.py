"""Shared fixtures: settings on a temporary root, a tiny BERT, a loopback S3 endpoint, an MLflow store, real data."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

# Airflow reads its home at import: give the test session its own, with this repo's DAGs and plugins.
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="airflow-home-")  # never the user's var/airflow
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(REPO / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")
if str(REPO / "plugins") not in sys.path:
    sys.path.insert(0, str(REPO / "plugins"))

# Nothing may reach a model hub from a test.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


@contextmanager
def dag_environment(env: dict[str, str]) -> Iterator[None]:
    """``env`` (the ``MLOPS_*`` settings a DAG's tasks read) in ``os.environ`` and Airflow's metadata DB ready for
    ``dag.test()``; the variables are restored afterwards."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        from scripts.dag_runner import prepare_airflow

        prepare_airflow(os.environ["AIRFLOW_HOME"])
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    import urllib.error
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with code {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"server at {url} did not answer within {timeout}s")


# --- text corpora ------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def demo_frames():
    """The demo batches as DataFrames, by name (generated in memory)."""
    import pandas as pd

    from pipelines.data import demo

    return {spec.name: pd.DataFrame(demo.generate(spec)) for spec in demo.BATCHES}


def _shared_csv(name: str):
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} is absent (../shared/data is not beside this checkout)")
    import pandas as pd

    return pd.read_csv(path)


@pytest.fixture(scope="session")
def drug_reviews():
    """../shared/data/drug_reviews.csv, or skip."""
    return _shared_csv("drug_reviews.csv")


@pytest.fixture(scope="session")
def tweets():
    """../shared/data/tweets_sentiment.csv, or skip."""
    return _shared_csv("tweets_sentiment.csv")


# --- tiny model --------------------------------------------------------------------------------------
def build_tiny_bert(out_dir: Path, texts: list[str], vocab_size: int = 1500) -> Path:
    """A 2-layer BERT encoder from a config, with a WordPiece vocabulary counted from ``texts``.

    The vocabulary is built by counting (specials, every character with its ``##`` form, then the most frequent
    words, ties by spelling) rather than with the tokenizers trainer, whose ties vary between runs: the same
    texts must give the same model, or tests that train it flake.
    """
    import re
    from collections import Counter

    from transformers import BertConfig, BertModel, BertTokenizerFast

    out_dir.mkdir(parents=True, exist_ok=True)
    words = Counter(w for t in texts for w in re.findall(r"\w+|[^\w\s]", str(t).lower()))
    chars = sorted({c for w in words for c in w})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars)]
    room = max(vocab_size - len(vocab), 0)
    vocab += [w for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])) if len(w) > 1][:room]
    (out_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(out_dir / "vocab.txt"), do_lower_case=True).save_pretrained(out_dir)
    import torch

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=256,
    )
    BertModel(config).save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, demo_frames) -> Path:
    """A tiny BERT folder (encoder + tokenizer), usable as train.base_model and drift.encoder."""
    texts = [t for df in demo_frames.values() for t in df["text"].tolist()]
    if (SHARED_DATA / "drug_reviews.csv").is_file():
        import pandas as pd

        texts += pd.read_csv(SHARED_DATA / "drug_reviews.csv")["text"].astype(str).tolist()
        texts += pd.read_csv(SHARED_DATA / "tweets_sentiment.csv", nrows=3000)["text"].astype(str).tolist()
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), texts)


# --- settings ----------------------------------------------------------------------------------------
def tiny_settings(root: Path, tiny_model_dir: Path, **overrides):
    """Settings on ``root`` (artifacts under ``root/var``, SQLite MLflow store) with the tiny model and small
    training; keyword overrides as in ``get_settings``. Module-scoped fixtures call this directly."""
    from pipelines.config import get_settings

    base = {
        "paths__artifact_root": str(root / "var"),
        "mlflow__tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
        "train__base_model": str(tiny_model_dir),
        "train__max_length": 64,
        "train__epochs": 3,
        "train__fine_tune_epochs": 2,
        "train__batch_size": 16,
        "train__learning_rate": 1e-3,
        "train__fine_tune_learning_rate": 5e-4,
        "drift__encoder": str(tiny_model_dir),
        "drift__mmd_permutations": 50,
        "compress__max_length": 64,
        "compress__parity_sample_rows": 64,
    }
    base.update(overrides)
    return get_settings(**base)


@pytest.fixture
def make_settings(tmp_path, tiny_model_dir):
    """Build settings on a temporary root with the tiny model; keyword overrides as in get_settings."""
    return lambda **overrides: tiny_settings(tmp_path, tiny_model_dir, **overrides)


@pytest.fixture
def settings(make_settings):
    return make_settings()


# --- services ----------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 HTTP endpoint on loopback (moto's server in a subprocess) with bucket ``test-bucket``."""
    pytest.importorskip("moto")
    port = _free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url, proc)
        import boto3

        boto3.client(
            "s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
        ).create_bucket(Bucket="test-bucket")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def aws_env(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture
def mlflow_uri(tmp_path):
    """A temporary MLflow tracking + registry store (SQLite file)."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` on loopback over a SQLite store; yields its URL."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url + "/health", proc, timeout=120)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def pytest_configure(config):
    """SIGTERM (a CI timeout, ``kill``) ends the session like Ctrl-C, so fixture teardowns still stop the servers
    they started (moto, ``mlflow server``, the UI tests' Airflow stack) instead of leaving them running."""
    import signal

    def _interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _interrupt)


def pytest_sessionfinish(session, exitstatus):
    """Name any thread a test left running that would keep the interpreter from exiting (CI once hung on one)."""
    import threading

    left = [t.name for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive() and not t.daemon]
    if left:
        print(f"\nthreads still running after the tests (the process waits for them at exit): {left}", flush=True)
