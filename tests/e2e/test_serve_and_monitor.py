"""End to end on one machine: serve a registered champion, send drug reviews then tweets through the REST API, and
the real monitor_predictions DAG flags the tweets window and starts continuous_training.

Real components throughout: the compress step's served pyfunc model (a bag-of-words logistic regression in ONNX,
fitted on the drug-review training split in a second), MLflow's registry and scoring server behind ``make serve``'s
supervisor, prediction capture, the ``monitor`` step inside ``dag.test()`` of monitor_predictions, and the
trigger of continuous_training in Airflow's metadata DB. Needs ../shared/data (skips without it).
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "pipelines"))  # registry_doubles, test_serve

pytestmark = pytest.mark.slow  # about 1-3 minutes on two shared cores


def _post(url: str, frame) -> list[dict]:
    payload = {"dataframe_split": {"columns": ["id", "text"], "data": frame[["id", "text"]].values.tolist()}}
    req = urllib.request.Request(
        url + "/invocations", data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())["predictions"]


def _captured_rows(root: Path) -> int:
    return sum(1 for f in root.rglob("*.jsonl") for _ in f.read_text().splitlines())


def _wait_for_rows(root: Path, n: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while _captured_rows(root) < n and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _captured_rows(root) == n


@pytest.fixture
def served_env(tmp_path, tiny_model_dir, drug_reviews, tweets):
    """Settings exported to the environment (the DAG's operator reads them there), Airflow prepared."""
    from conftest import dag_environment, tiny_settings
    from test_serve import _free_pair, _free_port

    from pipelines.config import settings_env

    env = settings_env(
        tiny_settings(
            tmp_path,
            tiny_model_dir,
            registry__model_name="served-e2e",
            serving__port=_free_port(),
            serving__backend_port=_free_pair(),
            serving__capture_flush_seconds=0.5,
            monitoring__settle_seconds=0,
            dag__retries=0,
        )
    )
    with dag_environment(env):
        from pipelines.config import get_settings

        yield get_settings()


def _register_champion(settings, drug_reviews, tmp_path: Path) -> str:
    """The bag-of-words model as the compress step saves a served model, registered as the champion with the tags
    the monitor reads: its evaluation set (the drug test split) and its macro-F1 there."""
    from registry_doubles import add_version, bow_bundle

    from pipelines.data.datasets import write_parquet
    from pipelines.data.reference import save_reference
    from pipelines.io.tracking import configure
    from pipelines.serving import OnnxPredictor
    from pipelines.steps.compress import save_served_model
    from pipelines.steps.monitor import realised_macro_f1

    train = drug_reviews[drug_reviews["split"] == "train"]
    test = drug_reviews[drug_reviews["split"] == "test"]
    bundle = bow_bundle(tmp_path / "src" / "bundle", train["text"].tolist(), train["label"].tolist())
    save_reference(settings, train, bundle / "reference")
    save_served_model(tmp_path / "served", bundle, train["text"].tolist(), tmp_path / "scratch")
    version = add_version(settings, tmp_path / "served", alias="champion")
    eval_uri = settings.uri("eval", "drug_test.parquet")
    write_parquet(test, eval_uri, settings)
    f1 = realised_macro_f1(
        test["label"].tolist(), OnnxPredictor(bundle).predict(test["text"].tolist())["label"].tolist()
    )
    client = configure(settings)
    name = settings.registry.model_name
    client.set_model_version_tag(name, version, "train.eval_uri", eval_uri)
    client.set_model_version_tag(name, version, "eval.macro_f1", str(f1))
    return version


def test_served_tweets_window_is_flagged_and_starts_training(served_env, drug_reviews, tweets, tmp_path):
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    from pipelines.data.datasets import capture_root, write_parquet
    from pipelines.model.serve import Supervisor
    from scripts.dag_runner import run_dag

    settings = served_env
    version = _register_champion(settings, drug_reviews, tmp_path)
    drug = drug_reviews[drug_reviews["split"] == "test"]
    tweet_sample = tweets.sample(n=400, random_state=0)
    captures = Path(capture_root(settings))

    sup = Supervisor(settings)
    url = sup.start_front()
    try:
        assert sup.sync() == version
        for start in range(0, len(drug), 50):  # the drug-review test texts, with their ids
            assert len(_post(url, drug.iloc[start : start + 50])) == len(drug.iloc[start : start + 50])
        _wait_for_rows(captures, len(drug))
        first = run_dag("monitor_predictions")
        for start in range(0, len(tweet_sample), 50):  # then tweets
            _post(url, tweet_sample.iloc[start : start + 50])
        _wait_for_rows(captures, len(drug) + len(tweet_sample))
        # Labelled tweets wait in landing: what lets an `act` window start training rather than ask for labels.
        labelled = tweets.drop(tweet_sample.index).sample(n=300, random_state=1)
        write_parquet(labelled, settings.uri(settings.paths.landing, "tweets_labelled.parquet"), settings)
        second = run_dag("monitor_predictions")
    finally:
        sup.shutdown()

    drug_window, tweet_window = first.results["monitor"], second.results["monitor"]
    assert first.state == "success" and first.task_states["done"] == "success", first.task_states
    assert drug_window["rows"] == len(drug) and drug_window["status"] != "act", drug_window["reasons"]
    assert tweet_window["rows"] == len(tweet_sample) and tweet_window["status"] == "act"
    assert tweet_window["tests"]["mmd"]["drifted"] and tweet_window["tests"]["length"]["drifted"]
    # Measured: estimated macro-F1 0.502 on the drug window, 0.336 on the tweets (tag eval.macro_f1 0.444: drop
    # 0.108); the realised macro-F1 on these tweets is about 0.10, so the label-free estimate sees part of the fall.
    drop = tweet_window["estimate"]["drop"]
    assert drop >= settings.monitoring.warn_f1_drop, tweet_window["estimate"]
    assert drop > drug_window["estimate"]["drop"] + 0.05
    assert any(r.startswith("estimated macro-F1") for r in tweet_window["reasons"]), tweet_window["reasons"]
    assert second.task_states["trigger_training"] == "success", second.task_states
    with create_session() as session:
        # The metadata DB is shared with the other end-to-end tests: look up the run this window asked for.
        run_id = f"monitor__{tweet_window['window_id']}"
        run = session.query(DagRun).filter(DagRun.dag_id == "continuous_training", DagRun.run_id == run_id).one()
        evidence = run.conf["monitor_evidence"]
    assert evidence["status"] == "act" and evidence["estimated_macro_f1"] == tweet_window["estimate"]["macro_f1"]
    # Ids passed through the REST API: captured rows join their labels by id.
    rows = [json.loads(line) for f in captures.rglob("*.jsonl") for line in f.read_text().splitlines()]
    assert {r["id"] for r in rows} == {str(i) for i in drug["id"]} | {str(i) for i in tweet_sample["id"]}
    print(
        f"\ndrug window: {drug_window['status']}, estimated macro-F1 {drug_window['estimate']['macro_f1']:.3f}; "
        f"tweets window: {tweet_window['status']}, estimated {tweet_window['estimate']['macro_f1']:.3f} "
        f"(drop {drop:.3f}); reasons: {tweet_window['reasons']}"
    )
