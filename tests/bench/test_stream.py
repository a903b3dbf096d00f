"""The stream benchmark: its --quick run (the real DAG on the synthetic demo stream, a tiny BERT) and its streams."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import stream  # noqa: E402


def test_csv_stream_splits_on_a_date_column_or_on_values(tmp_path):
    import pandas as pd

    rows = [
        {
            "body": f"text {i}",
            "y": ["negative", "neutral", "positive"][i % 3],
            "day": f"2020-01-{1 + i % 28:02d}",
            "topic": "ab"[i % 2],
        }
        for i in range(120)
    ]
    path = tmp_path / "s.csv"
    pd.DataFrame(rows).to_csv(path, index=False)

    by_date = stream.csv_stream(path, "day", text_column="body", label_column="y", batches=3)
    assert [n for n, _ in by_date] == ["day_1", "day_2", "day_3"]
    assert sum(len(f) for _, f in by_date) == 120 and list(by_date[0][1].columns) == ["text", "label", "domain"]
    firsts = [f["text"].tolist() for _, f in by_date]
    days = {r["body"]: r["day"] for r in rows}
    assert max(days[t] for t in firsts[0]) <= min(days[t] for t in firsts[1])  # sorted by date

    by_topic = stream.csv_stream(
        path, "topic", text_column="body", label_column="y", rows_per_batch=50, values=["b", "a"]
    )
    assert [(n, len(f)) for n, f in by_topic] == [("b", 50), ("a", 50)]
    assert set(by_topic[0][1]["domain"]) == {"b"}

    with pytest.raises(SystemExit, match="no column"):
        stream.csv_stream(path, "missing")


def test_public_stream_is_drugs_by_date_then_tweet_topics(drug_reviews, tweets):
    from conftest import SHARED_DATA

    batches = stream.public_stream(SHARED_DATA)
    assert [n for n, _ in batches] == ["drugs_1", "drugs_2", "drugs_3", "drugs_4", *stream.TWEET_TOPICS]
    assert sum(len(f) for _, f in batches[:4]) == 979
    assert all(len(f) == 600 for _, f in batches[4:])


@pytest.mark.slow
def test_stream_quick_runs_the_real_loop_and_prints_the_figures(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "stream.py"), "--quick", "--work", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    out = json.loads(lines[-1])
    for key in (
        "loop_f1",
        "never_f1",
        "fine_tune_f1",
        "retrain_f1",
        "tfidf_f1",
        "loop_compute_share",
        "champions",
        "promoted_regressions",
        "loop_s",
    ):
        assert out[key] is not None, key
    assert out["loop_actions"][0] == "retrain" and out["loop_champion_after"][0] != ""  # a champion after batch 1
    assert out["champions"] >= 1 and out["promoted_regressions"] == 0
    assert len(out["per_batch_f1"]["loop"]) == len(out["batches"]) - 1
    assert all(v is not None for v in out["per_batch_f1"]["loop"])
    assert 0 < out["loop_compute_share"] <= 1.5
    assert out["sample_passes"]["always_retrain"] > out["sample_passes"]["never"] > 0
    assert "Next-batch macro-F1" in proc.stdout and "The loop, batch by batch" in proc.stdout


class _StandInLoop:
    """The Loop's interface with fixed answers: version 1 promoted on batch 1, version 2 held on batch 2."""

    def __init__(self, answers):
        self.answers = answers  # version -> label it always answers
        self.champions: list[str] = []
        self.promotions: list[tuple[int, str | None, str]] = []
        self.held: list[tuple[int, str]] = []

    def learn(self, t, name, batch):
        if t == 0:
            self.champions.append("1")
            self.promotions.append((0, None, "1"))
            return stream.Step(action="retrain", promoted=True, state="ok")
        if t == 1:
            self.held.append((1, "2"))
        self.champions.append("1")
        return stream.Step(action="fine_tune", state="held" if t == 1 else "ok")

    def predict(self, version, texts):
        import numpy as np

        return np.array([self.answers[version]] * len(texts))


def test_a_held_challenger_is_scored_on_the_next_batch_beside_the_champion_but_not_counted(capsys):
    import pandas as pd

    labels = ["negative", "positive"]
    batch = pd.DataFrame({"text": [f"t{i}" for i in range(40)], "label": ["positive"] * 30 + ["negative"] * 10})
    loop = _StandInLoop({"1": "negative", "2": "positive"})  # the held v2 answers the majority: better on macro-F1
    policy, regressions, held = stream.Policy("loop"), [], []
    stream.run_loop([("a", batch), ("b", batch), ("c", batch)], loop, policy, regressions, labels, held)

    assert [h["batch"] for h in held] == ["c"] and held[0]["old"] == "1" and held[0]["new"] == "2"
    assert held[0]["new_f1"] > held[0]["old_f1"] and held[0]["diff"] > 0 and held[0]["ci"][0] > 0
    # the loop is scored with its champion only
    assert [round(s["macro_f1"], 4) for s in policy.scores] == [round(held[0]["old_f1"], 4)] * 2
    stream.report(
        [("a", batch), ("b", batch), ("c", batch)],
        ["loop"],
        {"loop": policy},
        loop,
        regressions,
        1.0,
        1.0,
        labels,
        held,
    )
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["held_challengers"] == [
        {
            "batch": "c",
            "version": "2",
            "champion": "1",
            "f1": round(100 * held[0]["new_f1"], 2),
            "champion_f1": round(100 * held[0]["old_f1"], 2),
            "diff_ci": [round(100 * c, 1) for c in held[0]["ci"]],
        }
    ]
    assert "held challenger v2 (staged for a review nobody gave), on c" in out


def test_baseline_fingerprint_ignores_comments_docstrings_and_layout_of_the_training_code(tmp_path):
    code = '"""Module doc."""\n\n\ndef f(x):\n    """Doc."""\n    return x + 1  # add one\n'
    (tmp_path / "a.py").write_text(code)
    (tmp_path / "b.py").write_text("def f(x):\n\n    return x + 1\n")
    (tmp_path / "c.py").write_text(code.replace("x + 1", "x + 2"))
    a, b, c = (stream._code(tmp_path / n) for n in ("a.py", "b.py", "c.py"))
    assert a == b and a != c
