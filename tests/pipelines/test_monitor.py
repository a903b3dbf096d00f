"""monitor: exactly-once windows, the label-free macro-F1 estimate against real labels, the step end to end."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from registry_doubles import make_registry_settings

from pipelines.serving import capture_file_name
from pipelines.steps import monitor

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)


def _write_capture(settings, when: datetime, rows: list[dict], writer: str = "w1", seq: int = 1) -> str:
    root = Path(monitor.capture_root(settings))
    path = root / capture_file_name(when, writer, seq)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path.name


def _row(i: int, label: str = "positive", text: str | None = None, status: str = "ok") -> dict:
    probs = {"negative": 0.1, "neutral": 0.1, "positive": 0.8}
    return {
        "id": f"r{i}",
        "request_id": f"q{i}",
        "row": 0,
        "ts": T0.isoformat(),
        "model_version": "1",
        "latency_ms": 5.0 + i,
        "status": status,
        "error": None,
        "text": text or f"text {i}",
        "text_sha256": f"{i:064d}",
        "text_length": 6,
        "label": label,
        "confidence": 0.8,
        "probs": probs,
    }


# --- exactly once ----------------------------------------------------------------------------------
def test_windows_claim_each_capture_exactly_once(tmp_path):
    settings = make_registry_settings(tmp_path, monitoring__settle_seconds=60)
    a = _write_capture(settings, T0 + timedelta(minutes=10), [_row(1)], seq=1)
    b = _write_capture(settings, T0 + timedelta(minutes=50), [_row(2)], seq=2)
    settling = _write_capture(settings, T0 + timedelta(minutes=59, seconds=30), [_row(3)], seq=3)
    first = monitor.claim(settings, T0 + timedelta(hours=1))
    assert [Path(f).name for f in first["files"]] == [a, b] and first["rerun"] is False

    late = _write_capture(settings, T0 + timedelta(minutes=20), [_row(4)], writer="w0", seq=9)  # after the claim
    rerun = monitor.claim(settings, T0 + timedelta(hours=1))
    assert rerun["files"] == first["files"] and rerun["rerun"] is True

    nxt = _write_capture(settings, T0 + timedelta(minutes=70), [_row(5)], seq=4)
    second = monitor.claim(settings, T0 + timedelta(hours=2))
    assert [Path(f).name for f in second["files"]] == [settling, nxt]
    assert late not in {Path(f).name for f in first["files"] + second["files"]}  # older than the watermark
    counted = [Path(f).name for w in (first, second) for f in w["files"]]
    assert len(counted) == len(set(counted))
    rows = monitor.read_captures(settings, first["files"] + second["files"])
    assert sorted(rows["id"]) == ["r1", "r2", "r3", "r5"]


def test_rerun_of_a_window_gives_the_same_summary(tmp_path):
    settings = make_registry_settings(tmp_path)
    for i in range(3):
        _write_capture(settings, T0 + timedelta(minutes=i), [_row(i), _row(i + 10, status="error")], seq=i)
    from pipelines.context import StepContext
    from pipelines.runner import run_step

    def once(run_id: str) -> dict:
        ctx = StepContext("monitor", run_id, settings, params={"window_end": (T0 + timedelta(hours=1)).isoformat()})
        out = run_step(ctx)
        return {k: v for k, v in out.items() if k not in ("compute_s", "rerun", "report_uri", "summary_uri")}

    first, second = once("m1"), once("m1")
    assert first == second
    assert first["rows"] == 6 and first["system"]["requests"] == 6 and first["system"]["errors"] == 3
    assert first["status"] == "ok" and "no champion" in first["reasons"][0]


def test_window_end_is_required(tmp_path):
    from pipelines.context import StepContext

    with pytest.raises(ValueError, match="window_end"):
        monitor.run(StepContext("monitor", "m", make_registry_settings(tmp_path)))


# --- the estimate ----------------------------------------------------------------------------------
def test_cbpe_is_exact_on_perfectly_calibrated_probabilities():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1, 1, 1], size=20000)
    y = np.array([rng.choice(3, p=p) for p in probs])
    pred = probs.argmax(axis=1)
    realised = monitor.realised_macro_f1([str(v) for v in y], [str(v) for v in pred])
    assert monitor.expected_macro_f1(probs)["macro_f1"] == pytest.approx(realised, abs=0.01)
    assert monitor.temperature(probs, y) == pytest.approx(1.0, abs=0.1)


#: Stated tolerance of the estimate on a labelled batch (the realised macro-F1 of a few hundred rows itself varies
#: by about 0.03 between resamples).
TOLERANCE = 0.06


def _labelled_split(drug_reviews_or_demo):
    df = drug_reviews_or_demo
    if "split" in df:
        train, test = df[df["split"] == "train"], df[df["split"] == "test"]
    else:
        train, test = df.iloc[: len(df) // 2], df.iloc[len(df) // 2 :]
    return train, test


@pytest.fixture(params=["drug_reviews", "demo"])
def labelled(request, demo_frames):
    if request.param == "drug_reviews":
        return _labelled_split(request.getfixturevalue("drug_reviews"))
    return demo_frames["batch_000_reference"], demo_frames["batch_001_in_domain"]


def test_estimate_is_within_tolerance_of_the_realised_score(labelled):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    train, test = labelled
    cal = train.sample(frac=0.3, random_state=0)
    fit = train.drop(cal.index)
    vec = TfidfVectorizer(min_df=2, ngram_range=(1, 2), sublinear_tf=True)
    clf = LogisticRegression(max_iter=2000, class_weight="balanced", C=5).fit(vec.fit_transform(fit.text), fit.label)
    classes = list(clf.classes_)
    p_cal = clf.predict_proba(vec.transform(cal.text))
    t = monitor.temperature(p_cal, np.array([classes.index(v) for v in cal.label]))
    p = clf.predict_proba(vec.transform(test.text))
    estimate = monitor.expected_macro_f1(monitor.calibrate(p, t), classes)["macro_f1"]
    realised = monitor.realised_macro_f1(test.label.tolist(), [classes[i] for i in p.argmax(axis=1)])
    assert abs(estimate - realised) <= TOLERANCE, (estimate, realised, t)


# --- the step with a champion ------------------------------------------------------------------------
def _champion_with_eval(settings, demo_frames, tmp_path) -> str:
    from test_drift import _register_champion

    from pipelines.data.datasets import write_parquet
    from pipelines.io.tracking import configure

    version = _register_champion(settings, demo_frames, tmp_path, macro_f1=0.9)
    eval_uri = str(tmp_path / "eval.parquet")
    write_parquet(demo_frames["batch_000_reference"].head(200), eval_uri, settings)
    configure(settings).set_model_version_tag(settings.registry.model_name, version, "train.eval_uri", eval_uri)
    return version


def _captures_from(settings, frame: pd.DataFrame, when: datetime) -> None:
    from pipelines.champion import get_champion

    predictor = get_champion(settings).predictor()
    texts = frame["text"].astype(str).tolist()
    out = predictor.predict(texts)
    rows = []
    for i, text in enumerate(texts):
        probs = {c: float(out[f"prob_{c}"][i]) for c in predictor.labels}
        rows.append(
            {
                **_row(i),
                "id": str(frame["id"].iloc[i]) if "id" in frame else f"x{i}",
                "request_id": f"{when:%H%M}-{i}",
                "text": text,
                "text_length": len(text),
                "label": out["label"][i],
                "probs": probs,
                "confidence": max(probs.values()),
            }
        )
    _write_capture(settings, when, rows)


def test_monitor_flags_a_shifted_window_and_joins_late_labels(make_settings, demo_frames, tmp_path):
    from pipelines.context import StepContext
    from pipelines.data.datasets import write_parquet
    from pipelines.runner import run_step

    settings = make_settings(registry__model_name=f"monitor-{tmp_path.name}", drift__mmd_permutations=30)
    version = _champion_with_eval(settings, demo_frames, tmp_path)
    _captures_from(settings, demo_frames["batch_001_in_domain"].head(150), T0 + timedelta(minutes=5))
    _captures_from(settings, demo_frames["batch_003_severe"].head(150), T0 + timedelta(minutes=65))
    # Labels for the second window's rows land later, as an accepted batch.
    write_parquet(demo_frames["batch_003_severe"].head(150), settings.uri("accepted", "late.parquet"), settings)

    def window(end: datetime, run_id: str) -> dict:
        return run_step(StepContext("monitor", run_id, settings, params={"window_end": end.isoformat()}))

    first = window(T0 + timedelta(hours=1), "w1")
    second = window(T0 + timedelta(hours=2), "w2")
    assert first["rows"] == 150 and second["rows"] == 150 and first["champion_version"] == version
    assert not first["tests"]["mmd"]["drifted"] or first["tests"]["mmd"]["statistic"] < 0.05
    assert second["tests"]["mmd"]["drifted"] and second["status"] == "act", second["reasons"]
    assert second["estimate"]["temperature"] > 0 and second["estimate"]["macro_f1"] is not None
    assert second["realised"]["rows"] == 150 and 0 <= second["realised"]["macro_f1"] <= 1
    assert second["labels_waiting"] == 0
    md = Path(second["summary_uri"]).read_text()
    assert "**ACT**" in md and "estimated (CBPE" in md
    import mlflow

    from pipelines.io.tracking import configure

    configure(settings)
    run = mlflow.get_run(second["mlflow_run_id"])
    assert run.data.tags["monitor.status"] == "act" and "monitor.estimated_macro_f1" in run.data.metrics
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "monitor")}
    assert {"monitor/summary.md", "monitor/f1_estimated_vs_realised.png", "monitor/drift_over_time.png"} <= names
